"""Checkpoints: one thin wrapper around Orbax (pinned to orbax-checkpoint 0.12.x).

Layout of a run's workdir:

    workdir/config.json                  the run's config (+ the resolved model config)
    workdir/checkpoints/<step>/params/   the slow weights (`Params`)
    workdir/checkpoints/<step>/opt/      {"step", "opt_state"}
    workdir/checkpoints_corrupt/         latest steps that failed to restore, moved aside

Orbax writes each step into a temporary directory and renames it when complete, so a save
cut off mid-write leaves only a `<step>.orbax-checkpoint-tmp-*` directory, which is not a
step (and is removed when the training run's manager opens). A step that is present but
unreadable (e.g. a truncated file) or holds non-finite numbers is moved to
`checkpoints_corrupt/` by the training run and the previous step is used. A reader
(`load_params`, `Checkpointer(read_only=True)`) never deletes or moves anything: it skips
such a step, so that reading a live run is safe.

Orbax is imported by the functions that use it, not on import, so that
`import sleep_consolidation` stays free of Orbax. Reading what a run's files hold without
Orbax (the file names, config.json, the record saved with a step): `checkpoint_files.py`;
starting a run from another run's parameters: `init_from.py`.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import shutil
import time
from typing import Any

import jax
from absl import logging

from sleep_consolidation.model import Params, init_params
from sleep_consolidation.state import MemoryState
from sleep_consolidation.training.checkpoint_files import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    CORRUPT_DIR,
    RECORD_KEY,
    model_config_from_dict,
    read_run_config,
    read_saved_record,
    read_step_metadata,
)
from sleep_consolidation.training.train_step import NonFiniteError

# What a checkpoint write failure's message says -> its errno (the rest: EIO).
_ERRNOS = (("No space left", errno.ENOSPC), ("Permission denied", errno.EACCES),
           ("Read-only file system", errno.EROFS), ("Disk quota", errno.EDQUOT))  # fmt: skip


# A reader opening a live run's checkpoints lists them again after a step is rotated
# away under it (`Checkpointer._open_manager`).
_READER_OPEN_TRIES = 5


class CheckpointError(ValueError):
    """No checkpoint step of a run could be restored (or the one asked for is unusable);
    the message names the directory and each step with its reason."""


class _NonFinite(Exception):
    """Why a step was rejected: these leaves hold NaN/Inf."""

    def __init__(self, leaves: list[str]):
        super().__init__(f"non-finite numbers in {', '.join(leaves[:3])}")


def non_finite_leaves(tree) -> list[str]:
    """The paths of the floating-point leaves of `tree` that hold a NaN or an Inf."""
    bad = []
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = getattr(x, "dtype", None)
        if dtype is None or not jax.numpy.issubdtype(dtype, jax.numpy.inexact):
            continue
        if not bool(jax.numpy.isfinite(x).all()):
            bad.append(jax.tree_util.keystr(path))
    return bad


class Checkpointer:
    """Saves and restores a train state (`params`, `step`, `opt_state` attributes).

    Args:
      workdir: the run directory; checkpoints go to `workdir/checkpoints`.
      max_to_keep: number of most recent steps kept on disk.
      async_save: write in a background thread (call `wait` or `close` before exit).
      read_only: a reader of the run (possibly live): nothing in the run directory is
        created, deleted or moved; an unusable step is skipped, not quarantined.
      record: the run's identity (`run_dir.run_record`, what config.json holds), saved
        with every step (`saved_record`), so that a lost or edited config.json is caught.
    """

    def __init__(
        self, workdir: str | os.PathLike, *, max_to_keep: int = 3, async_save=True,
        read_only: bool = False, record: dict[str, Any] | None = None,
    ):  # fmt: skip
        self.workdir = os.path.abspath(os.fspath(workdir))  # Orbax needs absolute paths
        self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
        self.read_only = read_only
        self.record = record
        if read_only and not os.path.isdir(self.directory):
            raise FileNotFoundError(f"no checkpoint directory {self.directory}")
        import orbax.checkpoint as ocp

        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            # Leftovers of saves cut off mid-write; a reader must leave them alone: in a
            # live run such a directory is the save being written.
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save,
            read_only=read_only,
        )
        self._manager = self._open_manager(ocp, options)

    def _open_manager(self, ocp, options):
        """The Orbax manager. Opening it reads every step's metadata; in a live run the
        trainer may delete a step (rotation) between Orbax listing it and reading it, which
        Orbax reports as NotADirectoryError or FileNotFoundError. A reader lists again."""
        for attempt in range(_READER_OPEN_TRIES):
            try:
                return ocp.CheckpointManager(
                    self.directory, options=options, item_names=("params", "opt")
                )
            except (FileNotFoundError, NotADirectoryError) as e:
                if not self.read_only:
                    raise
                if attempt == _READER_OPEN_TRIES - 1:
                    raise CheckpointError(
                        f"the steps in {self.directory} changed while being listed, "
                        f"{_READER_OPEN_TRIES} times in a row, or an entry named like a step "
                        f"is not a checkpoint directory ({type(e).__name__}: {e})"
                    ) from e
                time.sleep(0.01 * (attempt + 1))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, train_state, metadata: dict[str, Any] | None = None) -> int:
        """Saves `train_state` under its own step number; returns that step. `metadata`
        (JSON-able) is saved with the step, beside the run record (`saved_metadata`).

        Raises:
          NonFiniteError: a parameter holds NaN/Inf (nothing is saved, so the last good
            checkpoint stays the latest).
          OSError: the save (or an asynchronous one before it) failed to write, e.g. on a
            full disk (Orbax raises its own exception types; `_writing`).
        """
        if self.read_only:
            raise ValueError(f"{self.directory} was opened read-only")
        step = int(jax.device_get(train_state.step))
        bad = non_finite_leaves(train_state.params)
        if bad:
            raise NonFiniteError(step, f"parameters ({', '.join(bad[:3])})", float("nan"))
        # Orbax waits for the previous asynchronous save here anyway; waiting first makes
        # its failure name the checkpoint directory, not the step about to be saved.
        with self._writing(None):
            self._manager.wait_until_finished()
        with self._writing(step):
            self._save(step, train_state, metadata)
        return step

    def _save(self, step: int, train_state, metadata) -> None:
        import orbax.checkpoint as ocp

        self._manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(train_state.params),
                opt=ocp.args.StandardSave(
                    {"step": train_state.step, "opt_state": train_state.opt_state}
                ),
            ),
            force=True,
            # In the step's own metadata, so it is committed (renamed) with the arrays.
            custom_metadata={
                **(metadata or {}),
                **({} if self.record is None else {RECORD_KEY: self.record}),
            },
        )

    @contextlib.contextmanager
    def _writing(self, step: int | None):
        """Turns a failure to write a checkpoint into an OSError naming the step's directory
        (what the run reports as an I/O error, with the last checkpoint kept): Orbax and
        TensorStore raise their own types ("Failed to write 24373 bytes to file 7")."""
        try:
            yield
        except OSError:
            raise
        except Exception as e:
            text = " ".join(str(e).split())[:300]
            code = next((c for s, c in _ERRNOS if s in text), errno.EIO)
            path = self.directory if step is None else os.path.join(self.directory, str(step))
            raise OSError(code, f"writing a checkpoint failed ({type(e).__name__}: {text})",
                          path) from e  # fmt: skip

    def saved_metadata(self, step: int) -> dict[str, Any]:
        """The metadata saved with `step` ({} if none, or the step is missing)."""
        return read_step_metadata(self.directory, step)

    def saved_record(self, step: int | None = None) -> dict[str, Any] | None:
        """The run record saved with `step` (default: the newest step that has one), or
        None (no such step, or steps saved before records were)."""
        for s in [step] if step is not None else reversed(self.all_steps()):
            record = read_saved_record(self.directory, s)
            if record is not None:
                return record
        return None

    def restore(self, abstract_state):
        """Restores the latest readable step into the structure of `abstract_state`
        (e.g. `jax.eval_shape` of the init function). Returns None if there is none."""
        import orbax.checkpoint as ocp

        restored = self._restore_latest(
            ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_state.params),
                opt=ocp.args.StandardRestore(
                    {"step": abstract_state.step, "opt_state": abstract_state.opt_state}
                ),
            )
        )
        if restored is None:
            return None
        return abstract_state.replace(
            step=restored.opt["step"],
            params=restored.params,
            opt_state=restored.opt["opt_state"],
        )

    def restore_params(self, abstract_params: Params, step: int | None = None) -> Params | None:
        """Restores only the `Params` of `step` (default: the latest readable step)."""
        import orbax.checkpoint as ocp

        args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
        if step is not None:
            try:
                restored = self._manager.restore(step, args=args)
            except Exception as e:
                raise CheckpointError(self._describe([(step, e)])) from e
            bad = non_finite_leaves(restored.params)
            if bad:
                raise CheckpointError(self._describe([(step, _NonFinite(bad))]))
            return restored.params
        restored = self._restore_latest(args)
        return None if restored is None else restored.params

    def _describe(self, failed) -> str:
        what = "; ".join(
            f"step {s} ({os.path.join(self.directory, str(s))}): {type(e).__name__}: "
            f"{str(e)[:300]}" for s, e in failed
        )  # fmt: skip
        return f"checkpoint(s) in {self.directory} could not be used: {what}"

    def _restore_latest(self, args):
        """Restores the newest readable, finite step. A step that fails to read is moved
        aside only once an older step restores with the same arguments (so it really was
        unreadable); a step holding NaN/Inf is corrupt whatever the others do and is moved
        aside at once. A reader (`read_only`) moves nothing, it only skips. If no step can
        be used, CheckpointError names each step and why; unreadable steps are then left
        where they are (the cause may be systematic: wrong path, devices or shapes)."""
        failed: list[tuple[int, Exception]] = []
        for step in reversed(self.all_steps()):
            try:
                restored = self._manager.restore(step, args=args)
            except Exception as e:  # noqa: BLE001 - classified below by the older steps
                failed.append((step, e))
                continue
            bad = non_finite_leaves(dict(restored.items()))  # Composite is not a pytree
            if bad:
                logging.warning(
                    "checkpoint step %d in %s holds non-finite numbers (%s)%s",
                    step, self.directory, ", ".join(bad[:3]),
                    "" if self.read_only else f"; moving it to {CORRUPT_DIR}",
                )  # fmt: skip
                if not self.read_only:
                    self._quarantine(step)
                failed.append((step, _NonFinite(bad)))
                continue
            for bad_step, e in failed:
                if isinstance(e, _NonFinite):
                    continue
                logging.warning(
                    "checkpoint step %d in %s is unreadable (%s: %s) while step %d is fine%s",
                    bad_step, self.directory, type(e).__name__, str(e)[:200], step,
                    "" if self.read_only else f"; moving it to {CORRUPT_DIR}",
                )  # fmt: skip
                if not self.read_only:
                    self._quarantine(bad_step)
            return restored
        if failed:
            raise CheckpointError(
                self._describe(failed) + ". Nothing restorable is left: if these steps are "
                f"corrupt, move {self.directory} aside to train the run afresh."
            ) from failed[0][1]
        return None

    def _quarantine(self, step: int) -> None:
        assert not self.read_only, "a reader never moves a checkpoint"
        # Moved out of the manager's directory so that the step number can be saved again.
        dest = os.path.join(self.workdir, CORRUPT_DIR)
        os.makedirs(dest, exist_ok=True)
        shutil.move(
            os.path.join(self.directory, str(step)),
            os.path.join(dest, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"),
        )
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until any asynchronous save has finished (OSError if it failed)."""
        with self._writing(None):
            self._manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------
# Notebook helpers: a run's trained parameters, a streaming MemoryState
# ---------------------------------------------------------------------------------------


def _list(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def load_params(workdir: str | os.PathLike, step: int | None = None) -> Params:
    """The trained `Params` of a run (latest readable checkpoint unless `step` is given).

    The `ModelConfig` is rebuilt from the run's `config.json` (its `model_config` entry),
    checked against the record saved with the checkpoints (which stands in for a missing
    config.json); a run of a custom rule first imports the module that registered it
    (`rule_module`). Read-only: safe on a live run (it reads the latest finished step).

    Raises:
      FileNotFoundError: no config.json (nor a saved record) or no checkpoint in `workdir`.
      ValueError: config.json is malformed or disagrees with the checkpoints' record
        (naming the file and the fields).
      CheckpointError: no usable checkpoint (or `step` is unusable); names the steps.
    """
    path = os.path.join(os.fspath(workdir), CONFIG_FILE)
    saved = read_run_config(workdir)
    directory = os.path.join(os.path.abspath(os.fspath(workdir)), CHECKPOINT_DIR)
    steps = [step] if step is not None else sorted(
        (int(n) for n in _list(directory) if n.isdigit()), reverse=True
    )  # fmt: skip
    record = next((r for r in (read_saved_record(directory, s) for s in steps) if r), None)
    if saved is None:
        if record is None:
            raise FileNotFoundError(f"{workdir} has no {CONFIG_FILE} (nor a checkpoint with a "
                                    "saved run record)")  # fmt: skip
        logging.warning("%s is missing: using the run record saved with the checkpoints", path)
        saved = record
    elif record is not None and record["model_config"] != saved["model_config"]:
        diff = {k: (saved["model_config"].get(k), v) for k, v in record["model_config"].items()
                if saved["model_config"].get(k) != v}  # fmt: skip
        raise ValueError(
            f"{path} does not describe the model its checkpoints hold ([config.json, "
            f"checkpoint] {diff}): it was edited or copied from another run"
        )
    rule_module = saved.get("config", {}).get("rule_module")
    if rule_module:
        importlib.import_module(rule_module)
    cfg = model_config_from_dict(saved["model_config"])
    abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    # Restore onto one local device whatever the run was sharded over (a notebook).
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device), abstract
    )
    # Read-only: a notebook reading a live run must not delete the save being written.
    with Checkpointer(workdir, async_save=False, read_only=True) as ckpt:
        params = ckpt.restore_params(abstract, step)
    if params is None:
        raise FileNotFoundError(f"no readable checkpoint in {workdir}/{CHECKPOINT_DIR}")
    return params


def _static_fields(state: MemoryState) -> dict[str, Any]:
    s = state.schedule
    return {
        "schedule": {
            "eviction": s.eviction,
            "reset_between_passes": s.reset_between_passes,
            "reinject_embedding": s.reinject_embedding,
            "normalize_sleep_input": s.normalize_sleep_input,
            "loop_blocks": None if s.loop_blocks is None else list(s.loop_blocks),
        },
        "rope_base": state.rope_base,
    }


def save_memory_state(path: str | os.PathLike, state: MemoryState) -> None:
    """Saves a streaming `MemoryState` (e.g. mid-stream) to the new directory `path`.

    The arrays go through Orbax; the static fields (`schedule`, `rope_base`) to
    `path/static.json`, so that a restore can check it is resuming the same schedule.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        raise FileExistsError(f"{path} already exists; give a new directory")
    os.makedirs(path)
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, "arrays"), state)
    with open(os.path.join(path, "static.json"), "w") as f:
        json.dump(_static_fields(state), f, indent=2)


def load_memory_state(path: str | os.PathLike, like: MemoryState) -> MemoryState:
    """Restores a `MemoryState` saved by `save_memory_state`.

    Args:
      path: the directory given to `save_memory_state`.
      like: a state of the same shapes and static fields (e.g. `init_state(...)` with the
        same config, batch size, window and schedule); only its structure is used.

    Raises:
      ValueError: the saved schedule or rope_base differs from `like`'s.
    """
    path = os.path.abspath(os.fspath(path))
    with open(os.path.join(path, "static.json")) as f:
        saved = json.load(f)
    # States saved before the option existed ran without it.
    saved.get("schedule", {}).setdefault("normalize_sleep_input", False)
    want = _static_fields(like)
    if saved != want:
        raise ValueError(
            f"saved MemoryState static fields {saved} differ from those of `like` {want}"
        )
    abstract = jax.eval_shape(lambda: like)
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.join(path, "arrays"), abstract)

"""Starting a run from another run's parameters (`config.init_from`): the check, made
before anything is compiled, that the source run can initialise this one, and the load."""

from __future__ import annotations

import os

import jax

from sleep_consolidation.config import ModelConfig
from sleep_consolidation.model import Params
from sleep_consolidation.training.checkpoint_files import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    read_run_config,
)
from sleep_consolidation.training.checkpointing import load_params

# ModelConfig fields that do not change the parameters: how the model is computed.
_NOT_IN_PARAMS = ("impl", "chunk_size", "compute_dtype")


def check_init_source(source: str | os.PathLike, model_config: ModelConfig, workdir) -> None:
    """Checks, before anything is compiled, that run `source` can initialise a run of
    `model_config` in `workdir`: it is another run's directory, with a config.json and a
    checkpoint, and its model has the same parameter shapes and rule.

    Raises:
      ValueError: naming `source` and what is wrong (each differing field with both values).
    """
    source = os.fspath(source)
    where = f"init_from={source!r}"
    if os.path.realpath(source) == os.path.realpath(os.fspath(workdir)):
        raise ValueError(f"{where} is this run's own workdir; name another run's workdir")
    try:
        saved = read_run_config(source)
    except ValueError as e:
        raise ValueError(f"{where}: its {CONFIG_FILE} is unreadable ({e})") from e
    if saved is None or "model_config" not in saved:
        raise ValueError(
            f"{where} is not a run directory: no {CONFIG_FILE} with a model_config entry"
        )
    theirs = dict(saved["model_config"])
    theirs["layout"] = tuple(theirs.get("layout", ()))
    ours = {k: v for k, v in vars(model_config).items()}
    differ = [
        f"{k}: source {theirs.get(k)!r}, this run {ours[k]!r}"
        for k in ours
        if k not in _NOT_IN_PARAMS and theirs.get(k) != ours[k]
    ]
    if differ:
        raise ValueError(
            f"{where} holds a model of another shape or rule ({'; '.join(differ)}); "
            "its parameters cannot initialise this one"
        )
    directory = os.path.join(source, CHECKPOINT_DIR)
    steps = [d for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
    if not steps:
        raise ValueError(f"{where} has no checkpoint in {directory}")


def load_init_params(source: str | os.PathLike, like: Params) -> Params:
    """The latest parameters of run `source` (`load_params`), carrying the config of `like`
    (this run's, which may differ from the source's in `impl` or `chunk_size` only), checked
    to have `like`'s structure, shapes and dtypes.

    Raises:
      ValueError: the restored parameters do not match `like`.
    """
    params = load_params(source).replace(config=like.config)
    got = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), params)
    want = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), like)
    if got != want:
        raise ValueError(f"init_from={os.fspath(source)!r}: its parameters do not match this "
                         "model's shapes")  # fmt: skip
    return params

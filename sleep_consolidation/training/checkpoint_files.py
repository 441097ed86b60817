"""What a run's checkpoints and config.json hold, read without Orbax: the file names, the
run record saved with each checkpoint step, and the run's config.json.

The run-directory code (`run_dir.py`) reads a run through this module, so that it loads no
Orbax; saving and restoring the arrays is `checkpointing.py`'s.
"""

from __future__ import annotations

import json
import os
from typing import Any

from sleep_consolidation.config import ModelConfig

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"
CONFIG_FILE = "config.json"
RECORD_KEY = "run_record"  # the key of a step's custom metadata that holds the run record
# Orbax's per-step metadata file (orbax-checkpoint 0.12.x), read directly: the manager's
# `metadata()` also inspects every item and warns about each.
_STEP_METADATA_FILE = "_CHECKPOINT_METADATA"


def read_step_metadata(directory: str, step: int) -> dict[str, Any]:
    """The metadata saved with checkpoint `step` under `directory` ({} if none)."""
    try:
        with open(os.path.join(directory, str(step), _STEP_METADATA_FILE)) as f:
            custom = json.load(f).get("custom_metadata")
    except (OSError, ValueError, AttributeError):
        return {}
    return custom if isinstance(custom, dict) else {}


def read_saved_record(directory: str, step: int) -> dict[str, Any] | None:
    """The run record saved with checkpoint `step` under `directory`, or None."""
    record = read_step_metadata(directory, step).get(RECORD_KEY)
    return record if isinstance(record, dict) else None


def read_run_config(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The saved `config.json` of a run as a dict, or None if there is none.

    Raises:
      ValueError: it does not parse, or is not a run record (a dict with `config` and
        `model_config` dicts); the message names the file.
    """
    path = os.path.join(os.fspath(workdir), CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        try:
            saved = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(saved, dict) or not all(
        isinstance(saved.get(k), dict) for k in ("config", "model_config")
    ):
        what = type(saved).__name__ if not isinstance(saved, dict) else f"keys {sorted(saved)}"
        raise ValueError(
            f"{path} is not a run record (a dict with 'config' and 'model_config' dicts; "
            f"got {what})"
        )
    return saved


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Rebuilds a `ModelConfig` from its JSON form (lists back to tuples)."""
    d = dict(d)
    d["layout"] = tuple(d["layout"])
    return ModelConfig(**d)

"""A run's JSON and JSONL files, written so that a kill mid-write leaves a file the next
run can read: whole files replaced atomically, lines appended whole, a torn or damaged
line dropped on reading."""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging


def write_json(path: str, obj) -> None:
    """Writes `obj` to `path` atomically (a temporary file, synced, then `os.replace`), so
    that a reader sees the old file or the new one, never a torn one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_jsonl(path: str, obj) -> None:
    """Appends `obj` to `path` as one whole JSON line.

    The line goes out in one unbuffered `os.write` (looped only if the OS takes part of
    it), so a kill leaves at most the last line torn, and `truncate_jsonl` drops that.
    """
    data = (json.dumps(obj) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


# metrics.jsonl keys that always hold a number (or None: a NaN metric, no rate yet).
_NUMERIC_KEYS = ("loss", "grad_norm", "token_acc", "lr", "tokens_per_s", "elapsed_s")


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def line_problem(obj) -> str | None:
    """Why `obj` (one parsed JSONL line) is not a line a run logged, or None: it must be
    an object whose `step` is an int >= 0 and whose metric values (the train metrics and
    every `eval...` key) are numbers or null."""
    if not isinstance(obj, dict):
        return f"not a JSON object ({type(obj).__name__})"
    step = obj.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"step is {step!r}, not an int >= 0"
    for k, v in obj.items():
        if (k in _NUMERIC_KEYS or k.startswith("eval")) and v is not None and not _is_number(v):
            return f"{k} is {v!r}, not a number"
    return None


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The JSON objects of `path`, one per line; [] if it does not exist. A line that does
    not parse (torn by a kill mid-append) or has the wrong types (`line_problem`) is
    skipped, as `truncate_jsonl` would drop it."""
    try:
        with open(path, "rb") as f:
            raw = f.read().split(b"\n")
    except FileNotFoundError:
        return []
    out = []
    for ln in raw:
        try:
            obj = json.loads(ln)
        except ValueError:  # also the empty last piece
            continue
        if line_problem(obj) is None:
            out.append(obj)
    return out


def truncate_jsonl(path: str, last_step: int) -> None:
    """Drops the lines of `path` logged after `last_step` (they will be logged again).

    A line anywhere that does not parse or has the wrong types (`line_problem`: a torn
    last line after a kill or a full disk, or a damaged one) is dropped with a warning
    naming it, so the run can resume.
    """
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        raw = f.read().split(b"\n")
    kept, torn = [], []
    for n, ln in enumerate(raw, 1):
        if not ln.strip():
            continue
        try:
            problem = line_problem(json.loads(ln))
        except ValueError as e:  # UnicodeDecodeError is a ValueError
            problem = f"unparseable ({e})"
        if problem is not None:
            torn.append(f"line {n}: {problem}")
            continue
        if json.loads(ln)["step"] <= last_step:
            kept.append(ln + b"\n")
    if torn:
        logging.warning(
            "%s: dropped %d unreadable line(s) (%s): a write cut off by a kill or a full "
            "disk, or a damaged file", path, len(torn), "; ".join(torn),
        )  # fmt: skip
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

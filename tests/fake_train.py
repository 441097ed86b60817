"""A stand-in for `python -m experiments.train` in sweep tests: same flags, no JAX.

Writes what the sweep reads (config.json, metrics.jsonl, summary.json) in a fraction of a
second, resumes from its last metrics line, and appends a line to launches.txt per start.
FAKE_STEP_S (env) sleeps per step so that a test can watch a run in flight.
"""

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

# The names sleep_consolidation writes (tests/test_sweep.py checks they still agree).
CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.json", "metrics.jsonl", "summary.json"

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory")


def main(argv):
    del argv
    t0, c, wd = time.time(), _CONFIG.value, _WORKDIR.value
    os.makedirs(wd, exist_ok=True)
    with open(os.path.join(wd, "launches.txt"), "a") as f:
        f.write(" ".join(sys.argv[1:]) + "\n")
    with open(os.path.join(wd, CONFIG_FILE), "w") as f:
        json.dump({"config": json.loads(json.dumps(c.to_dict()))}, f)
    start = 0
    try:
        with open(os.path.join(wd, METRICS_FILE)) as f:
            start = max(json.loads(ln)["step"] for ln in f if ln.strip())
    except (OSError, ValueError):
        pass
    for step in range(start + 1, c.steps + 1):
        time.sleep(float(os.environ.get("FAKE_STEP_S", "0")))
        if step % c.log_every == 0 or step == c.steps:
            line = {"step": step, "loss": 1.0 / step, "elapsed_s": time.time() - t0}
            with open(os.path.join(wd, METRICS_FILE), "a") as f:
                f.write(json.dumps(line) + "\n")
    acc = 0.5 + 0.1 * c.passes + 0.01 * c.seed
    summary = {"status": "completed", "step": c.steps, "steps": c.steps,
               "resumed_from": start or None,
               "eval": {"acc": acc, "acc/d=1": acc}, "train_s": time.time() - t0,
               "wall_s": time.time() - t0}  # fmt: skip
    with open(os.path.join(wd, SUMMARY_FILE), "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    app.run(main)

"""The GPU check's CPU mode (`python -m experiments.gpu_check --tiny`) runs and writes a
report with every section and sane values (BUILD_NOTES.md, "The GPU check")."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # 30-95 s (compiles every part); CI runs the slow set
def test_gpu_check_tiny_cpu(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.gpu_check", "--tiny", f"--out={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,  # hang guard
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    md = (tmp_path / "gpu_check.md").read_text()
    assert res["meta"]["backend"] == "cpu" and res["meta"]["mode"] == "tiny"

    # 1. stream == forward at "highest": logits and fast weights agree to float32 rounding.
    rows = res["stream"]["rows"]
    assert rows and any(r["precision"] == "highest" for r in rows)
    for r in rows:
        assert r["logits"]["max_rel"] < 1e-5 and r["fast"]["max_rel"] < 1e-5, r

    # 2. sleep: the scan and the chunked form, both dtypes, positive times, small errors.
    sleep = res["sleep"]["rows"]
    assert {r["dtype"] for r in sleep} == {"float32", "bfloat16"}
    assert {r["variant"].split("_")[0] for r in sleep} == {"scan", "chunked"}
    for r in sleep:
        assert r["median_s"] > 0 and r["min_s"] <= r["median_s"] <= r["max_s"], r
        assert r["tokens_per_s"] > 0 and r["reps"] >= 3
        assert r["rel_err_o"] < 1e-5 and r["rel_err_S"] < 1e-5, r

    # 3. fla: torch/Triton/CUDA are not here, so the section says so.
    assert res["fla"]["available"] is False
    assert "fla not available" in res["fla"]["reason"] and "fla not available" in md

    # 4. + 5. train step of the Rule 110 config: time, tokens/s, FLOPs, MFU, temp bytes.
    train = res["train"]["rows"]
    assert train, res["train"]["skipped"]
    assert {r["compute_dtype"] for r in train} == {"float32", "bfloat16"}  # both dtypes
    for r in train:
        assert r["median_s"] > 0 and r["tokens_per_s"] > 0 and r["model_tflops_per_s"] > 0
        assert 0 < r["mfu_bf16"] < r["mfu_tf32"] < 1
        assert r["temp_bytes"] is not None and r["temp_bytes"] > 0
        assert r["loss"] == r["loss"] and r["loss"] > 0  # finite, not NaN

    for title in ("stream == forward", "One sleep pass", "fla's Triton", "Train step"):
        assert title in md


@pytest.mark.slow  # compiles a tiny Rule 110 step four times (~1 min); CI runs -m slow
def test_memory_in_n_tabulates_the_temp_bytes_per_mode_and_n(monkeypatch):
    from experiments.bench import gpu_train, memory_in_n

    tiny = gpu_train.rule110_config(True)
    monkeypatch.setattr(gpu_train, "rule110_config", lambda _: dict(tiny))
    lines = memory_in_n.table(2, [1, 2], ["pass", "window+pass"]).splitlines()
    assert lines[0] == "| remat | N | temp MiB (batch 2) | vs N=1 |" and len(lines) == 6
    rows = [ln.strip("|").split("|") for ln in lines[2:]]
    assert [(r[0].strip(), int(r[1])) for r in rows] == [
        ("pass", 1), ("pass", 2), ("window+pass", 1), ("window+pass", 2),
    ]  # fmt: skip
    assert all(float(r[2]) > 0 for r in rows) and rows[0][3].strip() == "1.00x"

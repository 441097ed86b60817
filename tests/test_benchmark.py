"""The benchmark's smoke path: every section runs and the JSON/markdown have the expected
shape. No timing assertions (timings are the benchmark's business, not the tests')."""

import json

import pytest

from experiments import benchmark


def test_smoke_run_writes_expected_keys(tmp_path):
    res = benchmark.run("smoke", reps=1, log=lambda *_: None)
    out, md = benchmark.write(res, str(tmp_path / "r.json"))
    with open(out) as f:
        data = json.load(f)
    assert set(benchmark.SECTIONS) <= set(data)
    for key in ("jax", "backend", "device_kind", "cpu_count", "command", "mode", "seconds"):
        assert key in data["meta"]
    assert data["ceiling"]["gflops"] > 0
    wake = data["wake"]
    assert {r["variant"] for r in wake["rows"]} >= {"python_loop", "stream"}
    assert {"stream_vs_python", "by_passes", "passes_ratio"} <= set(wake)
    assert {"hybrid_ratio", "full_attention_ratio", "rows"} <= set(data["latency"])
    sleep_rows = data["sleep"]["rows"]
    assert {r["variant"] for r in sleep_rows} >= {"scan", "chunked_C8"}
    for r in sleep_rows:
        assert {"speedup_vs_scan", "gflops", "fraction_of_ceiling", "rel_err_vs_scan"} <= set(r)
        assert r["rel_err_vs_scan"] <= 1e-5
    for r in data["train"]["rows"]:
        assert {"N", "variant", "median_s", "temp_mib", "forward_s", "step_over_forward"} <= set(r)
    assert data["targets"] and all(t["status"] in ("pass", "miss", "n/a") for t in data["targets"])
    text = open(md).read()
    assert "## Targets" in text and "Training step vs N" in text


def test_run_checks_arguments():
    with pytest.raises(ValueError, match="mode"):
        benchmark.run("huge")
    with pytest.raises(ValueError, match="sections"):
        benchmark.run("smoke", sections=("nope",))
    with pytest.raises(ValueError, match="reps"):
        benchmark.run("smoke", sections=(), reps=0)

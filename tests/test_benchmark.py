"""The benchmark's smoke path: every section runs and the JSON/markdown have the expected
shape. No timing assertions (timings are the benchmark's business, not the tests')."""

import json

import pytest

from experiments.bench import suite


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_smoke_run_writes_expected_keys(tmp_path):
    res = suite.run("smoke", reps=1, log=lambda *_: None)
    out, md = suite.write(res, str(tmp_path / "r.json"))
    with open(out) as f:
        data = json.load(f)
    assert set(suite.SECTIONS) <= set(data)
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
    for r in data["research"]["rows"]:
        assert r["tokens_per_s"] > 0 and r["model_gflops_per_s"] > 0 and r["speedup"] > 0
        assert abs(sum(r["shares"].values()) - 1.0) < 1e-6
    text = open(md).read()
    assert "## Targets" in text and "Training step vs N" in text
    assert "Research-scale train step" in text


def test_model_flops_formula_by_hand():
    """recall:tiny (T=16, L=8, d=32, 2 heads of 16, MLP 2, attn+ssm, V=8+8+...): the
    formula against a hand count, and the sleep term is N-1 extra passes over window 1."""
    from experiments.bench import flops
    from experiments.configs import recall
    from sleep_consolidation.training import run_config

    c = recall.get_config("tiny").to_dict()
    c.update(passes=1)
    spec = run_config.resolve_config(c)
    D, H, dh, V, B = 32, 2, 16, spec.model_config.vocab_size, c["batch_size"]
    T, L, answers = 16, 8, 4
    mlp = 2 * 2 * D * (2 * D)
    attn = 2 * 4 * D * H * dh + 4 * (L + 1) / 2 * H * dh
    ssm = 2 * (D * (4 * H * dh + 2 * H) + H * dh * D) + 6 * H * dh**2
    per_pass = 2 * mlp + attn + ssm
    want = 3 * B * (T * per_pass + answers * 2 * D * V)
    assert flops.model_flops_per_step(c, spec) == pytest.approx(want)
    c3 = dict(c, passes=3)
    extra = flops.model_flops_per_step(c3, run_config.resolve_config(c3)) - want
    assert extra == pytest.approx(3 * B * L * 2 * per_pass)


def test_run_checks_arguments():
    with pytest.raises(ValueError, match="mode"):
        suite.run("huge")
    with pytest.raises(ValueError, match="sections"):
        suite.run("smoke", sections=("nope",))
    with pytest.raises(ValueError, match="reps"):
        suite.run("smoke", sections=(), reps=0)

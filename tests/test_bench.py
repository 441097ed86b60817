"""The benchmark package's helpers, each on its own (experiments/bench/): the target
verdicts, the table and report writers, the timing helper, the rule inputs and the GPU
check's options. Fast: nothing here compiles a model."""

import json

import numpy as np
import pytest

from experiments.bench import (
    fla_compare,
    flops,
    gpu_suite,
    gpu_train,
    inputs,
    measure,
    suite,
    targets,
    training,
)

# --- measure -------------------------------------------------------------------------------


def test_table_format():
    assert measure.table(["a", "b"], [(1, "x"), (2.5, None)]) == [
        "| a | b |",
        "|---|---|",
        "| 1 | x |",
        "| 2.5 | None |",
    ]
    assert measure.table(["only"], []) == ["| only |", "|---|"]


def test_ms_range_and_cfgline():
    assert measure.ms(0.0123456) == "12.3"
    assert measure.ms_range({"median_s": 0.002, "min_s": 0.0015, "max_s": 0.01}) == "2 (1.5-10)"
    assert measure.cfgline({"d": 64, "layout": ("attn",)}) == "d=64, layout=('attn',)"


def test_ratio_and_errors():
    assert measure.ratio(6.0, 3.0) == 2.0
    assert measure.ratio(None, 3.0) is None and measure.ratio(1.0, 0.0) is None
    e = measure.errors(np.array([1.0, 2.5]), np.array([1.0, 2.0]))
    assert e == {"max_abs": 0.5, "max_rel": 0.25}
    assert measure.rel_err(np.zeros(3), np.zeros(3)) == 0.0


def test_jsonable():
    x = {"a": (1, np.float32(0.5)), "b": [np.int64(3), {"c": (np.bool_(True),)}]}
    out = measure.jsonable(x)
    assert out == {"a": [1, 0.5], "b": [3, {"c": [True]}]}
    json.dumps(out)  # plain Python types only
    assert type(out["b"][0]) is int


def test_time_interleaved_counts_calls_and_orders_stats():
    calls = {"a": 0, "b": 0}

    def fn(name):
        def f():
            calls[name] += 1
            return np.zeros(())

        return f

    t = measure.time_interleaved({"a": fn("a"), "b": fn("b")}, reps=4, warmup=2)
    assert calls == {"a": 6, "b": 6}
    for name in ("a", "b"):
        r = t[name]
        assert r["reps"] == 4 and 0 <= r["min_s"] <= r["median_s"] <= r["max_s"]


def test_temp_mib_without_memory_analysis():
    assert measure.temp_mib(object()) is None


# --- inputs and flops ----------------------------------------------------------------------


def test_rule_inputs_shapes_and_draw_order():
    x = inputs.rule_inputs(np.random.default_rng(0), B=2, T=5, H=3, d=4)
    assert list(x) == list(inputs.RULE_INPUTS)
    assert x["S0"].shape == (2, 3, 4, 4) and x["q"].shape == (2, 5, 3, 4)
    assert x["alpha"].shape == (2, 5, 3) and all(a.dtype == np.float32 for a in x.values())
    np.testing.assert_allclose(np.linalg.norm(x["k"], axis=-1), 1.0, rtol=1e-6)
    assert x["alpha"].min() >= 0.5 and 0.0 <= x["beta"].min() <= x["beta"].max() <= 1.0
    # S0 first: the first draw of the generator is S0's.
    want_s0 = np.random.default_rng(0).standard_normal((2, 3, 4, 4)) / 4
    np.testing.assert_array_equal(x["S0"], want_s0.astype(np.float32))
    # S0 last (the sleep section's order) draws q first.
    y = inputs.rule_inputs(np.random.default_rng(0), B=2, T=5, H=3, d=4, s0_last=True)
    assert list(y) == list(inputs.RULE_INPUTS)
    assert not np.array_equal(x["S0"], y["S0"])
    g = np.random.default_rng(0).standard_normal((2, 5, 3, 4))
    np.testing.assert_allclose(y["q"], g / np.linalg.norm(g, axis=-1, keepdims=True), 1e-6)


def test_device_args_dtypes():
    import jax.numpy as jnp

    x = inputs.rule_inputs(np.random.default_rng(1), 1, 3, 2, 4)
    args = inputs.device_args(x, jnp.bfloat16)
    assert [a.dtype for a in args] == [jnp.float32] + [jnp.bfloat16] * 5


def test_flop_formulas():
    assert flops.scan_flops(L=10, d=4, H=2, B=3) == 7 * 16 * 10 * 2 * 3
    assert flops.chunk_flops(L=10, d=4, H=1, B=1, C=3) == pytest.approx(
        (6 * 16 + 10 * 3 * 4 + 3) * 10
    )


# --- targets -----------------------------------------------------------------------------------


def test_fmt_and_status():
    assert targets.fmt(None) == "n/a" and targets.fmt(52.345) == "52.3x"
    assert [targets.status(x) for x in (True, False, None)] == ["pass", "miss", "n/a"]


def _wake(stream_vs_python, scan_vs_python, passes_ratio, passes=(1, 8)):
    return {
        "stream_vs_python": stream_vs_python,
        "rule_level": {"scan_vs_python": scan_vs_python},
        "passes_ratio": passes_ratio,
        "by_passes": [{"passes": n} for n in passes],
    }


def test_wake_targets():
    ts = targets.wake_targets(_wake(60.0, 40.0, 1.05))
    assert [t["status"] for t in ts] == ["pass", "miss", "pass"]
    assert ts[0]["note"] == "rule alone (docs/performance.md's measurement): 40x"
    assert ts[2]["want"] == "N=8 within 10% of N=1" and ts[2]["measured"] == "1.05x"
    assert targets.wake_targets(_wake(60.0, 60.0, 1.2))[2]["status"] == "miss"
    one_n = targets.wake_targets(_wake(60.0, 60.0, 1.0, passes=(1,)))[2]
    assert one_n["status"] == "n/a" and one_n["measured"] == "n/a"


def test_latency_target_needs_flat_hybrid_and_growing_full_attention():
    def verdict(h, f):
        return targets.latency_targets({"hybrid_ratio": h, "full_attention_ratio": f})[0]["status"]

    assert verdict(1.05, 6.0) == "pass"
    assert verdict(1.2, 6.0) == "miss"  # the hybrid grows
    assert verdict(1.0, 1.05) == "miss"  # full attention does not: the measure says nothing


def _sleep_row(L, d, variant, speedup, err=0.0):
    return {"L": L, "d": d, "variant": variant, "speedup_vs_scan": speedup, "rel_err_vs_scan": err}


def test_sleep_targets_take_the_best_chunk_size_and_the_worst_shape():
    rows = [
        _sleep_row(1024, 64, "scan", 1.0),
        _sleep_row(1024, 64, "chunked_C16", 2.5),
        _sleep_row(1024, 64, "chunked_C32", 1.5),
        _sleep_row(4096, 128, "chunked_C16", 3.0, err=2e-6),
        _sleep_row(256, 64, "chunked_C16", 0.5),  # too short: not counted
    ]
    speed, same, gpu = targets.sleep_targets({"rows": rows}, on_gpu=False)
    assert speed["status"] == "pass"
    assert speed["measured"] == "min 2.50x (L=1024,d=64: 2.50x, L=4096,d=128: 3.00x)"
    assert same["status"] == "pass" and same["measured"] == "2e-06"
    assert gpu["status"] == "n/a" and gpu["measured"] == "not a GPU run"
    rows[1]["speedup_vs_scan"] = 1.9
    assert targets.sleep_targets({"rows": rows}, on_gpu=False)[0]["status"] == "miss"
    rows[3]["rel_err_vs_scan"] = 1e-4
    assert targets.sleep_targets({"rows": rows}, on_gpu=False)[1]["status"] == "miss"
    _, _, gpu = targets.sleep_targets({"rows": rows}, on_gpu=True)
    assert gpu["status"] == "miss" and gpu["measured"] == "3x"


def test_sleep_targets_at_small_sizes():
    speed, _, gpu = targets.sleep_targets({"rows": [_sleep_row(32, 8, "scan", 1.0)]}, True)
    assert speed["status"] == "n/a" and speed["measured"] == "not measured at these sizes"
    assert gpu["status"] == "n/a"


def _train_rows(step_over_fwd, scan_mib, remat_mib, times):
    rows = []
    for N, r, s, m, t in zip(sorted(times), step_over_fwd, scan_mib, remat_mib, times.values()):
        rows.append({"N": N, "variant": "scan_plain", "temp_mib": s, "median_s": 9.0})
        rows.append({"N": N, "variant": "chunked_remat_pass", "step_over_forward": r,
                     "temp_mib": m, "median_s": t})  # fmt: skip
    return rows


def test_train_targets_pass():
    rows = _train_rows([4.0, 4.5, 4.9], [100.0, 400.0, 800.0], [10.0, 12.0, 14.0],
                       {1: 1.0, 4: 4.0, 8: 8.0})  # fmt: skip
    ts = targets.train_targets("model", rows)
    assert [t["status"] for t in ts] == ["pass"] * 4
    assert ts[0]["measured"] == "N=1: 4x, 4: 4.5x, 8: 4.9x"
    assert ts[1]["want"] == ">= 10x at N=4" and ts[1]["measured"] == "N=1: 10x, 4: 33.3x, 8: 57.1x"
    assert ts[2]["target"].endswith("(N=8 vs N=1, remat=pass)") and ts[2]["measured"] == "1.4x"
    assert ts[3]["measured"] == "max deviation 0.0%"


def test_train_targets_miss():
    rows = _train_rows([4.0, 5.5, 4.0], [100.0, 50.0, 800.0], [10.0, 12.0, 16.0],
                       {1: 1.0, 4: 1.0, 8: 8.0})  # fmt: skip
    assert [t["status"] for t in targets.train_targets("x", rows)] == ["miss"] * 4


def test_train_targets_with_two_ns_have_no_linearity_target():
    rows = _train_rows([4.0, 4.0], [100.0, 400.0], [10.0, 12.0], {1: 1.0, 2: 2.0})
    ts = targets.train_targets("rule alone", rows)
    assert len(ts) == 3 and ts[1]["want"] == ">= 10x at N=2"  # N=4 absent: the last N


def test_train_targets_rate_the_nested_remat_when_it_was_measured():
    rows = _train_rows([4.0, 4.0], [100.0, 400.0], [10.0, 20.0], {1: 1.0, 8: 8.0})
    rows += [{"N": 1, "variant": "chunked_remat_window_pass", "temp_mib": 4.0},
             {"N": 8, "variant": "chunked_remat_window_pass", "temp_mib": 5.0}]  # fmt: skip
    ts = targets.train_targets("model", rows)
    nested = [t for t in ts if t["target"].endswith("remat=window+pass)")]
    assert len(nested) == 1 and nested[0]["measured"] == "1.25x" and nested[0]["status"] == "pass"
    assert ts[2]["status"] == "miss"  # remat=pass: 20 / 10 = 2x
    rows[-1]["temp_mib"] = 7.0
    assert [t for t in targets.train_targets("model", rows) if "window+pass" in t["target"]][0][
        "status"
    ] == "miss"


def test_linear_deviation():
    assert targets.linear_deviation([1, 2, 4], [1.0, 2.0, 4.0]) == pytest.approx(0.0, abs=1e-12)
    assert targets.linear_deviation([1, 2], [1.0, 2.0]) is None
    assert targets.linear_deviation([1, 2, 4], [1.0, None, 4.0]) is None
    assert targets.linear_deviation([1, 2, 3], [1.0, 3.0, 3.0]) > 0.15


def test_evaluate_ends_with_scale_out_and_skips_missing_sections():
    ts = targets.evaluate({"meta": {"backend": "cpu"}})
    assert [t["target"] for t in ts] == ["scale-out: 8 simulated devices == 1 device"]
    assert ts[0]["status"] == "n/a"
    res = {"meta": {"backend": "cpu"}, "latency": {"hybrid_ratio": 1.0, "full_attention_ratio": 9}}
    assert len(targets.evaluate(res)) == 2


def test_targets_markdown_puts_the_note_in_parentheses():
    lines = targets.markdown(
        [
            targets.target("t1", ">= 2x", "3x", "pass", note="why"),
            targets.target("t2", "w", "m", "n/a"),
        ]
    )
    assert lines[2] == "| t1 | >= 2x | 3x (why) | **pass** |"
    assert lines[3] == "| t2 | w | m | **n/a** |"


# --- the reports -------------------------------------------------------------------------------


def _step_rows():
    return [{"N": 1, "variant": "scan_plain", "median_s": 0.002, "min_s": 0.001, "max_s": 0.003,
             "forward_s": 0.0005, "step_over_forward": 4.0, "temp_mib": None}]  # fmt: skip


def test_training_markdown_writes_both_step_tables_alike():
    sec = {"config": {"d": 8}, "rows": _step_rows(),
           "rule_level": {"config": {"L": 64}, "rows": _step_rows()}}  # fmt: skip
    lines = training.markdown(sec)
    assert lines[1] == "## Training step vs N (d=8)"
    assert lines[7] == "## BPTT through N passes of the rule alone (L=64)"
    assert len(lines) == 12 and lines[2:6] == lines[8:12]  # the same table, written once
    assert lines[5] == "| 1 | scan_plain | 2 (1-3) | 0.5 | 4.00 | n/a |"
    assert len(training.markdown({**sec, "rule_level": None})) == 6


def test_suite_markdown_header_targets_then_sections():
    res = {
        "meta": {"command": "cmd", "mode": "smoke", "date_utc": "D", "jax": "J", "backend": "cpu",
                 "device_kind": "cpu", "cpu": "C", "cpu_count": 2, "seconds": 12.4},
        "reps": 3,
        "targets": [targets.target("t", "w", "m", "pass")],
        "ceiling": {"gflops": 99.6, "rows": [{"n": 8, "median_s": 0.001, "min_s": 0.001,
                                              "max_s": 0.002, "gflops": 99.6}]},
    }  # fmt: skip
    text = suite.to_markdown(res)
    lines = text.split("\n")
    assert lines[0] == "# Benchmark results"
    assert lines[2].startswith("`cmd` (smoke mode, 3 timed reps per variant), D: JAX J, ")
    assert "2 cores; 12 s in all." in lines[2]
    assert lines[4:9] == [
        "## Targets (docs/performance.md)",
        "",
        "| target | want | measured | status |",
        "|---|---|---|---|",
        "| t | w | m | **pass** |",
    ]
    assert lines[10] == "## f32 matmul ceiling: 100 GFLOP/s"
    assert lines[14] == "| 8 | 1 (1-2) | 100 |" and text.endswith("|\n")


def test_gpu_markdown_parts():
    fla = fla_compare.section("fla not available: no CUDA device for torch", [], "x")
    assert fla == {"available": False, "reason": "fla not available: no CUDA device for torch",
                   "rows": []}  # fmt: skip
    assert fla_compare.markdown(fla)[2:] == [fla["reason"], ""]
    m = {"date_utc": "D", "device_kind": "K", "device_count": 1, "backend": "gpu", "jax": "J",
         "cpu_count": 4, "mode": "gpu", "command": "c"}  # fmt: skip
    text = gpu_suite.to_markdown({"meta": m, "seconds": 3.2, "fla": fla})
    assert text.split("\n")[2] == (
        "D; device K x1 (gpu); JAX J; torch None; triton None; fla None; 4 CPUs; mode gpu; "
        "3 s. Command: `c`"
    )
    assert "## fla's Triton chunk_gated_delta_rule on the same inputs" in text
    assert text.endswith(fla["reason"] + "\n")  # each part ends with a blank line


def test_fla_row_times_ours_over_fla():
    case = {"B": 2, "T": 100, "H": 1, "d": 8, "dtype": "float32"}
    t = {"fla": {"median_s": 0.5, "min_s": 0.4, "max_s": 0.6, "reps": 3}, "ours": {"median_s": 1}}
    row = fla_compare.row(case, {"rel_err_o_vs_ours": 0.0}, t, "ours")
    assert row["tokens_per_s"] == 400 and row["ours_over_fla"] == 2.0 and row["B"] == 2
    assert fla_compare.row(case, {"error": "E"}, {}, "ours") == {**case, "error": "E"}


# --- the GPU check's options -------------------------------------------------------------------


def _opts(**kw):
    base = dict(tiny=False, out="o", reps=7, batches=(1, 8), seq_len=64, heads=2, head_dim=8,
                chunk_sizes=(16,), precisions=("highest",), train_passes=(1, 4))  # fmt: skip
    return gpu_suite.Options(**{**base, **kw})


def test_gpu_shapes():
    assert gpu_suite.shapes(_opts()) == dict(
        batches=(1, 8), T=64, H=2, d=8, chunks=(16,), reps=7, precisions=("highest",)
    )
    assert gpu_suite.shapes(_opts(tiny=True))["T"] == 24


def test_gpu_train_rows():
    assert gpu_train.rows_spec(True, (4,)) == [(1, "pass", "float32"), (1, "pass", "bfloat16")]
    spec = gpu_train.rows_spec(False, ("1", "4"))
    c = gpu_train.rule110_config(False)
    first = (c["passes"], c["remat"])
    points = [first] + [p for p in ((1, "pass"), (4, "pass")) if p != first]
    assert spec == [(n, r, dt) for n, r in points for dt in ("float32", "bfloat16")]
    assert gpu_train.mib(None) == "-" and gpu_train.mib(3 * 2**20) == "3"


class _FakeTensor:
    """Just enough of a torch tensor for fla_compare (float32 inputs)."""

    def __init__(self, a):
        self.a = np.asarray(a)

    def cuda(self):
        return self

    def float(self):
        return _FakeTensor(self.a.astype(np.float32))

    def cpu(self):
        return self

    def numpy(self):
        return self.a


class _FakeTorch:
    __version__ = "fake"
    bfloat16 = "bf16"

    class cuda:  # noqa: N801 - torch.cuda
        synced = 0

        @classmethod
        def synchronize(cls):
            cls.synced += 1

    from_numpy = staticmethod(_FakeTensor)
    log = staticmethod(lambda t: _FakeTensor(np.log(t.a)))


def test_fla_side_by_side_passes_our_inputs_in_fla_conventions():
    import jax.numpy as jnp

    x = inputs.rule_inputs(np.random.default_rng(0), 1, 4, 2, 3)
    args = inputs.device_args(x)
    seen = {}

    def kernel(q, k, v, g, beta, scale, initial_state, output_final_state):
        seen.update(q=q.a, k=k.a, v=v.a, g=g.a, beta=beta.a, h0=initial_state.a, scale=scale)
        assert output_final_state
        return _FakeTensor(v.a * 2), _FakeTensor(initial_state.a)

    ref = (np.asarray(args[3]) * 2, np.asarray(args[0]))
    mine = (np.asarray(args[3]) * 2 * (1 + 1e-3), np.asarray(args[0]))
    info, fn = fla_compare.side_by_side((_FakeTorch, kernel), args, ref, mine)
    for name in ("q", "k", "v", "beta"):
        np.testing.assert_array_equal(seen[name], x[name])
    np.testing.assert_allclose(seen["g"], np.log(x["alpha"]), rtol=1e-6)  # log-space gate
    np.testing.assert_array_equal(seen["h0"], x["S0"])
    assert seen["scale"] == 1.0  # our readout has no 1/sqrt(d)
    assert info["rel_err_o_vs_f32_scan"] == 0.0 and info["rel_err_S_vs_ours"] == 0.0
    assert info["rel_err_o_vs_ours"] == pytest.approx(1e-3, rel=1e-3)
    synced = _FakeTorch.cuda.synced
    fn()
    assert _FakeTorch.cuda.synced == synced + 1  # the timed call waits for the kernel
    assert args[1].dtype == jnp.float32


def test_fla_side_by_side_reports_a_failing_kernel():
    args = inputs.device_args(inputs.rule_inputs(np.random.default_rng(0), 1, 4, 2, 3))

    def kernel(*a, **kw):
        raise RuntimeError("no kernel for this shape")

    info, fn = fla_compare.side_by_side((_FakeTorch, kernel), args, None, None)
    assert info == {"error": "RuntimeError: no kernel for this shape"} and fn is None

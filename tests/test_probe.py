"""The fast-weight probe: the closed-form ridge agrees with its least-squares reference,
reads a planted linear signal and not a nonlinear one, its features are the memory that
crosses the last boundary, and the experiment probes a trained Rule 110 run end to end."""

import json
import subprocess
import sys

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init, random_tokens, tiny_config

from experiments import fast_weight_probe
from experiments.configs import common, recall, rule110
from sleep_consolidation.analysis import diagnostics
from sleep_consolidation.analysis.probe import (
    fast_weight_features,
    ridge_probe,
    ridge_probe_reference,
)
from sleep_consolidation.tasks import make_task
from sleep_consolidation.training.train import train_and_evaluate


def _planted(seed=0, n=600, f=12):
    """x [n, f] Gaussian; targets: a linear sign, the XOR of two signs, a constant-ish one."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f))
    linear = (x @ rng.normal(size=f) > 0).astype(np.float64)
    xor = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.float64)
    rare = (rng.random(n) < 0.1).astype(np.float64)
    return x, np.stack([linear, xor, rare], axis=1)


def test_ridge_probe_matches_its_least_squares_reference():
    x, y = _planted(1)
    fast = ridge_probe(x[:450], y[:450], x[450:], y[450:])
    ref = ridge_probe_reference(x[:450], y[:450], x[450:], y[450:])
    chex.assert_trees_all_close(fast, ref, atol=1e-12)


def _hand_probe(train_x, train_y, test_x, test_y, lambdas, n_val):
    """The probe written out directly: an intercept column left unpenalised, standardised on
    the rows being fitted, lambda by validation accuracy on the last n_val training rows
    (ties to the smaller), refit on every training row, scored once on the test rows."""

    def fit_score(fx, fy, sx, sy, lam):
        mean, std = fx.mean(0), fx.std(0)
        a = np.concatenate([np.ones((len(fx), 1)), (fx - mean) / std], axis=1)
        penalty = lam * fx.shape[1] * np.eye(a.shape[1])
        penalty[0, 0] = 0.0
        w = np.linalg.solve(a.T @ a + penalty, a.T @ (2 * fy - 1))
        b = np.concatenate([np.ones((len(sx), 1)), (sx - mean) / std], axis=1)
        return ((b @ w > 0) == (sy > 0.5)).mean(0)

    val = np.stack([fit_score(train_x[:-n_val], train_y[:-n_val], train_x[-n_val:],
                              train_y[-n_val:], lam) for lam in lambdas])  # fmt: skip
    best = np.argmax(val, axis=0)
    test = np.stack([fit_score(train_x, train_y, test_x, test_y, lam) for lam in lambdas])
    K = train_y.shape[1]
    return test[best, np.arange(K)], np.asarray(lambdas)[best], val[best, np.arange(K)]


def _noisy_targets(seed, n=240, f=40):
    """Linear targets at several noise levels, few rows per feature: the penalty matters."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)) * rng.uniform(0.2, 5.0, size=f)  # unequal scales
    logits = x / x.std(0) @ rng.normal(size=(f, 6))
    noise = rng.normal(size=(n, 6)) * np.array([0.0, 1.0, 3.0, 6.0, 10.0, 20.0])
    return x, (logits + noise > 0).astype(np.float64)


def test_ridge_probe_equals_the_probe_written_out_by_hand():
    x, y = _noisy_targets(4)
    res = ridge_probe(x[:180], y[:180], x[180:], y[180:], lambdas=(1e2, 1e-2, 1.0))
    acc, lam, val = _hand_probe(x[:180], y[:180], x[180:], y[180:], (1e-2, 1.0, 1e2), 36)
    np.testing.assert_array_equal(res["lambda"], lam)
    np.testing.assert_allclose(res["val_accuracy"], val)
    np.testing.assert_allclose(res["accuracy"], acc)
    assert len(set(lam)) >= 2  # the choice of lambda is exercised, not one value throughout


def test_the_test_rows_do_not_reach_the_fit():
    x, y = _noisy_targets(5)
    res = ridge_probe(x[:180], y[:180], x[180:], y[180:])
    shuffled = np.random.default_rng(0).permutation(x[180:], axis=1)  # garbage test features
    other = ridge_probe(x[:180], y[:180], shuffled, y[180:])
    np.testing.assert_array_equal(res["lambda"], other["lambda"])
    np.testing.assert_array_equal(res["val_accuracy"], other["val_accuracy"])
    assert other["accuracy"].mean() < res["accuracy"].mean() - 0.1


def test_ridge_probe_reads_a_planted_linear_target_and_not_xor():
    x, y = _planted(2)
    res = ridge_probe(x[:450], y[:450], x[450:], y[450:])
    linear, xor, rare = res["accuracy"]
    assert linear >= 0.95
    assert xor < 0.65  # XOR of two signs is not linearly separable
    # The rare target: the probe can do no better than the constant answer it reports.
    assert rare <= res["majority"][2] + 0.02
    assert set(res["lambda"]) <= {1e-2, 1.0, 1e2}


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda a: {**a, "train_y": a["train_y"] * 2}, "0/1 targets"),
        (lambda a: {**a, "test_x": a["test_x"][:, :3]}, "columns differ"),
        (lambda a: {**a, "train_y": a["train_y"][:10]}, "examples differ"),
        (lambda a: {**a, "train_x": a["train_x"][0]}, "2-D"),
        (
            lambda a: {**a, "train_x": np.where(a["train_x"] > 2, np.nan, a["train_x"])},
            "non-finite",
        ),  # fmt: skip
        (lambda a: {**a, "lambdas": (1.0, 0.0)}, "lambdas must be positive"),
        (lambda a: {**a, "val_fraction": 0.0}, "val_fraction"),
        (lambda a: {**a, "test_x": a["test_x"][:0], "test_y": a["test_y"][:0]}, "no rows"),
    ],
)
def test_ridge_probe_names_bad_input(change, says):
    x, y = _planted(3, n=100)
    args = {"train_x": x[:80], "train_y": y[:80], "test_x": x[80:], "test_y": y[80:]}
    args = change(args)
    with pytest.raises(ValueError, match=says):
        ridge_probe(**args)


def test_features_are_the_memory_after_the_last_full_window_flattened():
    cfg = tiny_config(layout=("attn", "ssm", "ssm"))
    params, window = init(cfg), 4
    tokens = random_tokens(0, 3, 3 * window + 2)  # a trailing partial window: dropped
    x = fast_weight_features(params, tokens, window, passes=2)
    _, _, fast = diagnostics.window_loop(params, tokens[:, : 3 * window], window, 2)
    want = jnp.concatenate([fast[b].reshape(3, -1) for b in cfg.ssm_blocks], axis=1)
    chex.assert_trees_all_close(x, want)
    assert x.shape == (3, sum(fast[b][0].size for b in cfg.ssm_blocks))
    # The passes change what is stored (so a probe at p = 1 and p = N can differ).
    assert not np.allclose(x, fast_weight_features(params, tokens, window, passes=1))


def test_features_refuse_a_model_without_fast_weights_and_a_short_sequence():
    tokens = random_tokens(0, 2, 8)
    with pytest.raises(ValueError, match="no ssm block"):
        fast_weight_features(init(tiny_config(layout=("attn",))), tokens, 4, passes=1)
    with pytest.raises(ValueError, match="no full window"):
        fast_weight_features(init(tiny_config()), tokens, 9, passes=1)


@pytest.mark.parametrize("t", [0, 2])
def test_probe_targets_recompute_the_tasks_answers(t):
    task = make_task("rule110", num_states=3, width=8, t_values=(t,))
    batch = task.eval_batch(0, 64)
    answers, raw = fast_weight_probe.probe_targets(task, batch.tokens, batch.targets)
    assert answers.shape == (64, 3) and raw.shape == (64, 3, 2 * t + 1)
    states = np.asarray(batch.tokens[:, :24]).reshape(64, 3, 8)
    np.testing.assert_array_equal(raw[:, :, t], states[:, :, 0])  # offset 0 is bit 0
    np.testing.assert_array_equal(raw[:, :, 0], states[:, :, -t % 8])  # offset -t wraps
    if t == 0:
        np.testing.assert_array_equal(answers, states[:, :, 0])
    corrupted = np.array(batch.targets)
    corrupted[:, 24] ^= 1
    with pytest.raises(ValueError, match="disagree"):
        fast_weight_probe.probe_targets(task, batch.tokens, corrupted)


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda c: c.task.update(t_values=(1, 2)), "one t per model"),
        (lambda c: c.task.update(probe_radius=1), "probe_radius 1"),
        (lambda c: c.task.update(boundary="zero"), "boundary 'zero'"),
        (lambda c: c.update(window=4), "window 4 != width 8"),
        (lambda c: c.update(init_from="runs/n1"), "init_from 'runs/n1' that has no checkpoints"),
        (lambda c: c.update(layout=("attn",)), "no fast weights"),
    ],
)
def test_probe_refuses_a_run_it_cannot_probe_naming_why(change, says):
    c = rule110.get_config("tiny")
    change(c)
    saved = c.to_dict()
    spec = common.resolve_saved(saved)
    with pytest.raises(ValueError, match=f"runs/x: cannot probe a run with .*{says}"):
        fast_weight_probe._check_run("runs/x", spec, saved)


def test_probe_refuses_another_task():
    saved = recall.get_config("tiny").to_dict()
    with pytest.raises(ValueError, match="task 'recall'"):
        fast_weight_probe._check_run("runs/x", common.resolve_saved(saved), saved)


@pytest.fixture(scope="module")
def tiny_rule110_run(tmp_path_factory, compilation_cache):
    """A finished 4-step Rule 110 tiny run (2 states of 8 bits, t = 1, attn + GDN)."""
    c = rule110.get_config("tiny")
    c.update(steps=4, log_every=2, eval_every=4, checkpoint_every=4, eval_size=32,
             eval_batch_size=32, batch_size=8)  # fmt: skip
    workdir = str(tmp_path_factory.mktemp("probe") / "run")
    train_and_evaluate(c, workdir)
    return workdir


@pytest.mark.slow  # trains a tiny run first (~50 s on a loaded 2-core CPU); CI runs -m slow
def test_probe_run_probes_a_trained_run_end_to_end(tiny_rule110_run):
    r = fast_weight_probe.probe_run(tiny_rule110_run, [1], size=160, n_test=40,
                                    seed_offset=1000)  # fmt: skip
    assert (r["t"], r["trained_n"]) == (1, 2)
    assert sorted(r["by_passes"]) == [1, 2]  # the trained N is always probed
    for entry in [*r["by_passes"].values(), r["untrained"]]:
        answer, bits = np.asarray(entry["answer"]), np.asarray(entry["raw_bits"])
        assert answer.shape == (2,) and bits.shape == (2, 3)
        assert np.all((answer >= 0) & (answer <= 1)) and np.all((bits >= 0) & (bits <= 1))
    assert sorted(r["model_acc"]) == ["Q1", "Q2"]
    assert all(0 <= a <= 1 for a in r["model_acc"].values())
    assert len(r["raw_input_answer"]) == 2 and all(0 <= a <= 1 for a in r["raw_input_answer"])
    json.dumps(r)  # what main writes
    text = fast_weight_probe.table([r], [1, 2])
    assert "| 1 | 2 | 0 |" in text and "answer probe p=2" in text


@pytest.mark.slow  # trains a 2-step warm start from the tiny run (~30 s); CI runs -m slow
def test_a_warm_started_run_is_probed_against_the_weights_it_began_from(tiny_rule110_run, tmp_path):
    """A warm start's control is its source's parameters at the run's N: the source's own
    probe at that N, to the last digit, on the same examples."""
    c = rule110.get_config("tiny")
    c.update(steps=2, log_every=2, eval_every=2, checkpoint_every=2, eval_size=32,
             eval_batch_size=32, batch_size=8, init_from=tiny_rule110_run)  # fmt: skip
    warm = str(tmp_path / "warm")
    train_and_evaluate(c, warm)
    kw = dict(size=160, n_test=40, seed_offset=1000)
    source = fast_weight_probe.probe_run(tiny_rule110_run, [1], **kw)
    r = fast_weight_probe.probe_run(warm, [1], **kw)
    assert (r["start"], source["start"]) == ("source", "untrained")
    assert r["untrained"] == source["by_passes"][r["trained_n"]]
    assert "(source)" in fast_weight_probe.table([r], [1, 2])


def test_the_report_shows_each_states_probe_after_the_wake_pass_and_after_n():
    # A record as probe.json holds it (pass counts as string keys after the JSON round trip).
    record = {
        "t": 6, "trained_n": 4, "seed": 3, "model_acc": {"Q1": 0.99, "Q2": 0.98},
        "majority": [0.53, 0.55],
        "by_passes": {
            "1": {"answer": [0.5, 0.6], "raw_bits": [[0.9, 0.7], [0.8, 0.8]]},
            "4": {"answer": [0.9, 0.95], "raw_bits": [[0.6, 0.6], [0.7, 0.9]]},
        },
        "untrained": {"answer": [0.52, 0.5], "raw_bits": [[0.7, 0.7], [0.7, 0.7]]},
        "raw_input_answer": [0.51, 0.53],
    }  # fmt: skip
    text = fast_weight_probe.table([json.loads(json.dumps(record))], [1, 2, 4])
    # Mean over states: p = 1 0.550, p = 2 not probed, p = 4 0.925; raw bits at p = N 0.700.
    assert "| 6 | 4 | 3 | 0.99 0.98 | 0.550 | - | 0.925 | 0.700 | 0.510 / 0.700 | 0.520 |" in text
    per_state = "| 0.99 0.98 | 0.50 0.60 | 0.90 0.95 | 0.80 0.80 | 0.60 0.80 | 0.53 0.55 |"
    assert f"| 6 | 4 | 3 {per_state}" in text


def test_the_module_imports_beside_other_experiments_that_define_the_same_flags():
    # Its flags (and depth_ladder's, which share --runs and --out) are defined only when
    # each runs as a program: pytest workers import both in one process.
    import importlib

    importlib.import_module("experiments.depth_ladder")
    importlib.reload(fast_weight_probe)


def test_the_command_rewrites_the_report_from_probe_json(tmp_path):
    record = {
        "run_dir": "runs/x", "t": 2, "trained_n": 1, "seed": 0,
        "model_acc": {"Q1": 1.0}, "majority": [0.5],
        "by_passes": {"1": {"answer": [0.97], "raw_bits": [[0.9, 0.9, 0.9]]}},
        "untrained": {"answer": [0.6], "raw_bits": [[0.8, 0.8, 0.8]]},
        "raw_input_answer": [0.55],
    }  # fmt: skip
    (tmp_path / "probe.json").write_text(json.dumps([record]))
    out = subprocess.run(
        [sys.executable, "-m", "experiments.fast_weight_probe", f"--out={tmp_path}",
         "--report_only", "--passes=1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "probe.md").read_text()
    assert text.startswith("# Fast-weight probe: runs/x")
    assert "| 2 | 1 | 0 | 1.00 | 0.970 | 0.900 | 0.600 / 0.800 | 0.550 |" in text

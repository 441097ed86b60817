"""Meta-gradient estimators (estimators.py) and their wiring into the training config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ssm_run_config

import sleep_consolidation as sc
from sleep_consolidation.tasks import make_task
from sleep_consolidation.training import estimators, optimizers, run_config, run_dir, train

WINDOW, PASSES = 4, 3
TASK = make_task("recall", num_pairs_values=(2,), num_keys=4, num_values=4, window=WINDOW,
                 num_queries=2)  # fmt: skip


def _model():
    cfg = sc.ModelConfig(
        vocab_size=TASK.vocab_size, d_model=8, num_heads=2, layout=("ssm",), mlp_ratio=1,
        rule="parametric", impl="scan",
    )  # fmt: skip
    return sc.init_params(cfg, jax.random.key(0))


def loss_fn(params, batch, grad_passes=None):
    logits = sc.forward(params, batch.tokens, WINDOW, PASSES, grad_passes=grad_passes)
    return sc.masked_cross_entropy(logits, batch.targets, batch.loss_mask)


def _theta_vec(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree.blocks[0]["mixer"]["theta"])])


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


ESTIMATOR_OPTS = {
    "full": {},
    "truncated": {"grad_passes": 1},  # checked against a hand-built last-k gradient below
    "es": {"num_pairs": 64, "sigma": 0.05},
}


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_estimators_agree_on_theta_and_each_descends():
    ests = {n: estimators.make_estimator(n, loss_fn, **o) for n, o in ESTIMATOR_OPTS.items()}
    # One program for all three: it shares the forward/backward they have in common, and
    # compiles in about half the time of three.
    every = jax.jit(lambda p, b, k: {name: est(p, b, k) for name, est in ests.items()})
    params, batch, key = _model(), TASK.batch(0, 0, 16), jax.random.key(1)
    out = every(params, batch, key)
    grads = {name: g for name, (_, g) in out.items()}
    losses = [float(loss) for loss, _ in out.values()]  # ES reports the unperturbed loss
    np.testing.assert_allclose(losses, losses[0], rtol=1e-6)
    theta = {name: _theta_vec(g) for name, g in grads.items()}
    # The rest of the ES gradient is backprop's (es_scope="theta").
    np.testing.assert_allclose(grads["es"].unembed, grads["full"].unembed, rtol=1e-6)
    cos = _cos(theta["full"], theta["es"])
    assert cos > 0.6, cos  # 0.93 with this key (64 pairs, 10 coefficients)

    # Each estimator alone drives the loss down: Adam on theta only, a fixed batch.
    tx = optax.adam(0.05)
    for name in ests:
        p = params
        theta0 = p.blocks[0]["mixer"]["theta"]
        opt = tx.init(theta0)
        losses = []
        for i in range(8):
            loss, g = every(p, batch, jax.random.fold_in(key, i))[name]
            losses.append(float(loss))
            th = p.blocks[0]["mixer"]["theta"]
            upd, opt = tx.update(g.blocks[0]["mixer"]["theta"], opt, th)
            block = {
                **p.blocks[0],
                "mixer": {**p.blocks[0]["mixer"], "theta": optax.apply_updates(th, upd)},
            }
            p = p.replace(blocks=(block,))
        assert losses[-1] < losses[0] - 0.01, (name, losses)


def _last_k_loss_by_hand(params, tokens, window, passes, k, eviction):
    """Next-token loss of the streaming loop (wake_step / sleep_step / evict, not the
    `forward` code) with each window's gradient cut to its last k sleep passes by hand: the
    first passes-1-k sleep passes run on stop-gradient params and state, and the fast weights
    leaving them are `S_start + stop_gradient(S - S_start)` (straight through to the
    window's incoming fast weights), as `sequence.window_step` describes.

    The attention prefix that sliding eviction carries in from the previous window is not
    part of the window's state in `forward` (it is closed over), so it stays differentiable
    in every pass, the frozen ones included; the reference does the same (with the prefix
    frozen too the gradients differ by 0.3% in the sliding case below)."""
    sg = jax.lax.stop_gradient
    B, T = tokens.shape
    state = sc.init_state(params.config, B, window, eviction=eviction)
    n_free = passes - 1 - k
    logits = []
    for t in range(T):
        state, lg = sc.wake_step(params, state, tokens[:, t])
        logits.append(lg)
        if (t + 1) % window or t == T - 1:  # `forward` consolidates windows with a successor
            continue
        if n_free > 0:
            prefix = state.prefix
            frozen, frozen_params = sg(state).replace(prefix=prefix), sg(params)
            for _ in range(n_free):
                frozen = sc.sleep_step(frozen_params, frozen)
            start = state.fast_at_window_start
            fast = {b: start[b] + sg(frozen.fast[b] - start[b]) for b in start}
            state = frozen.replace(fast=fast, fast_at_window_start=start, prefix=prefix)
        for _ in range(passes - 1 - max(n_free, 0)):
            state = sc.sleep_step(params, state)
        state = sc.evict(state)
    return _next_token_loss(jnp.stack(logits, 1), tokens)


def _next_token_loss(logits, tokens):
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))


@pytest.mark.parametrize(
    "layout,passes,k,eviction",
    [
        pytest.param(("ssm",), 3, 1, "hard", marks=pytest.mark.slow),
        pytest.param(("attn", "ssm"), 4, 2, "sliding", marks=pytest.mark.slow),
        pytest.param(("attn", "ssm"), 4, 1, "hard", marks=pytest.mark.slow),
    ],
)
def test_truncated_gradient_is_the_last_k_gradient(layout, passes, k, eviction):
    # 2 consolidated windows and a third one read, so the straight-through path to the
    # incoming fast weights (nonzero in the second window) is exercised too.
    window, T = 2, 6
    cfg = sc.ModelConfig(vocab_size=7, d_model=8, num_heads=2, layout=layout, mlp_ratio=1)
    params = sc.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, T), 0, 7)

    def loss(p, toks, grad_passes=None):
        logits = sc.forward(p, toks, window, passes, grad_passes=grad_passes, eviction=eviction)
        return _next_token_loss(logits, toks)

    est = {n: estimators.make_estimator(n, loss, grad_passes=g) for n, g in
           (("truncated", k), ("full", None))}  # fmt: skip
    hand = jax.grad(_last_k_loss_by_hand)
    every = jax.jit(  # one program: compiles faster than three
        lambda p, t: (*(e(p, t)[1] for e in est.values()), hand(p, t, window, passes, k, eviction))
    )
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
    trunc, full, want = map(flat, every(params, tokens))
    scale = np.linalg.norm(want)
    assert np.linalg.norm(trunc - want) < 1e-4 * scale, np.linalg.norm(trunc - want) / scale
    # ... and the check can tell truncation apart from full backprop (0.1 to 0.3 here).
    assert np.linalg.norm(full - want) > 0.03 * scale, np.linalg.norm(full - want) / scale


def test_es_matches_the_known_gradient_of_a_quadratic_in_scale_and_direction():
    # f(p) = 0.5 (x - c)^T A (x - c) over x = (w, theta.b) flattened: gradient A (x - c).
    # On a quadratic the antithetic difference is exactly 2 sigma eps^T g, so the estimate
    # is (1/P) sum eps eps^T g: unbiased, relative error about sqrt((d + 1) / P) = 0.05.
    d, pairs = 10, 4096
    m = jax.random.normal(jax.random.key(0), (d, d))
    a = m @ m.T / d + jnp.eye(d)
    c = jax.random.normal(jax.random.key(1), (d,))
    params = {"w": jnp.ones((6,)), "theta": {"b": jnp.full((4,), -0.5)}}

    def quad(p, batch=None):
        x = jnp.concatenate([p["w"], p["theta"]["b"]]) - c
        return 0.5 * x @ a @ x

    flat = lambda t: np.concatenate([np.ravel(t["w"]), np.ravel(t["theta"]["b"])])
    exact = flat(jax.grad(quad)(params))
    for scope in ("all", "theta"):
        es = estimators.make_estimator("es", quad, num_pairs=pairs, sigma=0.1, es_scope=scope)
        g = flat(jax.jit(es)(params, None, jax.random.key(2))[1])
        part = slice(0, d) if scope == "all" else slice(6, d)  # the ES-estimated leaves
        err = np.linalg.norm(g[part] - exact[part]) / np.linalg.norm(exact[part])
        ratio = np.linalg.norm(g[part]) / np.linalg.norm(exact[part])
        assert err < 0.15 and abs(ratio - 1) < 0.1, (scope, err, ratio)
        if scope == "theta":  # the rest is backprop's, exactly
            np.testing.assert_allclose(g[:6], exact[:6], rtol=1e-5)


def test_es_on_everything_follows_the_gradient_of_a_quadratic():
    x = jax.random.normal(jax.random.key(0), (5, 3))
    target = jax.random.normal(jax.random.key(1), (5,))
    params = {"w": jnp.ones((3,)), "theta": {"b": jnp.zeros(())}}

    def quad(p, batch):
        return jnp.mean((batch @ p["w"] + p["theta"]["b"] - target) ** 2)

    es = jax.jit(estimators.make_estimator("es", quad, num_pairs=256, sigma=0.01, es_scope="all"))
    exact = jax.grad(quad)(params, x)
    loss, g = es(params, x, jax.random.key(2))
    flat = lambda t: np.concatenate([np.ravel(v) for v in jax.tree.leaves(t)])
    assert _cos(flat(g), flat(exact)) > 0.9
    np.testing.assert_allclose(loss, quad(params, x))
    # Chunked evaluation (lax.map) gives the same estimate as one vmap.
    chunked = estimators.make_estimator(
        "es", quad, num_pairs=256, sigma=0.01, es_scope="all", es_batch_size=64
    )
    np.testing.assert_allclose(flat(chunked(params, x, jax.random.key(2))[1]), flat(g), rtol=1e-4)
    tx, opt, losses = optax.sgd(0.1), None, []
    opt = tx.init(params)
    for i in range(20):
        loss, g = es(params, x, jax.random.key(10 + i))
        losses.append(float(loss))
        upd, opt = tx.update(g, opt)
        params = optax.apply_updates(params, upd)
    assert losses[-1] < 0.5 * losses[0], losses


def test_estimator_options_are_validated():
    f = lambda p, b: jnp.sum(p["w"] ** 2)
    with pytest.raises(ValueError, match="one of"):
        estimators.make_estimator("pes", f)
    with pytest.raises(ValueError, match="truncated"):
        estimators.make_estimator("full", f, grad_passes=2)
    with pytest.raises(ValueError, match="grad_passes"):
        estimators.make_estimator("truncated", f)
    with pytest.raises(ValueError, match="es_scope"):
        estimators.make_estimator("es", f, es_scope="rest")
    with pytest.raises(ValueError, match="sigma"):
        estimators.make_estimator("es", f, sigma=0.0)
    with pytest.raises(ValueError, match="no backprop"):
        estimators.make_estimator("es", f, es_scope="all", grad_passes=1)
    es = estimators.make_estimator("es", f)  # theta scope, but no theta leaf
    with pytest.raises(ValueError, match="nothing to perturb"):
        es({"w": jnp.ones(2)}, None, jax.random.key(0))


def test_theta_learning_rate_gets_its_own_label():
    params = _model()
    labels = jax.tree.leaves(optimizers.optimizer_labels(params, "muon"))
    assert labels.count("theta") == 5 and "muon" in labels
    assert set(jax.tree.leaves(optimizers.optimizer_labels(params, "adamw"))) == {"adamw", "theta"}
    for name in ("muon", "adamw"):  # one state structure whatever theta_learning_rate is
        a, b = (
            optimizers.make_optimizer(name, theta_learning_rate=lr).init(params)
            for lr in (None, 1.0)
        )
        assert jax.tree.structure(a) == jax.tree.structure(b)
    ones = jax.tree.map(jnp.ones_like, params)
    sizes = {}
    for lr in (None, 0.1):  # Adam's first step moves each leaf by its learning rate
        tx = optimizers.make_optimizer("muon", theta_learning_rate=lr)
        upd, _ = jax.jit(tx.update)(ones, tx.init(params), params)
        sizes[lr] = float(jnp.abs(upd.blocks[0]["mixer"]["theta"]["decay"]).max())
    np.testing.assert_allclose(sizes[0.1], 0.1, rtol=1e-3)
    np.testing.assert_allclose(sizes[None], 5e-5, rtol=1e-3)  # adam_learning_rate


def _tiny_config(**overrides):
    run = dict(batch_size=8, steps=4, log_every=2, eval_every=2, eval_size=16, checkpoint_every=4)
    return ssm_run_config(**{**run, **overrides})


def test_config_validates_estimator_fields():
    for bad, match in [
        ({"estimator": "pes"}, "estimator"),
        ({"grad_passes": 1}, "truncated"),
        ({"estimator": "truncated"}, "grad_passes"),
        ({"es_pairs": 0}, "es_pairs"),
        ({"es_sigma": -1.0}, "es_sigma"),
        ({"es_scope": "x"}, "es_scope"),
        ({"theta_learning_rate": 0.0}, "theta_learning_rate"),
        ({"rule_module": "no_such_module_xyz"}, "rule_module"),
    ]:
        with pytest.raises(ValueError, match=match):
            run_config.resolve_config(_tiny_config(**bad))
    run_config.resolve_config(_tiny_config(estimator="truncated", grad_passes=1))
    run_config.resolve_config(_tiny_config(estimator="es", grad_passes=1))


@pytest.mark.slow  # heavy (subprocesses / training); CI runs it with -m slow
def test_train_with_es_logs_theta(tmp_path):
    # ES on everything: forward evaluations only (and a small program to compile).
    c = _tiny_config(
        rule="parametric", estimator="es", es_scope="all", es_pairs=2, theta_learning_rate=0.05
    )
    summary = train.train_and_evaluate(c, str(tmp_path))
    assert summary["status"] == "completed"
    lines = [json.loads(ln) for ln in open(tmp_path / run_dir.THETA_FILE)]
    assert [ln["step"] for ln in lines] == [0, 2, 4]
    first, last = lines[0]["layers"][0], lines[-1]["layers"][0]
    assert first["block"] == 0 and first["nearest"] == "hebbian"
    moved = np.abs(np.subtract(last["coefficients"]["decay"], first["coefficients"]["decay"]))
    assert moved.max() > 0.05  # 4 Adam steps at 0.05 (ES noise sets the direction)


def test_rule_module_imports_a_custom_rule(tmp_path):
    # A fresh process (the rule registry is global) run outside the repo, as the CLI would.
    code = (
        "from experiments.configs import recall\n"
        "from sleep_consolidation.training import run_config\n"
        "c = recall.get_config('tiny'); c.rule = 'oja'\n"
        "try:\n    run_config.resolve_config(c)\n"
        "except ValueError as e:\n    print('refused:', e)\n"
        "c.rule_module = 'examples.custom_rule'\n"
        "print('rule:', run_config.resolve_config(c).model_config.rule)\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "oja" in out.stdout.split("refused:")[1].split("\n")[0]
    assert "rule: oja" in out.stdout


@pytest.mark.slow  # two fresh processes and a short training run
def test_load_params_of_a_custom_rule_run_imports_its_module(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    wd = str(tmp_path / "oja")
    train_code = (
        "from experiments.configs import recall\n"
        "from sleep_consolidation.training import train\n"
        "c = recall.get_config('tiny')\n"
        "c.update(rule='oja', rule_module='examples.custom_rule', steps=1, eval_every=1,"
        " checkpoint_every=1, eval_size=32)\n"
        f"train.train_and_evaluate(c, {wd!r})\n"
    )
    load_code = (  # a process that never imported examples.custom_rule
        "from sleep_consolidation.training import checkpointing\n"
        f"print('rule:', checkpointing.load_params({wd!r}).config.rule)\n"
    )
    for code in (train_code, load_code):
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
    assert "rule: oja" in out.stdout

"""Bad input is refused on the host with a ValueError naming the field, before anything is
compiled; the one fault that cannot be seen on the host (a full window written inside jit)
gives NaN logits instead of a silently wrong result."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ssm_run_config, tiny_config

import sleep_consolidation as sc
from sleep_consolidation.state import check_state
from sleep_consolidation.training import run_config, train_step

CFG = sc.ModelConfig(vocab_size=7, d_model=8, num_heads=2, layout=("attn", "ssm"), mlp_ratio=1)
B, L = 2, 3


@pytest.fixture(scope="module")
def params():
    return sc.init_params(CFG, jax.random.key(0))


# ---------------------------------------------------------------------------------------
# ModelConfig and the run config
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -1.0, -10000, math.inf, -math.inf, math.nan, True, "1e4"])
def test_rope_base_must_be_finite_and_positive(bad):
    with pytest.raises(ValueError, match="rope_base"):
        sc.ModelConfig(vocab_size=7, d_model=8, num_heads=2, rope_base=bad)
    if isinstance(bad, float | int) and not isinstance(bad, bool):  # ConfigDict casts the rest
        with pytest.raises(ValueError, match="invalid config: rope_base"):
            run_config.resolve_config(ssm_run_config(rope_base=float(bad)))


def test_rope_base_accepts_positive_numbers():
    assert sc.ModelConfig(vocab_size=7, d_model=8, num_heads=2, rope_base=500).rope_base == 500


FLOAT_FIELDS = ["learning_rate", "adam_learning_rate", "theta_learning_rate", "min_lr_ratio",
                "clip_norm", "weight_decay", "es_sigma"]  # fmt: skip


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_in_the_run_config_are_refused(field, bad):
    with pytest.raises(ValueError, match=rf"invalid config: {field} must be a finite number"):
        run_config.resolve_config(ssm_run_config(**{field: bad}))


def test_the_run_config_floats_accept_finite_values():
    run_config.resolve_config(ssm_run_config(learning_rate=1e3, weight_decay=1e6, clip_norm=0.0))


def test_grad_passes_beyond_passes_is_refused_in_the_run_config():
    with pytest.raises(ValueError, match=r"grad_passes=3 exceeds passes=2"):
        run_config.resolve_config(ssm_run_config(passes=2, estimator="truncated", grad_passes=3))
    with pytest.raises(ValueError, match=r"grad_passes=2 exceeds passes=1"):
        run_config.resolve_config(ssm_run_config(passes=1, estimator="es", grad_passes=2))
    run_config.resolve_config(ssm_run_config(passes=2, estimator="truncated", grad_passes=2))


def test_grad_passes_beyond_passes_is_refused_by_forward_and_make_train_step(params):
    tokens = jnp.zeros((B, 2 * L), jnp.int32)
    with pytest.raises(ValueError, match=r"grad_passes=4 exceeds passes=3"):
        sc.forward(params, tokens, window=L, passes=3, grad_passes=4)
    with pytest.raises(ValueError, match=r"grad_passes"):
        sc.forward(params, tokens, window=L, passes=3, grad_passes=0)
    with pytest.raises(ValueError, match=r"grad_passes=2 exceeds passes=1"):
        train_step.make_train_step(optax.sgd(0.1), window=L, passes=1, grad_passes=2)
    train_step.make_train_step(optax.sgd(0.1), window=L, passes=2, grad_passes=2)  # k = N is fine


# ---------------------------------------------------------------------------------------
# A MemoryState that does not fit the model
# ---------------------------------------------------------------------------------------


def _other(**kw):
    fields = dict(vocab_size=7, d_model=8, num_heads=2, layout=("attn", "ssm"), mlp_ratio=1)
    return sc.ModelConfig(**{**fields, **kw})


MISFITS = {  # a state built for another config -> the field the message names
    "heads": (lambda: sc.init_state(_other(num_heads=4), B, L), r"state\.fast\[1\] has shape"),
    "head_dim": (lambda: sc.init_state(_other(head_dim=2), B, L), r"state\.fast\[1\] has shape"),
    "d_model": (lambda: sc.init_state(_other(d_model=16), B, L), r"state\.features has d_model"),
    "conv_size": (lambda: sc.init_state(_other(conv_size=2), B, L), r"state\.conv\[1\]"),
    "rope_base": (lambda: sc.init_state(_other(rope_base=99.0), B, L), r"state\.rope_base"),
    "missing ssm layer": (
        lambda: sc.init_state(_other(layout=("attn",)), B, L),
        r"state\.fast has blocks \[\] but the model's ssm blocks are \(1,\)",
    ),
    "extra attn layer": (
        lambda: sc.init_state(_other(layout=("attn", "ssm", "attn")), B, L),
        r"state\.kv has blocks \[0, 2\] but the model's attn blocks are \(0,\)",
    ),
}


@pytest.mark.parametrize("what", sorted(MISFITS))
def test_a_state_of_another_config_is_refused_naming_the_field(params, what):
    make, match = MISFITS[what]
    state, tok = make(), jnp.zeros((B,), jnp.int32)
    with pytest.raises(ValueError, match=rf"wake_step: {match}"):
        sc.wake_step(params, state, tok)
    with pytest.raises(ValueError, match=rf"sleep_step: {match}"):
        sc.sleep_step(params, state)
    with pytest.raises(ValueError, match=rf"stream: {match}"):
        sc.stream(params, state, jnp.zeros((B, 2), jnp.int32))


def _replace_block(state, field, block, new_leaf):
    return state.replace(**{field: {**getattr(state, field), block: new_leaf}})


def test_a_state_whose_arrays_disagree_is_refused_by_every_step(params):
    good = sc.init_state(CFG, B, L)
    check_state(good, CFG)
    check_state(good)
    k = good.kv[0][0]
    bad = {
        "fast[1]": _replace_block(good, "fast", 1, jnp.zeros((B + 1, 2, 4, 4))),  # other batch
        "fast_at_window_start[1]": _replace_block(
            good, "fast_at_window_start", 1, jnp.zeros((B, 2, 4, 5))
        ),
        "kv[0][0]": _replace_block(good, "kv", 0, (jnp.zeros((B, L + 1, 2, 4)), k)),  # window
        "kv[0][1]": _replace_block(good, "kv", 0, (k, jnp.zeros((B, L, 2, 4, 1)))),
        "loop_input": good.replace(loop_input=jnp.zeros((B, L + 2, 8))),
        "prefix[0][2]": _replace_block(
            good,
            "prefix",
            0,
            (*good.prefix[0][:2], jnp.zeros((L - 1,), bool)),  # sliding's P
        ),
        "pos": good.replace(pos=jnp.zeros((B,), jnp.int32)),
        "conv has blocks []": good.replace(conv={}),
        "fast must be a dict": good.replace(fast=(good.fast[1],)),  # the old tuple form
    }
    tok = jnp.zeros((B,), jnp.int32)
    for field, state in bad.items():
        pat = rf"state\.{re.escape(field)}"
        with pytest.raises(ValueError, match=rf"wake_step: {pat}"):
            sc.wake_step(params, state, tok)
        with pytest.raises(ValueError, match=rf"sleep_step: {pat}"):
            sc.sleep_step(params, state)
        with pytest.raises(ValueError, match=rf"evict: {pat}"):
            sc.evict(state)
    with pytest.raises(ValueError, match="must be a MemoryState"):
        sc.evict({"fast": ()})


def test_a_sliding_state_keeps_its_prefix_length(params):
    sliding = sc.init_state(CFG, B, L, eviction="sliding")
    check_state(sliding, CFG)
    keys, values, _ = sliding.prefix[0]
    hard_prefix = _replace_block(sliding, "prefix", 0, (keys, values, jnp.zeros((0,), bool)))
    want = r"state\.prefix\[0\]\[2\] has shape \(0,\), expected \(2,\)"
    with pytest.raises(ValueError, match=want):
        sc.evict(hard_prefix)


def test_a_state_of_another_batch_is_refused(params):
    state = sc.init_state(CFG, B + 1, L)
    with pytest.raises(ValueError, match=r"tokens has batch 2 but the state has 3"):
        sc.wake_step(params, state, jnp.zeros((B,), jnp.int32))
    with pytest.raises(ValueError, match=r"tokens has batch 2 but the state has 3"):
        sc.stream(params, state, jnp.zeros((B, 2), jnp.int32))


def test_the_state_checks_run_at_trace_time_under_jit(params):
    state = sc.init_state(_other(num_heads=4), B, L)
    with pytest.raises(ValueError, match=r"wake_step: state\.fast\[1\]"):
        jax.jit(sc.wake_step)(params, state, jnp.zeros((B,), jnp.int32))


# ---------------------------------------------------------------------------------------
# A full window written inside jit
# ---------------------------------------------------------------------------------------


def test_writing_a_full_window_inside_jit_gives_nan_logits(params):
    wake = jax.jit(sc.wake_step)
    state = sc.init_state(CFG, B, L)
    tok = jnp.ones((B,), jnp.int32)
    for _ in range(L):
        state, logits = wake(params, state, tok)
        assert np.isfinite(np.asarray(logits)).all()
    assert bool(sc.window_full(state))
    with pytest.raises(ValueError, match="full window"):  # on the host: refused
        sc.wake_step(params, state, tok)
    _, logits = wake(params, state, tok)  # inside jit: cannot be refused, so NaN
    assert np.isnan(np.asarray(logits)).all()
    after = sc.evict(sc.sleep_step(params, state))  # sleeping and evicting recovers
    _, logits = wake(params, after, tok)
    assert np.isfinite(np.asarray(logits)).all()


def test_out_of_range_ids_inside_jit_give_nan_on_both_sides():
    params = sc.init_params(tiny_config(layout=("attn", "ssm")), jax.random.key(0))
    emb = jax.jit(sc.model.embed)(params, jnp.array([[-1, 0, 10, 11, -11]]))
    nan = jnp.isnan(emb).all(-1)[0]
    assert nan.tolist() == [True, False, False, True, True]


def test_a_schedule_is_taken_one_way_by_every_entry_point(params):
    """`schedule=` or its fields as keywords, not both; unknown fields are named."""
    from sleep_consolidation.analysis import diagnostics
    from sleep_consolidation.tasks import make_task
    from sleep_consolidation.training import evaluation

    toks = jnp.zeros((B, 2 * L), jnp.int32)
    task = make_task("recall")
    calls = {
        "forward": lambda **kw: sc.forward(params, toks, L, 2, **kw),
        "init_state": lambda **kw: sc.init_state(CFG, batch_size=B, window=L, **kw),
        "window_loop": lambda **kw: diagnostics.window_loop(params, toks, L, 2, **kw),
        "fast_weight_change_per_pass": lambda **kw: diagnostics.fast_weight_change_per_pass(
            params, toks, L, 2, **kw
        ),
        "evaluate": lambda **kw: evaluation.evaluate(params, task, task.eval_batch(0, 2), **kw),
        "make_train_step": lambda **kw: sc.make_train_step(
            optax.sgd(0.1), window=L, passes=2, **kw
        ),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match="not both"):
            call(schedule=sc.Schedule(), eviction="sliding")
        with pytest.raises(ValueError, match=r"unknown keyword\(s\) evicton"):
            call(evicton="sliding")
        with pytest.raises(ValueError, match="must be a Schedule"):
            call(schedule={"eviction": "sliding"})
    assert sc.init_state(CFG, B, L, eviction="sliding").schedule == sc.Schedule("sliding")


# ---------------------------------------------------------------------------------------
# A window under which sleep never runs
# ---------------------------------------------------------------------------------------


def test_a_window_with_no_full_window_before_the_answers_is_refused():
    """recall tiny: 16 tokens, answers at 12..15. window=1000 (or 16: the first window
    would end after the last answer) never consolidates anything before an answer, so
    passes=1 and passes=2 would train the same model."""
    from experiments.configs import recall

    for window in (1000, 16):
        c = recall.get_config("tiny")
        c.window = window
        with pytest.raises(
            ValueError,
            match=rf"window={window} leaves no full window before "
            r"the answers: sequence length 16, answers at positions 12\.\.15",
        ):
            run_config.resolve_config(c)
    c = recall.get_config("tiny")
    c.window = 15  # the answer at 15 follows a consolidated window: allowed
    run_config.resolve_config(c)


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_forward_and_evaluate_refuse_sleep_that_cannot_reach_an_output(params):
    toks = jnp.zeros((B, 2 * L), jnp.int32)
    with pytest.raises(ValueError, match=r"window=6 leaves no full window before the outputs: "
                       r"sequence length 6, outputs at positions 0\.\.5"):  # fmt: skip
        sc.forward(params, toks, 2 * L, 2)
    assert sc.forward(params, toks, 2 * L, 1).shape == (B, 2 * L, CFG.vocab_size)  # N = 1
    # return_fast consolidates a last full window: its fast weights do see sleep, allowed.
    logits, fast = sc.forward(params, toks, 2 * L, 2, return_fast=True)
    assert logits.shape == (B, 2 * L, CFG.vocab_size) and len(fast) == len(CFG.ssm_blocks)
    with pytest.raises(ValueError, match=r"leaves no full window before the outputs"):
        sc.forward(params, toks[:, :-1], 2 * L, 2, return_fast=True)  # never fills: refused
    # Early positions of a sequence that does sleep: the caller's choice, allowed.
    assert sc.forward(params, toks, L, 2, positions=(0, 2)).shape == (B, 2, CFG.vocab_size)
    # evaluate knows the task's answers: recall tiny answers at 12..15 of 16 tokens.
    from experiments.configs import recall
    from sleep_consolidation.training import evaluation

    spec = run_config.resolve_config(recall.get_config("tiny"))
    model = sc.init_params(spec.model_config, jax.random.key(0))
    batch = spec.task.eval_batch(0, 2)
    with pytest.raises(ValueError, match=r"window=16 leaves no full window before the answers"):
        evaluation.evaluate(model, spec.task, batch, window=16, passes=2)
    evaluation.evaluate(model, spec.task, batch, window=16, passes=1)  # N = 1: plain hybrid


# ---------------------------------------------------------------------------------------
# Absurd values and sizes; ids of any width; a model of another task
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["learning_rate", "adam_learning_rate", "theta_learning_rate"])
def test_an_absurd_learning_rate_is_refused(field):
    # 1e39 is Inf in float32: the first update would write non-finite parameters.
    with pytest.raises(ValueError, match=rf"invalid config: {field} must be a finite number "
                       r"in \(0.0, 1000.0\], got 1e\+39"):  # fmt: skip
        run_config.resolve_config(ssm_run_config(**{field: 1e39}))


def test_sizes_known_to_exceed_the_machine_are_refused_before_compiling(monkeypatch):
    from experiments.configs import recall
    from sleep_consolidation.training import run_config

    c = recall.get_config("tiny")
    c.batch_size = 100_000_000  # 411 GiB at least: more than any machine this runs on
    message = (r"batch_size=100000000 needs at least 411\.\d GiB \(sequence length 16, "
               r"d_model 32\), more than this machine's")  # fmt: skip
    with pytest.raises(ValueError, match=message):
        run_config.resolve_config(c)
    monkeypatch.setattr(run_config, "host_memory_bytes", lambda: 16 * 2**30)
    c = recall.get_config("tiny")
    c.eval_size = 100_000_000  # 60 GiB at least
    with pytest.raises(ValueError, match=r"eval_size=100000000 needs at least .* 16\.0 GiB"):
        run_config.resolve_config(c)
    c.eval_size = 100_000  # 60 MiB
    run_config.resolve_config(c)


def test_wide_out_of_range_ids_inside_jit_give_nan():
    params = sc.init_params(tiny_config(layout=("attn", "ssm")), jax.random.key(0))
    with jax.enable_x64(True):
        ids = jnp.array([[2**32 + 3, -(2**32) + 3, 3]], jnp.int64)
        emb = jax.jit(sc.model.embed)(params, ids)
    assert jnp.isnan(emb).all(-1)[0].tolist() == [True, True, False]
    emb = jax.jit(sc.model.embed)(params, jnp.array([[2**31 + 3, 3]], jnp.uint32))
    assert jnp.isnan(emb).all(-1)[0].tolist() == [True, False]
    # Without x64, JAX itself narrows an int64 host array at the jit boundary, before any
    # library code runs: the host-side entry points check the ids first.
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 11\)"):
        sc.forward(params, np.array([[2**32 + 3, 1]], np.int64), 2)


def test_evaluate_refuses_a_model_of_another_vocabulary(params):
    from sleep_consolidation.tasks import make_task
    from sleep_consolidation.training import evaluation

    task = make_task("recall", num_keys=4, num_values=4, num_pairs_values=(2,), window=4,
                     num_queries=2)  # fmt: skip
    assert task.vocab_size != CFG.vocab_size
    with pytest.raises(ValueError, match=rf"model's vocab_size {CFG.vocab_size} differs from "
                       rf"task recall's vocab_size {task.vocab_size}"):  # fmt: skip
        evaluation.evaluate(params, task, task.eval_batch(0, 2))


def test_traced_window_or_passes_says_to_mark_them_static(params):
    tokens = jnp.zeros((B, 2 * L), jnp.int32)
    with pytest.raises(TypeError, match=r"'window', 'passes' got a traced value.*static_argnames"):
        jax.jit(sc.forward)(params, tokens, L, 2)
    with pytest.raises(TypeError, match=r"'passes' got a traced value"):
        jax.jit(sc.forward, static_argnames="window")(params, tokens, window=L, passes=2)
    fwd = jax.jit(sc.forward, static_argnames=("window", "passes"))
    assert fwd(params, tokens, window=L, passes=2).shape == (B, 2 * L, CFG.vocab_size)

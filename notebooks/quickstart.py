# %% [markdown]
# # Quickstart: wake, sleep, evict — by hand, then trained
#
# A small hybrid model (one attention block, one fast-weight block with the Gated DeltaNet
# rule) reads a stream in windows of `L` tokens. When a window is full it **sleeps**: `N-1`
# extra passes over the window it holds rewrite the fast weights `S`; then the window is
# evicted and only `S` carries on. This notebook
#
# 1. streams tokens through `wake_step` and calls `sleep_step` by hand, plotting how much
#    each sleep pass changes `S`;
# 2. checks that the streaming loop computes what the training form `forward` computes;
# 3. trains the model for a few hundred steps on associative recall with the library's
#    `make_train_step`;
# 4. asks the diagnostics whether consolidation helps: `memory_conditions` (accuracy with
#    real, zeroed and wrong memory) and the recall cosine of the evicted window per pass.
#
# Runs on a CPU in about a minute. This file is the source of `quickstart.ipynb`
# (`python notebooks/build_notebook.py`).

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import sleep_consolidation as sc
from experiments import plots
from sleep_consolidation.analysis import diagnostics
from sleep_consolidation.tasks import make_task

t_start = time.time()
print("JAX", jax.__version__, "on", jax.devices())

# %% [markdown]
# ## A small model and a task
#
# Associative recall: `n` key-value pairs fill the first window and are evicted before the
# queries in the second window, so the answers can only come from the fast weights.

# %%
task = make_task(
    "recall", num_pairs_values=(2, 4), num_keys=8, num_values=8, window=8, num_queries=4
)
L, N = task.window, 3  # window length, passes (wake + 2 sleep passes)
cfg = sc.ModelConfig(
    vocab_size=task.vocab_size,
    d_model=32,
    num_heads=2,
    layout=("attn", "ssm"),
    rule="gated_delta",
    mlp_ratio=2,
    impl="scan",
)
params = sc.init_params(cfg, jax.random.key(0))
batch = task.batch(seed=0, step=0, batch_size=8)
print("tokens", batch.tokens.shape, "example:", np.asarray(batch.tokens[0]))

# %% [markdown]
# ## Streaming by hand
#
# `wake_step` reads one token (one pass, one prediction). When `window_full(state)`, we call
# `sleep_step` `N-1` times ourselves and record the relative change of `S` per pass, then
# `evict`. The state keeps per-block arrays in dicts keyed by block index: `state.fast[b]` is
# the fast-weight matrix S of ssm block `b` (`params.config.ssm_blocks` lists them).

# %%
wake, sleep, evict = jax.jit(sc.wake_step), jax.jit(sc.sleep_step), jax.jit(sc.evict)


ssm = params.config.ssm_blocks[0]  # the (first) fast-weight block


def stream(params, tokens, passes):
    state = sc.init_state(params.config, batch_size=tokens.shape[0], window=L)
    logits, changes = [], []
    for t in range(tokens.shape[1]):
        state, logits_t = wake(params, state, tokens[:, t])
        logits.append(logits_t)
        if sc.window_full(state):
            per_pass = []
            for _ in range(passes - 1):
                before = state.fast[ssm]
                state = sleep(params, state)
                per_pass.append(
                    float(jnp.linalg.norm(state.fast[ssm] - before) / jnp.linalg.norm(before))
                )
            changes.append(per_pass)
            state = evict(state)
    return jnp.stack(logits, axis=1), np.array(changes), state


logits_stream, changes, state = stream(params, batch.tokens, N)
print(f"fast weights S of block {ssm}:", state.fast[ssm].shape, "(batch, heads, d_k, d_v)")
print("relative change of S per sleep pass, per window:\n", changes.round(4))

# %%
fig, ax = plt.subplots(figsize=(4, 3))
for w, row in enumerate(changes):
    ax.plot(range(2, N + 1), row, marker="o", label=f"window {w}")
ax.set_xlabel("pass")
ax.set_ylabel("||S_after - S_before|| / ||S_before||")
ax.set_title("fast-weight change per sleep pass (init)")
ax.set_xticks(range(2, N + 1))
ax.legend()
plt.show()

# %% [markdown]
# The training form `forward` runs the same computation a window at a time (and can be
# differentiated end to end). Both agree to float32 tolerance:

# %%
logits_fwd = sc.forward(params, batch.tokens, window=L, passes=N)
print("max |stream - forward| =", float(jnp.max(jnp.abs(logits_stream - logits_fwd))))

# %% [markdown]
# ## Training a few steps
#
# `make_train_step` builds a jitted `train_step(state, batch)`: masked cross-entropy on the
# answers, gradients through every pass of every window (the `full` estimator), an optax
# update. Every step draws a fresh batch `task.batch(seed, step, B)`.

# %%
tx = sc.make_optimizer("adamw", learning_rate=3e-3)
train_state = sc.init_train_state(params, tx)
train_step = sc.make_train_step(tx, window=L, passes=N)
losses = []
t0 = time.time()
for step in range(300):
    train_state, metrics = train_step(train_state, task.batch(0, step, 32))
    losses.append(float(metrics["loss"]))
print(f"300 steps in {time.time() - t0:.1f} s; loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.3f}")
trained = train_state.params

fig, ax = plt.subplots(figsize=(4, 3))
ax.plot(losses)
ax.set_xlabel("step")
ax.set_ylabel("answer cross-entropy")
plt.show()

# %% [markdown]
# ## Does consolidation help? Diagnostics
#
# `memory_conditions` scores the trained model with its real memory (`trained_N`), without
# sleep (`no_sleep`, N=1), with the fast weights zeroed at every window boundary
# (`no_memory`) and with another example's memory (`wrong_memory`). A flag is raised
# wherever consolidated memory scores worse than no memory at all.

# %%
eval_batch = task.eval_batch(0, 256)
results, flags = diagnostics.memory_conditions(trained, eval_batch, task.depths, L, N)
keys = ["acc"] + [f"acc/d={d}" for d in task.depths]
print(f"{'condition':14s}" + "".join(f"{k:>10s}" for k in keys))
for cond, m in results.items():
    print(f"{cond:14s}" + "".join(f"{m[k]:10.3f}" for k in keys))
print("flags:", flags or "none")

# %% [markdown]
# How well do the fast weights alone store the window they consolidated? For each pass,
# the read-out `S^T k_t` of every key the window wrote is compared with its value `v_t`
# (cosine); the right panel is the change of `S` per sleep pass, now after training.

# %%
recall = diagnostics.recall_of_evicted_window(trained, eval_batch.tokens[:64], L, N)
print("recall cosine after pass 1..N (window 0):", np.asarray(recall["cosine"][0, :, 0]).round(3))
print(f"notebook ran in {time.time() - t_start:.0f} s")
plots.plot_consolidation(recall)  # a Figure: the notebook shows it

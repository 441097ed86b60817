"""Streaming demo: a random-init hybrid model reads a stream in windows, sleeps, evicts.

    python -m experiments.demo --windows=4 --window=64 --passes=4

Prints the per-token wake latency (median over the stream, jitted `wake_step`) and, for
every sleep pass, how much it changed each fast-weight layer (relative Frobenius norm).
No training happens here; see `experiments/train.py` for that.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import sleep_consolidation as sc

_WINDOWS = flags.DEFINE_integer("windows", 3, "windows to stream")
_WINDOW = flags.DEFINE_integer("window", 32, "window length L")
_PASSES = flags.DEFINE_integer("passes", 4, "passes N (N-1 sleep passes per window)")
_RULE = flags.DEFINE_string("rule", "gated_delta", "local rule")
_EVICTION = flags.DEFINE_enum("eviction", "hard", ["hard", "sliding"], "eviction mode")
_D_MODEL = flags.DEFINE_integer("d_model", 64, "model width")
_SEED = flags.DEFINE_integer("seed", 0, "seed")


def main(argv):
    del argv
    cfg = sc.ModelConfig(vocab_size=32, d_model=_D_MODEL.value, num_heads=2, rule=_RULE.value)
    params = sc.init_params(cfg, jax.random.key(_SEED.value))
    L, N = _WINDOW.value, _PASSES.value
    tokens = jax.random.randint(jax.random.key(_SEED.value + 1), (1, _WINDOWS.value * L), 0, 32)
    state = sc.init_state(cfg, batch_size=1, window=L, eviction=_EVICTION.value)
    wake, sleep, evict = jax.jit(sc.wake_step), jax.jit(sc.sleep_step), jax.jit(sc.evict)
    jax.block_until_ready(wake(params, state, tokens[:, 0]))  # compile outside the timing
    latencies = []
    print(f"model: layout={cfg.layout} rule={cfg.rule} d_model={cfg.d_model}; L={L} N={N}")
    for t in range(tokens.shape[1]):
        start = time.perf_counter()
        state, logits = wake(params, state, tokens[:, t])
        jax.block_until_ready(logits)
        latencies.append(time.perf_counter() - start)
        if sc.window_full(state):
            window_index = t // L
            changes = []
            for _ in range(N - 1):
                before = state.fast
                state = sleep(params, state)
                changes.append(
                    [
                        float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-12))
                        for a, b in zip(state.fast.values(), before.values())
                    ]
                )
            state = evict(state)
            lat = np.array(latencies[-L:]) * 1e6
            print(
                f"window {window_index}: wake latency median {np.median(lat):.0f} us/token "
                f"(min {lat.min():.0f}, max {lat.max():.0f})"
            )
            for p, c in enumerate(changes, start=2):
                per_layer = ", ".join(f"{x:.3f}" for x in c)
                print(f"  sleep pass {p}: relative fast-weight change per ssm layer [{per_layer}]")
    print("only the fast weights crossed each boundary; the KV window and features were evicted")


if __name__ == "__main__":
    app.run(main)

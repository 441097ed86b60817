#!/usr/bin/env bash
# GPU smoke check for the performance work (NOT run here: written on a CPU-only machine, so
# treat it as a best-effort, untested starting point). Budget: < 5 minutes on one H100.
#
#   bash experiments/gpu_check.sh [OUT_DIR]
#
# 1. the benchmark at quick sizes (JSON + markdown in OUT_DIR);
# 2. a few training steps of the default hybrid, chunked rule, to check it runs and to time
#    a step;
# 3. if flash-linear-attention (`fla`, PyTorch + Triton) is importable: our chunked sleep
#    pass vs fla's `chunk_gated_delta_rule` on the same shapes (time and agreement).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/gpu}"
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # leave room for PyTorch in step 3

python - <<'EOF'
import jax
print("JAX", jax.__version__, "devices:", jax.devices())
assert jax.default_backend() == "gpu", "no GPU visible to JAX"
EOF

# 1. Benchmark (quick sizes; the full grid takes longer than the budget on a cold machine).
timeout 240 python -m experiments.benchmark --quick --out="$OUT/results.json" \
  || echo "benchmark: failed or timed out (see above)"

# 2. A few training steps of value_and_grad(forward) with the chunked rule.
timeout 120 python - <<'EOF' || echo "training steps: failed or timed out"
import time, jax, jax.numpy as jnp, optax
import sleep_consolidation as sc

cfg = sc.ModelConfig(vocab_size=256, d_model=512, num_heads=4, impl="chunked", chunk_size=64)
params = sc.init_params(cfg, jax.random.key(0))
tx = optax.adamw(1e-3)
opt = tx.init(params)
tokens = jax.random.randint(jax.random.key(1), (8, 2048), 0, 256)

def loss_fn(p, toks):
    logits = sc.forward(p, toks, window=512, passes=4, remat="pass")
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, toks[:, 1:, None], -1))

@jax.jit
def step(p, o, toks):
    loss, g = jax.value_and_grad(loss_fn)(p, toks)
    upd, o = tx.update(g, o, p)
    return optax.apply_updates(p, upd), o, loss

t0 = time.perf_counter()
params, opt, loss = jax.block_until_ready(step(params, opt, tokens))
print(f"compile+first step {time.perf_counter() - t0:.1f}s loss {float(loss):.3f}")
times = []
for _ in range(5):
    t0 = time.perf_counter()
    params, opt, loss = jax.block_until_ready(step(params, opt, tokens))
    times.append(time.perf_counter() - t0)
print(f"step {sorted(times)[2] * 1e3:.1f} ms (median of 5), loss {float(loss):.3f}, "
      f"{tokens.size / sorted(times)[2]:.0f} tokens/s")
EOF

# 3. Our chunked sleep pass vs fla's Triton kernel, if fla is installed.
timeout 120 python - <<'EOF' || echo "fla comparison: failed or timed out"
import importlib.util, time
if importlib.util.find_spec("fla") is None or importlib.util.find_spec("torch") is None:
    print("fla/torch not importable: skipping the Triton comparison "
          "(pip install flash-linear-attention torch)")
    raise SystemExit(0)
import jax, jax.numpy as jnp, numpy as np, torch
from fla.ops.gated_delta_rule import chunk_gated_delta_rule
from sleep_consolidation import chunked

def bench(fn, reps=20):  # fn runs once and waits for the device
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return float(np.median(ts))

for B, T, H, d in [(1, 4096, 4, 128), (8, 4096, 16, 128)]:
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    q = unit(rng.standard_normal((B, T, H, d))).astype(np.float32)
    k = unit(rng.standard_normal((B, T, H, d))).astype(np.float32)
    v = rng.standard_normal((B, T, H, d)).astype(np.float32)
    alpha = rng.uniform(0.5, 1.0, (B, T, H)).astype(np.float32)
    beta = rng.uniform(0.0, 1.0, (B, T, H)).astype(np.float32)
    S0 = np.zeros((B, H, d, d), np.float32)
    ours = jax.jit(lambda *a: chunked.gated_delta(*a, None, None, 64))
    args = [jnp.asarray(x) for x in (S0, q, k, v, alpha, beta)]
    o_ours, _ = ours(*args)
    t_ours = bench(lambda: jax.block_until_ready(ours(*args)))
    tt = lambda x: torch.from_numpy(x).cuda()
    # fla: q, k, v [B, T, H, d]; g = log alpha [B, T, H]; beta [B, T, H]. Our readout has no
    # 1/sqrt(d) scaling, so pass scale=1.0.
    args_t = (tt(q), tt(k), tt(v), tt(np.log(alpha)), tt(beta))
    run = lambda: chunk_gated_delta_rule(*args_t, scale=1.0, output_final_state=True)
    o_fla, _ = run()
    t_fla = bench(lambda: (run(), torch.cuda.synchronize()))
    err = float(np.max(np.abs(np.asarray(o_ours) - o_fla.float().cpu().numpy()))
                / np.max(np.abs(np.asarray(o_ours))))
    print(f"B={B} T={T} H={H} d={d}: ours {t_ours * 1e3:.2f} ms, fla {t_fla * 1e3:.2f} ms, "
          f"ours/fla {t_ours / t_fla:.2f}x, max rel diff {err:.2e}")
EOF
echo "gpu_check: done; results in $OUT"

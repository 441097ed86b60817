"""Meta-gradient estimators compared on the parametric rule (configs/parametric.py:meta).

    taskset -c 1 python -m experiments.compare_estimators --out=results/meta_rule

1. Gradient agreement: cosine between the `full` gradient w.r.t. theta and `truncated`
   (k = 1..N) and `es` (several pair counts), at the Hebbian init and at a trained model
   (--trained: a meta_rule.py parametric workdir), over a few batches.
2. Training: `parametric.py:meta` trained with each estimator for --steps steps (same seed).
Writes estimators.md (and estimators.png: the loss curves) to --out.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags

import sleep_consolidation as sc
from experiments.configs import parametric as parametric_config
from sleep_consolidation.rules import parametric
from sleep_consolidation.training import estimators, run_config, run_dir, train

_OUT = flags.DEFINE_string("out", "results/meta_rule", "Directory of estimators.md/.png.")
_RUNS = flags.DEFINE_string("runs", "/tmp/compare_estimators", "Run workdirs.")
_TRAINED = flags.DEFINE_string(
    "trained", "/tmp/meta_rule_runs/rule=parametric,seed=0", "A trained parametric workdir."
)
_STEPS = flags.DEFINE_integer("steps", 400, "Training steps per estimator.")
_PASSES = flags.DEFINE_integer("passes", 3, "N for the comparison (truncation needs N >= 2).")
PAIRS = (8, 32, 128)
SIGMA = 0.01
TRAIN_RUNS = {
    "full": {},
    "truncated k=1": {"estimator": "truncated", "grad_passes": 1},
    "es (theta, 8 pairs)": {"estimator": "es", "es_pairs": 8, "es_sigma": SIGMA},
}


def _theta_vec(grads, cfg):
    return np.concatenate([
        np.ravel(x) for i in cfg.ssm_blocks
        for x in jax.tree.leaves(grads.blocks[i]["mixer"]["theta"])
    ])  # fmt: skip


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def gradient_agreement(params, task, window, passes, batches=4):
    """{label: [cosine with full per batch]} for truncated k and ES pair counts."""

    def loss_fn(p, batch, grad_passes=None):
        logits = sc.forward(p, batch.tokens, window, passes, grad_passes=grad_passes)
        return sc.masked_cross_entropy(logits, batch.targets, batch.loss_mask)

    ests = {"full": estimators.make_estimator("full", loss_fn)}
    for k in range(1, passes + 1):
        ests[f"truncated k={k}"] = estimators.make_estimator("truncated", loss_fn, grad_passes=k)
    for n in PAIRS:
        ests[f"es {n} pairs"] = estimators.make_estimator("es", loss_fn, num_pairs=n, sigma=SIGMA)
    ests = {name: jax.jit(e) for name, e in ests.items()}
    out = {name: [] for name in ests if name != "full"}
    for b in range(batches):
        batch, key = task.batch(123, b, 32), jax.random.key(b)
        full = _theta_vec(ests["full"](params, batch, key)[1], params.config)
        for name in out:
            out[name].append(
                _cos(full, _theta_vec(ests[name](params, batch, key)[1], params.config))
            )
    return out


def main(argv):
    del argv
    t0 = time.time()
    os.makedirs(_OUT.value, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.path.join(_RUNS.value, "jax_cache"))
    base = parametric_config.get_config("meta")
    base.passes = _PASSES.value
    spec = run_config.resolve_config(base)
    init = sc.init_params(spec.model_config, jax.random.key(0))
    agree = {"Hebbian init": gradient_agreement(init, spec.task, spec.window, base.passes)}
    if _TRAINED.value and os.path.isdir(_TRAINED.value):
        trained = sc.load_params(_TRAINED.value)
        agree["trained (meta_rule seed 0)"] = gradient_agreement(
            trained, spec.task, spec.window, base.passes
        )
    t_agree = time.time() - t0

    curves, finals = {}, {}
    for label, overrides in TRAIN_RUNS.items():
        c = parametric_config.get_config("meta")
        c.update(passes=_PASSES.value, steps=_STEPS.value, checkpoint_every=_STEPS.value,
                 log_every=25, **overrides)  # fmt: skip
        workdir = os.path.join(_RUNS.value, label.split(" ")[0] + ("_k1" if "k=1" in label else ""))
        s = train.train_and_evaluate(c, workdir)
        with open(os.path.join(workdir, run_dir.METRICS_FILE)) as f:
            lines = [json.loads(ln) for ln in f]
        curves[label] = [(ln["step"], ln["loss"]) for ln in lines]
        with open(os.path.join(workdir, run_dir.THETA_FILE)) as f:
            th = [json.loads(ln) for ln in f]
        moved = max(
            abs(a - b)
            for la, lb in zip(th[0]["layers"], th[-1]["layers"])
            for cf in la["coefficients"]
            for a, b in zip(la["coefficients"][cf], lb["coefficients"][cf])
        )
        finals[label] = (s["eval"]["acc"], s["eval"]["loss"], s["train_s"] / _STEPS.value, moved)

    md = [
        "# Meta-gradient estimators on the parametric rule",
        "",
        f"Command: `taskset -c 1 python -m experiments.compare_estimators` (N={_PASSES.value}, "
        f"`parametric.py:meta` otherwise; JAX {jax.__version__}, {os.cpu_count()}-core x86 "
        f"CPU, one core). Total {(time.time() - t0) / 60:.1f} min.",
        "",
        "## Cosine with the full gradient w.r.t. theta (mean [min, max] over 4 batches)",
        "",
        "| estimator | " + " | ".join(agree) + " |",
        "|---|" + "---|" * len(agree),
    ]
    for name in next(iter(agree.values())):
        cells = [
            f"{np.mean(v[name]):.3f} [{np.min(v[name]):.2f}, {np.max(v[name]):.2f}]"
            for v in agree.values()
        ]
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    md += [
        "",
        f"ES: antithetic, sigma={SIGMA}, theta only ({len(parametric.COEFFS)} coefficients x "
        f"{spec.model_config.num_heads} heads). Agreement took {t_agree:.0f} s.",
        "",
        f"## Training {_STEPS.value} steps with each estimator (seed 0)",
        "",
        "| estimator | final eval acc | eval loss | s/step | max theta change |",
        "|---|---|---|---|---|",
    ]
    for label, (acc, loss, sps, moved) in finals.items():
        md.append(f"| {label} | {acc:.3f} | {loss:.3f} | {sps * 1e3:.0f} ms | {moved:.2f} |")
    md.append("")
    first = next(iter(curves.values()))
    idx = sorted(set(np.linspace(0, len(first) - 1, 5).astype(int).tolist()))
    md.append("Train loss (mean over the 25 steps before) at steps "
              + ", ".join(str(first[i][0]) for i in idx) + ":")  # fmt: skip
    for label, curve in curves.items():
        md.append(f"- {label}: " + ", ".join(f"{curve[i][1]:.2f}" for i in idx))
    with open(os.path.join(_OUT.value, "estimators.md"), "w") as f:
        f.write("\n".join(md) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    for label, curve in curves.items():
        ax.plot(*zip(*curve), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(_OUT.value, "estimators.png"), dpi=80)
    print("\n".join(md))


if __name__ == "__main__":
    app.run(main)

"""Shared defaults of the experiment configs (rule110.py, depo.py, gsm.py, recall.py).

Every field a run reads is set here, so a task config only names its task, knobs and
budget. `sleep_consolidation.training.train.resolve_config` validates the result before compiling.
"""

from __future__ import annotations

import dataclasses

from ml_collections import ConfigDict, config_dict

from sleep_consolidation.tasks import make_task


def task_config(task: str, **knobs) -> ConfigDict:
    """`name` plus every knob of the task (its generator's defaults unless given), so that
    any knob can be overridden with --config.task.<knob>=..."""
    resolved = make_task(task, **knobs)
    c = ConfigDict({"name": task})
    for field in dataclasses.fields(resolved):
        value = getattr(resolved, field.name)
        c[field.name] = config_dict.placeholder(int) if value is None else value
    return c


def base_config(task: str, **task_knobs) -> ConfigDict:
    """The paper-scale defaults for `task` (model 4 blocks attn-GDN-attn-GDN, d=256)."""
    c = ConfigDict()
    c.task = task_config(task, **task_knobs)

    # Model (ModelConfig fields; vocab_size comes from the task).
    c.d_model = 256
    c.num_heads = 4
    c.layout = ("attn", "ssm", "attn", "ssm")
    c.rule = "gated_delta"
    # A module imported before the config is resolved, to register a custom rule:
    # --config.rule=oja --config.rule_module=examples.custom_rule
    c.rule_module = config_dict.placeholder(str)
    c.head_dim = config_dict.placeholder(int)  # None: d_model // num_heads
    c.mlp_ratio = 4
    c.conv_size = 4
    c.rope_base = 10000.0
    c.impl = "chunked"  # "scan" is the per-token reference
    c.chunk_size = 32
    # None: float32; "bfloat16": projections, attention and MLP in bf16 (GPU/TPU), the fast
    # weights, norms, softmax and loss in float32 (ModelConfig.compute_dtype).
    c.compute_dtype = config_dict.placeholder(str)

    # Consolidation schedule (paper defaults).
    c.window = config_dict.placeholder(int)  # None: the task's eviction window
    c.passes = 1  # N: wake pass + N-1 sleep passes; sweep with --config.passes
    c.eviction = "hard"
    c.reset_between_passes = False
    c.reinject_embedding = False
    c.loop_blocks = config_dict.placeholder(tuple)  # None: all blocks; else (start, stop)
    c.normalize_sleep_input = False  # each sleep pass reads its input at unit RMS
    c.wake_passes = 1  # K > 1: the looped blocks run K times at wake (online depth; N = 1)
    c.grad_passes = config_dict.placeholder(int)  # k: last k passes (estimator="truncated")
    c.remat = "none"  # "pass", "window" or "window+pass" to bound memory at large N
    # Meta-gradient estimator (estimators.py): "full" (backprop through every pass),
    # "truncated" (the last grad_passes passes) or "es" (antithetic ES with es_pairs pairs
    # at scale es_sigma on the rule's theta, es_scope="theta", the rest by backprop; or on
    # every parameter, es_scope="all", forward evaluations only).
    c.estimator = "full"
    c.es_pairs = 8
    c.es_sigma = 0.01
    c.es_scope = "theta"

    # Optimizer: Muon (2-D block matrices) + AdamW at a fixed 5e-5 (the rest), as the paper.
    c.optimizer = "muon"  # or "adamw"
    c.learning_rate = 2e-3  # Muon's (or AdamW's, with optimizer="adamw")
    c.adam_learning_rate = 5e-5
    # The rule's theta (AdamW, fixed); None: as the other AdamW leaves. Meta-learning a
    # rule (configs/parametric.py) needs it larger than 5e-5 for theta to move.
    c.theta_learning_rate = config_dict.placeholder(float)
    c.lr_schedule = "constant"  # or "cosine" (to min_lr_ratio * learning_rate at `steps`)
    c.warmup_steps = 100
    c.min_lr_ratio = 0.1
    c.clip_norm = 1.0  # global gradient norm; 0 disables
    c.weight_decay = 0.0

    # Loop.
    c.batch_size = 256
    c.steps = 10_000
    c.seed = 0  # fixes init and the data order
    c.log_every = 50
    c.eval_every = 1000
    c.eval_size = 1024
    c.eval_batch_size = 256
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.eval_passes = ()  # extra eval N's, e.g. (1, 4, 8): logged as eval_N{M}/... (tuple)
    # Stopping rule (sleep_consolidation/training/stopping.py), off by default: with stop_patience=k
    # the run stops at the first eval at or after stop_min_steps where stop_metric (None:
    # eval/acc; a loss is minimised) has not beaten its best before the last k evals by
    # more than stop_min_delta (None: 0); `steps` stays the cap. summary.json records
    # stopped_at, stop_reason ("converged" | "step_cap"), converged and steps_to_90pct.
    c.stop_patience = config_dict.placeholder(int)
    c.stop_min_delta = config_dict.placeholder(float)
    c.stop_metric = config_dict.placeholder(str)
    c.stop_min_steps = config_dict.placeholder(int)
    # ... and only once the metric's best has reached stop_min_value (None: no floor), so a
    # run still on the loss plateau trains on to the cap instead of "converging" there.
    c.stop_min_value = config_dict.placeholder(float)

    # Scale-out (README, "Launching on several GPUs"): False/1 = one device; True = over every
    # device (of every process); n = over the first n. batch_size must divide evenly.
    c.data_parallel = config_dict.FieldReference(False, field_type=object)  # bool or int
    c.microbatches = 1  # gradient accumulation over this many parts of each batch

    # Training many passes (README "Training many passes"; all off by default).
    # init_from: another run's workdir; this run starts from its latest parameters with a
    # fresh optimizer (e.g. N=4 from a converged N=1 model). Refused before compiling if
    # that run's model differs in shape or rule.
    c.init_from = config_dict.placeholder(str)
    # passes_ramp_steps=K: N grows linearly from 1 to `passes` over the first K steps
    # (sleep_consolidation/training/curriculum.py); evaluation and the stopping rule use `passes`.
    c.passes_ramp_steps = config_dict.placeholder(int)
    # hard_eviction_steps=K (with eviction="sliding"): the first K steps train with hard
    # eviction, the paper's warm-up for N > 1 under sliding eviction; evaluation and the
    # stopping rule use the run's sliding eviction.
    c.hard_eviction_steps = config_dict.placeholder(int)
    # pass_stats_size=m: at every eval, log the mean norm of S and of h and the window-recall
    # cosine after each pass on the first m eval examples (pass_stats/... in metrics.jsonl).
    c.pass_stats_size = config_dict.placeholder(int)
    return c


def make_tiny(c: ConfigDict, **task_knobs) -> ConfigDict:
    """Shrinks `c` in place to the CPU smoke-test size (d=32, attn-GDN, N=2, 300 steps)."""
    c.task.update(task_knobs)
    c.d_model = 32
    c.num_heads = 2
    c.layout = ("attn", "ssm")
    c.mlp_ratio = 2
    c.impl = "scan"
    c.chunk_size = 8
    c.passes = 2
    c.warmup_steps = 0
    c.batch_size = 32
    c.steps = 300
    c.log_every = 25
    c.eval_every = 100
    c.eval_size = 256
    c.eval_batch_size = 256
    c.checkpoint_every = 100
    return c


def make_cpu(c: ConfigDict, **task_knobs) -> ConfigDict:
    """Shrinks `c` in place to the CPU scale of the sweeps in experiments/configs/sweeps.py
    (d=32, attn-GDN, MLP ratio 4, batch 64, 2000 AdamW steps at a constant 3e-3 without
    clipping, embedding re-injected into each sleep pass); a run takes 1-6 min on one core.

    Why this recipe (BUILD_NOTES.md, "Finding a CPU configuration where passes help"): with
    cosine decay, clipping and the paper's
    plain carry of h between passes, N > 1 runs were still on the loss plateau when N = 1
    had left it, so every N > 1 point lost at this budget.
    """
    c.task.update(task_knobs)
    c.d_model = 32
    c.num_heads = 2
    c.layout = ("attn", "ssm")
    c.mlp_ratio = 4
    c.chunk_size = 16
    c.reinject_embedding = True
    c.optimizer = "adamw"
    c.learning_rate = 3e-3
    c.lr_schedule = "constant"
    c.clip_norm = 0.0
    c.warmup_steps = 100
    c.batch_size = 64
    c.steps = 2000
    c.log_every = 50
    c.eval_every = 1000
    c.eval_size = 1024
    c.checkpoint_every = 1000
    c.eval_passes = (1, 2, 4, 8)
    # Gradient accumulation over 4 micro-batches of 16: the same step up to rounding, ~2x
    # the tokens/s of one batch on one CPU core (activations stay in cache). 8 until stop
    # 17; 4 is 2-19% faster since the step's batched products were fixed (BUILD_NOTES.md).
    c.microbatches = 4
    return c


def resolve_saved(saved: dict):
    """The `RunSpec` of a finished run's recorded config (config.json's "config"): fields
    added to the configs after the run was saved take their current defaults."""
    from sleep_consolidation.training.run_config import resolve_config

    return resolve_config({**base_config(saved["task"]["name"]).to_dict(), **saved})


def check_arg(arg: str | None, extra: tuple[str, ...] = ()) -> bool:
    """True for the tiny variant (`--config=...py:tiny`), False for the full one; `extra`:
    the config's own further variants, named in the error."""
    if arg not in (None, "", "tiny", "cpu", *extra):
        known = ", ".join(f"':{v}'" for v in ("tiny", "cpu", *extra))
        raise ValueError(f"unknown config variant {arg!r}; use no suffix, {known}")
    return arg == "tiny"

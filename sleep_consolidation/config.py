"""Static configuration: the model's shape (`ModelConfig`) and the consolidation schedule.

Both are frozen, hashable dataclasses so they can ride along as static metadata under
`jax.jit`. They validate themselves on construction, before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import math

BLOCK_KINDS = ("attn", "ssm")
EVICTIONS = ("hard", "sliding")
IMPLS = ("scan", "chunked")
# None: float32 throughout. "bfloat16": the projections, attention and MLP in bfloat16.
COMPUTE_DTYPES = (None, "bfloat16")


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape of the hybrid model.

    Attributes:
      vocab_size: number of token ids.
      d_model: width of the residual stream.
      num_heads: heads of both attention and fast-weight blocks.
      layout: sequence of block kinds, each "attn" or "ssm", in order (attention first in
        the paper).
      rule: name of the local plasticity rule of the "ssm" blocks (see `rules.py`).
      head_dim: per-head width (d_k = d_v); defaults to d_model // num_heads.
      mlp_ratio: hidden width of each block's MLP, as a multiple of d_model.
      conv_size: width of the short causal depthwise convolution on q, k, v.
      rope_base: RoPE frequency base of the attention blocks.
      impl: "scan" (per-token reference) or "chunked" (chunkwise-parallel fast path, falls
        back to the scan for rules that have no chunked form).
      chunk_size: chunk length of the chunked form.
      compute_dtype: None (or "float32"): float32 throughout; "bfloat16": the matmuls of the
        projections, of attention and of the MLP take bfloat16 operands (for GPUs and
        TPUs), while the parameters, the residual stream, the fast weights and the rule's
        state, the norms, the softmax, the unembedding and the loss stay float32.
    """

    vocab_size: int
    d_model: int
    num_heads: int
    layout: tuple[str, ...] = ("attn", "ssm", "attn", "ssm")
    rule: str = "gated_delta"
    head_dim: int | None = None
    mlp_ratio: int = 4
    conv_size: int = 4
    rope_base: float = 10000.0
    impl: str = "scan"
    chunk_size: int = 32
    compute_dtype: str | None = None

    def __post_init__(self):
        if self.compute_dtype == "float32":  # the default, spelled out: one identity
            object.__setattr__(self, "compute_dtype", None)
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"compute_dtype must be None, 'float32' or 'bfloat16', got {self.compute_dtype!r}"
            )
        if isinstance(self.layout, str):
            raise ValueError(
                f"layout must be a sequence of {BLOCK_KINDS}, got the string {self.layout!r}"
            )
        object.__setattr__(self, "layout", tuple(self.layout))
        _check_int("vocab_size", self.vocab_size, 1)
        _check_int("d_model", self.d_model, 1)
        _check_int("num_heads", self.num_heads, 1)
        _check_int("mlp_ratio", self.mlp_ratio, 1)
        _check_int("conv_size", self.conv_size, 1)
        _check_int("chunk_size", self.chunk_size, 1)
        rope_ok = isinstance(self.rope_base, int | float) and not isinstance(self.rope_base, bool)
        if not (rope_ok and math.isfinite(self.rope_base) and self.rope_base > 0):
            raise ValueError(
                f"rope_base must be a finite number > 0 (RoPE frequency base), "
                f"got {self.rope_base!r}"
            )
        if not self.layout:
            raise ValueError(f"layout must not be empty; allowed block kinds: {BLOCK_KINDS}")
        for kind in self.layout:
            if kind not in BLOCK_KINDS:
                raise ValueError(f"layout has unknown block kind {kind!r}; allowed: {BLOCK_KINDS}")
        if self.head_dim is None:
            if self.d_model % self.num_heads:
                raise ValueError(
                    f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads}) "
                    "when head_dim is not given"
                )
        else:
            _check_int("head_dim", self.head_dim, 1)
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        from sleep_consolidation import rules  # late import: rules may be registered later

        rules.get_rule(self.rule)  # raises ValueError listing the known rules

    @property
    def dh(self) -> int:
        """Per-head width of q, k, v (d_k = d_v)."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.num_heads

    @property
    def ssm_blocks(self) -> tuple[int, ...]:
        return tuple(i for i, k in enumerate(self.layout) if k == "ssm")

    @property
    def attn_blocks(self) -> tuple[int, ...]:
        return tuple(i for i, k in enumerate(self.layout) if k == "attn")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How a window is consolidated and evicted. Defaults are the paper's.

    Attributes:
      eviction: "hard" drops the whole KV window at each boundary; "sliding" keeps the most
        recent L-1 tokens' keys/values (from the last pass) as a prefix for the next window.
      reset_between_passes: if True, every sleep pass starts from the fast weights the window
        started with (so only the last pass's writes survive) instead of where the previous
        pass ended.
      reinject_embedding: if True, each sleep pass reads h + e (the looped range's wake input)
        instead of h alone.
      loop_blocks: (start, stop) contiguous block range that sleep re-runs; blocks before it are
        a prelude and after it a coda, both run once per token at wake. None = all blocks.
      normalize_sleep_input: if True, each sleep pass reads its input (h, or h + e) scaled to
        unit RMS per position, the scale of the embeddings the wake pass reads: the
        features otherwise grow pass after pass (normalisation between loops, as looped
        models use). Parameter-free.
      wake_passes: K >= 1, the online-depth control: at wake, the looped blocks run K times
        over the window, every run from the fast weights the window started with and
        reading the previous run's output (plus the wake input under re-injection), the
        logits read after the last. Causal (each run reads only earlier positions), so the
        same depth is spent online on every token instead of offline in sleep. Training
        form only (`forward`; the streaming form would keep K fast-weight states per block)
        and only with passes = 1.

    Every entry point takes a schedule the same way, `schedule=` or these fields as keywords
    (`resolve_schedule`). The window L and the pass count N stay outside it, as arguments of
    their own (checked by `check_loop`), because they are not the same kind of
    knob: L is an array shape (`MemoryState.window` is `features.shape[1]`, and a copy in the
    static schedule could disagree with it), and N is not a property of a state at all but a
    count of `sleep_step` calls its caller makes (by hand in a notebook, or `stream`'s
    `passes`); in training they are the two numbers swept and changed per call
    (`eval_passes`), while a Schedule is fixed for a run.
    """

    eviction: str = "hard"
    reset_between_passes: bool = False
    reinject_embedding: bool = False
    loop_blocks: tuple[int, int] | None = None
    normalize_sleep_input: bool = False
    wake_passes: int = 1

    def __post_init__(self):
        if self.eviction not in EVICTIONS:
            raise ValueError(f"eviction must be one of {EVICTIONS}, got {self.eviction!r}")
        for name in ("reset_between_passes", "reinject_embedding", "normalize_sleep_input"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.loop_blocks is not None:
            lb = tuple(self.loop_blocks)
            if len(lb) != 2 or not all(isinstance(x, int) for x in lb):
                raise ValueError(
                    f"loop_blocks must be (start, stop) ints or None, got {self.loop_blocks!r}"
                )
            object.__setattr__(self, "loop_blocks", lb)
        _check_int("wake_passes", self.wake_passes, 1)

    def loop_range(self, cfg: ModelConfig) -> tuple[int, int]:
        """The looped block range [start, stop) for `cfg`, validated against its layout."""
        n = len(cfg.layout)
        if self.loop_blocks is None:
            return (0, n)
        start, stop = self.loop_blocks
        if not 0 <= start < stop <= n:
            raise ValueError(
                f"loop_blocks={self.loop_blocks} is outside the layout of {n} blocks; "
                f"need 0 <= start < stop <= {n}"
            )
        return (start, stop)


def resolve_schedule(schedule: Schedule | None, kwargs: dict) -> Schedule:
    """The schedule of a call that takes `schedule=` or its fields as keywords, not both.

    Args:
      schedule: a `Schedule` or None.
      kwargs: the caller's remaining keywords (its `**schedule_kwargs`).

    Returns:
      `schedule`, or `Schedule(**kwargs)` (validated) when it is None.

    Raises:
      ValueError: both given, a non-Schedule `schedule`, or a keyword that is not a field.
    """
    if schedule is not None:
        if kwargs:
            raise ValueError(
                "pass either schedule= or its fields as keywords, not both "
                f"(got schedule= and {', '.join(sorted(kwargs))})"
            )
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a Schedule, got {type(schedule).__name__}")
        return schedule
    fields = {f.name for f in dataclasses.fields(Schedule)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"unknown keyword(s) {', '.join(unknown)}; the schedule's fields are "
            f"{', '.join(sorted(fields))}"
        )
    return Schedule(**kwargs)


# How the training form recomputes activations in backprop (`forward`'s `remat`).
# "window+pass": each window recomputed in backprop and, inside that recompute, each sleep
# pass: only one window's pass boundaries are live at a time, so from N = 2 on memory stays
# nearly flat in N, where "pass" alone keeps every window's (BUILD_NOTES.md "Memory in N").
REMAT_MODES = ("none", "pass", "window", "window+pass")


def check_loop(window, passes, *, remat="none", grad_passes=None, prefix="", schedule=None) -> None:
    """The one check of the window loop's arguments, for every entry point (`forward`,
    `make_train_step`, the run config, the diagnostics): window and passes ints >= 1,
    `remat` one of `REMAT_MODES`, `grad_passes` None or in [1, passes]. `prefix` (e.g.
    "config.") is put before the field names in the messages. Given `schedule`, its
    `wake_passes` > 1 (online depth) is refused with passes > 1."""
    try:
        _check_int("window", window, 1)
        _check_int("passes", passes, 1)
        check_grad_passes(grad_passes, passes)
    except ValueError as e:
        raise ValueError(f"{prefix}{e}") from None
    if remat not in REMAT_MODES:
        raise ValueError(f"{prefix}remat must be one of {REMAT_MODES}, got {remat!r}")
    if schedule is not None and schedule.wake_passes > 1 and passes > 1:
        raise ValueError(
            f"{prefix}wake_passes={schedule.wake_passes} (online depth) needs passes=1, got "
            f"passes={passes}: it is the control that spends the depth at wake, not in sleep"
        )


def _describe_positions(positions) -> str:
    p = sorted(positions)
    if len(p) > 1 and p == list(range(p[0], p[-1] + 1)):
        return f"{p[0]}..{p[-1]}"
    return ", ".join(map(str, p[:8])) + (", ..." if len(p) > 8 else "")


def check_sleep_reaches(window, seq_len: int, positions=None, what: str = "answers") -> None:
    """Refuses a window under which no consolidated window precedes any of `positions`
    (default: every position of the sequence).

    A window is consolidated (slept on and evicted) only once it is full and more tokens
    follow, so position p sees a consolidated window only if p >= window. Were every
    position below it, N would change nothing and a sweep over N would silently report
    no effect of sleep.
    """
    positions = range(seq_len) if positions is None else positions
    if not positions or max(positions) >= window:
        return
    raise ValueError(
        f"window={window} leaves no full window before the {what}: sequence length "
        f"{seq_len}, {what} at positions {_describe_positions(positions)}; the first window "
        f"would be consolidated only after position {window - 1}, so sleep never runs "
        f"before an {what[:-1]} (use window <= {max(positions)})"
    )


def check_grad_passes(grad_passes, passes) -> None:
    """`grad_passes` (truncated backprop) is None or an int k in [1, passes]: a k larger than
    the number of passes would silently mean full backprop, so it is refused."""
    if grad_passes is None:
        return
    _check_int("grad_passes", grad_passes, 1)
    if grad_passes > passes:
        raise ValueError(
            f"grad_passes={grad_passes} exceeds passes={passes}: truncation to the last k "
            f"passes needs k <= passes (use grad_passes=None for full backprop)"
        )


def check_tokens(tokens, vocab_size: int, rank: int, name: str = "tokens") -> None:
    """Host-side checks of a token array: rank and integer dtype always; the id range only
    when the values are concrete (inside jit they are not: out-of-range ids then embed as
    NaN, so the logits turn NaN instead of silently reading a clamped row)."""
    import jax
    import numpy as np

    shape = getattr(tokens, "shape", None)
    dtype = getattr(tokens, "dtype", None)
    if shape is None or len(shape) != rank:
        want = "[batch, time]" if rank == 2 else "[batch]"
        raise ValueError(f"{name} must have rank {rank} ({want}), got shape {shape}")
    if dtype is None or not np.issubdtype(dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {dtype}")
    if isinstance(tokens, jax.core.Tracer):
        return
    arr = np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(
            f"{name} ids must lie in [0, {vocab_size}), got min {arr.min()} and max {arr.max()}"
        )

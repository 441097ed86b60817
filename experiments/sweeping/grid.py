"""A sweep's grid: its runs (grid points x paired seeds), their names and launch configs.

A sweep is a base config (file + optional arg, as for `experiments/train.py`), a grid of
overrides (`axes`: dotted config field -> list of values) and a list of seeds. Every grid
point runs once per seed with the *same* seed across points, so each point of a given seed
starts from the same initialisation and sees the same data order (paired seeds). Pure
config code: nothing here starts a process or writes a file.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags
from ml_collections import config_flags


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a sweep: a grid point and a seed."""

    point: tuple[tuple[str, Any], ...]  # sorted (field, value) overrides, seed excluded
    seed: int
    # What the run is launched with (`store_as_changes`): the point and the sweep's fixed
    # overrides, less the values the base config already has. None: the point and fixed.
    stored: tuple[tuple[str, Any], ...] | None = None
    # The fields that tell this run from the sweep's others (`Sweep.runs`); None: all.
    shown: tuple[str, ...] | None = None

    @property
    def point_name(self) -> str:
        """How tables, legends and the progress view name its point: the swept fields
        that vary and the compared ones (`passes=4`), never the fixed overrides."""
        if self.shown is None:
            return _name(self.point)
        return _name([(k, v) for k, v in self.point if k in self.shown])

    @property
    def label(self) -> str:
        return f"{self.point_name},seed={self.seed}"

    @property
    def name(self) -> str:
        """Its run directory: every swept field (a one-value axis too) and the seed; the
        fixed overrides are in its config.json, which decides identity (the runner also
        finds a run recorded under another name by that config)."""
        return f"{_name(self.point)},seed={self.seed}"

    def overrides(self) -> dict[str, Any]:
        return {**dict(self.point), "seed": self.seed}


def _name(point) -> str:
    return ",".join(f"{k}={_fmt(v)}" for k, v in point) if point else "base"


def _lookup(config, field: str):
    node = config
    for part in field.split("."):
        node = node[part]
    return node.to_dict() if hasattr(node, "to_dict") else node


SEED_PLACEHOLDER = "{seed}"


def for_seed(fixed: Mapping[str, Any] | None, seed: int) -> dict[str, Any]:
    """`fixed` for one seed's run: "{seed}" in a string value becomes the seed, so that a
    run can name another run of the same seed (a warm start's `init_from`)."""
    return {k: v.replace(SEED_PLACEHOLDER, str(seed)) if isinstance(v, str) else v
            for k, v in (fixed or {}).items()}  # fmt: skip


def store_as_changes(runs: Sequence[Run], base_config, fixed: Mapping[str, Any] | None = None):
    """Each run with `stored` set: its point plus `fixed` (for its seed), without the fields
    whose value equals `base_config`'s (call `check_fields` first)."""
    out = []
    for run in runs:
        every = {**for_seed(fixed, run.seed), **dict(run.point)}
        changed = {k: v for k, v in every.items() if _freeze(_lookup(base_config, k)) != _freeze(v)}
        out.append(dataclasses.replace(run, stored=point_key(changed)))
    return out


def load_config_file(path: str, arg: str | None = None, overrides: Sequence[str] = ()):
    """The config `python -m experiments.train --config=path:arg *overrides` trains.

    Parsed by ml_collections' own flag parser (the one the training entry point uses), so
    the sweep compares a run's recorded config with exactly what it would launch.

    Raises:
      ValueError: an override whose value does not parse as its field's type.
    """
    spec = path + (f":{arg}" if arg else "")
    argv = ["sweep", f"--config={spec}", *overrides]
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
    try:
        values(argv)
    except flags.Error as e:  # a value that does not parse as the field's type
        raise ValueError(str(e)) from e
    return holder.value


def plain(x):
    """ConfigDict values -> plain Python (lists/tuples/dicts)."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [plain(v) for v in x]
    return x


def _split_top_level(text: str) -> list[str]:
    """Splits at the commas outside brackets and quotes: "a,(b,c)" -> ["a", "(b,c)"]."""
    parts, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return parts + [cur]


def command_line_value(text: str):
    """One value as typed on the command line, as ml_collections reads a new field: true/
    false as bools, a Python literal as itself, anything else (hard, gated_delta) as the
    string."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        return text


def axis_values(values) -> list:
    """An axis's values as a list. ml_collections hands a new axis from the command line
    over as a string when its items are not all Python literals (--sweep.axes.eviction=
    hard,sliding, or true,false), and as a bare scalar for one value; both are parsed here
    as the comma list the user typed, never iterated character by character. Lists inside
    a value become tuples, at any depth (a joint axis's (23, ('attn', 'ssm')))."""
    if isinstance(values, str):
        return [_freeze(command_line_value(v)) for v in _split_top_level(values) if v.strip()]
    if not isinstance(values, list | tuple):
        return [values]
    return [_freeze(v) for v in values]


def axes_and_fixed(sweep_config) -> tuple[dict, dict]:
    """A sweep file's `axes` and `fixed` as plain dicts, list values made tuples."""
    tup = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
    axes = {k: axis_values(vals) for k, vals in plain(sweep_config.axes).items()}
    fixed = {k: tup(v) for k, v in plain(sweep_config.get("fixed", {})).items()}
    return axes, fixed


def _freeze(v):
    """Lists (e.g. from JSON or ConfigDict) -> tuples, recursively, so points compare equal."""
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def point_key(overrides: Mapping[str, Any]) -> tuple:
    return tuple(sorted(((k, _freeze(v)) for k, v in overrides.items()), key=lambda kv: kv[0]))


def _fmt(v) -> str:
    if isinstance(v, (tuple, list)):
        return "(" + "-".join(_fmt(x) for x in v) + ")"
    return str(v)


ORDERS = ("points", "seeds")


def expand_grid(
    axes: Mapping[str, Sequence[Any]], seeds: Sequence[int], order: str = "points"
) -> list[Run]:
    """Cartesian product of `axes` (field -> values) times `seeds`, as `Run`s, in launch
    order: `order="points"` runs every seed of the first point before the next point;
    `"seeds"` runs every point of the first seed before the next seed, so that a sweep cut
    short leaves whole paired seeds rather than one arm finished and the other not begun.

    A key may join several fields with "+" to vary them together, e.g.
    `{"passes+steps": [(1, 2000), (4, 500)]}` (zipped, not crossed).
    """
    if not seeds:
        raise ValueError("a sweep needs at least one seed")
    if order not in ORDERS:
        raise ValueError(f"sweep order {order!r} is not one of {ORDERS}")
    names = list(axes)
    for name in names:
        if not isinstance(axes[name], (list, tuple)) or not axes[name]:
            raise ValueError(f"sweep axis {name!r} must be a non-empty list of values")
    runs = []
    for combo in itertools.product(*(axes[n] for n in names)):
        point = {}
        for name, value in zip(names, combo):
            fields = name.split("+")
            if len(fields) > 1:
                if not isinstance(value, (list, tuple)) or len(value) != len(fields):
                    raise ValueError(f"axis {name!r} needs {len(fields)}-tuples, got {value!r}")
                point.update(zip(fields, value))
            else:
                point[name] = value
        if "seed" in point:
            raise ValueError("put seeds in `seeds`, not in the axes")
        key = point_key(point)
        runs.extend(Run(key, int(s)) for s in seeds)
    if order == "seeds":  # stable: the points keep their order within a seed
        runs.sort(key=lambda r: list(seeds).index(r.seed))
    return runs


def shown_fields(points: Sequence[tuple], compared: Sequence[str] = ()) -> tuple[str, ...]:
    """The fields that name a point in a report: those whose value varies over `points`,
    and the `compared` ones (the baseline's, the x axis) they hold; all if that is none."""
    values: dict[str, set] = {}
    for point in points:
        for k, v in point:
            values.setdefault(k, set()).add(repr(v))
    shown = tuple(k for k in values if len(values[k]) > 1 or k in compared)
    return shown or tuple(values)


def check_fields(config, runs: Sequence[Run]) -> None:
    """Every overridden field must exist in the base config (ml_collections ConfigDict)."""
    for run in runs:
        for field in run.overrides():
            node = config
            for part in field.split("."):
                if not hasattr(node, "keys") or part not in node.keys():
                    raise ValueError(
                        f"sweep field {field!r} does not exist in the base config; "
                        f"known top-level fields: {', '.join(sorted(config.keys()))}"
                    )
                node = node[part]


def launch_overrides(run: Run, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config overrides a run is launched with: `fixed` (for its seed) and its point
    (or exactly its `stored` overrides, when set), and its seed."""
    if run.stored is None:
        return {**for_seed(fixed, run.seed), **run.overrides()}
    return {**dict(run.stored), "seed": run.seed}


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
    """`--config.<field>=<value>` flags, as `experiments.train` parses them."""
    return [_override_flag(k, v) for k, v in overrides.items()]


def train_command(spec: str, run_dir: str, overrides: Sequence[str], extra=()) -> list[str]:
    """The `experiments.train` command line of one run (`spec`: "path[:arg]")."""
    return [sys.executable, "-m", "experiments.train", f"--config={spec}",
            f"--workdir={run_dir}", *overrides, *extra]  # fmt: skip


def _override_flag(field: str, value) -> str:
    if isinstance(value, (tuple, list)):
        value = (
            "("
            + ",".join(repr(x) if isinstance(x, str) else str(x) for x in value)
            + ("," if len(value) == 1 else "")
            + ")"
        )
    return f"--config.{field}={value}"


def baseline_of(point: Mapping[str, Any], baseline: Mapping[str, Any]) -> tuple:
    """The point's paired baseline: the same overrides with the baseline fields swapped in."""
    return point_key({**point, **baseline})


# The fields a sweep file's get_config() may set (experiments/configs/sweeps.py).
SWEEP_FIELDS = ("config", "config_arg", "axes", "fixed", "seeds", "confirm_seeds", "parallel",
                "baseline", "x_field", "metric", "frontier", "est_run_s", "interval",
                "order")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A base config, its grid and seeds, and how many runs go at once."""

    config: str  # base config file
    config_arg: str = ""  # its variant ("tiny", "capacity", ...)
    axes: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seeds: Sequence[int] = (0,)
    parallel: int = 2
    order: str = "points"  # launch order: see expand_grid
    # Runs launched with only what they change in the base config; False: with their grid
    # point and every fixed override.
    name_by_changes: bool = True
    est_run_s: float | None = None  # expected seconds per run before any is measured
    compared: tuple[str, ...] = ("passes",)  # the baseline's fields and the plot's x axis

    @classmethod
    def from_config(cls, s) -> Sweep:
        """From a sweep file's ConfigDict; unknown top-level fields are refused."""
        unknown = sorted(set(s.keys()) - set(SWEEP_FIELDS))
        if unknown:
            raise ValueError(f"unknown sweep field(s) {unknown}; known: {list(SWEEP_FIELDS)}")
        axes, fixed = axes_and_fixed(s)
        seeds = plain(s.seeds)
        seeds = [seeds] if isinstance(seeds, int) else list(seeds)
        # Confirmation seeds train like the others; only the report tells them apart.
        confirm = plain(s.get("confirm_seeds") or ())
        seeds += [x for x in ([confirm] if isinstance(confirm, int) else confirm) if x not in seeds]
        compared = [*plain(s.get("baseline") or {"passes": 1}), s.get("x_field") or "passes"]
        return cls(config=s.config, config_arg=s.get("config_arg") or "", axes=axes,
                   fixed=fixed, seeds=tuple(int(x) for x in seeds),
                   parallel=int(s.get("parallel") or 2),
                   order=s.get("order") or "points",
                   est_run_s=s.get("est_run_s"),
                   compared=tuple(dict.fromkeys(compared)))  # fmt: skip

    @property
    def spec(self) -> str:
        return self.config + (f":{self.config_arg}" if self.config_arg else "")

    def base_config(self):
        return load_config_file(self.config, self.config_arg)

    def runs(self) -> list[Run]:
        """Every run of the grid, fields checked against the base config.

        Raises:
          ValueError: a bad axis or seed list, or a field the base config does not have.
        """
        runs = expand_grid(self.axes, self.seeds, self.order)
        base = self.base_config()
        check_fields(base, runs + [Run(point_key(self.fixed), 0)])
        shown = shown_fields([r.point for r in runs], self.compared)
        runs = [dataclasses.replace(r, shown=shown) for r in runs]
        return store_as_changes(runs, base, self.fixed) if self.name_by_changes else runs

    def overrides(self, run: Run) -> list[str]:
        """The `--config.` flags `run` is launched with."""
        return override_flags(launch_overrides(run, self.fixed))

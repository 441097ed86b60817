"""Paired-seed comparisons of a sweep's points against their baseline, and the verdicts
drawn from them (helps / hurts / no effect shown)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.sweeping import grid, stats
from experiments.sweeping.records import by_point, completed, is_unconverged


def paired_diffs(
    records: Sequence[dict], metric_key: str, baseline: Mapping[str, Any]
) -> dict[str, tuple[list[int], np.ndarray, bool]]:
    """Per point that is not its own baseline: (seeds, per-seed differences of
    `eval[metric_key]` against the paired baseline run, whether any run of the pairs is
    unconverged). Seeds without a baseline run or a value are left out."""
    done = completed(records)
    by_key = {(grid.point_key(r["overrides"]), r["seed"]): r for r in done}
    out = {}
    for name, rs in by_point(done).items():
        base_key = grid.baseline_of(rs[0]["overrides"], baseline)
        if base_key == grid.point_key(rs[0]["overrides"]):
            continue
        seeds, treated, base, flag = [], [], [], False
        for r in sorted(rs, key=lambda r: r["seed"]):
            b = by_key.get((base_key, r["seed"]))
            if b is None or r["eval"].get(metric_key) is None or b["eval"].get(metric_key) is None:
                continue
            seeds.append(r["seed"])
            treated.append(r["eval"][metric_key])
            base.append(b["eval"][metric_key])
            flag = flag or is_unconverged(r) or is_unconverged(b)
        out[name] = (seeds, stats.paired_differences(treated, base), flag)
    return out


def verdict_lines(
    records: Sequence[dict],
    metric: str = "acc",
    baseline: Mapping[str, Any] | None = None,
    interval: str = "t",
    confirm_seeds: Sequence[int] = (),
) -> list[str]:
    """One line per compared point: its paired gain on `metric` (all depths) against the
    baseline, the 95% interval and sign counts, on the seeds that chose the configuration
    and, separately, on the confirmation seeds (`confirm_seeds`, decided before they ran),
    and what that shows: "helps" only if the interval lies above 0 on both sets, "hurts"
    only if below 0 on both, otherwise "no effect shown" (so a sweep without confirmation
    seeds never says more than that; its one-set reading is given beside it). How many
    pairs converged is given too (an unconverged pair makes the verdict provisional)."""
    baseline = {"passes": 1} if baseline is None else dict(baseline)
    base_desc = ", ".join(f"{k}={v}" for k, v in baseline.items())
    done = completed(records)
    by_key = {(grid.point_key(r["overrides"]), r["seed"]): r for r in done}
    confirm = {int(x) for x in confirm_seeds}
    lines = []
    for name, (seeds, d, flag) in paired_diffs(records, metric, baseline).items():
        chosen = [(s, x) for s, x in zip(seeds, d) if s not in confirm]
        confirming = [(s, x) for s, x in zip(seeds, d) if s in confirm]
        if len(chosen) < 2:
            continue
        ps = stats.paired_summary([x for _, x in chosen], interval)
        treated_key = next(grid.point_key(r["overrides"]) for r in done if r["point"] == name)
        base_key = grid.baseline_of(dict(treated_key), baseline)
        both = sum(
            not is_unconverged(by_key[(treated_key, s)])
            and not is_unconverged(by_key[(base_key, s)])
            for s in seeds
        )
        caveat = "" if not flag else "; provisional: some runs hit the step cap"
        text = (f"{ps.mean:+.3f} [{ps.lo:+.3f}, {ps.hi:+.3f}], {ps.positive}+/{ps.negative}- "
                f"over {ps.n} seeds")  # fmt: skip
        if len(confirming) >= 2:
            pc = stats.paired_summary([x for _, x in confirming], interval)
            text += (f"; confirmation seeds {','.join(str(s) for s, _ in confirming)}: "
                     f"{pc.mean:+.3f} [{pc.lo:+.3f}, {pc.hi:+.3f}], "
                     f"{pc.positive}+/{pc.negative}-")  # fmt: skip
            word, note = _word(ps, pc), ""
        else:
            word, alone = "no effect shown", _word(ps, ps)
            # The one-set reading is shown, never taken for the verdict.
            note = "" if alone == word else f"these seeds alone: {alone}, unconfirmed; "
        lines.append(
            f"Verdict ({metric}, {name} vs {base_desc}): {text}: "
            f"**{word}** ({note}{both}/{len(seeds)} pairs both converged{caveat})."
        )
    return lines


def _word(a: stats.PairedSummary, b: stats.PairedSummary) -> str:
    # Both seed sets must agree for a verdict stronger than "no effect shown".
    if a.lo > 0 and b.lo > 0:
        return "helps"
    if a.hi < 0 and b.hi < 0:
        return "hurts"
    return "no effect shown"

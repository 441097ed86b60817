"""The stopping rule: the pure decision on synthetic histories, and tiny end-to-end runs."""

from __future__ import annotations

import json
import math
import os

import pytest
from conftest import attn_config, read_metrics

from sleep_consolidation.training import run_config, run_dir, stopping, train

pytestmark = pytest.mark.usefixtures("compilation_cache")


# --- the decision on synthetic histories ------------------------------------------------


def test_plateau_stops_and_improvement_does_not():
    plateau = [0.1, 0.5, 0.8, 0.801, 0.799, 0.8]
    assert stopping.plateaued(plateau, patience=3, min_delta=0.005)
    assert not stopping.plateaued(plateau, patience=3, min_delta=0.0)  # 0.801 > 0.8
    improving = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert not stopping.plateaued(improving, patience=3, min_delta=0.005)
    # One late improvement inside the last k evals is enough to go on.
    assert not stopping.plateaued([0.5, 0.5, 0.5, 0.5, 0.6], patience=3, min_delta=0.01)
    assert not stopping.plateaued([0.5, 0.5, 0.5], patience=3, min_delta=0.0)  # too few evals


def test_loss_is_minimised_and_a_failed_eval_never_improves():
    assert stopping.metric_mode("eval/loss/d=4") == "min"
    assert stopping.metric_mode("eval_N4/acc") == "max"
    assert stopping.plateaued([3.0, 1.0, 1.0, 1.2], patience=2, min_delta=0.0, mode="min")
    assert not stopping.plateaued([3.0, 2.0, 1.0, 0.5], patience=2, min_delta=0.0, mode="min")
    assert stopping.plateaued([0.5, 0.9, None, math.nan, 0.9], patience=3, min_delta=0.0)
    assert not stopping.plateaued([0.5, 0.9, None, None], patience=2, min_delta=0.0)


def test_min_steps_guards_the_early_plateau():
    # A run still at chance on the loss plateau is flat, but must not be called converged.
    rule = stopping.StopRule(patience=2, min_delta=0.01, min_steps=400)
    flat = [(100, 0.02), (200, 0.02), (300, 0.02)]
    assert not rule.decide(flat)
    assert rule.decide([*flat, (400, 0.02)])
    assert stopping.StopRule.from_config({"stop_patience": None}) is None
    got = stopping.StopRule.from_config(
        {"stop_patience": 3, "stop_min_delta": None, "stop_metric": None, "stop_min_steps": None}
    )
    assert got == stopping.StopRule("eval/acc", 3, 0.0, 0)


def test_min_value_keeps_a_run_on_the_plateau_training():
    # The measured case (BUILD_NOTES.md, "main_converged ... measured"): flat near 0.09 past
    # min_steps is the
    # plateau before learning, not convergence; once the floor is reached the rule applies.
    rule = stopping.StopRule(patience=2, min_delta=0.005, min_steps=200, min_value=0.5)
    stuck = [(100, 0.085), (200, 0.086), (300, 0.086), (400, 0.088)]
    assert not rule.decide(stuck)
    assert stopping.StopRule(patience=2, min_delta=0.005, min_steps=200).decide(stuck)
    learned = [*stuck, (500, 0.9), (600, 0.901), (700, 0.902)]
    assert rule.decide(learned)
    loss_rule = stopping.StopRule("eval/loss", patience=2, min_steps=0, min_value=1.0)
    assert not loss_rule.decide([(1, 3.0), (2, 3.0), (3, 3.0)])  # "min": must reach <= 1
    assert loss_rule.decide([(1, 3.0), (2, 0.9), (3, 0.9), (4, 0.9)])
    got = stopping.StopRule.from_config({"stop_patience": 2, "stop_min_value": 0.5})
    assert got.min_value == 0.5


def test_steps_to_fraction_and_history():
    lines = [
        {"step": 50, "loss": 3.0},
        {"step": 100, "eval/acc": 0.1},
        {"step": 200, "eval/acc": 0.7},
        {"step": 300, "eval/acc": 0.85},
        {"step": 400, "eval/acc": 0.9},
        {"step": 300, "eval/acc": 0.86},  # logged again after a resume: the later one wins
    ]
    hist = stopping.eval_history(lines, "eval/acc")
    assert hist == [(100, 0.1), (200, 0.7), (300, 0.86), (400, 0.9)]
    assert stopping.eval_history(lines, "eval/acc", upto=200) == [(100, 0.1), (200, 0.7)]
    assert stopping.steps_to_fraction(hist, 0.9) == 300  # 0.86 >= 0.81 > 0.7
    assert stopping.steps_to_fraction(hist, 0.5) == 200
    loss = [(100, 4.0), (200, 1.2), (300, 1.05), (400, 1.0)]
    assert stopping.steps_to_fraction(loss, 0.9, mode="min") == 300  # <= 1/0.9 = 1.11
    assert stopping.steps_to_fraction([], 0.9) is None
    assert stopping.steps_to_fraction([(100, 0.5), (200, None)], 0.9) is None


@pytest.mark.parametrize(
    "override, message",
    [
        ({"stop_patience": 0}, "stop_patience"),
        ({"stop_min_delta": -0.1}, "stop_min_delta"),
        ({"stop_metric": "eval/acc/d=99"}, "stop_metric"),
        ({"stop_metric": "eval_N4/acc"}, "stop_metric"),  # 4 is not in eval_passes
        ({"stop_metric": "acc"}, "stop_metric"),
        ({"stop_min_value": float("nan")}, "stop_min_value"),
    ],
)
def test_bad_stop_fields_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        run_config.resolve_config(attn_config(**override))
    run_config.resolve_config(attn_config(stop_metric="eval/loss/d=2", stop_patience=2))


# --- end to end ---------------------------------------------------------------------------

# Every step an eval, so the history grows by one line per step.
_EVERY = dict(log_every=1, eval_every=1, checkpoint_every=100, steps=12)


def _summary(workdir):
    with open(os.path.join(workdir, run_dir.SUMMARY_FILE)) as f:
        return json.load(f)


def test_a_plateaued_run_stops_and_a_rerun_resumes_at_the_stop(tmp_path):
    # A learning rate this small leaves the eval metric where it started: a plateau.
    c = attn_config(learning_rate=1e-12, adam_learning_rate=1e-12, stop_patience=2,
                    stop_min_delta=1e-3, stop_metric="eval/loss", **_EVERY)  # fmt: skip
    workdir = str(tmp_path / "flat")
    s = train.train_and_evaluate(c, workdir)
    assert s["stop_reason"] == "converged" and s["converged"] is True
    assert s["stopped_at"] == s["step"] == 3  # evals at 1, 2, 3: the last 2 beat eval 1 by < δ
    assert [m["step"] for m in read_metrics(workdir)] == [1, 2, 3]
    again = train.train_and_evaluate(c, workdir)  # nothing left to train
    assert again["resumed_from"] == 3 and again["stopped_at"] == 3 and again["converged"]
    off = train.train_and_evaluate(attn_config(**{**_EVERY, "steps": 4}),
                                   str(tmp_path / "off"))  # fmt: skip
    assert off["stop_reason"] == "step_cap" and off["converged"] is False
    assert off["stopped_at"] == 4 and off["steps_to_90pct"] is not None


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_an_improving_run_does_not_stop_and_resume_is_exact(tmp_path):
    kw = dict(learning_rate=3e-2, adam_learning_rate=3e-2, optimizer="adamw", stop_patience=2,
              stop_min_delta=1e-4, stop_metric="eval/loss", **_EVERY)  # fmt: skip
    c = attn_config(**kw)
    whole = str(tmp_path / "whole")
    s = train.train_and_evaluate(c, whole)
    losses = [m["eval/loss"] for m in read_metrics(whole)]
    if s["converged"]:  # then the loss must really have stopped falling
        k = s["stopped_at"]
        assert min(losses[k - 2 : k]) >= min(losses[: k - 2]) - 1e-4
    # The precondition of this test: the eval loss falls by more than δ at every eval
    # up to step 6 at least, so the rule must not fire before.
    assert all(b < a - 1e-4 for a, b in zip(losses[:6], losses[1:6])), losses
    assert s["stopped_at"] > 6
    # Interrupted at step 4 (the cap), then continued: it stops where the whole run did.
    part = str(tmp_path / "part")
    c4 = attn_config(**{**kw, "steps": 4, "checkpoint_every": 2})
    c12 = attn_config(**{**kw, "checkpoint_every": 2})
    assert train.train_and_evaluate(c4, part)["stop_reason"] == "step_cap"
    resumed = train.train_and_evaluate(c12, part)
    assert resumed["resumed_from"] == 4
    assert (resumed["stopped_at"], resumed["stop_reason"]) == (s["stopped_at"], s["stop_reason"])

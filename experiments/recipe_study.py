"""The sleep-training recipe study: does a recipe let N = 4 leave the loss plateau as often
as N = 1 where it gets stuck (associative recall at loads n >= d_k)?

Run-book:
  python -m experiments.recipe_study --workdir=runs/recipes            # seeds 0-4, n = 16
  python -m experiments.recipe_study --workdir=runs/recipes --seeds=5,6,7,8,9 \
      --recipes=today_N1,warm_N4                                       # confirmation seeds
  python -m experiments.recipe_study --workdir=runs/recipes --report_only --out=results/recipes

The recipes, the commands, the scheduler and the report live in `experiments/recipes.py`.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from experiments.configs.sweep_spec import CONVERGED
from experiments.recipes import (
    RECIPES,
    check_recipes,
    command,
    parse_queue,
    report,
    run_dir,
    train_all,
)
from experiments.sweeping import launch

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "study directory (runs under <workdir>/runs)")
flags.DEFINE_list("loads", ["16"], "pairs n per model (window 2n)")
flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "paired seeds")
flags.DEFINE_list("recipes", list(RECIPES), "recipes to train, in this order of priority")
flags.DEFINE_list(
    "queue",
    None,
    "train these recipe@seeds entries in this order instead of "
    "--recipes x --seeds (e.g. warm_N4@0-4,today_N1@5-9); the report still "
    "covers --recipes x --seeds",
)
flags.DEFINE_integer("parallel", 2, "runs at a time (one per core)")
flags.DEFINE_integer("cap", CONVERGED["steps"], "step cap of every run")
flags.DEFINE_integer("pass_stats_size", 64, "eval examples for the per-pass statistics")
flags.DEFINE_bool("report_only", False, "write the report of what is on disk; train nothing")
flags.DEFINE_string("out", None, "report directory (default: the workdir)")
flags.DEFINE_bool("dry_run", False, "list the runs and their commands; train nothing")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    try:
        check_recipes(FLAGS.recipes)
        queue = parse_queue(FLAGS.queue) if FLAGS.queue else None
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    loads, seeds = [int(x) for x in FLAGS.loads], [int(x) for x in FLAGS.seeds]
    names = list(FLAGS.recipes)
    if not FLAGS.report_only:
        queue = queue or [(r, s) for r in names for s in seeds]
        jobs = []
        for n in loads:
            for name, s in queue:
                src = RECIPES[name].warm_from
                jobs.append((f"n={n} {name} seed={s}", run_dir(FLAGS.workdir, n, name, s),
                             command(FLAGS.workdir, n, name, s, FLAGS.cap, FLAGS.pass_stats_size),
                             run_dir(FLAGS.workdir, n, src, s) if src else None))  # fmt: skip
        if FLAGS.dry_run:
            for key, _, cmd, _ in jobs:
                print(key, "\n  ", " ".join(cmd[1:]))
            return
        folder = os.path.join(FLAGS.workdir, "submitit")  # submitit's own job files
        train_all(jobs, launch.Launcher("local", folder, FLAGS.parallel))
    text, recs = report(FLAGS.workdir, loads, seeds, names, FLAGS.cap)
    out = FLAGS.out or FLAGS.workdir
    os.makedirs(out, exist_ok=True)
    tag = "seeds" + "-".join(map(str, seeds))
    with open(os.path.join(out, f"recipes_{tag}.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, f"recipes_{tag}.json"), "w") as f:
        json.dump(recs, f, indent=1)
    print(text)


if __name__ == "__main__":
    sys.exit(app.run(main))

"""The command-line flags every sweep entry point shares (launcher, Slurm resources,
dry run, config changes), and the `Launcher` they describe."""

from __future__ import annotations

import os
import re

from absl import flags

from experiments.sweeping import grid, launch, runner

LAUNCHER = flags.DEFINE_enum(
    "launcher", "local", launch.LAUNCHERS,
    "local: runs on this machine, one per core (submitit LocalExecutor); slurm: one Slurm "
    "job array (submitit AutoExecutor); debug: in this process, one after another.",
)  # fmt: skip
DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "List the runs and the estimated time; start nothing."
)
ON_CONFIG_CHANGE = flags.DEFINE_enum(
    "on_config_change", "refuse", runner.ON_CONFIG_CHANGE,
    "A run directory that recorded another config than the sweep launches now: refuse, "
    "rerun it under <name>,cfg=<hash>, or continue it from its checkpoint when the changes "
    "only decide when it ends (steps, the stopping rule, cadences; recorded in the run).",
)  # fmt: skip
PLAIN_EVERY = flags.DEFINE_float(
    "progress_every", 30.0, "Seconds between progress lines when stdout is not a terminal."
)
SLURM_PARTITION = flags.DEFINE_string("slurm_partition", None, "Slurm partition.")
SLURM_TIME_MIN = flags.DEFINE_integer("slurm_time_min", 240, "Slurm time limit per run, minutes.")
SLURM_CPUS = flags.DEFINE_integer("slurm_cpus_per_task", 1, "CPUs per run.")
SLURM_GPUS = flags.DEFINE_integer("slurm_gpus_per_node", 0, "GPUs per run.")
SLURM_MEM_GB = flags.DEFINE_float("slurm_mem_gb", None, "Memory per run, GB.")
SLURM_ACCOUNT = flags.DEFINE_string("slurm_account", None, "Slurm account.")
SLURM_QOS = flags.DEFINE_string("slurm_qos", None, "Slurm QOS.")
SLURM_CONSTRAINT = flags.DEFINE_string("slurm_constraint", None, "Slurm node constraint.")
SLURM_SETUP = flags.DEFINE_multi_string(
    "slurm_setup", [], "A shell line run before each job (repeatable), e.g. 'module load cuda'."
)


def split_dotted(argv: list[str], flag: str = "sweep") -> tuple[list[str], list[tuple]]:
    """Takes `--sweep.axes.task.window=8,16` (an axis or fixed override of a dotted config
    field) and `--sweep.axes.steps+layout=...` (a joint axis) out of `argv`: ml_collections
    reads every dot as nesting (it would look for an axis "task") and cannot parse a "+"
    in a field's name. Returns the other arguments and (section, field, value) triples for
    `apply_dotted`."""
    rest, dotted = [], []
    for arg in argv:
        m = re.fullmatch(rf"--{flag}\.(axes|fixed)\.([^=]*[.+][^=]*)=(.*)", arg, flags=re.S)
        if m:
            dotted.append(m.groups())
        else:
            rest.append(arg)
    return rest, dotted


def apply_dotted(sweep_config, dotted) -> None:
    """Sets the `split_dotted` overrides, each value read as ml_collections reads a new
    field's (true/false, a Python literal, else the string; an axis's comma list of
    strings is split later, by `grid.axis_values`)."""
    for section, field, value in dotted:
        node = sweep_config[section]
        with node.ignore_type():
            node[field] = grid.command_line_value(value)


def slurm_options() -> launch.SlurmOptions:
    return launch.SlurmOptions(
        partition=SLURM_PARTITION.value, time_min=SLURM_TIME_MIN.value,
        cpus_per_task=SLURM_CPUS.value, gpus_per_node=SLURM_GPUS.value,
        mem_gb=SLURM_MEM_GB.value, account=SLURM_ACCOUNT.value, qos=SLURM_QOS.value,
        constraint=SLURM_CONSTRAINT.value, setup=tuple(SLURM_SETUP.value),
    )  # fmt: skip


def make_launcher(workdir: str, parallel: int) -> launch.Launcher:
    """The launcher the flags ask for; its job logs go to `<workdir>/submitit/`."""
    folder = os.path.join(workdir, runner.SUBMITIT_DIR)
    return launch.Launcher(LAUNCHER.value, folder, parallel, slurm_options())

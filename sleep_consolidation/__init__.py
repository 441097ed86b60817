"""sleep_consolidation: offline recurrent consolidation ("sleep") for hybrid
attention + fast-weight sequence models, in JAX.

Everything a notebook needs is importable from here; each name is the object defined in
its own module. The package is laid out by role: the core contract at the top (config,
state, model, sequence, wake_sleep, streaming), then `layers/`, `rules/`, `training/`,
`analysis/` and `tasks/`.
"""

from sleep_consolidation.analysis.adaptive import adaptive_sleep, window_recall
from sleep_consolidation.config import ModelConfig, Schedule
from sleep_consolidation.model import Params, init_params
from sleep_consolidation.rules import (
    Rule,
    apply_rule,
    available_rules,
    get_rule,
    parametric,  # noqa: F401  (registers the "parametric" rule on import)
    register_rule,
    scan_rule,
)
from sleep_consolidation.sequence import forward
from sleep_consolidation.state import MemoryState, init_state
from sleep_consolidation.streaming import stream
from sleep_consolidation.training.checkpointing import (
    Checkpointer,
    load_memory_state,
    load_params,
    save_memory_state,
)
from sleep_consolidation.training.estimators import make_estimator
from sleep_consolidation.training.evaluation import evaluate
from sleep_consolidation.training.losses import masked_cross_entropy
from sleep_consolidation.training.optimizers import make_optimizer, muon_labels, optimizer_labels
from sleep_consolidation.training.run_config import resolve_config
from sleep_consolidation.training.run_dir import ConfigConflictError, RunIOError
from sleep_consolidation.training.run_log import theta_record
from sleep_consolidation.training.train import train_and_evaluate
from sleep_consolidation.training.train_step import (
    NonFiniteError,
    TrainState,
    init_train_state,
    make_train_step,
)
from sleep_consolidation.wake_sleep import evict, sleep_step, wake_step, window_full

__all__ = [
    "adaptive_sleep",
    "window_recall",
    "Checkpointer",
    "ConfigConflictError",
    "NonFiniteError",
    "RunIOError",
    "TrainState",
    "evaluate",
    "init_train_state",
    "load_memory_state",
    "load_params",
    "make_optimizer",
    "make_estimator",
    "make_train_step",
    "optimizer_labels",
    "theta_record",
    "masked_cross_entropy",
    "muon_labels",
    "resolve_config",
    "save_memory_state",
    "train_and_evaluate",
    "MemoryState",
    "ModelConfig",
    "Params",
    "Rule",
    "Schedule",
    "apply_rule",
    "available_rules",
    "evict",
    "forward",
    "get_rule",
    "init_params",
    "init_state",
    "register_rule",
    "scan_rule",
    "stream",
    "sleep_step",
    "wake_step",
    "window_full",
]

__version__ = "0.1.0"

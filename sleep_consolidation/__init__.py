"""sleep_consolidation: offline recurrent consolidation ("sleep") for hybrid
attention + fast-weight sequence models, in JAX.

Everything a notebook needs is importable from here.
"""

# parametric registers the "parametric" rule on import.
from sleep_consolidation import (  # noqa: F401
    capacity,
    diagnostics,
    estimators,
    parametric,
    stopping,
)
from sleep_consolidation.adaptive import adaptive_sleep, window_recall
from sleep_consolidation.checkpointing import (
    Checkpointer,
    load_memory_state,
    load_params,
    save_memory_state,
)
from sleep_consolidation.config import ModelConfig, Schedule
from sleep_consolidation.estimators import make_estimator
from sleep_consolidation.model import Params, init_params
from sleep_consolidation.rules import (
    Rule,
    apply_rule,
    available_rules,
    get_rule,
    register_rule,
    scan_rule,
)
from sleep_consolidation.sequence import forward
from sleep_consolidation.state import MemoryState, init_state
from sleep_consolidation.streaming import stream
from sleep_consolidation.train import (
    ConfigConflictError,
    NonFiniteError,
    RunIOError,
    TrainState,
    evaluate,
    init_train_state,
    make_optimizer,
    make_train_step,
    masked_cross_entropy,
    muon_labels,
    optimizer_labels,
    resolve_config,
    theta_record,
    train_and_evaluate,
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

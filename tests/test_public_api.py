"""The package's public surface and its import hygiene: every `sc.*` name is the object
its defining module holds; `import sleep_consolidation` loads no Orbax; no library module
uses another library module's private (`_x`) names."""

from __future__ import annotations

import ast
import importlib
import os
import pathlib
import subprocess
import sys

import pytest

import sleep_consolidation as sc

PACKAGE_DIR = pathlib.Path(sc.__file__).resolve().parent
PKG = "sleep_consolidation"

# Each public name and the module that defines it (the one place to import it from).
DEFINED_IN = {
    "adaptive_sleep": "analysis.adaptive",
    "window_recall": "analysis.adaptive",
    "ModelConfig": "config",
    "Schedule": "config",
    "Params": "model",
    "init_params": "model",
    "Rule": "rules",
    "apply_rule": "rules",
    "available_rules": "rules",
    "get_rule": "rules",
    "register_rule": "rules",
    "scan_rule": "rules",
    "forward": "sequence",
    "MemoryState": "state",
    "init_state": "state",
    "stream": "streaming",
    "Checkpointer": "training.checkpointing",
    "load_memory_state": "training.checkpointing",
    "load_params": "training.checkpointing",
    "save_memory_state": "training.checkpointing",
    "make_estimator": "training.estimators",
    "evaluate": "training.evaluation",
    "masked_cross_entropy": "training.losses",
    "make_optimizer": "training.optimizers",
    "muon_labels": "training.optimizers",
    "optimizer_labels": "training.optimizers",
    "resolve_config": "training.run_config",
    "ConfigConflictError": "training.run_dir",
    "RunIOError": "training.run_dir",
    "theta_record": "training.run_log",
    "train_and_evaluate": "training.train",
    "NonFiniteError": "training.train_step",
    "TrainState": "training.train_step",
    "init_train_state": "training.train_step",
    "make_train_step": "training.train_step",
    "evict": "wake_sleep",
    "sleep_step": "wake_sleep",
    "wake_step": "wake_sleep",
    "window_full": "wake_sleep",
}


def test_every_public_name_is_listed_once_and_documented_here():
    assert len(sc.__all__) == len(set(sc.__all__))
    assert sorted(sc.__all__) == sorted(DEFINED_IN)


@pytest.mark.parametrize("name", sorted(DEFINED_IN))
def test_public_name_is_the_object_its_module_defines(name):
    module = importlib.import_module(f"{PKG}.{DEFINED_IN[name]}")
    assert getattr(sc, name) is getattr(module, name)
    # Defined there, not re-exported there from somewhere else (functions and classes say
    # where they were defined; `Rule` & co. come from `rules/__init__.py`).
    defined = getattr(getattr(sc, name), "__module__", module.__name__)
    assert defined == module.__name__, f"{name} is defined in {defined}, not {module.__name__}"


def test_the_package_imports_each_public_name_from_its_defining_module():
    """No second import path: `__init__.py` takes each name from where it is defined."""
    tree = ast.parse((PACKAGE_DIR / "__init__.py").read_text())
    imported = {
        alias.asname or alias.name: node.module.removeprefix(f"{PKG}.")
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert {name: imported.get(name) for name in DEFINED_IN} == DEFINED_IN


def test_import_loads_no_orbax():
    code = (
        "import sys, sleep_consolidation\n"
        "bad = sorted(m for m in sys.modules if m == 'orbax' or m.startswith('orbax.'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    root = PACKAGE_DIR.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, f"orbax modules after import: {out.stdout}{out.stderr[-2000:]}"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def private_uses(text: str, me: str, label: str = "") -> list[str]:
    """`from sleep_consolidation.m import _x` and `m._x` (m an imported library module or
    anything in one) in the source `text` of module `me`, where m is not `me`."""
    tree = ast.parse(text, label)
    found, names = [], {}  # names: local name -> the library module or object it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.append(f"{label}:{node.lineno}: relative import (write it in full)")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PKG:
            for alias in node.names:
                if alias.name.startswith("_") and node.module != me:
                    found.append(f"{label}:{node.lineno}: from {node.module} import {alias.name}")
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PKG:
                    names[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else PKG
                    )
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__") and node.attr.endswith("__"):
            continue
        chain, base = [], node.value
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if isinstance(base, ast.Name) and base.id in names:
            owner = ".".join([names[base.id], *reversed(chain)])
            if owner != me:
                found.append(f"{label}:{node.lineno}: {owner}.{node.attr}")
    return found


def test_no_library_module_uses_another_modules_private_names():
    found = [
        use
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        for use in private_uses(path.read_text(), _module_name(path), str(path.name))
    ]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_private_name_scan_sees_both_forms():
    """The scan above finds what it looks for (a scan that finds nothing proves nothing)."""
    text = (
        "from sleep_consolidation.rules.chunked import _unit_lower_inverse\n"
        "from sleep_consolidation import sequence\n"
        "from sleep_consolidation.training import run_config as rc\n"
        "x = sequence._hidden(rc._check_optional_int, sequence.forward)\n"
        "y = _own_helper, sequence.__name__\n"
    )
    found = private_uses(text, f"{PKG}.analysis.probe", "probe.py")
    assert len(found) == 3, found
    # The same text in chunked itself: its own private name is its own business.
    assert private_uses(text, f"{PKG}.rules.chunked", "probe.py") == found[1:]


def _role(module: str) -> str:
    """The folder of `module` (layers, rules, ...), or "contract" for a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else "contract"


# What each role may import from the library, beyond itself (README, "Layout").
MAY_IMPORT = {
    "contract": {"layers", "rules"},
    "layers": {"contract", "rules"},
    "rules": {"contract", "layers"},
    "tasks": set(),
    "analysis": {"contract", "layers", "rules", "tasks"},
    "training": {"contract", "layers", "rules", "tasks", "analysis"},
}


def layer_violations(text: str, me: str) -> list[str]:
    """Imports in `text` (module `me`, anywhere in the file) that go against MAY_IMPORT."""
    found = []
    for node in ast.walk(ast.parse(text)):
        targets = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PKG:
            subpackage = node.module.count(".") == 1 and node.module.split(".")[1] in MAY_IMPORT
            if node.module == PKG or subpackage:  # `from sleep_consolidation[.role] import m`
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                targets = [node.module]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] == PKG]
        for target in targets:
            role, mine = _role(target), _role(me)
            if role != mine and role not in MAY_IMPORT[mine]:
                found.append(f"{me} ({mine}) imports {target} ({role})")
    return found


def test_each_role_imports_only_the_roles_it_may():
    found = [
        v
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        if path.name != "__init__.py" or path.parent != PACKAGE_DIR
        for v in layer_violations(path.read_text(), _module_name(path))
    ]
    assert not found, "\n".join(found)
    probe = "from sleep_consolidation.training import run_config\n"
    assert layer_violations(probe, f"{PKG}.analysis.capacity")
    assert not layer_violations(probe, f"{PKG}.training.train")

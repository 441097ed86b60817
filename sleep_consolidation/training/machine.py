"""The machine a run computes on. Results differ between CPU models (another instruction
set rounds differently, and the trajectory drifts), so every run's summary.json names the
machine of each process that trained it (`machine`, `machines`), and a run resumed on a
machine that computes differently is flagged: its numbers are those of no single machine.
"""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

import jax

# The fields that decide a run's arithmetic; `host` and `cores` do not.
NUMERICS_FIELDS = ("cpu", "cpu_id", "isa", "backend", "device", "jax", "jaxlib")
# The instruction-set extensions XLA's CPU backend picks its kernels by, widest first.
_ISA = ("avx512f", "avx2", "avx", "neon", "asimd")


def _cpuinfo() -> dict[str, str]:
    """The first processor's entries of /proc/cpuinfo ({} where there is none)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def describe() -> dict[str, Any]:
    """This process's machine: the CPU (model name, vendor/family/model, widest vector
    extension), cores, the JAX backend and device kind, the JAX and jaxlib versions, host."""
    import jaxlib

    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    cpu_id = "/".join(info[k] for k in ("vendor_id", "cpu family", "model") if k in info)
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_id": cpu_id or None,
        "isa": next((x for x in _ISA if x in flags), None),
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "host": socket.gethostname(),
    }


def numerics(machine: dict[str, Any]) -> tuple:
    """What of `machine` decides the arithmetic: two machines alike here compute a run
    alike (bit for bit on CPU, as the resume tests check)."""
    return tuple(machine.get(k) for k in NUMERICS_FIELDS)


def add_machine(machines: list[dict[str, Any]], machine: dict[str, Any]) -> list[dict]:
    """`machines` (of a run's earlier processes, in order) with `machine` appended unless
    the last one computes alike."""
    if machines and numerics(machines[-1]) == numerics(machine):
        return list(machines)
    return [*machines, machine]

"""The machine a run computes on. Results differ between machines (another CPU model or
core count can order a sum differently, and the trajectory drifts), so every run's
summary.json names the machine that trained it, and each one it was resumed on (`machine`,
`machines`; in a multi-process run, process 0's, which writes the summary); a run resumed
on a machine that may compute differently is flagged: its numbers are no single machine's.
"""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

import jax

# The fields that may decide a run's arithmetic (cores: the CPU backend's thread pool may
# split a sum by thread count); the host name does not.
NUMERICS_FIELDS = ("cpu", "cpu_id", "isa", "cores", "backend", "device", "jax", "jaxlib")
# The vector extensions XLA's CPU backend picks its kernels by, widest first (x86, ARM).
_ISA = ("avx512f", "avx2", "avx", "sve2", "sve", "asimd")
# What stands for the machines of a run's processes that predate these records.
UNRECORDED = {"cpu": "unrecorded", "unrecorded": True}


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
    # x86: vendor/family/model; ARM (Linux): implementer/part, which name the core design.
    keys = ("vendor_id", "cpu family", "model") if "vendor_id" in info else (
        "CPU implementer", "CPU part")  # fmt: skip
    cpu_id = "/".join(info[k] for k in keys if k in info)
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_id": cpu_id or None,
        "isa": next((x for x in _ISA if x in flags), None),
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": jax.local_devices()[0].device_kind,
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


def changed(machines: list[dict[str, Any]]) -> list[str]:
    """The fields that differ between the recorded machines of one run ([] if one machine,
    or only one recorded: an unrecorded one cannot be compared)."""
    known = [m for m in machines if not m.get("unrecorded")]
    return [k for k in NUMERICS_FIELDS if len({repr(m.get(k)) for m in known}) > 1]


def name(machine: dict[str, Any] | None) -> str:
    """A machine in one line, for reports: CPU (its id, vector extension, cores), backend
    and device, JAX version."""
    if not machine or machine.get("unrecorded"):
        return "unrecorded"
    m = machine
    return (f"{m.get('cpu')} ({m.get('cpu_id')}, {m.get('isa')}, {m.get('cores')} cores), "
            f"{m.get('backend')} {m.get('device')}, jax {m.get('jax')}")  # fmt: skip

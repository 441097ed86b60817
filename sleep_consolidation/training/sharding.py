"""Data parallelism over a `jax.sharding` mesh, and multi-host start-up.

The mesh has one axis, `data`. Parameters and optimizer state are replicated; a batch is
split along its leading axis. The recurrence needs no communication: with replicated
parameters and a loss that is a mean over the sharded batch, XLA inserts the gradient
all-reduce by itself.

Multi-host (several processes): every process calls `maybe_initialize_distributed` before
anything else touches JAX, then runs the same program. Each process builds the same global
batch from (seed, step) and `shard_batch` hands only its own rows to its own devices, so
the data order does not depend on the number of processes or devices.

    maybe_initialize_distributed()          # no-op unless asked (flags or JAX_* env vars)
    mesh = make_data_mesh()                 # every device of every process
    params = replicate(params, mesh)
    batch = shard_batch(task.batch(seed, step, batch_size), mesh)
"""

from __future__ import annotations

import os
import socket
import time

import jax
import numpy as np
from absl import logging

DATA_AXIS = "data"
# Read when the matching argument of `maybe_initialize_distributed` is None.
# (JAX itself reads JAX_COORDINATOR_ADDRESS; the other two are this project's.)
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


DEFAULT_INIT_TIMEOUT_S = 300  # JAX's own default


class DistributedInitError(RuntimeError):
    """Multi-host initialisation could not start: the coordinator is unreachable."""


def _wait_for_coordinator(address: str, timeout_s: float, who: str) -> None:
    """Returns once `address` ("host:port") accepts a TCP connection; raises
    DistributedInitError after `timeout_s`. JAX's own client aborts the whole process
    (a C++ fatal error, no Python exception) when its deadline passes, so a worker checks
    on the host first and fails with a message a user can act on."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedInitError(f"coordinator_address must be host:port, got {address!r}")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedInitError(
                    f"multi-host initialisation: {who} could not reach the coordinator "
                    f"{address} within {timeout_s:g} s ({e}); start process 0 first, or "
                    "check the address, the port and the network"
                ) from e
            time.sleep(0.2)


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    timeout_s: float = DEFAULT_INIT_TIMEOUT_S,
) -> bool:
    """Calls `jax.distributed.initialize` if a multi-process run is asked for.

    Must run before any other JAX call of the process (and at most once).

    Args:
      coordinator_address: "host:port" of process 0 (default: $JAX_COORDINATOR_ADDRESS).
      num_processes: number of processes (default: $JAX_NUM_PROCESSES).
      process_id: this process's index in [0, num_processes) (default: $JAX_PROCESS_ID).
      auto: initialize even with nothing given, letting JAX detect the cluster (Cloud TPU,
        SLURM, Open MPI, Kubernetes).
      timeout_s: how long every process waits for the others (JAX's
        `initialization_timeout`); a worker (process_id > 0) first waits this long for the
        coordinator to accept connections, and raises DistributedInitError naming it if
        it never does. (Past it, JAX itself ends the process with DEADLINE_EXCEEDED.)

    Returns:
      True if `jax.distributed.initialize` was called.

    Raises:
      ValueError: a timeout that is not a positive number.
      DistributedInitError: a worker could not reach the coordinator in time.
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    env = os.environ
    coordinator_address = coordinator_address or env.get(ENV_COORDINATOR) or None
    if num_processes is None and env.get(ENV_NUM_PROCESSES):
        num_processes = int(env[ENV_NUM_PROCESSES])
    if process_id is None and env.get(ENV_PROCESS_ID):
        process_id = int(env[ENV_PROCESS_ID])
    if not auto and (coordinator_address, num_processes, process_id) == (None, None, None):
        return False
    # Cross-process collectives on CPU need an implementation (gloo is the default of
    # recent jaxlibs; older ones had none). Harmless on GPU/TPU.
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address is not None and process_id:
        who = f"process {process_id} of {num_processes}"
        _wait_for_coordinator(coordinator_address, timeout_s, who)
    # Said before the call: if the others never join, JAX ends the process at the timeout.
    logging.warning(
        "multi-host initialisation: coordinator %s, process %s of %s; waiting up to %g s "
        "for every process", coordinator_address or "(auto-detected)", process_id,
        num_processes, timeout_s,
    )  # fmt: skip
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=int(max(1, round(timeout_s))),
    )
    return True


def is_main_process() -> bool:
    """True on process 0, the one that writes a run's metrics, summary and config."""
    return jax.process_index() == 0


def make_data_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh with axis `data` over the first `num_devices` devices (default: all).

    Raises:
      ValueError: num_devices is not in [1, jax.device_count()], or a multi-process run
        asks for fewer than all devices (every process must hold part of the mesh).
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= len(devices):
        raise ValueError(
            f"data parallelism over {num_devices!r} devices: need an int in "
            f"[1, {len(devices)}] (the devices here: {len(devices)})"
        )
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(
            f"a run of {jax.process_count()} processes must use all {len(devices)} devices "
            f"for data parallelism, got {n}"
        )
    # Auto axes: XLA propagates the shardings through the model (the model code carries no
    # sharding annotations, which explicit axes would require).
    return jax.make_mesh(
        (n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:n]
    )


def mesh_from_config(data_parallel) -> jax.sharding.Mesh | None:
    """The mesh for a config's `data_parallel`: None for False/1 (one device, as without
    data parallelism), all devices for True, the first n devices for an int n."""
    if data_parallel is True:
        return make_data_mesh()
    n = 1 if data_parallel is False else data_parallel
    if n != 1:
        return make_data_mesh(n)
    if jax.process_count() > 1:
        raise ValueError(
            f"a run of {jax.process_count()} processes needs data_parallel=True (or "
            f"{jax.device_count()}), got {data_parallel!r}"
        )
    return None


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.P())


def batch_sharded(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh, name: str = "batch_size"):
    """Raises ValueError unless `batch_size` splits evenly over the mesh's devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"{name} {batch_size} is not divisible by the {n} devices of the data-parallel "
            f"mesh; use a multiple of {n} (e.g. {batch_size + (-batch_size % n)}) or fewer "
            "devices (config.data_parallel)"
        )


def _put_global(x, sharding: jax.sharding.NamedSharding) -> jax.Array:
    # Every process holds the same full `x`; each puts only the pieces its own devices
    # hold, so nothing crosses processes.
    x = np.asarray(x)
    pieces = [
        jax.device_put(x[index], device)
        for device, index in sharding.addressable_devices_indices_map(x.shape).items()
    ]
    return jax.make_array_from_single_device_arrays(x.shape, sharding, pieces)


def shard_batch(batch, mesh: jax.sharding.Mesh):
    """Splits a global host batch (a pytree of [B, ...] arrays, the same on every process)
    along B over the mesh's `data` axis; each process transfers only its own rows.

    Raises:
      ValueError: B is not divisible by the number of devices.
    """
    sharding = batch_sharded(mesh)
    leaves = jax.tree_util.tree_leaves(batch)
    for size in {np.shape(x)[0] for x in leaves}:
        check_batch_size(size, mesh)
    return jax.tree_util.tree_map(lambda x: _put_global(x, sharding), batch)


def replicate(tree, mesh: jax.sharding.Mesh):
    """A copy of `tree` (host or single-device arrays, the same on every process) on every
    device of the mesh."""
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(lambda x: _put_global(x, sharding), tree)


def abstract_with_sharding(abstract_tree, sharding: jax.sharding.Sharding):
    """`jax.ShapeDtypeStruct`s of `abstract_tree` (e.g. from `jax.eval_shape`) carrying
    `sharding`: what a checkpoint is restored into."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_tree
    )

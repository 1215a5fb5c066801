"""Several processes, one run: start-up, each host's slice of the data, one writer.

In: the environment of a process (a multi-host TPU VM, or explicit coordinator variables) and,
per step, the rows of the global batch this process read. Out: an initialised JAX distributed
runtime (or nothing on one process), the (shard index, shard count) each process passes to
``moejax.data.train_batches``, global ``jax.Array`` batches built from the processes' rows, and
``is_primary()`` for the writes that must happen once (metrics, plots, run config; orbax
coordinates the checkpoint writes itself).

Launch on a multi-host TPU VM: run the same command on every host
(``gcloud compute tpus tpu-vm ssh NAME --worker=all --command='moejax train ...'``); the TPU
environment (``TPU_WORKER_HOSTNAMES`` lists more than one host) is detected. Elsewhere set, on
every process, ``JAX_COORDINATOR_ADDRESS=host:port``, ``MOEJAX_NUM_PROCESSES=n`` and
``MOEJAX_PROCESS_ID=i``.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding

from moejax.errors import ConfigError


def distributed_settings(environ: Mapping[str, str] | None = None) -> dict | None:
    """Arguments for ``jax.distributed.initialize`` from the environment; None on one process.

    Explicit variables win: ``JAX_COORDINATOR_ADDRESS`` (or ``MOEJAX_COORDINATOR_ADDRESS``) with
    ``MOEJAX_NUM_PROCESSES`` and ``MOEJAX_PROCESS_ID``. Otherwise a multi-host TPU VM (more than
    one name in ``TPU_WORKER_HOSTNAMES``) gives ``{}``: JAX reads the TPU metadata itself.
    """
    env = os.environ if environ is None else environ
    address = env.get("MOEJAX_COORDINATOR_ADDRESS") or env.get("JAX_COORDINATOR_ADDRESS")
    if address:
        missing = [k for k in ("MOEJAX_NUM_PROCESSES", "MOEJAX_PROCESS_ID") if k not in env]
        if missing:
            raise ConfigError(f"coordinator address {address!r} is set but {', '.join(missing)} "
                              f"is not: set both on every process")
        num, index = int(env["MOEJAX_NUM_PROCESSES"]), int(env["MOEJAX_PROCESS_ID"])
        if num < 1 or not 0 <= index < num:
            raise ConfigError(f"MOEJAX_PROCESS_ID = {index} must be in [0, MOEJAX_NUM_PROCESSES = "
                              f"{num})")
        if num == 1:
            return None
        return {"coordinator_address": address, "num_processes": num, "process_id": index}
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return {}
    return None


def maybe_initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """Call ``jax.distributed.initialize`` when the environment says there are several processes.

    Must run before anything touches the devices. Returns whether it initialised; a no-op (False)
    on one process and when already initialised.
    """
    settings = distributed_settings(environ)
    if settings is None:
        return False
    from jax._src import distributed as _distributed  # noqa: PLC0415 (no public "is initialised")

    if getattr(_distributed.global_state, "client", None) is not None:
        return False
    jax.distributed.initialize(**settings)
    return True


def is_primary() -> bool:
    """True on the process that writes metrics, plots and run configs (process 0)."""
    return jax.process_index() == 0


def process_batch_shard(sharding: NamedSharding, shape: tuple[int, ...]) -> tuple[int, int]:
    """(shard_index, num_shards) of this process's rows of a global batch array of ``shape``
    (B, T) placed with ``sharding``.

    The rows this process's devices hold must be one contiguous block; with ``jax.make_mesh`` a
    process's devices are contiguous along the leading mesh axes, which the batch uses. On one
    process: (0, 1).
    """
    batch_size = shape[0]
    rows = set()
    for index in sharding.addressable_devices_indices_map(shape).values():
        rows.add(index[0].indices(batch_size)[:2])
    start = min(r[0] for r in rows)
    stop = max(r[1] for r in rows)
    covered = set(range(start, stop))
    held = set().union(*(set(range(a, b)) for a, b in rows))
    local = stop - start
    if held != covered or batch_size % local or start % local:
        raise ConfigError(f"this process's devices hold rows {sorted(rows)} of the batch of "
                          f"{batch_size}: not one aligned block; put the mesh axes that cross "
                          f"hosts in the batch rule (data, fsdp)")
    return start // local, batch_size // local


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding,
                 batch_size: int) -> dict[str, jax.Array]:
    """This process's rows -> global (B, ...) arrays with ``sharding`` (every process calls it)."""
    return {key: jax.make_array_from_process_local_data(
                sharding, np.asarray(value), (batch_size,) + np.shape(value)[1:])
            for key, value in local_batch.items()}

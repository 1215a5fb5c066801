"""Before booking the machines: every run of a sweep compiled for a TPU slice or a set of
NVIDIA GPUs by the target's own compiler, here.

In: a prepared sweep (its manifest and run directories, each with ``run.gin``) and a topology
name ("v5e:4x4", "h100:8"). Out: one record per run, printed as it finishes and kept in
``<root>/preflight.json`` (rewritten atomically after each run): "fits" with the memory each
device needs (XLA's memory analysis, activations included), "too big" with the compiler's own
figures (XLA:TPU's refusal, or more than JAX's allocator takes of a GPU), "compiled" where the
device's memory is not known, "config error" or "failed" with the error. Compiling runs
nothing: each program takes seconds to minutes on CPU, no accelerator needed (compile-only
devices, ``moejax.parallel.topology``), and runs that differ only in what the compiled step
takes as numbers (tokens, learning rate: ``program_key``) share one compile
(``same_program_as`` in their records).
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable

from moejax import files
from moejax.errors import ConfigError

PREFLIGHT = "preflight.json"
_GIB = 2.0 ** 30


# TrainConfig fields that change the compiled step's buffers; the others (steps, learning rate
# and its schedule's numbers, seed, checkpoint and eval cadence) are scalars in the same program
_PROGRAM_TRAIN_FIELDS = ("grad_accum_steps", "schedule")


def program_key(model, data, train, mesh) -> str:
    """What decides a run's compiled training step and so its memory: the model, the batch's
    shape, the mesh and the train fields that shape buffers. Runs of a grid that differ only in
    tokens (steps) or learning rate share it, and one compile answers for all of them."""
    shaping = {name: getattr(train, name) for name in _PROGRAM_TRAIN_FIELDS}
    return repr((model, data.batch_size, data.seq_len, mesh, shaping, train.grad_clip_norm > 0))


def _load_run(run_dir: str):
    """(model, data, train, mesh) configs of a run, from its run.gin."""
    import gin

    from moejax.parallel.mesh import configured_mesh
    from moejax.train.cli import load_configs

    gin.clear_config()
    try:
        model, data, train = load_configs([os.path.join(run_dir, "run.gin")], [])
        return model, data, train, configured_mesh()
    finally:
        gin.clear_config()


def _compile_run(configs, topology_name: str) -> dict:
    """The record of one run's program: its mesh, parameters and ``compiled`` memory, or its
    error."""
    from moejax.train.lower import DoesNotFit, compile_train_step

    try:
        _, summary = compile_train_step(*configs, topology_name)
    except DoesNotFit as error:
        figures = re.search(r"RESOURCE_EXHAUSTED: (.*)", str(error))
        return {"status": "too big", "error": (figures.group(1) if figures else str(error))[:400]}
    except ConfigError as error:
        return {"status": "config error", "error": str(error)}
    except Exception as error:  # noqa: BLE001 - the compiler refused the run: keep its words
        return {"status": "failed", "error": f"{type(error).__name__}: {error}"[:2000]}
    compiled = summary.compiled
    status = {True: "fits", False: "too big", None: "compiled"}[compiled["fits"]]
    return {"status": status, "device": summary.device, "devices": summary.devices,
            "mesh": summary.mesh, "parameters": summary.parameters, **compiled}


def describe(record: dict) -> str:
    """One line: the verdict and the HBM per device, or the error."""
    if "total_bytes" not in record:
        return f"{record['status']}: {record['error']}"
    hbm = record["hbm_bytes"]
    of = "" if hbm is None else f" of {hbm / _GIB:.0f}"
    return (f"{record['status']}: {record['total_bytes'] / _GIB:.2f} GiB{of} per device "
            f"(temporaries {record['temp_bytes'] / _GIB:.2f}), {record['parameters']:,} "
            f"parameters, mesh {record['mesh']}, compiled in {record['seconds']} s")


def preflight(root: str, manifest: dict, topology_name: str, *,
              log: Callable[[str], None] = print) -> list[dict]:
    """Compile every run of ``manifest`` for ``topology_name``; the records, in manifest order.

    A topology that cannot be had (malformed name, no libtpu or CUDA plugin) stops before the
    first run with a ConfigError; a run that fails is recorded and the next one goes on."""
    from moejax.parallel import topology

    topology.compile_only_devices(topology_name)  # the name, libtpu or the plugin: checked once
    runs = manifest["runs"]
    path = os.path.join(root, PREFLIGHT)
    records, compiled = [], {}  # program key -> (run_id, record) of its first run
    log(f"compiling {len(runs)} run(s) for {topology_name} (the target's own compiler on this "
        f"machine; seconds to minutes each, once per distinct program) -> {path}")
    for index, run in enumerate(runs, 1):
        record = {"run_id": run["run_id"], "values": run["values"], "topology": topology_name}
        try:
            configs = _load_run(run["dir"])
        except Exception as error:  # noqa: BLE001 - a run.gin that does not load (gin's words)
            record.update(status="config error", error=f"{type(error).__name__}: {error}")
        else:
            key = program_key(*configs)
            if key in compiled:
                first, result = compiled[key]
                record.update(result, same_program_as=first)
            else:
                result = _compile_run(configs, topology_name)
                compiled[key] = (run["run_id"], result)
                record.update(result)
        records.append(record)
        files.write_atomic(path, json.dumps(records, indent=1, default=str) + "\n")
        same = f" (same program as {record['same_program_as']})" if "same_program_as" in \
            record else ""
        log(f"[{index}/{len(runs)}] {run['run_id']}: {describe(record)}{same}")
    return records


def exit_status(records: list[dict]) -> int:
    """0 when every run compiled (and fits where known), 3 when one is too big, 1 when one
    failed to compile or its config is wrong."""
    statuses = {record["status"] for record in records}
    if statuses & {"failed", "config error"}:
        return 1
    return 3 if "too big" in statuses else 0

"""Before booking the slice: every run of a sweep compiled by XLA:TPU for a TPU topology, here.

In: a prepared sweep (its manifest and run directories, each with ``run.gin``) and a topology
name ("v5e:4x4"). Out: one record per run, printed as it finishes and kept in
``<root>/preflight.json`` (rewritten atomically after each run): "fits" with the HBM each
device needs (XLA's memory analysis, activations included), "too big" with the compiler's own
figures, "compiled" where the chip's HBM is not known, "config error" or "failed" with the
error. Compiling runs nothing: each run takes seconds to minutes on CPU, no TPU needed
(libtpu's compile-only devices, ``moejax.parallel.topology``).
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


def _compile_run(run_dir: str, topology_name: str) -> dict:
    """The record of one run: its mesh, parameters and ``compiled`` memory, or its error."""
    import gin

    from moejax.parallel.mesh import configured_mesh
    from moejax.train.cli import load_configs
    from moejax.train.lower import DoesNotFit, compile_train_step

    gin.clear_config()
    try:
        model, data, train = load_configs([os.path.join(run_dir, "run.gin")], [])
        _, summary = compile_train_step(model, data, train, configured_mesh(), topology_name)
    except DoesNotFit as error:
        figures = re.search(r"RESOURCE_EXHAUSTED: (.*)", str(error))
        return {"status": "too big", "error": (figures.group(1) if figures else str(error))[:400]}
    except ConfigError as error:
        return {"status": "config error", "error": str(error)}
    except Exception as error:  # noqa: BLE001 - the compiler refused the run: keep its words
        return {"status": "failed", "error": f"{type(error).__name__}: {error}"[:2000]}
    finally:
        gin.clear_config()
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

    A topology that cannot be had (malformed name, no libtpu) stops before the first run with a
    ConfigError; a run that fails is recorded and the next one goes on."""
    from moejax.parallel import topology

    topology.compile_only_devices(topology_name)  # the name and libtpu, checked once
    runs = manifest["runs"]
    path = os.path.join(root, PREFLIGHT)
    records = []
    log(f"compiling {len(runs)} run(s) for TPU {topology_name} (XLA:TPU on this machine; "
        f"seconds to minutes each) -> {path}")
    for index, run in enumerate(runs, 1):
        record = {"run_id": run["run_id"], "values": run["values"], "topology": topology_name,
                  **_compile_run(run["dir"], topology_name)}
        records.append(record)
        files.write_atomic(path, json.dumps(records, indent=1, default=str) + "\n")
        log(f"[{index}/{len(runs)}] {run['run_id']}: {describe(record)}")
    return records


def exit_status(records: list[dict]) -> int:
    """0 when every run compiled (and fits where known), 3 when one is too big, 1 when one
    failed to compile or its config is wrong."""
    statuses = {record["status"] for record in records}
    if statuses & {"failed", "config error"}:
        return 1
    return 3 if "too big" in statuses else 0

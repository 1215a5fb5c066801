"""Accelerators without the accelerator: compile-only devices, for the target's own compiler.

A name is a TPU slice ("v5e:4x4", below) or NVIDIA GPUs ("h100", "h100:8": XLA:GPU's
deviceless compile, ``moejax.parallel.gpu_topology``); ``compile_only_devices`` takes either.

TPU devices come from libtpu's compile-only topologies, for XLA:TPU's own compiler.

In: a Cloud TPU topology name, "<generation>:<chips per axis>" ("v5e:2x2", "v5e:4x4",
"v5p:2x2x1", "v6e:2x4", "v4:2x2x2"). Out: its devices. Nothing runs on them, but
``jax.jit(f).lower(...).compile()`` over a mesh of them runs the real TPU compiler (XLA:TPU and
Mosaic for the Pallas kernels) on this machine: what ``jax.export`` cannot show (VMEM
overflows, the HBM a program needs per device) shows here, exactly as on the TPU.

This needs libtpu (Linux x86_64 wheels only). ``launch/setup.sh dev`` installs the version
JAX's ``tpu`` extra pins into ``<venv>/libtpu-aot``, off the import path: an importable libtpu
makes every JAX start look for a TPU (and log that it found none). It is loaded only here, on
first use, with the environment that tells it not to ask a TPU VM's metadata server.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys

from moejax.errors import ConfigError
from moejax.parallel import gpu_topology, native

LIBTPU_DIR = "libtpu-aot"  # under the virtual environment (sys.prefix)

# HBM of one device, GiB, by device kind (Cloud TPU's published per-chip figures; libtpu lists a
# v5p chip as one device). Left out: v4, whose compile-only topology lists each of a chip's two
# TensorCores as a device (8 for v4:2x2x1), where a v4 VM shows one per chip. No verdict there.
HBM_GIB = {"TPU v5 lite": 16, "TPU v5": 95, "TPU v6 lite": 32}

_NAME = re.compile(r"^(v\d+[a-z]*):(\d+(?:x\d+){1,2})$")
_HOST_BOUNDS = (2, 2, 1)  # libtpu's default chips per host
# libtpu reads these when it is loaded; without them it asks the metadata server of a TPU VM,
# and a second process loading it (a test run beside a sweep's preflight) finds the lock file
# of the first and stops: compile-only devices hold no TPU, so several processes may share.
_QUIET = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
          "TPU_WORKER_ID": "0", "TPU_ACCELERATOR_TYPE": "v5litepod-4",
          "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def libtpu_path() -> str | None:
    """libtpu.so: ``TPU_LIBRARY_PATH``, else ``<venv>/libtpu-aot``, else an installed libtpu
    package; None if none of them has it."""
    candidates = [os.environ.get("TPU_LIBRARY_PATH", ""),
                  os.path.join(sys.prefix, LIBTPU_DIR, "libtpu", "libtpu.so")]
    spec = importlib.util.find_spec("libtpu")
    if spec is not None and spec.submodule_search_locations:
        candidates += [os.path.join(d, "libtpu.so") for d in spec.submodule_search_locations]
    return next((path for path in candidates if path and os.path.isfile(path)), None)


def libtpu_requirement() -> str:
    """The libtpu requirement of this JAX's ``tpu`` extra, e.g. "libtpu==0.0.42.*"."""
    from importlib import metadata

    for requirement in metadata.requires("jax") or []:
        spec, _, marker = requirement.partition(";")
        if spec.strip().startswith("libtpu") and "tpu" in marker:
            return spec.strip().replace(" ", "")
    return "libtpu"


def install_command() -> str:
    return (f"{sys.executable} -m pip install --target {os.path.join(sys.prefix, LIBTPU_DIR)} "
            f"'{libtpu_requirement()}'")


def parse_name(name: str) -> tuple[str, tuple[int, ...]]:
    """("v5e", (2, 2)) from "v5e:2x2"; a ConfigError naming the form otherwise."""
    match = _NAME.match(name.strip())
    if match is None:
        raise ConfigError(f"topology {name!r}: write a TPU slice as <generation>:<chips per "
                          "axis>, e.g. v5e:2x2, v5e:4x4, v6e:2x4, v5p:2x2x1, v4:2x2x2, or GPUs "
                          f"as <gpu>[:<count>], <gpu> one of {', '.join(gpu_topology.GPUS)} "
                          "(h100, h100:8)")
    dims = tuple(int(d) for d in match.group(2).split("x"))
    if min(dims) < 1:
        raise ConfigError(f"TPU topology {name!r}: every axis needs at least one chip")
    return match.group(1), dims


def compile_only_devices(name: str) -> list:
    """The devices of TPU topology or GPU ``name``, for compiling (not running) programs."""
    if gpu_topology.is_gpu_name(name):
        return gpu_topology.compile_only_devices(name)
    _, dims = parse_name(name)
    path = libtpu_path()
    if path is None:
        raise ConfigError(f"compiling for the TPU topology {name!r} needs libtpu (Linux x86_64; "
                          f"`launch/setup.sh dev` installs it), not found. Install it with: "
                          f"{install_command()}")
    from jax.experimental import topologies

    padded = dims + (1,) * (3 - len(dims))
    kwargs = {}
    if any(d < bound for d, bound in zip(padded, _HOST_BOUNDS)):  # smaller than one host
        kwargs["chips_per_host_bounds"] = list(padded)
    # only while libtpu loads: child processes (data loaders, ...) must not find a TPU runtime
    quiet = {key: os.environ.get(key) or value for key, value in _QUIET.items()}
    with native.environment({**quiet, "TPU_LIBRARY_PATH": path}):
        try:
            devices = topologies.get_topology_desc(name.strip(), "tpu", **kwargs).devices
        except Exception as error:  # noqa: BLE001 - libtpu's own words on the name
            raise ConfigError(f"TPU topology {name!r}: libtpu refused it: {error}") from None
    if len(devices) < math.prod(dims):
        raise ConfigError(f"TPU topology {name!r}: libtpu lists {len(devices)} devices for "
                          f"{math.prod(dims)} chips")
    return list(devices)


def hbm_bytes(device_kind: str) -> int | None:
    """Memory a program may hold on one device of this kind, None where not known: a TPU's HBM;
    on a GPU, the share of it JAX's allocator takes (``gpu_topology.usable_bytes``)."""
    gib = HBM_GIB.get(device_kind)
    return gpu_topology.usable_bytes(device_kind) if gib is None else gib << 30

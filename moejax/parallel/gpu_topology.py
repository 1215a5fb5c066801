"""NVIDIA GPUs without a GPU: XLA:GPU's deviceless compile, through JAX's CUDA plugin.

In: a GPU name from ``GPUS``, alone or with a count ("h100", "h100:8" for one host of eight,
"h100:2x8" for two). Out: compile-only devices of that GPU. ``jax.jit(f).lower(...).compile()``
over a mesh of them runs XLA:GPU as the GPU's own machine would: partitioning, fusion, buffer
assignment (so the memory a program needs per GPU, activations included) and the Triton
compiler inside jaxlib for the Pallas kernels (so a kernel that asks more shared memory than
the GPU gives one block fails here, in the words it would fail in there). Nothing runs, so
there are no speeds; Mosaic GPU kernels are compiled only when a GPU loads them, so they are
lowered, not checked.

This needs the CUDA plugin of this JAX (``jax-cuda12-plugin`` and ``jax-cuda12-pjrt``, Linux
x86_64 wheels) but no CUDA libraries. ``launch/setup.sh dev`` installs the plugin into
``<venv>/cuda-aot``, off the import path: found there, JAX would try to start a CUDA backend at
every start. It is loaded only here, on first use, after this process's own backends.

A GPU is described to XLA by a ``GpuSpec``: the figures a CUDA driver reports for it (compute
capability, SMs, shared memory, L2, memory). Memory is what ``nvidia-smi`` lists as total;
JAX's allocator takes a fraction of it (``memory_fraction``: 0.75 unless set), and
``usable_bytes`` says how much that is.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import sys
from typing import NamedTuple

from moejax.errors import ConfigError
from moejax.parallel import native

PLUGIN_DIR = "cuda-aot"  # under the virtual environment (sys.prefix)
_MIB = 1 << 20


class GpuSpec(NamedTuple):
    kind: str  # device_kind, as the driver names the GPU
    capability: tuple[int, int]
    sms: int
    memory_mib: int  # total, as nvidia-smi lists it
    shared_per_block_kib: int  # opt-in maximum of one thread block
    shared_per_sm_kib: int
    l2_mib: int
    bandwidth_gbps: int  # GB/s
    clock_ghz: float


# NVIDIA's published figures (data sheets; CUDA programming guide for shared memory).
GPUS = {
    "a100-40gb": GpuSpec("NVIDIA A100-SXM4-40GB", (8, 0), 108, 40960, 163, 164, 40, 1555, 1.41),
    "a100-80gb": GpuSpec("NVIDIA A100-SXM4-80GB", (8, 0), 108, 81920, 163, 164, 40, 2039, 1.41),
    "l4": GpuSpec("NVIDIA L4", (8, 9), 58, 23034, 99, 100, 48, 300, 2.04),
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", (9, 0), 132, 81559, 227, 228, 50, 3352, 1.98),
    "h200": GpuSpec("NVIDIA H200", (9, 0), 132, 143771, 227, 228, 50, 4800, 1.98),
}
_NAME = re.compile(r"^([a-z0-9-]+?)(?::(?:(\d+)x)?(\d+))?$")


def is_gpu_name(name: str) -> bool:
    """Whether ``name`` names a GPU ("h100", "h100:8") rather than a TPU slice."""
    match = _NAME.match(name.strip().lower())
    return match is not None and match.group(1) in GPUS


def parse_name(name: str) -> tuple[GpuSpec, int, int]:
    """(spec, hosts, GPUs per host) from "h100", "h100:8" or "h100:2x8"."""
    match = _NAME.match(name.strip().lower())
    if match is None or match.group(1) not in GPUS:
        raise ConfigError(f"GPU {name!r}: write it as <gpu>[:<per host>|:<hosts>x<per host>] "
                          f"with <gpu> one of {', '.join(GPUS)} (e.g. h100, h100:8, a100-80gb:2x8)")
    hosts, per_host = int(match.group(2) or 1), int(match.group(3) or 1)
    if min(hosts, per_host) < 1:
        raise ConfigError(f"GPU {name!r}: at least one GPU on at least one host")
    return GPUS[match.group(1)], hosts, per_host


def target_config(spec: GpuSpec) -> str:
    """The GPU as XLA's ``GpuTargetConfig`` text proto: what a deviceless compile reads where a
    compile on the GPU would ask the driver."""
    major, minor = spec.capability
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {spec.shared_per_sm_kib * 1024}
  threads_per_core_limit: {1536 if spec.capability == (8, 9) else 2048}
  core_count: {spec.sms}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {spec.bandwidth_gbps * 10**9}
  l2_cache_size: {spec.l2_mib * _MIB}
  clock_rate_ghz: {spec.clock_ghz}
  device_memory_size: {spec.memory_mib * _MIB}
  shared_memory_per_block_optin: {spec.shared_per_block_kib * 1024}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{spec.kind}"
"""


def plugin_requirements() -> list[str]:
    """The CUDA plugin wheels of this JAX version."""
    import jax

    return [f"jax-cuda12-plugin=={jax.__version__}", f"jax-cuda12-pjrt=={jax.__version__}"]


def plugin_dir() -> str:
    return os.path.join(sys.prefix, PLUGIN_DIR)


def install_command() -> str:
    wheels = " ".join(f"'{r}'" for r in plugin_requirements())
    return f"{sys.executable} -m pip install --no-deps --target {plugin_dir()} {wheels}"


def _cuda_topologies_known() -> bool:
    """Whether this JAX already has a CUDA plugin (jax[cuda] installed, or ours loaded): that one
    describes GPUs as well, and a second could not register. Starts this process's backends
    first (plugins are discovered then), so that a plugin loaded after never becomes one."""
    import jax
    from jax._src import xla_bridge

    jax.devices()
    return "cuda" in getattr(xla_bridge, "_topology_factories", {})


def _load_plugin() -> None:
    """Register the CUDA plugin with this process's JAX, once, without starting a CUDA backend:
    the process's own backends are started first, so the plugin only adds its topologies, its
    custom calls and its Triton compiler."""
    if _cuda_topologies_known():  # loaded already, ours or jax[cuda]'s
        return
    init = os.path.join(plugin_dir(), "jax_plugins", "xla_cuda12", "__init__.py")
    if not os.path.isfile(init):
        raise ConfigError("compiling for an NVIDIA GPU without one needs this JAX's CUDA plugin "
                          f"(Linux x86_64; `launch/setup.sh dev` installs it), not found in "
                          f"{plugin_dir()}. Install it with: {install_command()}")
    if plugin_dir() not in sys.path:
        sys.path.append(plugin_dir())  # the plugin imports its extensions by package name
    spec = importlib.util.spec_from_file_location("moejax_xla_cuda_plugin", init)
    module = importlib.util.module_from_spec(spec)
    # No CUDA libraries to check: none is used. The plugin's C++ logs "Could not find cuda
    # drivers on your machine, GPU will not be used" to stderr as it loads: true, and beside
    # the point here; kept for an error only.
    with native.environment({"JAX_SKIP_CUDA_CONSTRAINTS_CHECK": "1"}), \
            native.output_captured((2,)) as said:
        try:
            spec.loader.exec_module(module)
            module.initialize()
            error = None
        except Exception as exception:  # noqa: BLE001 - the plugin's own words
            error = exception
    if error is not None:
        text = said["text"].strip()[-2000:]
        raise ConfigError(f"the CUDA plugin in {plugin_dir()} did not load ({error}"
                          f"{'; it said: ' + text if text else ''}); reinstall it: "
                          f"{install_command()}") from None
    # Mosaic GPU kernels are compiled (to sm_90a code, by the plugin's own ptxas) as XLA compiles
    # the program, and the host code that launches them is linked then: against this library's
    # symbols, which a GPU process loads with the plugin's extension
    runtime = os.path.join(plugin_dir(), "jax_cuda12_plugin", "libmosaic_gpu_runtime.so")
    if os.path.isfile(runtime):
        ctypes.CDLL(runtime, mode=os.RTLD_GLOBAL)


def compile_only_devices(name: str) -> list:
    """The compile-only devices of GPU ``name`` ("h100:8": eight of them)."""
    spec, hosts, per_host = parse_name(name)
    return devices_of(spec, hosts, per_host, label=name)


def devices_of(spec: GpuSpec, hosts: int = 1, per_host: int = 1, label: str = "") -> list:
    """Compile-only devices of ``hosts`` x ``per_host`` GPUs described by ``spec`` (one not in
    ``GPUS`` too: benchmarks/gpu_compile.py shrinks the shared memory to read a kernel's)."""
    _load_plugin()
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(platform="cuda", topology=f"1x{hosts}x{per_host}",
                                                target_config=target_config(spec))
    except Exception as error:  # noqa: BLE001 - the plugin's own words on the description
        raise ConfigError(f"GPU {label or spec.kind!r}: the CUDA plugin refused it: "
                          f"{error}") from None
    return list(topology.devices)


def spec_of(device_kind: str) -> GpuSpec | None:
    return next((spec for spec in GPUS.values() if spec.kind == device_kind), None)


def memory_fraction() -> float:
    """The share of a GPU's memory JAX's allocator may grow to: ``XLA_CLIENT_MEM_FRACTION`` (or
    its old name ``XLA_PYTHON_CLIENT_MEM_FRACTION``), else 0.75, JAX's default, preallocated
    or not; all of it with ``XLA_PYTHON_CLIENT_ALLOCATOR=platform``."""
    for key in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION"):
        if os.environ.get(key):
            return float(os.environ[key])
    return 1.0 if os.environ.get("XLA_PYTHON_CLIENT_ALLOCATOR") == "platform" else 0.75


def usable_bytes(device_kind: str) -> int | None:
    """Bytes JAX can hold on one GPU of this kind, None for a kind not in ``GPUS``."""
    spec = spec_of(device_kind)
    return None if spec is None else int(spec.memory_mib * _MIB * memory_fraction())

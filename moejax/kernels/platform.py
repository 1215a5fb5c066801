"""Which grouped-matmul implementations a device can run natively, and what "auto" means on it.

In: a backend name ("cpu", "gpu", "tpu") and, on NVIDIA GPUs, the device's compute capability.
Out: the "auto" implementation, or the reason an implementation cannot run there.

The GPU kernels need recent hardware: Pallas's Triton lowering refuses GPUs older than Ampere
(compute capability 8.0; XLA says "Triton support is only enabled for Ampere GPUs"), which
takes out the T4 of a free Colab runtime and the V100; the Mosaic GPU kernel issues Hopper's
``wgmma`` (9.x only). "cudnn" needs Triton too, for its weight gradient. On such devices "auto"
falls back to "xla" (``jax.lax.ragged_dot``: slow, but it runs) and an explicit request fails
while the model is traced, naming the device and what would run, not deep inside a compile.

On other backends the Pallas kernels run in their interpreters (the test suite does this), so
nothing is refused there. On a GPU that reports no CUDA compute capability (ROCm) the Triton
kernels are left to its own compiler; the Mosaic GPU kernel is NVIDIA's only.
``targeting(device)`` makes all of this follow another device than the one here: kernels are
chosen and built for it (``moejax lower`` exports a training step so).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import jax

TRITON_MIN_CAPABILITY = (8, 0)  # Ampere
MOSAIC_GPU_MAJOR = 9  # Hopper's wgmma; Blackwell (10.x) has another matrix instruction

_AUTO = {"cpu": "cpu", "gpu": "pallas_gpu", "tpu": "pallas_tpu"}
# A GPU of each compute capability by a name JAX's Triton lowering knows (its ``GpuVersion``):
# how ``naming_the_gpu`` tells it the architecture of a GPU it compiles for without one.
TRITON_KINDS = {(8, 0): "NVIDIA A100", (8, 6): "NVIDIA A10", (8, 9): "NVIDIA L4",
                (9, 0): "NVIDIA H100", (10, 0): "NVIDIA B200", (10, 3): "NVIDIA B300",
                (12, 0): "NVIDIA RTX PRO 6000"}

# The most shared memory one thread block may use, KiB, by compute capability (CUDA C++
# Programming Guide, "Technical Specifications per Compute Capability"). The data-centre parts
# (A100, H100, B200) allow 163-227 KiB; the A10G, L4 and RTX cards (8.6, 8.9, 12.x) only 99.
SHARED_MEMORY_PER_BLOCK_KIB = {(8, 0): 163, (8, 6): 99, (8, 7): 163, (8, 9): 99, (9, 0): 227,
                               (10, 0): 227, (10, 3): 227, (12, 0): 99, (12, 1): 99}
# What the Triton defaults were tuned and natively tested under (H100), whatever the GPU allows.
PIPELINE_BYTES_CAP = 160 * 1024
_EPILOGUE_ROOM = 3 * 1024

_MIB = 1 << 20
# VMEM of one TensorCore, and the scoped share a Mosaic kernel gets unless it asks for more
# (``vmem_limit_bytes``), MiB, by device kind. Read off XLA:TPU's own compiles on libtpu's
# compile-only devices (benchmarks/tpu_compile.py): a v4 core refuses more than 16 MiB whatever
# the limit, a v5p core 64 MiB; v5e and v6e took 88 MiB (their published VMEM is 128 MiB).
# Without a limit, v4, v5e and v5p kernels stop at 16 MiB, v6e at 32.
TPU_VMEM_MIB = {"TPU v4": (16, 16), "TPU v5 lite": (128, 16), "TPU v5": (64, 16),
                "TPU v6 lite": (128, 32)}
# Custom calls a program built for a target may hold that carry no jax.export compatibility
# guarantee (``DisabledSafetyCheck.custom_call``): the Triton kernels, the ragged all-to-all.
EXPORT_UNGUARANTEED_CALLS = ("__gpu$xla.gpu.triton", "ragged_all_to_all")


class Device(NamedTuple):
    backend: str  # the device's platform, as jax.default_backend() names it: cpu, gpu, tpu
    kind: str  # device_kind, e.g. "NVIDIA H100 80GB HBM3", "Tesla T4", "cpu"
    capability: tuple[int, int] | None  # CUDA compute capability; None off NVIDIA GPUs


_targets: list[Device] = []


def current() -> Device:
    """The device kernels are chosen and built for: the default device, or the one named by an
    enclosing ``targeting`` (lowering for an accelerator from a machine without it)."""
    if _targets:
        return _targets[-1]
    return device_of(jax.devices()[0])


def device_of(device) -> Device:
    """The Device kernels are built for on this JAX device, a compile-only one too."""
    return Device(device.platform, device.device_kind, cuda_capability(device))


@contextlib.contextmanager
def targeting(device: Device):
    """Choose and build kernels for ``device`` inside: "auto" picks its kernel, the kernels
    lower for its hardware instead of their interpreters, the expert-parallel exchange is its
    own. For ``jax.export`` to that platform; a program built so cannot run here."""
    _targets.append(device)
    try:
        yield device
    finally:
        _targets.pop()


def naming_the_gpu(device: Device):
    """A context to trace a Triton kernel for ``device`` in. JAX >= 0.11's Triton lowering asks
    the abstract mesh the kernel was traced under which GPU it compiles for, and where that is
    no GPU (this CPU, lowering for one) it stops: "No supported GPU devices found". This puts in
    force an abstract mesh without axes (so the kernel's operands, whatever mesh they come
    from, are not checked against it) that names the target's architecture (``TRITON_KINDS``).
    A no-op for other targets, on a GPU (Triton asks the driver) and where the mesh in force
    names a GPU already (compile-only ones); JAX 0.10 does not ask."""
    named = jax.sharding.get_abstract_mesh().abstract_device
    if (device.backend != "gpu" or jax.default_backend() == "gpu"
            or (named is not None and named.platform in ("gpu", "cuda"))):
        return contextlib.nullcontext()
    gpu = jax.sharding.AbstractDevice(device_kind=TRITON_KINDS.get(device.capability, device.kind),
                                      num_cores=None, platform="cuda")
    return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=gpu))


def target_device(platform_name: str, capability: tuple[int, int] | None = None) -> Device:
    """The Device ``targeting`` takes for an export platform: "tpu", or "cuda" with a compute
    capability (default 9.0, an H100)."""
    if platform_name == "tpu":
        return Device("tpu", "TPU (lowering target)", None)
    if platform_name == "cuda":
        capability = capability or (9, 0)
        return Device("gpu", "NVIDIA GPU sm_%d%d (lowering target)" % capability, capability)
    raise ValueError(f"lowering target {platform_name!r}: one of 'tpu', 'cuda'")


def parse_capability(text: str) -> tuple[int, int] | None:
    """(major, minor) from a compute capability written "8.6" (or "12"), None if it is not one."""
    major, _, minor = str(text).partition(".")
    if not (major.isdigit() and (minor.isdigit() or minor == "")):
        return None
    return int(major), int(minor or 0)


def cuda_capability(device) -> tuple[int, int] | None:
    """(major, minor) from a JAX device's ``compute_capability``, None if it has none."""
    return parse_capability(getattr(device, "compute_capability", "") or "")


def shared_memory_per_block(capability: tuple[int, int] | None) -> int | None:
    """Bytes of shared memory one block may use on this NVIDIA GPU (an unlisted capability gets
    the smallest listed limit), None where unknown (no NVIDIA GPU)."""
    if capability is None:
        return None
    kib = SHARED_MEMORY_PER_BLOCK_KIB.get(capability, min(SHARED_MEMORY_PER_BLOCK_KIB.values()))
    return kib * 1024


def pipeline_bytes(capability: tuple[int, int] | None) -> int:
    """Shared memory a Triton kernel's pipelined tiles may take: the GPU's per-block limit less
    room for the epilogue, at most ``PIPELINE_BYTES_CAP`` (also where the limit is unknown)."""
    limit = shared_memory_per_block(capability)
    return PIPELINE_BYTES_CAP if limit is None else min(PIPELINE_BYTES_CAP, limit - _EPILOGUE_ROOM)


def pipeline_buffers(stages: int, capability: tuple[int, int] | None) -> int:
    """Tile pairs a Triton k loop of ``stages`` stages keeps in shared memory: one per stage on
    Hopper, one fewer on Ampere and Ada (one at least, for the dot's operands), both loading
    with cp.async. Read off Triton's compiled kernels (benchmarks/triton_compile.py):
    the bf16 forward takes 48 / 48 / 96 KiB at 1 / 2 / 3 stages on 8.x, 48 / 96 / 144 on 9.0.
    Unknown devices are counted as Hopper (the larger)."""
    if capability is not None and capability < (9, 0):
        return max(stages - 1, 1)
    return stages


def tpu_vmem_limit(need_bytes: int, kind: str) -> int | None:
    """``vmem_limit_bytes`` for a Mosaic TPU kernel whose pipelined blocks and scratch take
    ``need_bytes``: None (the compiler's default scope) where that scope holds them with half
    again to spare (Mosaic's own buffers: a v5p weight gradient took 1.31x the blocks) or the
    TPU generation is not known; else the need with that room, at most the core's VMEM. A
    ValueError when even the whole VMEM of a known core is too small, so that the tiles, not a
    compile deep in XLA, are named."""
    known = TPU_VMEM_MIB.get(kind)
    if known is None:
        return None
    capacity, scoped = (mib * _MIB for mib in known)
    if need_bytes > capacity:
        raise ValueError(f"the tiles' buffers take {need_bytes / _MIB:.1f} MiB of VMEM, and a "
                         f"{kind} core has {capacity // _MIB} MiB")
    wanted = need_bytes + max(need_bytes // 2, 4 * _MIB)
    return None if wanted <= scoped else min(wanted, capacity)


def auto_impl(backend: str, capability: tuple[int, int] | None = None) -> str:
    """The implementation "auto" stands for: the backend's own kernel where it can run."""
    impl = _AUTO.get(backend, "xla")
    if backend == "gpu" and unsupported(impl, backend, capability) is not None:
        return "xla"
    return impl


def unsupported(impl: str, backend: str, capability: tuple[int, int] | None) -> str | None:
    """Why ``impl`` cannot run natively on this device, or None if it can (or may).

    Operand types are the kernels' own checks (Mosaic GPU: bfloat16/float16 only).
    """
    if backend != "gpu":
        return None
    if capability is None:
        return ("it is written for NVIDIA Hopper GPUs, and this GPU reports no CUDA compute "
                "capability" if impl == "mosaic_gpu" else None)
    version = "%d.%d" % capability
    if impl in ("pallas_gpu", "cudnn") and capability < TRITON_MIN_CAPABILITY:
        need = "its weight gradient uses" if impl == "cudnn" else "it is"
        return (f"{need} a Triton kernel, and Pallas's Triton lowering needs an Ampere or newer "
                f"GPU (compute capability >= 8.0), this one has {version}")
    if impl == "mosaic_gpu" and capability[0] != MOSAIC_GPU_MAJOR:
        return (f"it issues Hopper's wgmma instructions (compute capability 9.x), this GPU has "
                f"{version}")
    return None

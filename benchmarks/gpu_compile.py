"""The Triton kernels as jaxlib compiles them for each NVIDIA GPU, no GPU needed: the exact
shared memory each asks, against the GPU's per-block limit and ``pallas_gpu``'s stage rule.

XLA:GPU's deviceless compile (``moejax.parallel.gpu_topology``: JAX's CUDA plugin, no GPU or
CUDA libraries) runs the Triton inside jaxlib, the one that compiles these kernels on a GPU,
and refuses a kernel that asks more shared memory than the GPU allows one block, naming the
bytes it asked. Compiling once for the real GPU says whether the kernel fits; compiling again
for the same GPU with 1 KiB of shared memory makes every kernel fail and so reads its exact
request. For each (GPU, kernel, dtype, tiling) this is done at the stage count ``pallas_gpu``
picks for that GPU (the tiling's count, lowered while the stages it counts pass the GPU's
budget, ``platform.pipeline_bytes``), which must fit, and at one more stage, forced, which
shows the headroom left and whether the count of bytes holds one stage further.

Prints one JSON line per case: requested bytes, the GPU's limit, whether it compiled,
whether it is the count picked, the bytes of one stage as ``pallas_gpu`` counts them.

``--impl mosaic_gpu`` does the same for the Hopper kernels (H100, H200): XLA:GPU compiles a
Mosaic GPU kernel all the way to sm_90a machine code with the plugin's own ptxas, which reports
registers and spills (``MOSAIC_GPU_DUMP_PTXAS``), and Mosaic GPU names the shared memory it
allocates when that passes the limit (its own for the compute capability, not the described
GPU's, so there is no 1 KiB probe). One line per (GPU, kernel, tiling): compiled or the
error, shared memory, registers per thread, spill bytes, and how many waits and arrives ptxas
inserted around wgmma (each ``warpgroup.wait`` it adds makes the warpgroup wait for its matrix
products before it goes on: what pipelining is meant to avoid), ``serialized_wgmma`` (functions
whose every wgmma ptxas made wait for the one before, its warning C7514) and ``ptxas_ran``
(false for a kernel that came from this process's compilation cache: no figures then).

  python benchmarks/gpu_compile.py                      # a100-80gb, l4, h100; bf16 and f32
  python benchmarks/gpu_compile.py --gpus h100 --shape 65536,4096,4096 \
      --tiling pallas_gpu:128,64,256,8,3/64,128,128,8,3
  python benchmarks/gpu_compile.py --impl mosaic_gpu --gpus h100 \
      --tiling mosaic_gpu:128,64,256,8,3/64,128,256,8,3   # warps 8: warp-specialized

Needs the CUDA plugin in the virtual environment (``launch/setup.sh dev`` puts it in
``.venv/cuda-aot``). Kernels: "gmm" (forward), "gmm_t" (input gradient: rhs transposed),
"tgmm" (weight gradient).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import run_environment  # noqa: E402
from gmm import parse_tiling  # noqa: E402
from jax.experimental.pallas import triton as plgpu  # noqa: E402
from moejax.kernels import mosaic_gpu, pallas_gpu, platform  # noqa: E402
from moejax.kernels.tiling import default_tiling  # noqa: E402
from moejax.parallel import gpu_topology, native  # noqa: E402

KERNELS = ("gmm", "gmm_t", "tgmm")
_REQUESTED = re.compile(r"Shared memory size limit exceeded: requested (\d+), available: (\d+)"
                        r"|exceeds available shared memory: smem_bytes=(\d+)")
# Spills from each function's properties line; ptxas repeats them in a warning when a function
# spills, which a plain search would count twice.
_PTXAS = re.compile(r"Used (\d+) registers.*?\n"
                    r"|stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
                    r"|\(C7517\) w\w+\.wait|\(C7519\) warpgroup\.arrive|\(C7514\) ")
IMPLS = {"pallas_gpu": pallas_gpu, "mosaic_gpu": mosaic_gpu}


def ptxas_report(text: str) -> dict:
    """Registers (the most any function uses), spill bytes (summed), the waits and arrives
    ptxas inserted around wgmma, and how many functions it serialized every wgmma of (C7514:
    each waits for the one before), from ``ptxas -v`` output."""
    registers, spills, waits, arrives, serialized = [], 0, 0, 0, 0
    for match in _PTXAS.finditer(text):
        if match.group(1):
            registers.append(int(match.group(1)))
        elif match.group(2):
            spills += int(match.group(2)) + int(match.group(3))
        elif "C7517" in match.group(0):
            waits += 1
        elif "C7514" in match.group(0):
            serialized += 1
        else:
            arrives += 1
    return {"registers": max(registers) if registers else None, "spill_bytes": spills,
            "inserted_waits": waits, "inserted_arrives": arrives,
            "serialized_wgmma": serialized, "functions": len(registers)}


@contextlib.contextmanager
def stages_seen(force_stages: int | None):
    """Record (stages picked, bytes per stage) of each Triton kernel built inside; with
    ``force_stages`` build it with that many stages instead of the picked count."""
    seen = []
    original = pallas_gpu._compiler_params

    def params(tiling, stage_bytes, knobs):
        chosen = original(tiling, stage_bytes, knobs)
        seen.append((chosen.num_stages, stage_bytes))
        if force_stages is None:
            return chosen
        return plgpu.CompilerParams(num_warps=chosen.num_warps, num_stages=force_stages)

    pallas_gpu._compiler_params = params
    try:
        yield seen
    finally:
        pallas_gpu._compiler_params = original


def compile_kernel(device, target: platform.Device, kernel: str, dtype, shape, tiling,
                   groups: int, force_stages: int | None, impl=pallas_gpu
                   ) -> tuple[str | None, list]:
    """Compile one kernel of ``impl`` for ``device``: (None or the compiler's error, stages
    seen: pallas_gpu only)."""
    from jax.sharding import SingleDeviceSharding

    m, k, n = shape
    where = SingleDeviceSharding(device)
    spec = lambda *s, dt=dtype: jax.ShapeDtypeStruct(s, dt, sharding=where)  # noqa: E731
    sizes, offset = spec(groups, dt=jnp.int32), spec(dt=jnp.int32)
    if kernel == "tgmm":
        args = (spec(m, k), spec(m, n), sizes, offset)
        fn = lambda a, dy, s, o: impl.tgmm(a, dy, s, o, num_groups=groups,  # noqa: E731
                                           tiling=tiling, out_dtype=dtype)
    else:
        transpose = kernel == "gmm_t"
        rhs = spec(groups, n, k) if transpose else spec(groups, k, n)
        args = (spec(m, k), rhs, sizes, offset)
        fn = lambda a, w, s, o: impl.gmm(a, w, s, o, tiling=tiling,  # noqa: E731
                                         out_dtype=dtype, transpose_rhs=transpose)
    with platform.targeting(target), stages_seen(force_stages) as seen:
        try:
            jax.jit(fn).lower(*args).compile()
            return None, seen
        except Exception as error:  # noqa: BLE001 - the compiler's refusal is the figure
            return f"{type(error).__name__}: {error}", seen


def measure(name: str, kernel: str, dtype, shape, label: str, tiling, groups: int) -> list[dict]:
    spec, _, _ = gpu_topology.parse_name(name)
    real = gpu_topology.devices_of(spec, label=name)[0]
    tiny = gpu_topology.devices_of(spec._replace(shared_per_block_kib=1), label=name)[0]
    target = platform.Device("gpu", spec.kind, spec.capability)
    error, seen = compile_kernel(real, target, kernel, dtype, shape, tiling, groups, None)
    picked, stage_bytes = seen[0]
    lines = []
    for stages in (picked, picked + 1):
        force = None if stages == picked else stages
        if force is not None:
            error, _ = compile_kernel(real, target, kernel, dtype, shape, tiling, groups, force)
        probe, _ = compile_kernel(tiny, target, kernel, dtype, shape, tiling, groups, force)
        found = _REQUESTED.search(probe or "")
        limit = spec.shared_per_block_kib * 1024
        lines.append({
            "benchmark": "gpu_compile", "gpu": name, "kind": spec.kind,
            "capability": "%d.%d" % spec.capability, "kernel": kernel,
            "dtype": jnp.dtype(dtype).name, "shape": list(shape), "groups": groups,
            "tiling": label, "stages": stages, "picked": force is None,
            "requested_bytes": int(found.group(1)) if found else None,
            "limit_bytes": limit, "compiled": error is None,
            "error": None if error is None else error[:300],
            "stage_bytes_counted": stage_bytes,
            "counted_bytes": platform.pipeline_buffers(stages, spec.capability) * stage_bytes,
            "budget_bytes": platform.pipeline_bytes(spec.capability)})
    return lines


def measure_mosaic(name: str, kernel: str, dtype, shape, label: str, tiling,
                   groups: int) -> list[dict]:
    """Mosaic GPU checks shared memory against the compute capability's own limit, not the
    described GPU's, so there is no probe here; a kernel over the limit fails to compile with
    the bytes in its error (``requested_bytes``)."""
    spec, _, _ = gpu_topology.parse_name(name)
    real = gpu_topology.devices_of(spec, label=name)[0]
    target = platform.Device("gpu", spec.kind, spec.capability)
    with native.output_captured() as ptxas:
        error, _ = compile_kernel(real, target, kernel, dtype, shape, tiling, groups, None,
                                  mosaic_gpu)
    found = _REQUESTED.search(error or "")
    report = ptxas_report(ptxas["text"])
    # A kernel compiled before in this process (the same tgmm tiles under two gmm tilings)
    # comes from the compilation cache: no ptxas report, so no registers.
    report["ptxas_ran"] = report["functions"] > 0
    return [{"benchmark": "gpu_compile", "impl": "mosaic_gpu", "gpu": name, "kind": spec.kind,
             "capability": "%d.%d" % spec.capability, "kernel": kernel,
             "dtype": jnp.dtype(dtype).name, "shape": list(shape), "groups": groups,
             "tiling": label, "compiled": error is None,
             "error": None if error is None else error[:300],
             "requested_bytes": int(found.group(3)) if found and found.group(3) else None,
             "limit_bytes": spec.shared_per_block_kib * 1024, **report}]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", choices=sorted(IMPLS), default="pallas_gpu")
    parser.add_argument("--gpus", default=None,
                        help="comma-separated, of "
                             f"{', '.join(gpu_topology.GPUS)} (default a100-80gb,l4,h100; "
                             "h100 with --impl mosaic_gpu)")
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument("--dtypes", default=None,
                        help="default bfloat16,float32 (bfloat16 with --impl mosaic_gpu)")
    parser.add_argument("--shape", default="8192,1024,1024", help="M,K,N")
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--tiling", action="append", default=[],
                        help="pallas_gpu:bm,bk,bn,warps,stages[/tgmm tiles]; default tiles "
                             "always run")
    args = parser.parse_args(argv)
    mosaic = args.impl == "mosaic_gpu"
    if mosaic:
        os.environ["MOSAIC_GPU_DUMP_PTXAS"] = "1"  # ptxas -v, read as each kernel compiles
    gpus = args.gpus or ("h100" if mosaic else "a100-80gb,l4,h100")
    dtypes = args.dtypes or ("bfloat16" if mosaic else "bfloat16,float32")
    tilings = [("default", default_tiling(args.impl))]
    tilings += [parse_tiling(spec)[::2] for spec in args.tiling]
    measure_one = measure_mosaic if mosaic else measure
    shape = tuple(int(v) for v in args.shape.split(","))
    env = run_environment()
    start = time.perf_counter()
    for name in gpus.split(","):
        for label, tiling in tilings:
            for dtype in dtypes.split(","):
                for kernel in args.kernels.split(","):
                    for line in measure_one(name, kernel, jnp.dtype(dtype), shape, label, tiling,
                                            args.groups):
                        print(json.dumps({**line, **env}), flush=True)
    print(f"# {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

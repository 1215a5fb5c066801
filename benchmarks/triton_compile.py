"""The Triton kernels as Triton compiles them, for several NVIDIA GPUs, no GPU needed: shared
memory (what `pallas_gpu`'s pipeline-depth rule must keep under each GPU's per-block limit),
registers and spills.

JAX lowers each kernel ("gmm" forward, "tgmm" weight gradient) for CUDA to Triton IR; the
``triton`` package (the compiler alone: ``pip install triton``) compiles that IR for each
target architecture and stage count, and its bundled ``ptxas -v`` reports registers and spills.
Prints one JSON line per (tiling, kernel, dtype, arch, stages): the compiled shared memory, the
GPU's per-block limit, whether it fits, whether it is the stage count ``pallas_gpu`` picks for
that GPU (``chosen``), registers per thread and spill bytes.

  pip install triton==3.9.0 && python benchmarks/triton_compile.py
  python benchmarks/triton_compile.py --archs 86,90 --shape 8192,1024,1024 \
      --tiling pallas_gpu:128,64,256,8,3/64,128,128,8,3

Caveats: the ``triton`` package is not the Triton inside jaxlib that compiles these kernels on
a GPU, so the figures show how Triton allocates, not jaxlib's exact bytes or registers; the IR
comes from a private JAX function (``lower_jaxpr_to_triton_module``), so a JAX release may move
it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import run_environment  # noqa: E402
from gmm import parse_tiling  # noqa: E402
from moejax.kernels import pallas_gpu, platform  # noqa: E402
from moejax.kernels.tiling import default_tiling  # noqa: E402
from tests.lowering import export_for  # noqa: E402

ARCH_NAMES = {80: "A100", 86: "A10G / RTX 30", 87: "Orin", 89: "L4 / RTX 40", 90: "H100",
              100: "B200", 120: "RTX 50"}


def lower_kernel(kernel: str, dtype, shape: tuple[int, int, int], tiling,
                 capability: tuple[int, int]) -> tuple[str, tuple[int, int, int]]:
    """Triton IR text of one kernel as JAX lowers it for a GPU of this compute capability, and
    (warps, stages pallas_gpu picks there, bytes per stage)."""
    from jax._src.pallas.triton import pallas_call_registration as registration

    m, k, n = shape
    found = {}
    lower_module = registration.lowering.lower_jaxpr_to_triton_module
    choose_params = pallas_gpu._compiler_params

    def keep_module(*args, **kwargs):
        result = lower_module(*args, **kwargs)
        found["ir"] = result.module.operation.get_asm(enable_debug_info=False)
        return result

    def keep_params(tiles, stage_bytes, knobs):
        chosen = choose_params(tiles, stage_bytes, knobs)
        found["params"] = (tiles.num_warps, chosen.num_stages, stage_bytes)
        return chosen

    device = platform.Device("gpu", ARCH_NAMES.get(capability[0] * 10 + capability[1], "?"),
                             capability)
    offset, sizes = jnp.int32(0), jax.ShapeDtypeStruct((8,), jnp.int32)
    x = jax.ShapeDtypeStruct((m, k), dtype)
    saved = (pallas_gpu._compiler_params, registration.lowering.lower_jaxpr_to_triton_module)
    pallas_gpu._compiler_params = keep_params
    registration.lowering.lower_jaxpr_to_triton_module = keep_module
    try:
        with platform.targeting(device):  # the kernel for that GPU, not the interpreter
            if kernel == "gmm":
                export_for(lambda a, w, s: pallas_gpu.gmm(a, w, s, offset, tiling=tiling,
                                                          out_dtype=dtype),
                           "cuda", x, jax.ShapeDtypeStruct((8, k, n), dtype), sizes)
            else:
                export_for(lambda a, dy, s: pallas_gpu.tgmm(a, dy, s, offset, num_groups=8,
                                                            tiling=tiling, out_dtype=dtype),
                           "cuda", x, jax.ShapeDtypeStruct((m, n), dtype), sizes)
    finally:
        pallas_gpu._compiler_params, registration.lowering.lower_jaxpr_to_triton_module = saved
    return found["ir"], found["params"]


def ptxas_report(triton_module, ptx: str) -> dict:
    """Registers per thread and spill bytes from the ptxas bundled with ``triton`` ({} if none)."""
    bin_dir = os.path.join(os.path.dirname(triton_module.__file__), "backends", "nvidia", "bin")
    ptxas = next((os.path.join(bin_dir, name) for name in ("ptxas-blackwell", "ptxas")
                  if os.path.exists(os.path.join(bin_dir, name))), None)
    target = re.search(r"\.target (\w+)", ptx)
    if ptxas is None or target is None:
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        report = subprocess.run([ptxas, "-v", f"--gpu-name={target.group(1)}", f.name,
                                 "-o", os.devnull], capture_output=True, text=True)
    registers = re.search(r"Used (\d+) registers", report.stderr)
    spills = re.search(r"(\d+) bytes spill stores", report.stderr)
    if registers is None:
        return {"ptxas_error": report.stderr.strip()[-300:]}
    return {"registers": int(registers.group(1)),
            "spill_store_bytes": int(spills.group(1)) if spills else 0}


def compile_all(triton, GPUTarget, scratch, label, tiling, kernel, dtype, shape, arch,
                max_stages, environment):
    """Compile one kernel for one GPU at 1..max_stages stages; print a line for each."""
    capability = (arch // 10, arch % 10)
    ir, (warps, chosen, stage_bytes) = lower_kernel(kernel, dtype, shape, tiling, capability)
    path = os.path.join(scratch, f"{kernel}_{arch}.ttir")
    with open(path, "w") as f:
        f.write(ir)
    limit = platform.shared_memory_per_block(capability)
    for stages in range(1, max_stages + 1):
        line = {"benchmark": "triton_compile", "tiling": label, "kernel": kernel,
                "dtype": jnp.dtype(dtype).name, "shape": list(shape), "arch": arch,
                "gpu": ARCH_NAMES.get(arch, "?"), "num_warps": warps, "num_stages": stages,
                "chosen": stages == chosen, "stage_bytes": stage_bytes,
                "estimate_bytes": platform.pipeline_buffers(stages, capability) * stage_bytes,
                "limit_bytes": limit, **environment}
        try:
            compiled = triton.compile(path, target=GPUTarget("cuda", arch, 32),
                                      options={"num_warps": warps, "num_stages": stages})
            line["shared_bytes"] = compiled.metadata.shared
            line["fits"] = compiled.metadata.shared <= limit
            line.update(ptxas_report(triton, compiled.asm["ptx"]))
        except Exception as error:  # noqa: BLE001 - record, go on
            line["error"] = f"{type(error).__name__}: {error}"[:300]
        print(json.dumps(line), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default="80,86,89,90", help="compute capabilities x 10")
    parser.add_argument("--shape", default="8192,1024,1024", help="M,k,n of the problem")
    parser.add_argument("--max-stages", type=int, default=4)
    parser.add_argument("--tiling", action="append",
                        help="pallas_gpu:block_m,block_k,block_n,warps,stages[/tgmm tiles] "
                             "(repeatable; default: the gin default tiles)")
    args = parser.parse_args(argv)
    try:
        import triton
        from triton.backends.compiler import GPUTarget
    except ImportError:
        print("this script needs the Triton compiler: pip install triton (no GPU needed)",
              file=sys.stderr)
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    archs = [int(a) for a in args.archs.split(",")]
    shape = tuple(int(v) for v in args.shape.split(","))
    tilings = [("default", default_tiling("pallas_gpu"))]
    if args.tiling:
        tilings = [(label, tiling) for label, _, tiling in map(parse_tiling, args.tiling)]
    environment = {**run_environment(), "triton": triton.__version__}
    with tempfile.TemporaryDirectory() as scratch:
        for label, tiling in tilings:
            for dtype in (jnp.bfloat16, jnp.float32):
                for kernel in ("gmm", "tgmm"):
                    for arch in archs:
                        compile_all(triton, GPUTarget, scratch, label, tiling, kernel, dtype,
                                    shape, arch, args.max_stages, environment)
    return 0


if __name__ == "__main__":
    sys.exit(main())

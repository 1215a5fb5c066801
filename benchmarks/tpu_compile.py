"""The "pallas_tpu" kernels as XLA:TPU compiles them, for several TPU generations, no TPU needed:
which tilings compile, and the VMEM a refused one asked for.

libtpu's compile-only devices (``moejax.parallel.topology``; ``launch/setup.sh dev`` installs
libtpu) run the TPU compiler here. For each (generation, dtype, tiling) the grouped matmul's
forward and its forward + backward (gmm, the input gradient's gmm and tgmm) are compiled on one
device; one JSON line each: compiled or not, and for a refusal the compiler's own figures
("Used 18.46M of 16.00M vmem") or the error ``pallas_tpu`` raised before compiling (tiles past
a core's whole VMEM). Each case is compiled twice in the same process: with the VMEM limit
``pallas_tpu`` asks for (``platform.tpu_vmem_limit``) and, as the baseline, with the compiler's
default scope (16 MiB on v4, v5e and v5p, 32 MiB on v6e), as the kernels were before.

  python benchmarks/tpu_compile.py                      # the tuner's TPU tilings and two more
  python benchmarks/tpu_compile.py --generations v5e,v6e --shape 8192,1024,1024,16 \
      --tiling 512,1024,1024 --dtype float32

No speed: compile-only devices run nothing. The VMEM verdicts are the compiler's own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import run_environment  # noqa: E402
from moejax import kernels  # noqa: E402
from moejax.kernels import autotune, platform  # noqa: E402
from moejax.kernels.tiling import Tiling  # noqa: E402
from moejax.parallel import topology  # noqa: E402

TOPOLOGIES = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
EXTRA_TILES = ((1024, 1024, 1024), (2048, 2048, 2048))  # past the tuner's, to find the edge


def tpu_tilings() -> list[tuple[int, int, int]]:
    """The (block_m, block_k, block_n) the tuner times on a TPU, then EXTRA_TILES."""
    problem = autotune.Problem(rows=8192, k=1024, n=1024, local_groups=16, num_groups=16,
                               lhs_dtype="bfloat16", rhs_dtype="bfloat16", out_dtype="bfloat16")
    tiles = [(t.block_m, t.block_k, t.block_n)
             for impl, t in autotune.candidates(problem, "tpu") if impl == "pallas_tpu"]
    return tiles + [t for t in EXTRA_TILES if t not in tiles]


def vmem_figures(message: str) -> dict:
    """The VMEM the compiler found used and available, from its refusal, in MiB."""
    used = re.search(r"Used ([\d.]+)M of ([\d.]+)M vmem", message)
    if used:
        return {"vmem_used_mib": float(used.group(1)), "vmem_limit_mib": float(used.group(2))}
    over = re.search(r"Allocation \(size=(\d+)\) would exceed memory \(size=(\d+)\)", message)
    if over:
        return {"vmem_allocation_mib": int(over.group(1)) / 2**20,
                "vmem_limit_mib": int(over.group(2)) / 2**20}
    over = re.search(r"exceeded scoped vmem limit by ([\d.]+)([KM])", message)
    if over:
        return {"vmem_over_mib": float(over.group(1)) / (1024 if over.group(2) == "K" else 1)}
    return {}


def compile_case(device, dtype, shape, tiles) -> list[dict]:
    """Compile the forward and forward + backward on ``device``; a record each."""
    m, k, n, groups = shape
    sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array([device]), ("x",)),
                                          jax.sharding.PartitionSpec())
    args = (jax.ShapeDtypeStruct((m, k), dtype, sharding=sharding),
            jax.ShapeDtypeStruct((groups, k, n), dtype, sharding=sharding),
            jax.ShapeDtypeStruct((groups,), jnp.int32, sharding=sharding))
    tiling = Tiling(block_m=tiles[0], block_k=tiles[1], block_n=tiles[2], min_block_m=1)

    def forward(x, w, sizes):
        return kernels.gmm(x, w, sizes, impl="pallas_tpu", tiling=tiling)

    def forward_backward(x, w, sizes):
        out, vjp = jax.vjp(lambda a, b: forward(a, b, sizes), x, w)
        return vjp(out)

    kind = device.device_kind
    found = []
    for name, fn in (("forward", forward), ("forward+backward", forward_backward)):
        record = {"kernel": name, "compiled": False}
        start = time.perf_counter()
        with platform.targeting(platform.Device("tpu", kind, None)):
            try:
                jax.jit(fn).lower(*args).compile()
                record["compiled"] = True
            except Exception as error:  # noqa: BLE001 - the refusal is the result
                message = str(error)
                record.update(vmem_figures(message))
                record["error"] = " ".join(message.split())[:300]
        record["compile_s"] = round(time.perf_counter() - start, 2)
        found.append(record)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", default=",".join(TOPOLOGIES),
                        help="comma-separated, of " + ", ".join(TOPOLOGIES))
    parser.add_argument("--shape", default="8192,1024,1024,16", help="M,K,N,E")
    parser.add_argument("--dtype", action="append", default=None,
                        help="operand dtype (repeatable; default bfloat16 and float32)")
    parser.add_argument("--tiling", action="append", default=None,
                        help="block_m,block_k,block_n (repeatable; default the tuner's and "
                             "two larger)")
    args = parser.parse_args()
    jax.config.update("jax_platforms", "cpu")
    shape = tuple(int(v) for v in args.shape.split(","))
    tilings = ([tuple(int(v) for v in t.split(",")) for t in args.tiling] if args.tiling
               else tpu_tilings())
    environment = run_environment()
    for generation in args.generations.split(","):
        device = topology.compile_only_devices(TOPOLOGIES[generation])[0]
        for dtype in args.dtype or ["bfloat16", "float32"]:
            for tiles in tilings:
                known = platform.TPU_VMEM_MIB.get(device.device_kind)
                for limit in ("pallas_tpu", "compiler default"):
                    with mock.patch.dict(platform.TPU_VMEM_MIB,
                                         clear=limit == "compiler default"):
                        records = compile_case(device, jnp.dtype(dtype), shape, tiles)
                    for record in records:
                        print(json.dumps({
                            "benchmark": "tpu_compile", "generation": generation,
                            "device_kind": device.device_kind, "dtype": dtype,
                            "shape_mkne": list(shape), "tiling": list(tiles),
                            "vmem_limit": limit, "vmem_core_mib": known[0] if known else None,
                            **record, "libtpu": topology.libtpu_requirement(),
                            **environment}), flush=True)


if __name__ == "__main__":
    main()

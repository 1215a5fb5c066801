"""Why the CPU weight gradient of small groups is slow: the (E, k, n) output, not the loop.

Prints one JSON line per case: the "cpu" tgmm, a batched einsum over equal groups (XLA's best
case: no loop, no masking), and the dense weight gradient x.T @ dy of the same useful FLOPs, as
ratios to the dense one (same process, repetitions interleaved, median); and, for the same
(E, k, n) float32 array, the time to write it into a fresh buffer and in place (donated). A
fresh buffer of hundreds of MB is page-faulted on every call; run once as is and once with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent huge pages for malloc) to see that share.

  python benchmarks/cpu_weight_gradient.py
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/cpu_weight_gradient.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import run_environment  # noqa: E402
from gmm import timed  # noqa: E402  (median of interleaved repetitions, after a warm-up)
from moejax.kernels import tgmm  # noqa: E402

CASES = [(8192, 1024, 1024, 128), (8192, 512, 512, 64), (8192, 512, 512, 16)]  # M, k, n, E


def bench(case, reps):
    rows, k, n, groups = case
    x = jax.random.normal(jax.random.key(0), (rows, k))
    dy = jax.random.normal(jax.random.key(1), (rows, n))
    sizes = jnp.full((groups,), rows // groups, jnp.int32)
    fns = {
        "dense": jax.jit(lambda x, dy: x.T @ dy),
        "cpu_tgmm": jax.jit(lambda x, dy: tgmm(x, dy, sizes, num_groups=groups, impl="cpu")),
        "batched_einsum": jax.jit(lambda x, dy: jnp.einsum(
            "grk,grn->gkn", x.reshape(groups, -1, k), dy.reshape(groups, -1, n))),
    }
    np.testing.assert_allclose(np.asarray(fns["cpu_tgmm"](x, dy)),  # the same gradient
                               np.asarray(fns["batched_einsum"](x, dy)), rtol=1e-3, atol=1e-2)
    t = timed(fns, {name: (x, dy) for name in fns}, reps)
    fill = jax.jit(lambda s: jnp.full((groups, k, n), s, jnp.float32))
    scale = jax.jit(lambda a: a * 2.0, donate_argnums=0)
    buffer = scale(fill(1.0))
    jax.block_until_ready(buffer)
    fresh, in_place = [], []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fill(1.0))
        fresh.append(time.perf_counter() - start)
        start = time.perf_counter()
        buffer = scale(buffer)
        jax.block_until_ready(buffer)
        in_place.append(time.perf_counter() - start)
    return {"benchmark": "cpu_weight_gradient", "case": f"m{rows}_k{k}_n{n}_e{groups}",
            "rows_per_group": rows // groups, "dense_ms": round(t["dense"] * 1e3, 1),
            "cpu_tgmm_ms": round(t["cpu_tgmm"] * 1e3, 1),
            "batched_einsum_ms": round(t["batched_einsum"] * 1e3, 1),
            "cpu_tgmm_ratio": round(t["dense"] / t["cpu_tgmm"], 3),
            "batched_einsum_ratio": round(t["dense"] / t["batched_einsum"], 3),
            "output_mb": round(groups * k * n * 4 / 2 ** 20),
            "fresh_write_ms": round(float(np.median(fresh)) * 1e3, 1),
            "in_place_read_write_ms": round(float(np.median(in_place)) * 1e3, 1),
            "reps": reps, **run_environment()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    for case in CASES:
        print(json.dumps(bench(case, args.reps)), flush=True)


if __name__ == "__main__":
    main()

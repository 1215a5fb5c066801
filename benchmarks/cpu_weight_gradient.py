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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import run_environment  # noqa: E402
from moejax.kernels import tgmm  # noqa: E402

CASES = [(8192, 1024, 1024, 128), (8192, 512, 512, 64), (8192, 512, 512, 16)]  # M, k, n, E


def _median_times(fns, reps):
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, (fn, args) in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def bench(case, reps):
    rows, k, n, groups = case
    x = jax.random.normal(jax.random.key(0), (rows, k))
    dy = jax.random.normal(jax.random.key(1), (rows, n))
    sizes = jnp.full((groups,), rows // groups, jnp.int32)
    fns = {
        "dense": (jax.jit(lambda x, dy: x.T @ dy), (x, dy)),
        "cpu_tgmm": (jax.jit(lambda x, dy: tgmm(x, dy, sizes, num_groups=groups, impl="cpu")),
                     (x, dy)),
        "batched_einsum": (jax.jit(lambda x, dy: jnp.einsum(
            "grk,grn->gkn", x.reshape(groups, -1, k), dy.reshape(groups, -1, n))), (x, dy)),
    }
    want = np.asarray(fns["batched_einsum"][0](x, dy))
    got = np.asarray(fns["cpu_tgmm"][0](x, dy))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-2)  # same gradient
    for fn, args in fns.values():
        jax.block_until_ready(fn(*args))  # compile
    t = _median_times(fns, reps)
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

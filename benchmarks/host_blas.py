"""Would host BLAS beat XLA:CPU for many small experts? A negative result, kept reproducible.

XLA:CPU's matmuls reach only 0.61-0.70 of a dense product on equal 64-row groups (RESULTS.md,
the ceiling section), so the "cpu" gmm cannot reach 0.8 there. NumPy's OpenBLAS multiplies such
blocks faster when called directly. This script times, in one process with repetitions
interleaved, the forward of one grouped matmul (M, k) x (E, k, n), balanced groups:

  xla_dense      x @ w through XLA (the yardstick of benchmarks/gmm.py)
  xla_gmm        moejax's "cpu" gmm under jit
  numpy_groups   one np.matmul per group, outside JAX (what OpenBLAS can do)
  callback_gmm   the same loop called from jit through jax.pure_callback (how a "host BLAS"
                 gmm would have to run inside a training step)

and prints one JSON line per case with each figure's GFLOP/s and its ratio to xla_dense.

  python benchmarks/host_blas.py
  python benchmarks/host_blas.py --shape 8192,1024,512,128
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import run_environment  # noqa: E402
from gmm import timed  # noqa: E402
from moejax.kernels import gmm  # noqa: E402

CASES = [(8192, 1024, 1024, 128), (8192, 512, 512, 128), (8192, 1024, 2048, 16)]


def numpy_groups(x, w, offsets):
    out = np.empty((x.shape[0], w.shape[2]), x.dtype)
    for e in range(w.shape[0]):
        np.matmul(x[offsets[e]:offsets[e + 1]], w[e], out=out[offsets[e]:offsets[e + 1]])
    return out


def bench(case, reps: int) -> dict:
    m, k, n, experts = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((experts, k, n), dtype=np.float32)
    sizes = np.full(experts, m // experts, np.int32)
    sizes[: m - sizes.sum()] += 1
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    xj, wj, sj = jnp.asarray(x), jnp.asarray(w), jnp.asarray(sizes)
    w0 = wj[0]

    def host(x, w, sizes):
        return numpy_groups(np.asarray(x), np.asarray(w), np.concatenate([[0], np.cumsum(sizes)]))

    result = jax.ShapeDtypeStruct((m, n), jnp.float32)
    dense = jax.jit(lambda a, b: a @ b)
    grouped = jax.jit(lambda a, b, s: gmm(a, b, s, impl="cpu"))
    callback = jax.jit(lambda a, b, s: jax.pure_callback(host, result, a, b, s,
                                                         vmap_method="sequential"))
    fns = {
        "xla_dense": lambda: dense(xj, w0).block_until_ready(),
        "xla_gmm": lambda: grouped(xj, wj, sj).block_until_ready(),
        "numpy_groups": lambda: numpy_groups(x, w, offsets),
        "callback_gmm": lambda: callback(xj, wj, sj).block_until_ready(),
    }
    # The host loop is checked against XLA's gmm before it is timed.
    np.testing.assert_allclose(np.asarray(fns["callback_gmm"]()), np.asarray(fns["xla_gmm"]()),
                               rtol=1e-3, atol=1e-2)
    seconds = timed(fns, {name: () for name in fns}, reps)
    flops = 2 * m * k * n
    gflops = {name: flops / median / 1e9 for name, median in seconds.items()}
    line = {"case": f"m{m}_k{k}_n{n}_e{experts}_balanced", "rows_per_expert": m // experts,
            **{f"{name}_gflops": round(value, 1) for name, value in gflops.items()},
            **{f"{name}_vs_dense": round(value / gflops["xla_dense"], 3)
               for name, value in gflops.items() if name != "xla_dense"},
            "reps": reps, **run_environment()}
    return line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", action="append", default=[],
                        help="case M,k,n,E (balanced groups); default: three built-in cases")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (median kept)")
    args = parser.parse_args(argv)
    cases = [tuple(map(int, spec.split(","))) for spec in args.shape] or CASES
    for case in cases:
        if len(case) != 4:
            raise SystemExit(f"--shape wants M,k,n,E; got {case}")
        print(json.dumps(bench(case, args.reps)), flush=True)


if __name__ == "__main__":
    main()

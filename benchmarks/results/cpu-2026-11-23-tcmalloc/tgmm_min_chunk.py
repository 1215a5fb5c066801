"""Record: the CPU weight gradient with its smallest chunk at 16 / 32 / 64 / 128 rows.
Run from anywhere: python benchmarks/results/cpu-2026-11-23-tcmalloc/tgmm_min_chunk.py"""
import sys, os, json
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import jax, jax.numpy as jnp, numpy as np
from gmm import timed, group_sizes
from moejax.kernels import cpu as cpu_mod
from moejax.kernels.tiling import Tiling
for rows, k, n, E, K, routing in [(8192, 1024, 1024, 128, 8, "zipf"), (8192, 1024, 1024, 128, 8, "balanced"), (8192, 512, 1024, 16, 2, "zipf"), (8192, 512, 512, 64, 8, "balanced")]:
    sizes = jnp.asarray(group_sizes(rows, E, K, routing), jnp.int32)
    x = jax.random.normal(jax.random.key(0), (rows, k)); dy = jax.random.normal(jax.random.key(1), (rows, n))
    fns = {"dense": jax.jit(lambda x, dy: x.T @ dy)}
    for mb in (16, 32, 64, 128):
        t = Tiling(block_m=512, min_block_m=mb)
        fns[f"min{mb}"] = jax.jit(lambda x, dy, t=t: cpu_mod.tgmm(x, dy, sizes, jnp.int32(0), num_groups=E, tiling=t, out_dtype=jnp.float32))
    ref = np.asarray(fns["min16"](x, dy))
    for name in fns:
        if name.startswith("min"):
            np.testing.assert_allclose(np.asarray(fns[name](x, dy)), ref, rtol=1e-4, atol=1e-3)
    tm = timed(fns, {name: (x, dy) for name in fns}, 5)
    print(json.dumps({"case": f"m{rows}_k{k}_n{n}_e{E}_{routing}", "min_group": int(sizes.min()), "max_group": int(sizes.max()),
        **{f"{m}_ratio": round(tm["dense"]/v, 3) for m, v in tm.items() if m != "dense"}, "dense_ms": round(tm["dense"]*1e3,1),
        "preload": os.environ.get("LD_PRELOAD", "")}), flush=True)

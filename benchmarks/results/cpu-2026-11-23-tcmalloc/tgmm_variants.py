"""Record: the CPU weight-gradient loop carrying (G, k, n) ("carry") next to the per-group
accumulator that "cpu" was when this ran (commit 64da1ca; "cpu" is "carry" since d39d8e0).
Run from anywhere: python benchmarks/results/cpu-2026-11-23-tcmalloc/tgmm_variants.py"""
import sys, os, json
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import jax, jax.numpy as jnp, numpy as np
from gmm import timed
from moejax.kernels import tgmm
from moejax.kernels import cpu as cpu_mod
from moejax.kernels.tiling import default_tiling

def tgmm_carry(lhs_MK, grad_MN, sizes, num_groups, tiling):
    offset = jnp.int32(0)
    _, k = lhs_MK.shape; n = grad_MN.shape[1]
    levels = [l for l in cpu_mod._levels(lhs_MK, sizes, offset, num_groups, tiling) if l.group_C.shape[0]]
    out = jnp.zeros((num_groups, k, n), jnp.float32)
    for level in levels:
        partial = level is levels[-1]
        def body(c, out, level=level, partial=partial):
            load_start, own_R = cpu_mod._chunk_rows(level, c, lhs_MK.shape[0], partial)
            x = jax.lax.dynamic_slice_in_dim(lhs_MK, load_start, level.rows)
            g = jax.lax.dynamic_slice_in_dim(grad_MN, load_start, level.rows)
            if own_R is not None:
                x = jnp.where(own_R[:, None], x, 0); g = jnp.where(own_R[:, None], g, 0)
            y = jax.lax.dot_general(x, g, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
            grp = level.group_C[c]
            cur = jax.lax.dynamic_index_in_dim(out, grp, keepdims=True)
            return jax.lax.dynamic_update_index_in_dim(out, cur + y[None], grp, 0)
        out = jax.lax.fori_loop(0, level.num_live, body, out)
    return out

CASES = [(8192, 1024, 1024, 128), (8192, 512, 512, 64), (8192, 512, 512, 16), (8192, 512, 1024, 8)]
tiling = default_tiling("cpu")
for rows, k, n, groups in CASES:
    x = jax.random.normal(jax.random.key(0), (rows, k)); dy = jax.random.normal(jax.random.key(1), (rows, n))
    sizes = jnp.full((groups,), rows // groups, jnp.int32)
    fns = {"dense": jax.jit(lambda x, dy: x.T @ dy),
           "cpu": jax.jit(lambda x, dy: tgmm(x, dy, sizes, num_groups=groups, impl="cpu")),
           "carry": jax.jit(lambda x, dy: tgmm_carry(x, dy, sizes, groups, tiling)),
           "einsum": jax.jit(lambda x, dy: jnp.einsum("grk,grn->gkn", x.reshape(groups, -1, k), dy.reshape(groups, -1, n)))}
    ref = np.asarray(fns["einsum"](x, dy))
    for name in ("cpu", "carry"):
        np.testing.assert_allclose(np.asarray(fns[name](x, dy)), ref, rtol=1e-3, atol=1e-2)
    t = timed(fns, {name: (x, dy) for name in fns}, 5)
    print(json.dumps({"case": f"m{rows}_k{k}_n{n}_e{groups}", **{f"{m}_ms": round(v*1e3,1) for m, v in t.items()},
                      **{f"{m}_ratio": round(t["dense"]/v, 3) for m, v in t.items() if m != "dense"},
                      "preload": os.environ.get("LD_PRELOAD", "")}), flush=True)

"""Prototype: tgmm = batched 'head' slab of L rows per group + chunk loop over the tail."""
import functools, json, sys, time
import jax, jax.numpy as jnp, numpy as np
import pathlib; ROOT = pathlib.Path(__file__).resolve().parents[3]; sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(pathlib.Path(__file__).parent))
from moejax.kernels import metadata, cpu
from moejax.kernels.tiling import cpu_tiling
from gmm import group_sizes as make_sizes

def tgmm_slab(lhs, grad, sizes, offset, *, num_groups, tiling, out_dtype, slab_rows, tdot=True, tail_min=None):
    M, k = lhs.shape; n = grad.shape[1]; L = slab_rows
    b = metadata.group_bounds(sizes, offset, num_groups)
    sizes_G = b.ends_G - b.starts_G
    j_L = jnp.arange(L, dtype=jnp.int32)
    rows_GL = b.starts_G[:, None] + j_L
    valid_GL = j_L < sizes_G[:, None]
    rows_GL = jnp.clip(rows_GL, 0, M - 1)
    x_GLK = jnp.where(valid_GL[..., None], lhs[rows_GL], 0)
    g_GLN = jnp.where(valid_GL[..., None], grad[rows_GL], 0)
    x_GKL = jax.lax.optimization_barrier(jnp.swapaxes(x_GLK, 1, 2))
    out = jax.lax.dot_general(x_GKL, g_GLN, (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)
    tail = metadata.GroupBounds(jnp.minimum(b.starts_G + L, b.ends_G), b.ends_G)
    levels = [lv for lv in metadata.row_chunks(tail, M, tiling.block_m, tail_min or tiling.min_block_m) if lv.group_C.shape[0]]
    def add_chunk(level, partial, c, out_GKN):
        load_start, own_R = cpu._chunk_rows(level, c, M, partial)
        x_RK = jax.lax.dynamic_slice_in_dim(lhs, load_start, level.rows)
        g_RN = jax.lax.dynamic_slice_in_dim(grad, load_start, level.rows)
        if own_R is not None:
            x_RK = jnp.where(own_R[:, None], x_RK, 0); g_RN = jnp.where(own_R[:, None], g_RN, 0)
        if tdot:
            y = jax.lax.optimization_barrier(x_RK.T) @ g_RN
        else:
            y = jax.lax.dot_general(x_RK, g_RN, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        gidx = level.group_C[c]
        s = jax.lax.dynamic_index_in_dim(out_GKN, gidx, keepdims=True) + y[None]
        return jax.lax.dynamic_update_index_in_dim(out_GKN, s, gidx, 0)
    for level in levels:
        partial = level is levels[-1]
        out = jax.lax.fori_loop(0, level.num_live, functools.partial(add_chunk, level, partial), out)
    return out.astype(out_dtype)

def t(f, *a, reps=5):
    jax.block_until_ready(f(*a)); ts = []
    for _ in range(reps):
        s = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - s)
    return float(np.median(ts))

if __name__ == "__main__":
    import os; M, D, F, E, K = (int(v) for v in os.environ.get("SHAPE", "8192,1024,512,128,8").split(","))
    for routing in sys.argv[1].split(","):
        sizes = jnp.asarray(make_sizes(M, E, K, routing))
        x = jax.random.normal(jax.random.PRNGKey(0), (M, D)); dy = jax.random.normal(jax.random.PRNGKey(1), (M, 2 * F))
        off = jnp.zeros((), jnp.int32); til = cpu_tiling()
        ref = jax.jit(lambda x, dy: jax.lax.ragged_dot_general(x, dy, sizes, jax.lax.RaggedDotDimensionNumbers(
            (((0,), (0,)), ((), ())), [0], [])) if False else None)
        fns = {"dense": jax.jit(lambda x, dy: x.T @ dy),
               "current": jax.jit(lambda x, dy: cpu.tgmm(x, dy, sizes, off, num_groups=E, tiling=til, out_dtype=x.dtype))}
        for spec in sys.argv[2].split(","):
            L, tm, td = (int(v) for v in spec.split("/"))
            fns[f"slab{spec}"] = jax.jit(functools.partial(lambda x, dy, L, tm, td: tgmm_slab(x, dy, sizes, off, num_groups=E, tiling=til, out_dtype=x.dtype, slab_rows=L, tail_min=tm, tdot=bool(td)), L=L, tm=tm, td=td))
        base = np.asarray(fns["current"](x, dy))
        res = {}
        for name, f in fns.items():
            if name.startswith("slab"):
                err = float(np.abs(np.asarray(f(x, dy)) - base).max())
                assert err < 1e-2, (name, err)
        for rep in range(2):
            for name, f in fns.items():
                res.setdefault(name, []).append(t(f, x, dy))
        d = min(res["dense"])
        print(json.dumps({"routing": routing, "max": int(sizes.max()), "min": int(sizes.min()),
                          **{n: round(d / min(v), 3) for n, v in res.items()}, "dense_ms": round(d * 1e3, 1)}))

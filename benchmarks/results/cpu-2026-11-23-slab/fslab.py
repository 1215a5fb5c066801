import functools, json, sys, time
import jax, jax.numpy as jnp, numpy as np
import pathlib; ROOT = pathlib.Path(__file__).resolve().parents[3]; sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(pathlib.Path(__file__).parent))
from moejax.kernels import metadata, cpu
from moejax.kernels.tiling import cpu_tiling
from gmm import group_sizes as make_sizes
from slab import t

def gmm_slab(lhs, rhs, sizes, offset, *, tiling, out_dtype, slab_rows, transpose_rhs=False, tail_min=None):
    M, k = lhs.shape; G = rhs.shape[0]; n = rhs.shape[1] if transpose_rhs else rhs.shape[2]; L = slab_rows
    b = metadata.group_bounds(sizes, offset, G)
    sizes_G = b.ends_G - b.starts_G
    j_L = jnp.arange(L, dtype=jnp.int32)
    rows_GL = jnp.clip(b.starts_G[:, None] + j_L, 0, M - 1)
    x_GLK = lhs[rows_GL]  # rows of other groups are garbage but stay in their own output rows
    if transpose_rhs:
        y_GLN = jax.lax.dot_general(x_GLK, rhs, (((2,), (2,)), ((0,), (0,))), preferred_element_type=jnp.float32)
    else:
        y_GLN = jax.lax.dot_general(x_GLK, rhs, (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)
    # output row m: slot of (its group, its index in group) if index < L
    m_M = jnp.arange(M, dtype=jnp.int32)
    g_M = jnp.minimum(jnp.searchsorted(b.ends_G, m_M, side="right"), G - 1).astype(jnp.int32)
    i_M = m_M - b.starts_G[g_M]
    inside = (m_M >= b.starts_G[0]) & (m_M < b.ends_G[-1]) & (i_M < L)
    slot_M = g_M * L + jnp.clip(i_M, 0, L - 1)
    out = jnp.where(inside[:, None], y_GLN.reshape(G * L, n)[slot_M], 0).astype(out_dtype)
    tail = metadata.GroupBounds(jnp.minimum(b.starts_G + L, b.ends_G), b.ends_G)
    levels = [lv for lv in metadata.row_chunks(tail, M, tiling.block_m, tail_min or tiling.min_block_m) if lv.group_C.shape[0]]
    cdim = 1 if transpose_rhs else 0
    for level in levels:
        partial = level is levels[-1]
        def chunk(c, out, level=level, partial=partial):
            load_start, own_R = cpu._chunk_rows(level, c, M, partial)
            x_RK = jax.lax.dynamic_slice_in_dim(lhs, load_start, level.rows)
            w = jax.lax.dynamic_index_in_dim(rhs, level.group_C[c], keepdims=False)
            y = jax.lax.dot_general(x_RK, w, (((1,), (cdim,)), ((), ())), preferred_element_type=jnp.float32).astype(out_dtype)
            if own_R is not None:
                y = jnp.where(own_R[:, None], y, jax.lax.dynamic_slice_in_dim(out, load_start, level.rows))
            return jax.lax.dynamic_update_slice_in_dim(out, y, load_start, 0)
        out = jax.lax.fori_loop(0, level.num_live, chunk, out)
    return out

if __name__ == "__main__":
    M, D, F, E, K = 8192, 1024, 512, 128, 8
    for routing in sys.argv[1].split(","):
        sizes = jnp.asarray(make_sizes(M, E, K, routing))
        x = jax.random.normal(jax.random.PRNGKey(0), (M, D)); w = jax.random.normal(jax.random.PRNGKey(1), (E, D, 2 * F)) / 32
        dy = jax.random.normal(jax.random.PRNGKey(2), (M, 2 * F))
        off = jnp.zeros((), jnp.int32); til = cpu_tiling()
        fns = {"dense_f": (jax.jit(lambda x, w: x @ w[0]), (x, w)), "dense_d": (jax.jit(lambda dy, w: dy @ w[0].T), (dy, w)),
               "cur_f": (jax.jit(lambda x, w: cpu.gmm(x, w, sizes, off, tiling=til, out_dtype=x.dtype)), (x, w)),
               "cur_d": (jax.jit(lambda dy, w: cpu.gmm(dy, w, sizes, off, tiling=til, out_dtype=x.dtype, transpose_rhs=True)), (dy, w))}
        for L in [int(a) for a in sys.argv[2].split(",")]:
            fns[f"slab{L}_f"] = (jax.jit(functools.partial(lambda x, w, L: gmm_slab(x, w, sizes, off, tiling=til, out_dtype=x.dtype, slab_rows=L), L=L)), (x, w))
            fns[f"slab{L}_d"] = (jax.jit(functools.partial(lambda x, w, L: gmm_slab(x, w, sizes, off, tiling=til, out_dtype=x.dtype, slab_rows=L, transpose_rhs=True), L=L)), (dy, w))
        for name, (f, a) in fns.items():
            if name.startswith("slab"):
                ref = fns["cur_" + name[-1]]
                err = float(np.abs(np.asarray(f(*a)) - np.asarray(ref[0](*ref[1]))).max()); assert err < 1e-3, (name, err)
        res = {}
        for rep in range(2):
            for name, (f, a) in fns.items():
                res.setdefault(name, []).append(t(f, *a))
        out = {"routing": routing}
        for name, v in res.items():
            out[name] = round(min(res["dense_" + name[-1]]) / min(v), 3)
        print(json.dumps(out))

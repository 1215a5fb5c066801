"""The "cpu" grouped matmul: a loop over row chunks, each multiplied by its group's weights.

In: lhs (M, k) rows sorted by group, rhs (G, k, n) local experts, group metadata. Out: (M, n).
Why this is fast where ``jax.lax.ragged_dot`` is not: ragged_dot lowers on CPU to a dense
(M, k) x (E, k, n) product masked by group (E times the useful FLOPs). Here every chunk of rows
is one ordinary (rows, k) x (k, n) matmul, the kind XLA's CPU backend runs at full speed, and
the weights come by a dynamic index into rhs (no per-row gather; XLA:CPU still copies the
chunk's (k, n) slice out of rhs before its dot, a fixed cost that small chunks feel).

The chunks come from ``metadata.row_chunks``: per group, full chunks of ``block_m`` rows, then
power-of-two chunks down to ``min_block_m``, so a group pads < min_block_m rows. Each chunk size
is one ``fori_loop`` whose trip count is the number of live chunks (dynamic: no work for chunks
that the worst case would need but this batch does not). Only chunks of the last (smallest) size
can hold rows of another group; their stores keep only their own group's rows. No padded copy of lhs
or of the output is made: each would be an extra pass over memory next to every matmul.
The weight gradient adds a "slab": each group's first L rows in one batched matmul (``tgmm``).

Letters: M rows, k contraction, n output columns, G local groups, R rows per chunk.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from moejax.kernels import metadata
from moejax.kernels.tiling import Tiling


def _levels(lhs_MK, group_sizes_E, group_offset, num_groups: int, tiling: Tiling):
    bounds = metadata.group_bounds(group_sizes_E, group_offset, num_groups)
    return metadata.row_chunks(bounds, lhs_MK.shape[0], tiling.block_m, tiling.min_block_m)


def _chunk_rows(level, c, num_rows: int, partial: bool):
    """(first row to load, rows of the loaded block that are chunk c's own, or None if all).

    A chunk of the last level starts inside its group but may reach past row M; it is then
    loaded from M - rows instead (same rows, shifted up), and only its own rows are kept.
    """
    row_start = level.row_start_C[c]  # first lhs row of chunk c
    if not partial:
        return row_start, None
    load_start = jnp.minimum(row_start, num_rows - level.rows)
    row_R = load_start + jnp.arange(level.rows)  # lhs row of each loaded row
    own_R = (row_R >= row_start) & (row_R < row_start + level.valid_rows_C[c])
    return load_start, own_R


def _pad_rows(x, rows: int):
    # Only when M is smaller than the smallest chunk: give every chunk room to load.
    return jnp.pad(x, ((0, rows), (0, 0))) if rows > 0 else x


def gmm(lhs_MK: jax.Array, rhs_GKN: jax.Array, group_sizes_E: jax.Array,
        group_offset: jax.Array, *, tiling: Tiling, out_dtype, transpose_rhs: bool = False
        ) -> jax.Array:
    """out[rows of local group g] = lhs[those rows] @ rhs[g] (rhs[g].T if transpose_rhs).

    Rows outside the local groups are zero. rhs is (G, k, n), or (G, n, k) with transpose_rhs.
    """
    num_rows, _ = lhs_MK.shape
    num_groups = rhs_GKN.shape[0]
    n = rhs_GKN.shape[1] if transpose_rhs else rhs_GKN.shape[2]
    rhs_contract_dim = 1 if transpose_rhs else 0  # of one expert's (k, n) or (n, k) matrix
    levels = _levels(lhs_MK, group_sizes_E, group_offset, num_groups, tiling)
    pad = max(tiling.min_block_m - num_rows, 0)
    lhs_padded = _pad_rows(lhs_MK, pad)
    out_padded = jnp.zeros((num_rows + pad, n), out_dtype)
    for level in levels:
        if level.group_C.shape[0] == 0:  # no chunk of this size fits in M rows
            continue
        partial = level is levels[-1]  # only the smallest chunks can hold other groups' rows

        def chunk(c, out_padded, level=level, partial=partial):
            load_start, own_R = _chunk_rows(level, c, num_rows + pad, partial)
            x_RK = jax.lax.dynamic_slice_in_dim(lhs_padded, load_start, level.rows)
            w = jax.lax.dynamic_index_in_dim(rhs_GKN, level.group_C[c], keepdims=False)
            y_RN = jax.lax.dot_general(x_RK, w, (((1,), (rhs_contract_dim,)), ((), ())),
                                       preferred_element_type=jnp.float32).astype(out_dtype)
            if own_R is not None:
                # Other rows of the block belong to other groups (or to none): keep what is
                # stored there, so chunks may be processed in any order.
                stored_RN = jax.lax.dynamic_slice_in_dim(out_padded, load_start, level.rows)
                y_RN = jnp.where(own_R[:, None], y_RN, stored_RN)
            return jax.lax.dynamic_update_slice_in_dim(out_padded, y_RN, load_start, 0)

        out_padded = jax.lax.fori_loop(0, level.num_live, chunk, out_padded)
    return out_padded[:num_rows] if pad else out_padded


# What one chunk of the weight gradient costs beyond its matmul, in rows of matmul: writing its
# (k, n) product and adding it into its group's slice of the result (three passes over k x n).
# Measured on the 2-core VM (k = 1,024, n = 512-1,024): 20-36 rows; both sides scale with k x n.
CHUNK_OVERHEAD_ROWS = 32


# Experts with fewer weights (k x n) than this never get a slab: their chunks move little
# memory, and each slab length is one more branch to compile (with 3 of them, a small test
# model's training step took twice as long to compile). 2**18: e.g. d_model 512 x 2 * 256.
SLAB_MIN_EXPERT_ELEMENTS = 2 ** 18


def slab_candidates(num_rows: int, num_groups: int, expert_elements: int,
                    tiling: Tiling) -> tuple[int, ...]:
    """Slab lengths the weight gradient may choose from: 0 (none), then up to ``tiling.slab``
    powers of two from the largest at or below the mean rows per group, each >= min_block_m;
    only 0 for experts of fewer than SLAB_MIN_EXPERT_ELEMENTS weights (k x n)."""
    mean = num_rows // max(num_groups, 1)
    if (tiling.slab == 0 or mean < tiling.min_block_m
            or expert_elements < SLAB_MIN_EXPERT_ELEMENTS):
        return (0,)
    top = 1 << (mean.bit_length() - 1)  # largest power of two <= mean
    return (0, *[top >> i for i in range(tiling.slab) if top >> i >= tiling.min_block_m])


def chunk_plan(bounds: metadata.GroupBounds, num_rows: int, slab_rows: int,
               tiling: Tiling) -> list[metadata.ChunkLevel]:
    """The chunk levels that cover each group's rows past its first slab_rows (all its rows if
    slab_rows is 0); chunk sizes with no room in num_rows rows are left out."""
    if slab_rows:
        bounds = metadata.GroupBounds(jnp.minimum(bounds.starts_G + slab_rows, bounds.ends_G),
                                      bounds.ends_G)
    return [level for level in metadata.row_chunks(bounds, num_rows, tiling.block_m,
                                                   tiling.min_block_m)
            if level.group_C.shape[0]]


def slab_cost(levels: list[metadata.ChunkLevel], num_groups: int, slab_rows: int) -> jax.Array:
    """Estimated cost (rows of matmul) of the weight gradient with this slab length and the
    chunk plan for the rest: the slab's G x L rows (padding included), or without a slab the
    zero-initialised result; plus the chunks' rows and each chunk's overhead (see above)."""
    chunks = sum((level.rows + CHUNK_OVERHEAD_ROWS) * level.num_live for level in levels)
    start = num_groups * slab_rows if slab_rows else num_groups * CHUNK_OVERHEAD_ROWS // 2
    return chunks + start


def _slab_product(lhs_MK, grad_MN, bounds: metadata.GroupBounds, slab_rows: int) -> jax.Array:
    """(G, k, n) float32: out[g] = the first slab_rows rows of group g, lhs.T @ grad, as one
    batched matmul that writes every group's result once (empty groups: zeros).

    Each group's first L = slab_rows rows are gathered into an (G, L) grid of rows; slots past
    a group's end are zeros on both sides (they may hold another group's rows, or NaN/inf past
    the group-size sum). lhs is laid out (G, k, L), contraction last, the layout that XLA:CPU
    hands to its fast matmul library (the optimization barrier keeps XLA from folding the
    transpose back into the dot, which then takes a slower path).
    """
    num_rows = lhs_MK.shape[0]
    slot_L = jnp.arange(slab_rows, dtype=jnp.int32)
    row_GL = jnp.clip(bounds.starts_G[:, None] + slot_L, 0, num_rows - 1)
    own_GL = slot_L < (bounds.ends_G - bounds.starts_G)[:, None]
    x_GLK = jnp.where(own_GL[..., None], lhs_MK[row_GL], 0)
    g_GLN = jnp.where(own_GL[..., None], grad_MN[row_GL], 0)
    x_GKL = jax.lax.optimization_barrier(jnp.swapaxes(x_GLK, 1, 2))
    return jax.lax.dot_general(x_GKL, g_GLN, (((2,), (1,)), ((0,), (0,))),
                               preferred_element_type=jnp.float32)


def _weight_gradient(lhs_MK, grad_MN, bounds: metadata.GroupBounds,
                     levels: list[metadata.ChunkLevel], slab_rows: int, out_dtype) -> jax.Array:
    """(G, k, n): the slab (or zeros), then the chunk loops of ``levels`` add the other rows.
    lhs and grad have at least min_block_m rows (padded by the caller)."""
    num_rows, k = lhs_MK.shape
    num_groups, n = bounds.starts_G.shape[0], grad_MN.shape[1]
    if slab_rows:
        out_GKN = _slab_product(lhs_MK, grad_MN, bounds, slab_rows)
    else:
        out_GKN = jnp.zeros((num_groups, k, n), jnp.float32)

    def add_chunk(level, partial, c, out_GKN):
        load_start, own_R = _chunk_rows(level, c, num_rows, partial)
        x_RK = jax.lax.dynamic_slice_in_dim(lhs_MK, load_start, level.rows)
        g_RN = jax.lax.dynamic_slice_in_dim(grad_MN, load_start, level.rows)
        if own_R is not None:  # zero other rows on both sides: they may hold NaN/inf
            x_RK = jnp.where(own_R[:, None], x_RK, 0)
            g_RN = jnp.where(own_R[:, None], g_RN, 0)
        # Contract over the chunk's rows: (R, k)^T (R, n) -> (k, n).
        y_KN = jax.lax.dot_general(x_RK, g_RN, (((0,), (0,)), ((), ())),
                                   preferred_element_type=jnp.float32)
        group = level.group_C[c]
        sum_1KN = jax.lax.dynamic_index_in_dim(out_GKN, group, keepdims=True) + y_KN[None]
        return jax.lax.dynamic_update_index_in_dim(out_GKN, sum_1KN, group, 0)

    for level in levels:
        partial = level is levels[-1]  # the smallest chunks may hold other groups' rows
        out_GKN = jax.lax.fori_loop(0, level.num_live, functools.partial(add_chunk, level, partial),
                                    out_GKN)
    return out_GKN.astype(out_dtype)


def tgmm_with_slab(lhs_MK: jax.Array, grad_MN: jax.Array, group_sizes_E: jax.Array,
                   group_offset: jax.Array, *, num_groups: int, tiling: Tiling, slab_rows: int,
                   out_dtype) -> jax.Array:
    """The weight gradient with a fixed slab length (0: chunk loops only); see ``tgmm``."""
    pad = max(tiling.min_block_m - lhs_MK.shape[0], 0)
    lhs_MK, grad_MN = _pad_rows(lhs_MK, pad), _pad_rows(grad_MN, pad)
    bounds = metadata.group_bounds(group_sizes_E, group_offset, num_groups)
    levels = chunk_plan(bounds, lhs_MK.shape[0], slab_rows, tiling)
    return _weight_gradient(lhs_MK, grad_MN, bounds, levels, slab_rows, out_dtype)


def tgmm(lhs_MK: jax.Array, grad_MN: jax.Array, group_sizes_E: jax.Array,
         group_offset: jax.Array, *, num_groups: int, tiling: Tiling, out_dtype) -> jax.Array:
    """(G, k, n): out[g] = lhs[rows of local group g].T @ grad[those rows]; empty groups zero.

    Two parts. The chunk loops: the (G, k, n) float32 result is carried through one loop per
    chunk size, and each chunk adds its (k, n) product into its group's slice in place. Each
    chunk thus costs three passes over k x n besides its matmul (its product written, the slice
    read and written), the same whether it has 16 rows or 512: with many small groups this
    dominates. Hence the slab: the first L rows of every group go into one batched matmul that
    writes every group's result once, as the starting value of the loops, which then cover
    only rows past the first L. Slots past a group's end are padding (computed, as zeros).
    Which L (or none) is cheapest depends on the group sizes, known only at run time, so every
    candidate length of ``slab_candidates`` is compiled and ``lax.switch`` runs the one that
    ``slab_cost`` rates cheapest (padding rows against per-chunk overhead).

    128 groups of 64 rows (k = n = 1,024, 2-core VM): the loops alone run at 0.56-0.62 of the
    dense x.T @ dy, with a 64-row slab at 0.80.
    """
    candidates = slab_candidates(lhs_MK.shape[0], num_groups,
                                 lhs_MK.shape[1] * grad_MN.shape[1], tiling)
    if len(candidates) == 1:
        return tgmm_with_slab(lhs_MK, grad_MN, group_sizes_E, group_offset,
                              num_groups=num_groups, tiling=tiling, slab_rows=candidates[0],
                              out_dtype=out_dtype)
    # A slab is a candidate only if the mean group has >= min_block_m rows: no padding needed.
    bounds = metadata.group_bounds(group_sizes_E, group_offset, num_groups)
    plans = [chunk_plan(bounds, lhs_MK.shape[0], L, tiling) for L in candidates]
    costs = jnp.stack([slab_cost(levels, num_groups, L) for levels, L in zip(plans, candidates)])
    branches = [functools.partial(_weight_gradient, lhs_MK, grad_MN, bounds, levels, L,
                                  out_dtype) for levels, L in zip(plans, candidates)]
    return jax.lax.switch(jnp.argmin(costs), branches)

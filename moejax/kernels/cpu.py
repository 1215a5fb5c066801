"""The "cpu" grouped matmul: a loop over row chunks, each multiplied by its group's weights.

In: lhs (M, k) rows sorted by group, rhs (G, k, n) local experts, group metadata. Out: (M, n).
Why this is fast where ``jax.lax.ragged_dot`` is not: ragged_dot lowers on CPU to a dense
(M, k) x (E, k, n) product masked by group (E times the useful FLOPs). Here every chunk of rows
is one ordinary (rows, k) x (k, n) matmul, the kind XLA's CPU backend runs at full speed, and
the weights are read in place (a dynamic index into rhs, no gathered copy per chunk).

The chunks come from ``metadata.row_chunks``: per group, full chunks of ``block_m`` rows, then
power-of-two chunks down to ``min_block_m``, so a group pads < min_block_m rows. Each chunk size
is one ``fori_loop`` whose trip count is the number of live chunks (dynamic: no work for chunks
that the worst case would need but this batch does not). Only chunks of the last (smallest) size
can hold rows of another group; their stores keep only their own group's rows. No padded copy of lhs
or of the output is made: each would be an extra pass over memory next to every matmul.

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


def tgmm(lhs_MK: jax.Array, grad_MN: jax.Array, group_sizes_E: jax.Array,
         group_offset: jax.Array, *, num_groups: int, tiling: Tiling, out_dtype) -> jax.Array:
    """(G, k, n): out[g] = lhs[rows of local group g].T @ grad[those rows]; empty groups zero.

    The (G, k, n) float32 gradient is zero-initialised once and carried through the chunk loops;
    each chunk adds its (k, n) product into its group's slice in place (a chunk's group comes
    from the chunk, so one loop per chunk size covers all groups). Groups without chunks keep
    their zeros. An earlier version looped over groups with a (k, n) accumulator per group and
    stacked the results: two more passes over k x n per group (the zero-initialised accumulator
    and the stacking copy), which cost most where groups are small: with 128 groups of 64 rows
    (k = n = 1,024) this version takes 152 ms against 175 ms (0.67 against 0.58 of the dense
    x.T @ dy), and a batched einsum, XLA's best case for equal groups, 143 ms (tcmalloc; with
    glibc malloc 265 against 282 ms, page faults of the fresh output dominate both).
    """
    _, k = lhs_MK.shape
    n = grad_MN.shape[1]
    levels = [level for level in _levels(lhs_MK, group_sizes_E, group_offset, num_groups, tiling)
              if level.group_C.shape[0]]  # skip sizes with no room in M rows
    pad = max(tiling.min_block_m - lhs_MK.shape[0], 0)
    lhs_padded, grad_padded = _pad_rows(lhs_MK, pad), _pad_rows(grad_MN, pad)

    def add_chunk(level, partial, c, out_GKN):
        load_start, own_R = _chunk_rows(level, c, lhs_padded.shape[0], partial)
        x_RK = jax.lax.dynamic_slice_in_dim(lhs_padded, load_start, level.rows)
        g_RN = jax.lax.dynamic_slice_in_dim(grad_padded, load_start, level.rows)
        if own_R is not None:  # zero other rows on both sides: they may hold NaN/inf
            x_RK = jnp.where(own_R[:, None], x_RK, 0)
            g_RN = jnp.where(own_R[:, None], g_RN, 0)
        # Contract over the chunk's rows: (R, k)^T (R, n) -> (k, n).
        y_KN = jax.lax.dot_general(x_RK, g_RN, (((0,), (0,)), ((), ())),
                                   preferred_element_type=jnp.float32)
        group = level.group_C[c]
        sum_1KN = jax.lax.dynamic_index_in_dim(out_GKN, group, keepdims=True) + y_KN[None]
        return jax.lax.dynamic_update_index_in_dim(out_GKN, sum_1KN, group, 0)

    out_GKN = jnp.zeros((num_groups, k, n), jnp.float32)
    for level in levels:
        partial = level is levels[-1]  # the smallest chunks may hold other groups' rows
        out_GKN = jax.lax.fori_loop(0, level.num_live, functools.partial(add_chunk, level, partial),
                                    out_GKN)
    return out_GKN.astype(out_dtype)

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
can hold rows of the next group; their stores keep only their own group's rows.

Letters: M rows, k contraction, n output columns, G local groups, R rows per chunk.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.kernels import metadata
from moejax.kernels.tiling import Tiling


def _levels(lhs_MK, group_sizes_E, group_offset, num_groups: int, tiling: Tiling):
    bounds = metadata.group_bounds(group_sizes_E, group_offset, num_groups)
    return metadata.row_chunks(bounds, lhs_MK.shape[0], tiling.block_m, tiling.min_block_m)


def _pad_rows(x, rows: int):
    # A last-level chunk starts inside its group, so it reaches < min_block_m rows past row M.
    return jnp.pad(x, ((0, rows), (0, 0)))


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
    pad = tiling.min_block_m
    lhs_padded = _pad_rows(lhs_MK, pad)
    out_padded = jnp.zeros((num_rows + pad, n), out_dtype)
    for level in levels:
        if level.group_C.shape[0] == 0:  # no chunk of this size fits in M rows
            continue
        partial = level is levels[-1]  # only the smallest chunks can hold other groups' rows

        def chunk(c, out_padded, level=level, partial=partial):
            row_start = level.row_start_C[c]  # first lhs row of chunk c
            x_RK = jax.lax.dynamic_slice_in_dim(lhs_padded, row_start, level.rows)
            w = jax.lax.dynamic_index_in_dim(rhs_GKN, level.group_C[c], keepdims=False)
            y_RN = jax.lax.dot_general(x_RK, w, (((1,), (rhs_contract_dim,)), ((), ())),
                                       preferred_element_type=jnp.float32).astype(out_dtype)
            if partial:
                # Rows valid_rows.. of the chunk belong to the next group (or to no group):
                # keep what is stored there, so chunks may be processed in any order.
                own_R = jnp.arange(level.rows) < level.valid_rows_C[c]
                stored_RN = jax.lax.dynamic_slice_in_dim(out_padded, row_start, level.rows)
                y_RN = jnp.where(own_R[:, None], y_RN, stored_RN)
            return jax.lax.dynamic_update_slice_in_dim(out_padded, y_RN, row_start, 0)

        out_padded = jax.lax.fori_loop(0, level.num_live, chunk, out_padded)
    return out_padded[:num_rows]


def tgmm(lhs_MK: jax.Array, grad_MN: jax.Array, group_sizes_E: jax.Array,
         group_offset: jax.Array, *, num_groups: int, tiling: Tiling, out_dtype) -> jax.Array:
    """(G, k, n): out[g] = lhs[rows of local group g].T @ grad[those rows]; empty groups zero."""
    _, k = lhs_MK.shape
    n = grad_MN.shape[1]
    levels = _levels(lhs_MK, group_sizes_E, group_offset, num_groups, tiling)
    pad = tiling.min_block_m
    lhs_padded, grad_padded = _pad_rows(lhs_MK, pad), _pad_rows(grad_MN, pad)
    acc_GKN = jnp.zeros((num_groups, k, n), jnp.float32)  # groups never visited stay zero
    for level in levels:
        if level.group_C.shape[0] == 0:
            continue
        partial = level is levels[-1]

        def chunk(c, acc_GKN, level=level, partial=partial):
            row_start, group = level.row_start_C[c], level.group_C[c]
            x_RK = jax.lax.dynamic_slice_in_dim(lhs_padded, row_start, level.rows)
            g_RN = jax.lax.dynamic_slice_in_dim(grad_padded, row_start, level.rows)
            if partial:  # zero the rows of other groups (both sides: they may hold NaN/inf)
                own_R = (jnp.arange(level.rows) < level.valid_rows_C[c])[:, None]
                x_RK = jnp.where(own_R, x_RK, 0)
                g_RN = jnp.where(own_R, g_RN, 0)
            # Contract over the chunk's rows: (R, k)^T (R, n) -> (k, n).
            update_KN = jax.lax.dot_general(x_RK, g_RN, (((0,), (0,)), ((), ())),
                                            preferred_element_type=jnp.float32)
            total_KN = jax.lax.dynamic_index_in_dim(acc_GKN, group, keepdims=False) + update_KN
            return jax.lax.dynamic_update_index_in_dim(acc_GKN, total_KN, group, 0)

        acc_GKN = jax.lax.fori_loop(0, level.num_live, chunk, acc_GKN)
    return acc_GKN.astype(out_dtype)

"""Operand preparation shared by the Pallas kernels: whole-tile padding, group metadata, masks.

In: gmm's operands (lhs (M, K), rhs (G, K, N) or (G, N, K), group sizes and offset) and the
backend's tile sizes. Out: operands zero-padded to whole tiles with the group bounds and the
per-visit metadata the kernel grid walks (``metadata.covering_visits``: the kernel itself
stores every output row, zeros where no local group owns it).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from moejax.kernels import metadata
from moejax.kernels.tiling import round_up


class GmmOperands(NamedTuple):
    lhs: jax.Array  # (m_pad, k_pad)
    rhs: jax.Array  # (G, k_pad, n_pad), or (G, n_pad, k_pad) when transposed
    tiles: tuple[int, int, int]  # (tm, tk, tn)
    padded: tuple[int, int, int]  # (m_pad, k_pad, n_pad)
    bounds: metadata.GroupBounds
    visits: metadata.CoveringVisits


def pad2(x: jax.Array, rows: int, cols: int) -> jax.Array:
    """Zero-pad a matrix at the bottom and right to (rows, cols)."""
    return jnp.pad(x, ((0, rows - x.shape[0]), (0, cols - x.shape[1])))


def gmm_operands(lhs_MK: jax.Array, rhs_GKN: jax.Array, group_sizes_E: jax.Array,
                 group_offset, tiles: Callable[[int, int, int], tuple[int, int, int]],
                 transpose_rhs: bool) -> GmmOperands:
    """Pad to whole tiles (``tiles(m, k, n)`` picks them) and compute the group metadata."""
    m, k = lhs_MK.shape
    num_groups = rhs_GKN.shape[0]
    n = rhs_GKN.shape[1] if transpose_rhs else rhs_GKN.shape[2]
    tm, tk, tn = tiles(m, k, n)
    m_pad, k_pad, n_pad = round_up(m, tm), round_up(k, tk), round_up(n, tn)
    rhs_shape = (n_pad, k_pad) if transpose_rhs else (k_pad, n_pad)
    bounds = metadata.group_bounds(group_sizes_E, group_offset, num_groups)
    return GmmOperands(pad2(lhs_MK, m_pad, k_pad),
                       jax.vmap(lambda w: pad2(w, *rhs_shape))(rhs_GKN),
                       (tm, tk, tn), (m_pad, k_pad, n_pad), bounds,
                       metadata.covering_visits(bounds, m_pad, tm))

"""The "xla" grouped matmul: ``jax.lax.ragged_dot``, the reference every kernel is tested against.

In/out as ``moejax.kernels.gmm``. Correct on every backend, but on CPU (and by default on GPU)
it lowers to masked dense compute over all experts, so it is slow; use it to check, not to train.
ragged_dot has no group_offset yet, so a local slice of the experts is expressed with one extra
all-zero expert that takes the rows before the local groups; rows after them are past its
group-size sum and come out zero. With all E experts (offset 0) the call is ragged_dot itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.kernels import metadata
from moejax.kernels.tiling import Tiling


def gmm(lhs_MK: jax.Array, rhs_GKN: jax.Array, group_sizes_E: jax.Array,
        group_offset: jax.Array, *, tiling: Tiling | None = None, out_dtype,
        transpose_rhs: bool = False) -> jax.Array:
    """ragged_dot over the local groups; rows outside them are zero. ``tiling`` is ignored."""
    del tiling
    if transpose_rhs:
        rhs_GKN = jnp.swapaxes(rhs_GKN, 1, 2)
    num_groups, k, n = rhs_GKN.shape
    if num_groups == group_sizes_E.shape[0]:  # all groups, so the offset is 0: no extra group
        out = jax.lax.ragged_dot(lhs_MK, rhs_GKN, group_sizes_E.astype(jnp.int32),
                                 preferred_element_type=jnp.float32)
        return out.astype(out_dtype)
    bounds = metadata.group_bounds(group_sizes_E, group_offset, num_groups)
    # Group 0 of the call: rows before the first local group, multiplied by zeros.
    sizes = jnp.concatenate([bounds.starts_G[:1], bounds.ends_G - bounds.starts_G])
    rhs = jnp.concatenate([jnp.zeros((1, k, n), rhs_GKN.dtype), rhs_GKN])
    out = jax.lax.ragged_dot(lhs_MK, rhs, sizes.astype(jnp.int32),
                             preferred_element_type=jnp.float32)
    return out.astype(out_dtype)


def tgmm(lhs_MK: jax.Array, grad_MN: jax.Array, group_sizes_E: jax.Array,
         group_offset: jax.Array, *, num_groups: int, tiling: Tiling | None = None,
         out_dtype) -> jax.Array:
    """(G, k, n) weight gradient: the VJP of ragged_dot with respect to its weights."""
    k, n = lhs_MK.shape[1], grad_MN.shape[1]
    zeros = jnp.zeros((num_groups, k, n), lhs_MK.dtype)
    _, vjp = jax.vjp(lambda rhs: gmm(lhs_MK, rhs, group_sizes_E, group_offset,
                                     out_dtype=grad_MN.dtype), zeros)
    return vjp(grad_MN)[0].astype(out_dtype)

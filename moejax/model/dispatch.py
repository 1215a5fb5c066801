"""Dropless dispatch: group the T*K (token, expert) pairs by expert, and undo it after the experts.

In: tokens x_TD and the router's expert_ids_TK. Out: rows x_MD (M = T*K) sorted by expert, the
(E,) group sizes the grouped matmul needs, and the permutation to undo the sort.

The forward gather x_rep[order] would differentiate into a scatter-add; because ``order`` is a
permutation, its transpose is the gather by the inverse permutation, which we give it through a
custom VJP (MaxText does the same). Sorting is stable, so rows of one expert keep token order.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class SortedDispatch(NamedTuple):
    """How (token, choice) pairs were ordered by expert.

    Attributes:
      order_M: row m of the sorted array is flat pair order_M[m] (flat pair = token * K + choice).
      inverse_order_M: the inverse permutation, argsort(order_M).
      group_sizes_E: number of rows for each expert, int32, summing to M.
    """

    order_M: jax.Array
    inverse_order_M: jax.Array
    group_sizes_E: jax.Array


def sort_by_expert(expert_ids_TK: jax.Array, num_experts: int) -> SortedDispatch:
    """Stable sort of the flattened (token, choice) pairs by expert id."""
    flat_M = expert_ids_TK.reshape(-1)
    order_M = jnp.argsort(flat_M, stable=True).astype(jnp.int32)
    inverse_order_M = jnp.argsort(order_M).astype(jnp.int32)
    group_sizes_E = jnp.bincount(flat_M, length=num_experts).astype(jnp.int32)
    return SortedDispatch(order_M, inverse_order_M, group_sizes_E)


@jax.custom_vjp
def permute_rows(x_MD: jax.Array, order_M: jax.Array, inverse_order_M: jax.Array) -> jax.Array:
    """x_MD[order_M], differentiated by the inverse-permutation gather instead of a scatter."""
    return x_MD[order_M]


def _permute_fwd(x_MD, order_M, inverse_order_M):
    return x_MD[order_M], (order_M, inverse_order_M)


def _permute_bwd(residuals, g_MD):
    order_M, inverse_order_M = residuals
    return g_MD[inverse_order_M], None, None


permute_rows.defvjp(_permute_fwd, _permute_bwd)


def dispatch(x_TD: jax.Array, sorted_dispatch: SortedDispatch, top_k: int) -> jax.Array:
    """(M, D) copies of the tokens, one per (token, choice), grouped by expert."""
    x_MD = jnp.repeat(x_TD, top_k, axis=0)  # row t*K + k is token t
    return permute_rows(x_MD, sorted_dispatch.order_M, sorted_dispatch.inverse_order_M)


def combine(y_MD: jax.Array, sorted_dispatch: SortedDispatch, weights_TK: jax.Array) -> jax.Array:
    """Undo the sort and sum each token's K expert outputs with its router weights (in float32).

    Returns (T, D) float32.
    """
    num_tokens, top_k = weights_TK.shape
    y_unsorted_MD = permute_rows(y_MD, sorted_dispatch.inverse_order_M, sorted_dispatch.order_M)
    y_TKD = y_unsorted_MD.reshape(num_tokens, top_k, -1).astype(jnp.float32)
    return jnp.einsum("tkd,tk->td", y_TKD, weights_TK.astype(jnp.float32))


def sorted_experts_apply(x_TD: jax.Array, expert_ids_TK: jax.Array, weights_TK: jax.Array,
                         num_experts: int, experts) -> jax.Array:
    """Dropless routed experts of these tokens: sort their (token, choice) rows by expert, run
    ``experts(x_MD, group_sizes_E)`` on the sorted rows, un-sort and combine. (T, D) float32."""
    sorted_dispatch = sort_by_expert(expert_ids_TK, num_experts)
    x_MD = dispatch(x_TD, sorted_dispatch, expert_ids_TK.shape[1])
    y_MD = experts(x_MD, sorted_dispatch.group_sizes_E)
    return combine(y_MD, sorted_dispatch, weights_TK)

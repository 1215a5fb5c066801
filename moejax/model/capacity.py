"""Capacity-limited token-choice dispatch: static-shape expert buffers, overflow dropped.

In: tokens x_TD, the router's expert_ids_TK and weights_TK, a token mask, the per-expert capacity C.
Out: y_TD (float32) and kept_TK, which (token, choice) assignments got a slot.

Slots are claimed in priority order: every token's first choice before any token's second choice
(then token order), as in GShard/Switch. Assignments past an expert's capacity, and padding
tokens, are dropped: they contribute nothing, so a fully dropped token passes through the block's
residual connection unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.parallel.rules import constrain

# The (E, C, D) buffers carry E on the 'expert' mesh axis while tokens carry the batch axes
# (which include 'expert'): GSPMD turns the scatter into the buffers and the gather back into
# all-to-alls over 'expert' (flaxformer's pure-GSPMD expert parallelism, static shapes).
BUFFER_AXES = ("expert", "capacity", "embed")


def capacity_slots(expert_ids_TK: jax.Array, num_experts: int, capacity: int,
                   mask_T: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Position of every assignment in its expert's buffer, and whether it fits.

    Returns slot_TK (int32, meaningful only where kept) and kept_TK (bool).
    """
    num_tokens, top_k = expert_ids_TK.shape
    real_T = jnp.ones((num_tokens,), bool) if mask_T is None else mask_T.astype(bool)
    # Priority order is choice-major: row k*T + t is choice k of token t.
    one_hot_KTE = jax.nn.one_hot(expert_ids_TK.T, num_experts, dtype=jnp.int32)
    one_hot_KTE = one_hot_KTE * real_T[None, :, None]
    claimed_before_KTE = jnp.cumsum(one_hot_KTE.reshape(top_k * num_tokens, num_experts),
                                    axis=0).reshape(top_k, num_tokens, num_experts) - one_hot_KTE
    slot_KT = jnp.sum(claimed_before_KTE * one_hot_KTE, axis=-1)
    kept_KT = (slot_KT < capacity) & real_T[None, :]
    return slot_KT.T.astype(jnp.int32), kept_KT.T


def capacity_dispatch_combine(x_TD: jax.Array, expert_ids_TK: jax.Array, weights_TK: jax.Array,
                              kept_TK: jax.Array, slot_TK: jax.Array, num_experts: int,
                              capacity: int, expert_fn) -> jax.Array:
    """Scatter kept assignments into (E, C, D) buffers, run expert_fn, gather and combine.

    expert_fn maps (E, C, D) -> (E, C, D). Returns y_TD in float32.
    """
    num_tokens, top_k = expert_ids_TK.shape
    d_model = x_TD.shape[-1]
    dump = num_experts * capacity  # one extra row receives every dropped assignment
    flat_index_TK = jnp.where(kept_TK, expert_ids_TK * capacity + slot_TK, dump)
    x_TKD = jnp.broadcast_to(x_TD[:, None, :], (num_tokens, top_k, d_model))
    buffer_RD = jnp.zeros((dump + 1, d_model), x_TD.dtype).at[flat_index_TK.reshape(-1)].set(
        x_TKD.reshape(-1, d_model), mode="drop", unique_indices=False)
    x_ECD = constrain(buffer_RD[:dump].reshape(num_experts, capacity, d_model), BUFFER_AXES)
    y_ECD = constrain(expert_fn(x_ECD), BUFFER_AXES)
    y_RD = jnp.concatenate([y_ECD.reshape(dump, d_model), jnp.zeros((1, d_model), y_ECD.dtype)])
    y_TKD = y_RD[flat_index_TK].astype(jnp.float32)
    gate_TK = jnp.where(kept_TK, weights_TK.astype(jnp.float32), 0.0)
    return jnp.einsum("tkd,tk->td", y_TKD, gate_TK)

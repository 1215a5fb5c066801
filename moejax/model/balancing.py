"""Load-balancing objectives for routers: pure functions of the routing, in float32.

In: router logits / scores (T, E), chosen expert ids (T, K), optional token mask (T,) that is 1 on
real tokens and 0 on padding. Out: scalar losses to add to the language-model objective.

- ``switch_aux_loss`` (Fedus et al. 2021): E * sum_e f_e * p_e, with f_e the fraction of the T*K
  token-to-expert assignments that went to e and p_e the mean score of e. Equals 1 under perfectly
  uniform routing, whatever E and K.
- ``router_z_loss`` (Zoph et al. 2022): mean over tokens of logsumexp(logits)^2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _token_weights(num_tokens: int, mask_T: jax.Array | None) -> jax.Array:
    if mask_T is None:
        return jnp.ones((num_tokens,), jnp.float32)
    return mask_T.astype(jnp.float32)


def tokens_per_expert(expert_ids_TK: jax.Array, num_experts: int,
                      mask_T: jax.Array | None = None) -> jax.Array:
    """(E,) float32 number of (token, choice) assignments per expert, padding excluded."""
    w_T = _token_weights(expert_ids_TK.shape[0], mask_T)
    one_hot_TKE = jax.nn.one_hot(expert_ids_TK, num_experts, dtype=jnp.float32)
    return jnp.einsum("tke,t->e", one_hot_TKE, w_T)


def switch_aux_loss(scores_TE: jax.Array, expert_ids_TK: jax.Array,
                    mask_T: jax.Array | None = None) -> jax.Array:
    """Switch load-balancing loss E * sum_e f_e * p_e over the given tokens (a global average)."""
    num_tokens, num_experts = scores_TE.shape
    top_k = expert_ids_TK.shape[1]
    w_T = _token_weights(num_tokens, mask_T)
    n_real = jnp.maximum(jnp.sum(w_T), 1.0)
    fraction_E = tokens_per_expert(expert_ids_TK, num_experts, mask_T) / (n_real * top_k)
    mean_score_E = jnp.einsum("te,t->e", scores_TE.astype(jnp.float32), w_T) / n_real
    # f_e carries no gradient (it comes from a discrete choice); p_e does.
    return num_experts * jnp.sum(jax.lax.stop_gradient(fraction_E) * mean_score_E)


def router_z_loss(logits_TE: jax.Array, mask_T: jax.Array | None = None) -> jax.Array:
    """Mean over tokens of logsumexp(logits)^2: keeps router logits small and stable."""
    w_T = _token_weights(logits_TE.shape[0], mask_T)
    lse_T = jax.nn.logsumexp(logits_TE.astype(jnp.float32), axis=-1)
    return jnp.sum(w_T * lse_T**2) / jnp.maximum(jnp.sum(w_T), 1.0)

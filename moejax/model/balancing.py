"""Load-balancing objectives and routing statistics: pure functions of the routing, in float32.

In: router logits / scores (T, E), chosen expert ids (T, K), an optional token mask (T,) that is 1
on real tokens and 0 on padding. Out: scalar losses to add to the objective, statistics to log,
and the bias update of auxiliary-loss-free balancing.

- ``switch_aux_loss`` (Fedus et al. 2021): E * sum_e f_e * p_e, with f_e the fraction of the T*K
  token-to-expert assignments that went to e and p_e the mean (normalised) score of e. Equals 1
  under perfectly uniform routing, whatever E and K. ``sequence_aux_loss`` averages it per sequence.
- ``router_z_loss`` (Zoph et al. 2022): mean over tokens of logsumexp(logits)^2.
- ``bias_update`` (DeepSeek-V3): b_e <- b_e + rate * sign(mean load - load_e).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _token_weights(num_tokens: int, mask_T: jax.Array | None) -> jax.Array:
    if mask_T is None:
        return jnp.ones((num_tokens,), jnp.float32)
    return mask_T.astype(jnp.float32)


def normalized_scores(scores_TE: jax.Array) -> jax.Array:
    """Scores as a distribution over experts (softmax scores already are; sigmoids are not)."""
    scores_TE = scores_TE.astype(jnp.float32)
    return scores_TE / jnp.maximum(jnp.sum(scores_TE, axis=-1, keepdims=True), 1e-9)


def tokens_per_expert(expert_ids_TK: jax.Array, num_experts: int,
                      mask_T: jax.Array | None = None) -> jax.Array:
    """(E,) float32 number of (token, choice) assignments per expert, padding excluded."""
    w_T = _token_weights(expert_ids_TK.shape[0], mask_T)
    one_hot_TKE = jax.nn.one_hot(expert_ids_TK, num_experts, dtype=jnp.float32)
    return jnp.einsum("tke,t->e", one_hot_TKE, w_T)


def switch_aux_loss(scores_TE: jax.Array, expert_ids_TK: jax.Array,
                    mask_T: jax.Array | None = None) -> jax.Array:
    """Switch load-balancing loss E * sum_e f_e * p_e over all given tokens (a global average)."""
    num_tokens, num_experts = scores_TE.shape
    top_k = expert_ids_TK.shape[1]
    w_T = _token_weights(num_tokens, mask_T)
    n_real = jnp.maximum(jnp.sum(w_T), 1.0)
    fraction_E = tokens_per_expert(expert_ids_TK, num_experts, mask_T) / (n_real * top_k)
    mean_score_E = jnp.einsum("te,t->e", normalized_scores(scores_TE), w_T) / n_real
    # f_e carries no gradient (it comes from a discrete choice); p_e does.
    return num_experts * jnp.sum(jax.lax.stop_gradient(fraction_E) * mean_score_E)


def sequence_aux_loss(scores_BSE: jax.Array, expert_ids_BSK: jax.Array,
                      mask_BS: jax.Array | None = None) -> jax.Array:
    """Switch loss computed within each sequence, averaged over sequences that have real tokens."""
    if mask_BS is None:
        mask_BS = jnp.ones(scores_BSE.shape[:2], jnp.float32)
    per_sequence_B = jax.vmap(switch_aux_loss)(scores_BSE, expert_ids_BSK, mask_BS)
    has_tokens_B = (jnp.sum(mask_BS, axis=-1) > 0).astype(jnp.float32)
    return jnp.sum(per_sequence_B * has_tokens_B) / jnp.maximum(jnp.sum(has_tokens_B), 1.0)


def router_z_loss(logits_TE: jax.Array, mask_T: jax.Array | None = None) -> jax.Array:
    """Mean over tokens of logsumexp(logits)^2: keeps router logits small and stable."""
    w_T = _token_weights(logits_TE.shape[0], mask_T)
    lse_T = jax.nn.logsumexp(logits_TE.astype(jnp.float32), axis=-1)
    return jnp.sum(w_T * lse_T**2) / jnp.maximum(jnp.sum(w_T), 1.0)


def router_entropy(scores_TE: jax.Array, mask_T: jax.Array | None = None) -> jax.Array:
    """Mean over tokens of the entropy (nats) of the normalised router scores."""
    p_TE = normalized_scores(scores_TE)
    entropy_T = -jnp.sum(p_TE * jnp.log(jnp.maximum(p_TE, 1e-20)), axis=-1)
    w_T = _token_weights(scores_TE.shape[0], mask_T)
    return jnp.sum(w_T * entropy_T) / jnp.maximum(jnp.sum(w_T), 1.0)


def load_imbalance(tokens_per_expert_E: jax.Array) -> jax.Array:
    """max / mean of the load (1.0 = perfectly balanced; 0 when no token was routed)."""
    mean = jnp.mean(tokens_per_expert_E)
    return jnp.where(mean > 0, jnp.max(tokens_per_expert_E) / jnp.maximum(mean, 1e-9), 0.0)


def bias_update(bias_E: jax.Array, tokens_per_expert_E: jax.Array, rate: float) -> jax.Array:
    """Auxiliary-loss-free balancing step: raise the bias of under-loaded experts, lower others.

    Call once per optimizer step with the load summed over every micro-batch of that step, so
    gradient accumulation does not change the update.
    """
    load = tokens_per_expert_E.astype(jnp.float32)
    return bias_E + rate * jnp.sign(jnp.mean(load) - load)

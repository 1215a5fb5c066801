"""Expert-choice routing (Zhou et al. 2022): every expert picks its C highest-scoring tokens.

In: router logits (T, E), a token mask, the tokens per expert C. Out: for every expert the chosen
token ids and gates (E, C), and y_TD after the experts.

Balanced by construction, but a token's routing depends on the scores of every other token in the
batch, later positions included: in a causal decoder that leaks future tokens into the past, so
use it for analysis or encoder-style models only (the model warns when it is configured).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class ExpertChoice(NamedTuple):
    token_ids_EC: jax.Array  # int32, which tokens each expert processes
    gates_EC: jax.Array  # float32 score of that token for that expert (0 for padding picks)


def choose_tokens(scores_TE: jax.Array, capacity: int, mask_T: jax.Array | None = None
                  ) -> ExpertChoice:
    """Each expert's top-`capacity` tokens by score; padding tokens are picked only last, gate 0."""
    scores_TE = scores_TE.astype(jnp.float32)
    real_T = jnp.ones(scores_TE.shape[:1], bool) if mask_T is None else mask_T.astype(bool)
    ranking_ET = jnp.where(real_T[None, :], scores_TE.T, -1.0)  # scores are >= 0
    _, token_ids_EC = jax.lax.top_k(ranking_ET, capacity)
    gates_EC = jnp.take_along_axis(scores_TE.T, token_ids_EC, axis=-1)
    gates_EC = jnp.where(real_T[token_ids_EC], gates_EC, 0.0)
    return ExpertChoice(token_ids_EC.astype(jnp.int32), gates_EC)


def expert_choice_apply(x_TD: jax.Array, choice: ExpertChoice, expert_fn) -> jax.Array:
    """Gather each expert's tokens, run expert_fn on (E, C, D), scatter-add the gated outputs."""
    y_ECD = expert_fn(x_TD[choice.token_ids_EC]).astype(jnp.float32)
    y_ECD = y_ECD * choice.gates_EC[..., None]
    return jnp.zeros(x_TD.shape, jnp.float32).at[choice.token_ids_EC.reshape(-1)].add(
        y_ECD.reshape(-1, x_TD.shape[-1]))


def tokens_per_expert_choice(choice: ExpertChoice, num_tokens: int) -> jax.Array:
    """(T,) how many experts processed each token (with a non-zero gate)."""
    picked = (choice.gates_EC > 0).astype(jnp.float32).reshape(-1)
    return jnp.zeros((num_tokens,), jnp.float32).at[choice.token_ids_EC.reshape(-1)].add(picked)

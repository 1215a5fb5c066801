"""Token-choice routing: router logits in, the K chosen experts and their combine weights out.

Pure functions (no Flax) plus a thin ``Router`` module that holds the (D, E) projection. All router
math runs in float32 whatever the compute dtype, because top-k choices and softmax saturate badly
in bfloat16.

Shapes: T tokens, D d_model, E experts, K top-k.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


class Routing(NamedTuple):
    """The result of routing T tokens to K of E experts.

    Attributes:
      logits_TE: raw router logits, float32.
      scores_TE: router scores (softmax probabilities), float32.
      weights_TK: combine weight of each chosen expert, float32.
      expert_ids_TK: chosen expert ids, int32, best first (column 0 holds every token's top-1).
    """

    logits_TE: jax.Array
    scores_TE: jax.Array
    weights_TK: jax.Array
    expert_ids_TK: jax.Array


def softmax_scores(logits_TE: jax.Array) -> jax.Array:
    """Router scores as a float32 softmax over experts."""
    return jax.nn.softmax(logits_TE.astype(jnp.float32), axis=-1)


SCORE_FUNCTIONS = {"softmax": softmax_scores}


def route_top_k(logits_TE: jax.Array, top_k: int, *, scores: str = "softmax",
                renormalize: bool = False) -> Routing:
    """Choose the top_k highest-scoring experts of every token.

    Args:
      logits_TE: router logits (any float dtype; promoted to float32).
      top_k: K, experts per token.
      scores: name of the score function in SCORE_FUNCTIONS.
      renormalize: divide the K chosen scores by their sum so the combine weights sum to one.
    """
    logits_TE = logits_TE.astype(jnp.float32)
    scores_TE = SCORE_FUNCTIONS[scores](logits_TE)
    weights_TK, expert_ids_TK = jax.lax.top_k(scores_TE, top_k)
    if renormalize:
        weights_TK = weights_TK / jnp.sum(weights_TK, axis=-1, keepdims=True)
    return Routing(logits_TE, scores_TE, weights_TK, expert_ids_TK.astype(jnp.int32))


class Router(nnx.Module):
    """Holds the router projection w_DE and routes tokens with ``route_top_k``."""

    def __init__(self, d_model: int, num_experts: int, top_k: int, *, scores: str = "softmax",
                 renormalize: bool = False, init_std: float = 0.02, rngs: nnx.Rngs):
        self.top_k = top_k
        self.scores = scores
        self.renormalize = renormalize
        init = jax.nn.initializers.truncated_normal(init_std)
        self.w_DE = nnx.Param(init(rngs.params(), (d_model, num_experts), jnp.float32))

    def __call__(self, x_TD: jax.Array) -> Routing:
        logits_TE = jnp.dot(x_TD.astype(jnp.float32), self.w_DE[...],
                            precision=jax.lax.Precision.HIGHEST)
        return route_top_k(logits_TE, self.top_k, scores=self.scores, renormalize=self.renormalize)

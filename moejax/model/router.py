"""Token-choice routing: router logits in, the K chosen experts and their combine weights out.

Pure functions (no Flax) plus a thin ``Router`` module that holds the (D, E) projection and, for
auxiliary-loss-free balancing, a per-expert ``BalancingBias`` that is not a parameter. All router
math runs in float32 whatever the compute dtype, because top-k choices and softmax saturate badly
in bfloat16.

Shapes: T tokens, D d_model, E experts, K top-k.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.parallel.rules import logical_param


class BalancingBias(nnx.Variable):
    """Per-expert bias used only to choose experts; updated outside the optimizer."""


class Routing(NamedTuple):
    """The result of routing T tokens to K of E experts.

    Attributes:
      logits_TE: raw router logits, float32.
      scores_TE: router scores (softmax probabilities or sigmoids), float32, unbiased.
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


def sigmoid_scores(logits_TE: jax.Array) -> jax.Array:
    """Independent float32 sigmoid score per expert (DeepSeek-V3 style)."""
    return jax.nn.sigmoid(logits_TE.astype(jnp.float32))


SCORE_FUNCTIONS = {"softmax": softmax_scores, "sigmoid": sigmoid_scores}


def route_top_k(logits_TE: jax.Array, top_k: int, *, scores: str = "softmax",
                renormalize: bool = False, bias_E: jax.Array | None = None) -> Routing:
    """Choose the top_k highest-scoring experts of every token.

    Args:
      logits_TE: router logits (any float dtype; promoted to float32).
      top_k: K, experts per token.
      scores: name of the score function in SCORE_FUNCTIONS.
      renormalize: divide the K chosen scores by their sum so the combine weights sum to one.
      bias_E: added to the scores only to rank experts (auxiliary-loss-free balancing); the
        combine weights are always the unbiased scores.
    """
    logits_TE = logits_TE.astype(jnp.float32)
    scores_TE = SCORE_FUNCTIONS[scores](logits_TE)
    ranking_TE = scores_TE if bias_E is None else scores_TE + jax.lax.stop_gradient(bias_E)
    _, expert_ids_TK = jax.lax.top_k(ranking_TE, top_k)
    weights_TK = jnp.take_along_axis(scores_TE, expert_ids_TK, axis=-1)
    if renormalize:
        weights_TK = weights_TK / jnp.sum(weights_TK, axis=-1, keepdims=True)
    return Routing(logits_TE, scores_TE, weights_TK, expert_ids_TK.astype(jnp.int32))


def jitter_inputs(x_TD: jax.Array, rng: jax.Array, jitter: float) -> jax.Array:
    """Multiply router inputs by uniform noise in [1 - jitter, 1 + jitter] (Switch Transformer)."""
    noise = jax.random.uniform(rng, x_TD.shape, jnp.float32, 1.0 - jitter, 1.0 + jitter)
    return x_TD.astype(jnp.float32) * noise


class Router(nnx.Module):
    """Holds the router projection w_DE (and the balancing bias when enabled); routes tokens."""

    def __init__(self, d_model: int, num_experts: int, top_k: int, *, scores: str = "softmax",
                 renormalize: bool = False, jitter: float = 0.0, balancing_bias: bool = False,
                 init_std: float = 0.02, rngs: nnx.Rngs):
        self.top_k = top_k
        self.scores = scores
        self.renormalize = renormalize
        self.jitter = jitter
        init = jax.nn.initializers.truncated_normal(init_std)
        self.w_DE = logical_param(init(rngs.params(), (d_model, num_experts), jnp.float32),
                                  ("embed", "router_experts"))
        self.bias_E = BalancingBias(jnp.zeros((num_experts,), jnp.float32)) if balancing_bias else None

    def logits(self, x_TD: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """float32 logits; jitter is applied when an rng is given (training) and jitter > 0."""
        x_TD = x_TD.astype(jnp.float32)
        if rng is not None and self.jitter > 0:
            x_TD = jitter_inputs(x_TD, rng, self.jitter)
        return jnp.dot(x_TD, self.w_DE[...], precision=jax.lax.Precision.HIGHEST)

    def __call__(self, x_TD: jax.Array, rng: jax.Array | None = None) -> Routing:
        bias = None if self.bias_E is None else self.bias_E[...]
        return route_top_k(self.logits(x_TD, rng), self.top_k, scores=self.scores,
                           renormalize=self.renormalize, bias_E=bias)

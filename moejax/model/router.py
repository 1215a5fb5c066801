"""Token-choice routing: hidden states (and token ids) in, the K chosen experts and their combine
weights out.

Pure functions (no Flax) plus thin modules, one per rule, each called as
``router(x_TD, token_ids_T=..., rng=...) -> Routing`` and answering ``balancing_losses`` and
``bias_norm``:
- ``Router``, learned: holds the (D, E) projection and, for auxiliary-loss-free balancing, a
  per-expert ``BalancingBias`` that is not a parameter. All its math runs in float32 whatever the
  compute dtype, because top-k choices and softmax saturate badly in bfloat16.
- ``HashRouter``: no parameters; a token's K experts are fixed by a hash of its id
  (``hash_expert_ids``), as in Hash Layers (Roller et al. 2021).

Group-limited routing (DeepSeek-V3, arXiv 2412.19437 Sec. 2.1.2): the E experts are split into G
equal groups of consecutive ids (with expert parallelism, a group per device or node); each token
first keeps the M groups whose two best (biased) scores sum highest and chooses its K experts
among those groups only, so its assignments reach at most M groups (``limit_to_groups``).

Shapes: T tokens, D d_model, E experts, K top-k.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.model import balancing
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


def limit_to_groups(ranking_TE: jax.Array, num_groups: int, groups_per_token: int) -> jax.Array:
    """The ranking with every expert outside each token's ``groups_per_token`` best groups set
    to -inf. Experts form ``num_groups`` groups of consecutive ids; a group's score is the sum of
    its two best rankings (its one expert's, for groups of one)."""
    tokens, experts = ranking_TE.shape
    grouped_TGX = ranking_TE.reshape(tokens, num_groups, experts // num_groups)
    best_TGX, _ = jax.lax.top_k(grouped_TGX, min(2, experts // num_groups))
    _, kept_TM = jax.lax.top_k(jnp.sum(best_TGX, axis=-1), groups_per_token)
    kept_TG = jnp.zeros((tokens, num_groups), bool).at[
        jnp.arange(tokens)[:, None], kept_TM].set(True)
    return jnp.where(kept_TG[:, :, None], grouped_TGX, -jnp.inf).reshape(tokens, experts)


def route_top_k(logits_TE: jax.Array, top_k: int, *, scores: str = "softmax",
                renormalize: bool = False, bias_E: jax.Array | None = None,
                groups: tuple[int, int] | None = None, scale: float = 1.0) -> Routing:
    """Choose the top_k highest-scoring experts of every token.

    Args:
      logits_TE: router logits (any float dtype; promoted to float32).
      top_k: K, experts per token.
      scores: name of the score function in SCORE_FUNCTIONS.
      renormalize: divide the K chosen scores by their sum so the combine weights sum to one.
      bias_E: added to the scores only to rank experts (auxiliary-loss-free balancing); the
        combine weights are always the unbiased scores.
      groups: (G, M): choose only among each token's M best of G expert groups
        (``limit_to_groups``); None: among all experts.
      scale: multiplies the combine weights (DeepSeek-V3's routed scaling factor, 2.5 there).
    """
    logits_TE = logits_TE.astype(jnp.float32)
    scores_TE = SCORE_FUNCTIONS[scores](logits_TE)
    ranking_TE = scores_TE if bias_E is None else scores_TE + jax.lax.stop_gradient(bias_E)
    if groups is not None:
        ranking_TE = limit_to_groups(ranking_TE, *groups)
    _, expert_ids_TK = jax.lax.top_k(ranking_TE, top_k)
    weights_TK = jnp.take_along_axis(scores_TE, expert_ids_TK, axis=-1)
    if renormalize:
        weights_TK = weights_TK / jnp.sum(weights_TK, axis=-1, keepdims=True)
    if scale != 1.0:
        weights_TK = weights_TK * scale
    return Routing(logits_TE, scores_TE, weights_TK, expert_ids_TK.astype(jnp.int32))


def jitter_inputs(x_TD: jax.Array, rng: jax.Array, jitter: float) -> jax.Array:
    """Multiply router inputs by uniform noise in [1 - jitter, 1 + jitter] (Switch Transformer)."""
    noise = jax.random.uniform(rng, x_TD.shape, jnp.float32, 1.0 - jitter, 1.0 + jitter)
    return x_TD.astype(jnp.float32) * noise


class Router(nnx.Module):
    """Holds the router projection w_DE (and the balancing bias when enabled); routes tokens."""

    def __init__(self, d_model: int, num_experts: int, top_k: int, *, scores: str = "softmax",
                 renormalize: bool = False, jitter: float = 0.0, balancing_bias: bool = False,
                 groups: tuple[int, int] | None = None, scale: float = 1.0,
                 init_std: float = 0.02, rngs: nnx.Rngs):
        self.top_k = top_k
        self.scores = scores
        self.renormalize = renormalize
        self.groups, self.scale = groups, scale
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

    def __call__(self, x_TD: jax.Array, *, token_ids_T: jax.Array | None = None,
                 rng: jax.Array | None = None) -> Routing:
        bias = None if self.bias_E is None else self.bias_E[...]
        return route_top_k(self.logits(x_TD, rng), self.top_k, scores=self.scores,
                           renormalize=self.renormalize, bias_E=bias, groups=self.groups,
                           scale=self.scale)

    def balancing_losses(self, routing: Routing, mask_T: jax.Array, *, batch: int,
                         aux_scope: str) -> tuple[jax.Array, jax.Array]:
        """(Switch aux loss over the whole batch or per sequence, router z-loss)."""
        if aux_scope == "sequence":
            seq = mask_T.shape[0] // batch
            aux = balancing.sequence_aux_loss(routing.scores_TE.reshape(batch, seq, -1),
                                              routing.expert_ids_TK.reshape(batch, seq, -1),
                                              mask_T.reshape(batch, seq))
        else:
            aux = balancing.switch_aux_loss(routing.scores_TE, routing.expert_ids_TK, mask_T)
        return aux, balancing.router_z_loss(routing.logits_TE, mask_T)

    def bias_norm(self) -> jax.Array:
        """L2 norm of the balancing bias (0 without one)."""
        if self.bias_E is None:
            return jnp.zeros((), jnp.float32)
        return jnp.linalg.norm(self.bias_E[...])


def _mix32(x: jax.Array) -> jax.Array:
    """A uint32 bit mixer (xor-shift-multiply, constants of C. Wellons' "lowbias32"): nearby
    inputs give unrelated outputs."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hash_expert_ids(token_ids_T: jax.Array, num_experts: int, top_k: int) -> jax.Array:
    """(T, K) int32: K distinct experts per token, a fixed function of the token id alone.

    Every (token id, expert) pair gets a pseudo-random 24-bit rank, mix32(id * E + e) >> 8, and a
    token takes its K highest-ranked experts (ties to the lower expert id): for K = 1 a uniform
    random hash of the vocabulary onto the experts, for K > 1 a uniform random K-subset.
    """
    ids_T = token_ids_T.astype(jnp.uint32)
    pairs_TE = ids_T[:, None] * jnp.uint32(num_experts) + jnp.arange(num_experts,
                                                                     dtype=jnp.uint32)
    rank_TE = (_mix32(pairs_TE) >> 8).astype(jnp.int32)
    return jax.lax.top_k(rank_TE, top_k)[1].astype(jnp.int32)


class HashRouter(nnx.Module):
    """Hash routing: no parameters, the same K experts for every occurrence of a token id, each
    weighted 1/K. There is nothing to balance by gradient, so both balancing losses are 0."""

    def __init__(self, num_experts: int, top_k: int):
        self.num_experts, self.top_k = num_experts, top_k

    def __call__(self, x_TD: jax.Array, *, token_ids_T: jax.Array | None = None,
                 rng: jax.Array | None = None) -> Routing:
        if token_ids_T is None:
            raise ValueError("MoEConfig.routing = 'hash' routes by token id: call the MoE layer "
                             "with token_ids_BT (the Transformer does)")
        expert_ids_TK = hash_expert_ids(token_ids_T, self.num_experts, self.top_k)
        weights_TK = jnp.full(expert_ids_TK.shape, 1.0 / self.top_k, jnp.float32)
        # the scores a learned router would have had to give these choices and weights
        scores_TE = jnp.einsum("tk,tke->te", weights_TK,
                               jax.nn.one_hot(expert_ids_TK, self.num_experts, dtype=jnp.float32))
        return Routing(jnp.zeros_like(scores_TE), scores_TE, weights_TK, expert_ids_TK)

    def balancing_losses(self, routing: Routing, mask_T: jax.Array, *, batch: int,
                         aux_scope: str) -> tuple[jax.Array, jax.Array]:
        return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)

    def bias_norm(self) -> jax.Array:
        return jnp.zeros((), jnp.float32)

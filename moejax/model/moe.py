"""The MoE feed-forward layer: router -> dispatch -> experts -> combine.

In: hidden states x_BTD and a token mask (1 on real tokens, 0 on padding). Out: y_BTD and
``MoEStats`` (balancing losses and tokens per expert) that the objective and the metrics read.
The layer is glue: each step is a pure function in ``router``, ``dispatch``, ``experts`` and
``balancing``, so a new routing or dispatch scheme replaces one piece, not this module.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.model import balancing, dispatch
from moejax.model.config import MoEConfig
from moejax.model.experts import SwiGLUExperts
from moejax.model.router import Router


class MoEStats(NamedTuple):
    """Per-layer routing statistics (float32).

    Attributes:
      aux_loss: Switch load-balancing loss of this layer (1.0 = perfectly balanced).
      z_loss: router z-loss of this layer.
      tokens_per_expert_E: (token, choice) assignments per expert, padding excluded.
    """

    aux_loss: jax.Array
    z_loss: jax.Array
    tokens_per_expert_E: jax.Array


class MoEFeedForward(nnx.Module):
    """Token-choice top-k MoE with dropless sorted dispatch and grouped-matmul experts."""

    def __init__(self, d_model: int, moe: MoEConfig, *, n_layers: int, init_std: float,
                 compute_dtype=jnp.float32, rngs: nnx.Rngs):
        self.num_experts = moe.num_experts
        self.top_k = moe.top_k
        self.router = Router(d_model, moe.num_experts, moe.top_k, scores=moe.router_scores,
                             renormalize=moe.renormalize, init_std=init_std, rngs=rngs)
        self.experts = SwiGLUExperts(moe.num_experts, d_model, moe.d_expert,
                                     out_scale=1.0 / math.sqrt(2 * n_layers),
                                     compute_dtype=compute_dtype, rngs=rngs)

    def __call__(self, x_BTD: jax.Array, mask_BT: jax.Array) -> tuple[jax.Array, MoEStats]:
        batch, seq, d_model = x_BTD.shape
        x_TD = x_BTD.reshape(batch * seq, d_model)
        mask_T = mask_BT.reshape(batch * seq)
        routing = self.router(x_TD)
        sorted_dispatch = dispatch.sort_by_expert(routing.expert_ids_TK, self.num_experts)
        x_MD = dispatch.dispatch(x_TD, sorted_dispatch, self.top_k)
        y_MD = self.experts(x_MD, sorted_dispatch.group_sizes_E)
        y_TD = dispatch.combine(y_MD, sorted_dispatch, routing.weights_TK)
        stats = MoEStats(
            aux_loss=balancing.switch_aux_loss(routing.scores_TE, routing.expert_ids_TK, mask_T),
            z_loss=balancing.router_z_loss(routing.logits_TE, mask_T),
            tokens_per_expert_E=balancing.tokens_per_expert(routing.expert_ids_TK,
                                                            self.num_experts, mask_T),
        )
        return y_TD.reshape(batch, seq, d_model).astype(x_BTD.dtype), stats

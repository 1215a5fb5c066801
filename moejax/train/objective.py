"""The training objective: token-weighted cross-entropy plus weighted router losses.

In: float32 logits (B, T, V), targets and loss weights (B, T), the MoEStats of each MoE layer and
the MoE config. Out: the scalar objective and its parts. Pure functions; the router losses are
averaged over MoE layers, so their weights do not grow with depth.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from moejax.model.config import MoEConfig
from moejax.model.moe import MoEStats


class LossParts(NamedTuple):
    total: jax.Array
    cross_entropy: jax.Array
    aux_loss: jax.Array
    z_loss: jax.Array


def cross_entropy_sum(logits_BTV: jax.Array, targets_BT: jax.Array,
                      weights_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum over tokens of weight * -log p(target), and the sum of weights (float32)."""
    logits = logits_BTV.astype(jnp.float32)
    log_z_BT = jax.nn.logsumexp(logits, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits, targets_BT[..., None], axis=-1)[..., 0]
    w = weights_BT.astype(jnp.float32)
    return jnp.sum(w * (log_z_BT - target_logit_BT)), jnp.sum(w)


def objective(logits_BTV, targets_BT, weights_BT, moe_stats: Sequence[MoEStats],
              moe: MoEConfig | None) -> LossParts:
    nll_sum, n_tokens = cross_entropy_sum(logits_BTV, targets_BT, weights_BT)
    ce = nll_sum / jnp.maximum(n_tokens, 1.0)
    if moe_stats:
        aux = jnp.mean(jnp.stack([s.aux_loss for s in moe_stats]))
        z = jnp.mean(jnp.stack([s.z_loss for s in moe_stats]))
        total = ce + moe.aux_loss_weight * aux + moe.z_loss_weight * z
    else:
        aux = z = jnp.zeros((), jnp.float32)
        total = ce
    return LossParts(total, ce, aux, z)

"""One jitted optimizer step and one evaluation step over plain pytrees.

In: a ``TrainState`` (step, params, opt_state, rng) and a batch dict from ``moejax.data``
(inputs, targets, loss_weights, segment_ids, positions; each (B, T)). Out: the next state and a
dict of scalar metrics plus per-layer tokens per expert.

A step whose loss or gradient norm is not finite returns the *input* state unchanged (and reports
``finite = False``), so the host can stop with the last good parameters intact.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from moejax.model.functional import FunctionalModel
from moejax.train.objective import cross_entropy_sum, objective


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 PRNG key; per-step keys are fold_in(rng, step)


def init_train_state(model: FunctionalModel, tx: optax.GradientTransformation,
                     seed: int) -> TrainState:
    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(seed))
    params = model.init(init_rng)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), step_rng)


def make_train_step(model: FunctionalModel, tx: optax.GradientTransformation,
                    schedule: optax.Schedule) -> Callable:
    moe = model.config.moe

    def loss_fn(params, batch):
        logits, stats = model.apply(params, batch["inputs"], batch["positions"],
                                    batch["segment_ids"])
        parts = objective(logits, batch["targets"], batch["loss_weights"], stats, moe)
        return parts.total, (parts, [s.tokens_per_expert_E for s in stats])

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        (_, (parts, tokens_per_expert)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(parts.total) & jnp.isfinite(grad_norm)
        new_state = TrainState(state.step + 1, params, opt_state, state.rng)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        metrics = {
            "loss": parts.total,
            "ce_loss": parts.cross_entropy,
            "aux_loss": parts.aux_loss,
            "z_loss": parts.z_loss,
            "grad_norm": grad_norm,
            "learning_rate": schedule(state.step),
            "tokens": jnp.sum(batch["loss_weights"]),
            "finite": finite,
            "tokens_per_expert": tokens_per_expert,
        }
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=(0,))


def make_eval_step(model: FunctionalModel) -> Callable:
    """jitted (params, batch) -> (sum of token NLL, number of tokens), both float32."""

    def eval_step(params, batch):
        logits, _ = model.apply(params, batch["inputs"], batch["positions"], batch["segment_ids"])
        return cross_entropy_sum(logits, batch["targets"], batch["loss_weights"])

    return jax.jit(eval_step)

"""One jitted optimizer step and one evaluation step over plain pytrees.

In: a ``TrainState`` (step, params, opt_state, buffers, rng) and a batch dict from ``moejax.data``
(inputs, targets, loss_weights, segment_ids, positions; each (B, T)). Out: the next state and a
dict of scalar metrics plus per-MoE-layer routing metrics.

With ``grad_accum_steps = n`` the batch is split into n micro-batches along B; gradients are
averaged, the routing loads summed, and the optimizer and the balancing biases step once, so the
bias update sees the whole step's load exactly as without accumulation. The Switch balancing loss
is computed within each micro-batch (its f and p are micro-batch averages), the usual "local
batch" convention; everything else is independent of the split.

A step whose loss or gradient norm is not finite returns the *input* state unchanged (and reports
``finite = False``), so the host can stop with the last good parameters intact.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from moejax.model.functional import FunctionalModel, update_balancing_biases
from moejax.model.moe import MoEStats
from moejax.train.objective import cross_entropy_sum, objective


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    buffers: Any  # non-trainable model state (balancing biases); {} when there is none
    rng: jax.Array  # raw uint32 PRNG key; per-step keys are fold_in(rng, step)


def init_train_state(model: FunctionalModel, tx: optax.GradientTransformation,
                     seed: int) -> TrainState:
    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(seed))
    params = model.init(init_rng)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), model.init_buffers(),
                      step_rng)


def _merge_microbatch_stats(stats: list[MoEStats]) -> list[MoEStats]:
    """Stats stacked over micro-batches (leading axis) -> one step's stats: loads summed,
    imbalance recomputed from the summed load, every other field averaged."""
    merged = []
    for s in stats:
        tokens = jnp.sum(s.tokens_per_expert_E, axis=0)
        loads = tuple(jnp.sum(load, axis=0) for load in s.group_loads)
        mean = jax.tree.map(lambda x: jnp.mean(x, axis=0), s)
        imbalance = jnp.max(jnp.stack([jnp.max(l) / jnp.maximum(jnp.mean(l), 1e-9) for l in loads]))
        merged.append(mean._replace(tokens_per_expert_E=tokens, group_loads=loads,
                                    load_imbalance=imbalance))
    return merged


def layer_metrics(stats: list[MoEStats]) -> list[dict]:
    """The per-MoE-layer metrics logged every step."""
    return [{"aux_loss": s.aux_loss, "z_loss": s.z_loss, "tokens_per_expert": s.tokens_per_expert_E,
             "load_imbalance": s.load_imbalance, "dropped_fraction": s.dropped_fraction,
             "router_entropy": s.router_entropy, "bias_norm": s.bias_norm} for s in stats]


def make_train_step(model: FunctionalModel, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, grad_accum_steps: int = 1) -> Callable:
    """jitted (state, batch) -> (state, metrics) on the default device (the input state is donated).

    ``moejax.parallel.sharding.make_sharded_train_step`` jits the same function on a mesh.
    """
    return jax.jit(train_step_fn(model, tx, schedule, grad_accum_steps=grad_accum_steps),
                   donate_argnums=(0,))


def train_step_fn(model: FunctionalModel, tx: optax.GradientTransformation,
                  schedule: optax.Schedule, *, grad_accum_steps: int = 1) -> Callable:
    """The un-jitted train step (state, batch) -> (state, metrics)."""
    moe = model.config.moe
    bias_rate = moe.bias_update_rate if moe is not None else 0.0

    def loss_fn(params, buffers, batch, rng):
        logits, stats = model.apply(params, batch["inputs"], batch["positions"],
                                    batch["segment_ids"], buffers=buffers, train=True, rng=rng)
        parts = objective(logits, batch["targets"], batch["loss_weights"], stats, moe)
        return parts.total, (parts, stats)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated(params, buffers, batch, rng):
        micro = jax.tree.map(
            lambda x: x.reshape(grad_accum_steps, x.shape[0] // grad_accum_steps, *x.shape[1:]),
            batch)

        def body(grads_sum, inputs):
            index, micro_batch = inputs
            (_, aux), grads = grad_fn(params, buffers, micro_batch, jax.random.fold_in(rng, index))
            return jax.tree.map(jnp.add, grads_sum, grads), aux

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads_sum, (parts, stats) = jax.lax.scan(
            body, zeros, (jnp.arange(grad_accum_steps), micro))
        grads = jax.tree.map(lambda g: g / grad_accum_steps, grads_sum)
        parts = jax.tree.map(lambda x: jnp.mean(x, axis=0), parts)
        return grads, parts, _merge_microbatch_stats(stats)

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        if grad_accum_steps == 1:
            (_, (parts, stats)), grads = grad_fn(state.params, state.buffers, batch, rng)
        else:
            grads, parts, stats = accumulated(state.params, state.buffers, batch, rng)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        buffers = update_balancing_biases(state.buffers, stats, bias_rate)
        finite = jnp.isfinite(parts.total) & jnp.isfinite(grad_norm)
        new_state = TrainState(state.step + 1, params, opt_state, buffers, state.rng)
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
            "moe": layer_metrics(stats),
        }
        return new_state, metrics

    return train_step


def make_eval_step(model: FunctionalModel) -> Callable:
    """jitted (params, buffers, batch) -> (sum of token NLL, number of tokens), both float32.

    Evaluation uses the model in eval mode: no jitter, and MoEConfig.eval_capacity_factor
    (None = dropless) instead of the training capacity factor.
    """
    return jax.jit(eval_step_fn(model))


def eval_step_fn(model: FunctionalModel) -> Callable:
    """The un-jitted eval step (params, buffers, batch) -> (nll sum, tokens)."""

    def eval_step(params, buffers, batch):
        logits, _ = model.apply(params, batch["inputs"], batch["positions"], batch["segment_ids"],
                                buffers=buffers, train=False)
        return cross_entropy_sum(logits, batch["targets"], batch["loss_weights"])

    return eval_step

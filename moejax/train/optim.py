"""Learning-rate schedules and the AdamW optimizer, from a TrainConfig.

In: TrainConfig. Out: an optax schedule (step -> learning rate) and an optax GradientTransformation
(clip by global norm, then AdamW with weight decay masked to parameters of rank >= 2, so RMSNorm
scales and biases are never decayed).
"""

from __future__ import annotations

import jax
import optax

from moejax.train.config import TrainConfig


def make_schedule(c: TrainConfig) -> optax.Schedule:
    warmup = optax.linear_schedule(0.0, c.learning_rate, max(c.warmup_steps, 1))
    final = c.learning_rate * c.final_lr_fraction
    rest = max(c.steps - c.warmup_steps, 1)
    if c.schedule == "cosine":
        after = optax.cosine_decay_schedule(c.learning_rate, rest, alpha=c.final_lr_fraction)
    elif c.schedule == "wsd":
        decay_steps = max(int(round(c.decay_fraction * c.steps)), 1)
        stable_steps = max(rest - decay_steps, 0)
        after = optax.join_schedules(
            [optax.constant_schedule(c.learning_rate),
             optax.linear_schedule(c.learning_rate, final, decay_steps)],
            [stable_steps])
    else:
        after = optax.constant_schedule(c.learning_rate)
    if c.warmup_steps == 0:
        return after
    return optax.join_schedules([warmup, after], [c.warmup_steps])


def decay_mask(params):
    """True for parameters that get weight decay: matrices and higher-rank tensors."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(c: TrainConfig) -> optax.GradientTransformation:
    parts = []
    if c.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(c.grad_clip_norm))
    parts.append(optax.adamw(make_schedule(c), b1=c.adam_b1, b2=c.adam_b2, eps=c.adam_eps,
                             weight_decay=c.weight_decay, mask=decay_mask))
    return optax.chain(*parts)

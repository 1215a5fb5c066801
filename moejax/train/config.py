"""Training hyperparameters as one gin-configurable dataclass, validated before anything runs."""

from __future__ import annotations

import dataclasses

import gin

from moejax.errors import check_field_types
from moejax.model.config import ConfigError

SCHEDULES = ("cosine", "wsd", "constant")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to optimise, checkpoint, evaluate and log.

    Attributes:
      steps: optimizer steps to train for (the run ends at this step).
      learning_rate: peak learning rate of AdamW.
      warmup_steps: linear warmup from 0 to the peak.
      schedule: "cosine" (decay to final_lr_fraction * peak at `steps`), "wsd"
        (warmup-stable-decay: constant, then linear decay over the last decay_fraction of steps)
        or "constant".
      decay_fraction: fraction of the steps spent decaying in "wsd".
      final_lr_fraction: learning rate at the last step as a fraction of the peak.
      weight_decay: decoupled AdamW weight decay, applied to matrices only (not norms or biases).
      adam_b1, adam_b2, adam_eps: AdamW moments.
      grad_clip_norm: clip gradients to this global norm (0 disables clipping).
      seed: parameter initialisation and per-step randomness seed.
      checkpoint_every: save an orbax checkpoint every this many steps (and at the end).
      keep_checkpoints: how many recent checkpoints to keep.
      eval_every: compute validation loss every this many steps (and at the end; 0 disables).
      eval_batches: validation batches per task for those losses.
      log_every: print a progress line every this many steps when stderr is not a terminal.
      grad_accum_steps: split each batch into this many micro-batches and accumulate gradients
        (must divide DataConfig.batch_size); the optimizer and balancing biases step once.
    """

    steps: int = 1000
    learning_rate: float = 3e-4
    warmup_steps: int = 100
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.1
    adam_b1: float = 0.9
    adam_b2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int = 250
    eval_batches: int = 8
    log_every: int = 10
    grad_accum_steps: int = 1


def validate_train_config(c: TrainConfig) -> TrainConfig:
    """Raise ConfigError naming the first impossible training knob."""
    check_field_types(c)
    checks = [
        (c.steps >= 1, "steps", "an integer >= 1"),
        (c.learning_rate > 0, "learning_rate", "> 0"),
        (0 <= c.warmup_steps <= c.steps, "warmup_steps", f"in [0, steps = {c.steps}]"),
        (c.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}"),
        (0 < c.decay_fraction <= 1, "decay_fraction", "in (0, 1]"),
        (0 <= c.final_lr_fraction <= 1, "final_lr_fraction", "in [0, 1]"),
        (c.weight_decay >= 0, "weight_decay", ">= 0"),
        (0 <= c.adam_b1 < 1, "adam_b1", "in [0, 1)"),
        (0 <= c.adam_b2 < 1, "adam_b2", "in [0, 1)"),
        (c.adam_eps > 0, "adam_eps", "> 0"),
        (c.grad_clip_norm >= 0, "grad_clip_norm", ">= 0"),
        (c.checkpoint_every >= 1, "checkpoint_every", "an integer >= 1"),
        (c.keep_checkpoints >= 1, "keep_checkpoints", "an integer >= 1"),
        (c.eval_every >= 0, "eval_every", "an integer >= 0"),
        (c.eval_batches >= 1, "eval_batches", "an integer >= 1"),
        (c.log_every >= 1, "log_every", "an integer >= 1"),
        (c.grad_accum_steps >= 1, "grad_accum_steps", "an integer >= 1"),
    ]
    for ok, name, allowed in checks:
        if not ok:
            raise ConfigError(f"TrainConfig.{name} = {getattr(c, name)!r} is not allowed: {allowed}")
    return c

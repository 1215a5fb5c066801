"""From a plan to runnable configurations: concrete architectures, Liew's rule, gin files.

In: a planned (d_model, E, N_act, tokens) from the Joint MoE planner, or memory / inference
budgets in parameters with a grid of candidate shapes. Out: concrete ``ModelConfig``s counted with
the model's exact accounting, ranked, and gin files that ``moejax train`` runs as they are.

Joint MoE's model family (App. A): n_blocks = n_heads = d_model / 64, SwiGLU hidden 3·d_model in
the dense layer and in every expert, untied embeddings, every block MoE with top-1 routing; the
learning rate comes from the paper's rule (Eq. 8).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Iterable, Sequence

from moejax.model import accounting
from moejax.model.config import ModelConfig, MoEConfig, validate_model_config
from moejax.plan.attention import HEAD_DIM, MultiHead, PlannedAttention
from moejax.plan.joint_moe import peak_learning_rate
from moejax.plan.liew import Candidate, RankedArchitecture, rank_architectures


def joint_moe_architecture(d_model: float, num_experts: int, *, vocab_size: int | None = None,
                           attention: PlannedAttention = MultiHead()) -> ModelConfig:
    """The concrete member of the Joint MoE family nearest a (continuous) planned width, with
    the planned attention."""
    n_blocks = max(1, round(d_model / HEAD_DIM))
    d = HEAD_DIM * n_blocks
    moe = None if num_experts <= 1 else MoEConfig(num_experts=int(num_experts), top_k=1,
                                                  d_expert=3 * d)
    return attention.configure(ModelConfig(
        vocab_size=vocab_size, d_model=d, n_layers=n_blocks, n_heads=n_blocks, d_ff=3 * d,
        tie_embeddings=False, moe=moe))


def candidate_config(candidate: Candidate, *, vocab_size: int,
                     attention: PlannedAttention = MultiHead()) -> ModelConfig:
    """A Liew candidate (depth, width, n_exp, n_topk, d_expert) as a ModelConfig (heads of 64,
    the planned attention)."""
    d_expert = candidate.d_expert or 4 * candidate.width
    moe = None if candidate.n_exp <= 1 else MoEConfig(
        num_experts=candidate.n_exp, top_k=candidate.n_topk, d_expert=d_expert)
    return attention.configure(ModelConfig(
        vocab_size=vocab_size, d_model=candidate.width, n_layers=candidate.depth,
        n_heads=max(1, candidate.width // HEAD_DIM), d_ff=4 * candidate.width, moe=moe))


def candidate_grid(depths: Iterable[int], widths: Iterable[int], expert_counts: Iterable[int],
                   top_ks: Iterable[int], granularities: Iterable[int] = (1,)) -> list[Candidate]:
    """Every (depth, width, E, K, G) with 1 <= K <= E and d_expert = 4·width / G an integer."""
    out = []
    for depth, width, n_exp, top_k, g in itertools.product(depths, widths, expert_counts, top_ks,
                                                           granularities):
        if top_k > n_exp or (4 * width) % g or (n_exp == 1 and (top_k, g) != (1, 1)):
            continue
        out.append(Candidate(depth, width, n_exp, top_k, d_expert=4 * width // g,
                             name=f"L{depth}-d{width}-E{n_exp}-K{top_k}-G{g}"))
    return out


def rank_by_liew(candidates: Sequence[Candidate], *, vocab_size: int, memory_budget_params: float,
                 inference_budget_params: float = math.inf, predicted_loss=None,
                 attention: PlannedAttention = MultiHead()) -> list[RankedArchitecture]:
    """Liew et al.'s rule with the model's exact total and active parameter counts (with the
    planned attention's parameters)."""

    def counts(candidate):
        return accounting.parameter_counts(candidate_config(candidate, vocab_size=vocab_size,
                                                            attention=attention))

    return rank_architectures(candidates, lambda c: counts(c).total, lambda c: counts(c).active,
                              memory_budget_params, inference_budget_params, predicted_loss)


def _bindings(config, skip_none: tuple[str, ...] = ()) -> list[str]:
    """Gin bindings of every field of a config dataclass; a nested config (``moe``,
    ``latent_attention``) is bound as ``@Class()`` and its own fields after it."""
    name = type(config).__name__
    lines, nested = [], []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None and field.name in skip_none:
            continue
        if dataclasses.is_dataclass(value):
            lines.append(f"{name}.{field.name} = @{type(value).__name__}()")
            nested += _bindings(value)
        else:
            lines.append(f"{name}.{field.name} = {value!r}")
    return lines + nested


def gin_text(config: ModelConfig, *, tokens: float | None = None, learning_rate: float | None = None,
             batch_size: int = 512, seq_len: int = 2048, title: str = "") -> str:
    """A gin file that trains ``config``: includes base.gin, binds every model knob, and sets the
    step count from the token budget and the peak learning rate when they are given."""
    validate_model_config(dataclasses.replace(config, vocab_size=config.vocab_size or 1))
    lines = [f"# {title}" if title else "# Generated by moejax plan.",
             "# Train: moejax train --gin_file=THIS_FILE --workdir=runs/NAME "
             "[--gin_file=accelerator.gin]", "include 'base.gin'", ""]
    lines += _bindings(config, skip_none=("vocab_size",))
    lines += ["", f"DataConfig.batch_size = {batch_size}", f"DataConfig.seq_len = {seq_len}"]
    if tokens is not None:
        steps = max(1, math.ceil(tokens / (batch_size * seq_len)))
        lines.append(f"TrainConfig.steps = {steps}  # {tokens:.3g} tokens")
        lines.append(f"TrainConfig.warmup_steps = {min(steps, max(1, steps // 100))}")
    if learning_rate is not None:
        lines.append(f"TrainConfig.learning_rate = {learning_rate:.4g}")
    return "\n".join(lines) + "\n"


def joint_moe_learning_rate(config: ModelConfig) -> float:
    """Joint MoE Eq. 8 from the config's exact non-embedding active parameters and E."""
    # the non-embedding count does not depend on the vocabulary, which may still be unset
    counts = accounting.parameter_counts(dataclasses.replace(config, vocab_size=config.vocab_size or 1))
    num_experts = config.moe.num_experts if config.moe is not None else 1
    return float(peak_learning_rate(counts.active_non_embedding, num_experts))

"""Planning: from a fitted (or published) law to a recommended configuration.

In: law coefficients (a ``FitResult``'s parameters or a paper's published table), a budget
(training FLOPs, memory bytes, expected inference tokens) and, for serving cost, a hardware model.
Out: model sizes (active/total parameters), token counts and expert counts, as plain numbers or
small dataclasses. Everything here is pure NumPy/SciPy math, testable in milliseconds.

Modules: ``joint_moe`` (per-E reduction, compute-, memory- and inference-optimal plans,
``budget_plans`` for all three budgets at once, the parameter counting of App. A, the
learning-rate rule), ``chinchilla`` (closed form), ``krajewski`` (fine-grained MoE FLOPs),
``optimal`` (numerical compute-optimal N, D for any registered law), ``hardware`` (accelerator
presets, Yun et al.'s serving cost per token), ``liew`` (constraint solver over candidate
architectures), ``attention`` (the planned model's attention: multi-head, grouped-query or
latent, its parameters and KV cache per block).
"""

from moejax.plan.attention import GroupedQuery, Latent, MultiHead, parse_attention
from moejax.plan.chinchilla import chinchilla_compute_optimal
from moejax.plan.hardware import HARDWARE_PRESETS, Hardware, ServingCost, serving_cost_per_token
from moejax.plan.joint_moe import (
    JOINT_MOE_TABLE3, InfeasiblePlan, JointMoeCounts, MemoryPlan, budget_plan, budget_plans,
    compute_optimal, inference_aware_optimal, joint_moe_counts, joint_moe_loss, kv_cache_bytes,
    memory_footprint, memory_optimal, peak_learning_rate, per_expert_law)
from moejax.plan.krajewski import krajewski_dense_shape, krajewski_training_flops
from moejax.plan.liew import Candidate, rank_architectures
from moejax.plan.optimal import numerical_compute_optimal

__all__ = [
    "Candidate", "GroupedQuery", "HARDWARE_PRESETS", "Hardware", "InfeasiblePlan",
    "JOINT_MOE_TABLE3", "JointMoeCounts", "Latent", "MemoryPlan", "MultiHead", "ServingCost",
    "budget_plan", "budget_plans", "parse_attention",
    "chinchilla_compute_optimal", "compute_optimal", "inference_aware_optimal",
    "joint_moe_counts", "joint_moe_loss", "krajewski_dense_shape", "krajewski_training_flops",
    "kv_cache_bytes", "memory_footprint", "memory_optimal", "numerical_compute_optimal",
    "peak_learning_rate", "per_expert_law", "rank_architectures", "serving_cost_per_token",
]

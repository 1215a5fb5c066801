"""Joint MoE scaling-law planning (Ludziejewski et al. 2025, arXiv 2502.05172).

In: the law's coefficients (default: the paper's Table 3), an expert count E, a training budget F
in FLOPs, a memory budget in bytes, expected inference tokens. Out: per-E coefficients (Table 4),
compute-optimal active parameters and tokens (Table 1), memory-optimal plans, inference-aware
plans, the App. A parameter counting and the peak learning-rate rule (Eq. 8).

Conventions (paper's): N_act counts active parameters WITH embeddings; training costs 6 N_act D
FLOPs and inference 2 N_act FLOPs per token; weights and KV cache are stored in bf16 (2 bytes).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
import scipy.optimize

from moejax.laws.saturation import saturating_expert_count

JOINT_MOE_TABLE3: dict[str, float] = {
    "a": 35.91, "alpha": -0.1889, "delta": -0.2285, "gamma": 0.0098, "b": 35.98, "beta": -0.1775,
    "omega": 0.5529, "zeta": -0.0259, "E_start": 2.0732, "E_max": 290.4521, "c": 1.3637}
VOCAB_SIZE = 50257
HEAD_DIM = 64  # n_blocks = n_heads = d_model / 64 in the paper's model family
BF16_BYTES = 2


def per_expert_law(num_experts: float, parameters: Mapping[str, float] = JOINT_MOE_TABLE3) -> dict[str, float]:
    """Table 4: at fixed E the law is L = m N^mu + n D^nu + c. Returns {m, mu, n, nu, c}."""
    p = parameters
    log_e_hat = math.log(saturating_expert_count(float(num_experts), p["E_start"], p["E_max"]))
    return {"m": p["a"] * math.exp(p["delta"] * log_e_hat), "mu": p["alpha"] + p["gamma"] * log_e_hat,
            "n": p["b"] * math.exp(p["omega"] * log_e_hat), "nu": p["beta"] + p["zeta"] * log_e_hat,
            "c": p["c"]}


def joint_moe_loss(n_active, tokens, num_experts, parameters: Mapping[str, float] = JOINT_MOE_TABLE3):
    """Predicted loss (nats/token) for N_act active params (with embeddings), D tokens, E experts."""
    q = per_expert_law(num_experts, parameters)
    return q["m"] * np.power(n_active, q["mu"]) + q["n"] * np.power(tokens, q["nu"]) + q["c"]


def compute_optimal(flops: float, num_experts: float, parameters: Mapping[str, float] = JOINT_MOE_TABLE3
                    ) -> tuple[float, float]:
    """(N_act, D) minimising the loss at 6 N_act D = flops (closed form, Table 1).

    N_opt = G (F/6)^(nu/(mu+nu)), D_opt = (F/6) / N_opt, G = (mu m / (nu n))^(-1/(mu+nu)). The paper
    prints G's exponent as 1/(mu+nu); with negative mu, nu that is wrong by orders of magnitude.
    """
    q = per_expert_law(num_experts, parameters)
    mu, nu = q["mu"], q["nu"]
    scale = (mu * q["m"] / (nu * q["n"])) ** (-1.0 / (mu + nu))
    n_opt = scale * (flops / 6.0) ** (nu / (mu + nu))
    return float(n_opt), float(flops / 6.0 / n_opt)


@dataclasses.dataclass(frozen=True)
class JointMoeCounts:
    """App. A parameter counts of a model of width d_model with E experts (SwiGLU experts of hidden 3d)."""

    d_model: float
    n_blocks: float
    num_experts: float
    n_total: float
    n_active: float


def joint_moe_counts(d_model: float, num_experts: float, vocab_size: int = VOCAB_SIZE) -> JointMoeCounts:
    """N_total = 2 d V + (4 + 9E) n_blocks d^2; N_act = 2 d V + 13 n_blocks d^2; n_blocks = d/64.
    d_model may be fractional (continuous relaxation used by the planners)."""
    n_blocks = d_model / HEAD_DIM
    embeddings = 2.0 * d_model * vocab_size
    return JointMoeCounts(d_model, n_blocks, num_experts,
                          embeddings + (4.0 + 9.0 * num_experts) * n_blocks * d_model**2,
                          embeddings + 13.0 * n_blocks * d_model**2)


def kv_cache_bytes(d_model: float, context_tokens: float, bytes_per_value: int = BF16_BYTES) -> float:
    """Bytes of KV cache for `context_tokens` cached tokens: 2 T n_blocks d values."""
    return 2.0 * context_tokens * (d_model / HEAD_DIM) * d_model * bytes_per_value


def _width_for(target: float, quantity, low: float = 1e-3, high: float = 1e7) -> float:
    """The d_model at which the increasing function quantity(d) equals target."""
    return float(scipy.optimize.brentq(lambda d: quantity(d) - target, low, high, xtol=1e-10, rtol=1e-14))


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """One expert count's best model under compute F and a memory budget."""

    num_experts: float
    d_model: float
    n_active: float
    n_total: float
    tokens: float
    loss: float
    memory_bytes: float  # weights (+ KV cache when a context is given), bf16
    memory_bound: bool  # True: the memory budget, not compute optimality, set the size


def memory_optimal(flops: float, memory_bytes: float, expert_counts: Sequence[float] = (1, 2, 4, 8, 16, 32, 64),
                   context_tokens: float = 0.0, parameters: Mapping[str, float] = JOINT_MOE_TABLE3,
                   bytes_per_param: int = BF16_BYTES) -> tuple[MemoryPlan, list[MemoryPlan]]:
    """Best expert count under training FLOPs `flops` and a memory budget (bytes) on the model
    (context_tokens = 0) or model + KV cache for `context_tokens` cached tokens.

    For each E: the compute-optimal model, shrunk until it fits in memory; never larger than the
    compute-optimal one. Returns (lowest-loss plan, plans for every E that fits)."""

    plans = []
    for num_experts in expert_counts:
        def footprint(d, e=num_experts):
            return bytes_per_param * joint_moe_counts(d, e).n_total + kv_cache_bytes(d, context_tokens)

        if footprint(1e-3) > memory_bytes:
            continue
        n_opt, _ = compute_optimal(flops, num_experts, parameters)
        d_compute = _width_for(n_opt, lambda d: joint_moe_counts(d, num_experts).n_active)
        d_memory = _width_for(memory_bytes, footprint)
        d_model = min(d_compute, d_memory)
        counts = joint_moe_counts(d_model, num_experts)
        tokens = flops / (6.0 * counts.n_active)
        plans.append(MemoryPlan(float(num_experts), d_model, counts.n_active, counts.n_total, tokens,
                                float(joint_moe_loss(counts.n_active, tokens, num_experts, parameters)),
                                footprint(d_model), d_memory < d_compute))
    if not plans:
        raise ValueError(f"memory budget of {memory_bytes:.3g} bytes fits no model for E in {list(expert_counts)}")
    return min(plans, key=lambda plan: plan.loss), plans


def inference_aware_optimal(flops: float, inference_tokens: float, num_experts: float,
                            parameters: Mapping[str, float] = JOINT_MOE_TABLE3) -> tuple[float, float, float]:
    """(N_act, D, loss) minimising the loss when training plus serving costs flops:
    6 N_act D + 2 N_act D_inf = flops. Numerical (bounded search over ln N_act)."""
    if inference_tokens <= 0:
        n_act, tokens = compute_optimal(flops, num_experts, parameters)
        return n_act, tokens, float(joint_moe_loss(n_act, tokens, num_experts, parameters))
    n_max = flops / (2.0 * inference_tokens)  # all of the budget spent serving

    def loss_at(log_n):
        n_act = math.exp(log_n)
        tokens = (flops - 2.0 * n_act * inference_tokens) / (6.0 * n_act)
        return float(joint_moe_loss(n_act, tokens, num_experts, parameters)) if tokens > 0 else math.inf

    result = scipy.optimize.minimize_scalar(loss_at, bounds=(math.log(1e3), math.log(n_max) - 1e-9),
                                            method="bounded", options={"xatol": 1e-10})
    n_act = math.exp(result.x)
    tokens = (flops - 2.0 * n_act * inference_tokens) / (6.0 * n_act)
    return n_act, tokens, float(result.fun)


def peak_learning_rate(n_active_non_embedding: float, num_experts: float) -> float:
    """Eq. 8: LR = exp(8.39 - 0.81 ln N_act_nonemb - 0.25 ln E) (AdamW peak learning rate)."""
    return math.exp(8.39 - 0.81 * math.log(n_active_non_embedding) - 0.25 * math.log(num_experts))

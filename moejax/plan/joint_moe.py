"""Joint MoE scaling-law planning (Ludziejewski et al. 2025, arXiv 2502.05172).

In: the law's coefficients (default: the paper's Table 3), an expert count E, a training budget F
in FLOPs, a memory budget in bytes, expected inference tokens. Out: per-E coefficients (Table 4),
compute-optimal active parameters and tokens (Table 1), memory-optimal plans, inference-aware
plans, the App. A parameter counting and the peak learning-rate rule (Eq. 8).

Conventions (paper's): N_act counts active parameters WITH embeddings; training costs 6 N_act D
FLOPs and inference 2 N_act FLOPs per token; weights and KV cache are stored in bf16 (2 bytes).
Widths are continuous (a relaxation), but no plan is narrower than the family's smallest member,
one block of one head (d_model = 64): ``moejax plan`` writes each plan as a concrete model.
The family's attention is multi-head; every count, footprint and plan takes an ``attention`` from
``moejax.plan.attention`` (grouped-query or latent) that changes the attention parameters and the
KV cache.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
import scipy.optimize

from moejax.laws.saturation import saturating_expert_count
from moejax.plan.attention import HEAD_DIM, MultiHead, PlannedAttention

JOINT_MOE_TABLE3: dict[str, float] = {
    "a": 35.91, "alpha": -0.1889, "delta": -0.2285, "gamma": 0.0098, "b": 35.98, "beta": -0.1775,
    "omega": 0.5529, "zeta": -0.0259, "E_start": 2.0732, "E_max": 290.4521, "c": 1.3637}
VOCAB_SIZE = 50257
# n_blocks = n_heads = d_model / HEAD_DIM (64) in the paper's model family
SMALLEST_D_MODEL = float(HEAD_DIM)  # one block of one head: the family's smallest member
BF16_BYTES = 2
MULTI_HEAD = MultiHead()


class InfeasiblePlan(ValueError):
    """No model meets the budgets; the message names the budget that rules it out."""


def per_expert_law(num_experts: float, parameters: Mapping[str, float] = JOINT_MOE_TABLE3) -> dict[str, float]:
    """Table 4: at fixed E the law is L = m N^mu + n D^nu + c. Returns {m, mu, n, nu, c}."""
    if not num_experts >= 1:
        raise ValueError(f"the Joint MoE law needs E >= 1 experts, got {num_experts}")
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
    if not 0 < flops < math.inf:
        raise ValueError(f"the training budget must be a finite number of FLOPs > 0, got {flops}")
    q = per_expert_law(num_experts, parameters)
    mu, nu = q["mu"], q["nu"]
    if not (q["m"] > 0 and q["n"] > 0 and mu < 0 and nu < 0):
        raise ValueError(f"at E = {num_experts:g} the law's terms m N^mu + n D^nu need m, n > 0 "
                         f"and mu, nu < 0 to have a compute optimum; got m = {q['m']:.4g}, "
                         f"mu = {mu:.4g}, n = {q['n']:.4g}, nu = {nu:.4g}")
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


def joint_moe_counts(d_model: float, num_experts: float, vocab_size: int = VOCAB_SIZE,
                     attention: PlannedAttention = MULTI_HEAD) -> JointMoeCounts:
    """N_total = 2 d V + (4 + 9E) n_blocks d^2; N_act = 2 d V + 13 n_blocks d^2; n_blocks = d/64
    (multi-head attention's 4 d^2 per block; another ``attention`` puts its own count there).
    d_model may be fractional (continuous relaxation used by the planners)."""
    n_blocks = d_model / HEAD_DIM
    embeddings = 2.0 * d_model * vocab_size
    attention_params = attention.parameters_per_block(d_model)
    return JointMoeCounts(
        d_model, n_blocks, num_experts,
        embeddings + n_blocks * (attention_params + 9.0 * num_experts * d_model**2),
        embeddings + n_blocks * (attention_params + 9.0 * d_model**2))


def kv_cache_bytes(d_model: float, context_tokens: float, bytes_per_value: int = BF16_BYTES,
                   attention: PlannedAttention = MULTI_HEAD) -> float:
    """Bytes of KV cache for `context_tokens` cached tokens: T n_blocks times the attention's
    cached values per block (2 d for multi-head attention)."""
    return (context_tokens * (d_model / HEAD_DIM) * attention.cache_values_per_block(d_model)
            * bytes_per_value)


def memory_footprint(d_model: float, num_experts: float, context_tokens: float = 0.0,
                     bytes_per_param: int = BF16_BYTES,
                     attention: PlannedAttention = MULTI_HEAD) -> float:
    """Bytes of the weights (N_total) plus the KV cache of `context_tokens` cached tokens."""
    return (bytes_per_param * joint_moe_counts(d_model, num_experts, attention=attention).n_total
            + kv_cache_bytes(d_model, context_tokens, bytes_per_param, attention))


_WIDEST = 1e7  # d_model; far past any model a FLOP budget can train


def _width_for(target: float, quantity, low: float = 1e-3, high: float = _WIDEST) -> float:
    """The d_model at which the increasing function quantity(d) equals target."""
    if not quantity(low) <= target <= quantity(high):
        raise ValueError(f"no width in [{low:g}, {high:g}] reaches {target:.3g}")
    return float(scipy.optimize.brentq(lambda d: quantity(d) - target, low, high, xtol=1e-10,
                                       rtol=1e-14))


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
    size_set_by: str = "budget"  # "budget" (the optimum), "memory" or "smallest model"


def _check_serving(flops: float, inference_tokens: float,
                   attention: PlannedAttention = MULTI_HEAD) -> None:
    """Raise InfeasiblePlan when serving alone, on the smallest model, spends the whole budget."""
    # N_act does not depend on E, so this rules out every expert count at once.
    smallest = joint_moe_counts(SMALLEST_D_MODEL, 1, attention=attention).n_active
    serving_flops = 2.0 * smallest * inference_tokens
    if serving_flops >= flops:
        raise InfeasiblePlan(
            f"serving {inference_tokens:.3g} tokens costs {serving_flops:.3g} FLOPs even on the "
            f"smallest model (d_model {SMALLEST_D_MODEL:g}, N_act {smallest:.3g}), which leaves "
            f"nothing of the {flops:.3g} FLOP budget for training")


def budget_plan(flops: float, num_experts: float, *, memory_bytes: float | None = None,
                context_tokens: float = 0.0, inference_tokens: float = 0.0,
                parameters: Mapping[str, float] = JOINT_MOE_TABLE3,
                bytes_per_param: int = BF16_BYTES,
                attention: PlannedAttention = MULTI_HEAD) -> MemoryPlan:
    """The best model with E experts when training plus serving cost `flops`
    (6 N_act D + 2 N_act D_inf = flops, D_inf = inference_tokens) and, with `memory_bytes`,
    its weights plus the KV cache of `context_tokens` tokens fit in that many bytes.

    Along the budget line D = (flops - 2 N D_inf) / (6 N), both terms of the loss
    m N^mu + n D^nu are convex in ln N (mu, nu < 0), so the loss is unimodal in ln N and the
    best feasible model is the inference-aware optimum clamped between the smallest model
    (d_model 64) and the largest one that fits in memory. Raises InfeasiblePlan when the
    smallest model does not fit in memory or serving alone costs the whole budget (D <= 0)."""
    if not inference_tokens >= 0:
        raise ValueError(f"inference tokens must be >= 0, got {inference_tokens}")
    _check_serving(flops, inference_tokens, attention)

    def footprint(d):
        return memory_footprint(d, num_experts, context_tokens, bytes_per_param, attention)

    def counts(d):
        return joint_moe_counts(d, num_experts, attention=attention)

    if memory_bytes is not None and footprint(SMALLEST_D_MODEL) > memory_bytes:
        raise InfeasiblePlan(
            f"E = {num_experts:g}: the smallest model (d_model {SMALLEST_D_MODEL:g}, one block) "
            f"needs {footprint(SMALLEST_D_MODEL):.3g} bytes, over the memory budget of "
            f"{memory_bytes:.3g} bytes")
    n_best, _, _ = inference_aware_optimal(flops, inference_tokens, num_experts, parameters)
    d_best = _width_for(n_best, lambda d: counts(d).n_active)
    d_memory = math.inf
    if memory_bytes is not None and footprint(_WIDEST) > memory_bytes:
        d_memory = _width_for(memory_bytes, footprint)
    d_model = max(SMALLEST_D_MODEL, min(d_best, d_memory))
    size_set_by = ("memory" if d_memory < d_best else
                   "smallest model" if d_best < SMALLEST_D_MODEL else "budget")
    planned = counts(d_model)
    tokens = (flops - 2.0 * planned.n_active * inference_tokens) / (6.0 * planned.n_active)
    loss = float(joint_moe_loss(planned.n_active, tokens, num_experts, parameters))
    return MemoryPlan(float(num_experts), d_model, planned.n_active, planned.n_total, tokens,
                      loss, footprint(d_model), d_memory < d_best, size_set_by)


def budget_plans(flops: float, expert_counts: Sequence[float], *,
                 memory_bytes: float | None = None, context_tokens: float = 0.0,
                 inference_tokens: float = 0.0, parameters: Mapping[str, float] = JOINT_MOE_TABLE3,
                 bytes_per_param: int = BF16_BYTES, attention: PlannedAttention = MULTI_HEAD
                 ) -> tuple[list[MemoryPlan], list[tuple[float, str]]]:
    """``budget_plan`` for every E: (plans, [(E, reason) for each E no model of which fits]).
    Raises InfeasiblePlan, naming the budget and the smallest footprint, when no E fits."""
    if not expert_counts:
        raise ValueError("no expert counts to plan for")
    _check_serving(flops, inference_tokens, attention)
    plans, skipped = [], []
    for num_experts in expert_counts:
        try:
            plans.append(budget_plan(flops, num_experts, memory_bytes=memory_bytes,
                                     context_tokens=context_tokens,
                                     inference_tokens=inference_tokens, parameters=parameters,
                                     bytes_per_param=bytes_per_param, attention=attention))
        except InfeasiblePlan as err:
            skipped.append((float(num_experts), str(err)))
    if not plans:
        fewest = min(expert_counts)
        smallest = memory_footprint(SMALLEST_D_MODEL, fewest, context_tokens, bytes_per_param,
                                    attention)
        cache = f" + KV cache of {context_tokens:g} tokens" if context_tokens else ""
        raise InfeasiblePlan(
            f"the memory budget of {memory_bytes:.3g} bytes fits no model with E in "
            f"{', '.join(f'{e:g}' for e in expert_counts)}: the smallest (E = {fewest:g}, "
            f"d_model {SMALLEST_D_MODEL:g}, one block{cache}) needs {smallest:.3g} bytes")
    return plans, skipped


def memory_optimal(flops: float, memory_bytes: float,
                   expert_counts: Sequence[float] = (1, 2, 4, 8, 16, 32, 64),
                   context_tokens: float = 0.0, parameters: Mapping[str, float] = JOINT_MOE_TABLE3,
                   bytes_per_param: int = BF16_BYTES, inference_tokens: float = 0.0,
                   attention: PlannedAttention = MULTI_HEAD
                   ) -> tuple[MemoryPlan, list[MemoryPlan]]:
    """Best expert count under training FLOPs `flops` (less 2 N_act per inference token) and a
    memory budget (bytes) on the model (context_tokens = 0) or model + KV cache for
    `context_tokens` cached tokens.

    For each E: the compute-optimal (inference-aware) model, shrunk until it fits in memory;
    never larger than that optimum. Returns (lowest-loss plan, plans for every E that fits)."""
    plans, _ = budget_plans(flops, expert_counts, memory_bytes=memory_bytes,
                            context_tokens=context_tokens, inference_tokens=inference_tokens,
                            parameters=parameters, bytes_per_param=bytes_per_param,
                            attention=attention)
    return min(plans, key=lambda plan: plan.loss), plans


_SMALLEST_SEARCHED = 1e3  # N_act; the inference-aware search starts here


def inference_aware_optimal(flops: float, inference_tokens: float, num_experts: float,
                            parameters: Mapping[str, float] = JOINT_MOE_TABLE3) -> tuple[float, float, float]:
    """(N_act, D, loss) minimising the loss when training plus serving costs flops:
    6 N_act D + 2 N_act D_inf = flops. Numerical (bounded search over ln N_act)."""
    if not inference_tokens >= 0:
        raise ValueError(f"inference tokens must be >= 0, got {inference_tokens}")
    if inference_tokens == 0:
        n_act, tokens = compute_optimal(flops, num_experts, parameters)
        return n_act, tokens, float(joint_moe_loss(n_act, tokens, num_experts, parameters))
    n_max = flops / (2.0 * inference_tokens)  # all of the budget spent serving
    if n_max <= _SMALLEST_SEARCHED:
        raise InfeasiblePlan(f"serving {inference_tokens:.3g} tokens leaves nothing of {flops:.3g} "
                             f"FLOPs for training even at N_act = {_SMALLEST_SEARCHED:g}")

    def loss_at(log_n):
        n_act = math.exp(log_n)
        tokens = (flops - 2.0 * n_act * inference_tokens) / (6.0 * n_act)
        return float(joint_moe_loss(n_act, tokens, num_experts, parameters)) if tokens > 0 else math.inf

    bounds = (math.log(_SMALLEST_SEARCHED), math.log(n_max) - 1e-9)
    result = scipy.optimize.minimize_scalar(loss_at, bounds=bounds, method="bounded",
                                            options={"xatol": 1e-10})
    n_act = math.exp(result.x)
    tokens = (flops - 2.0 * n_act * inference_tokens) / (6.0 * n_act)
    return n_act, tokens, float(result.fun)


def peak_learning_rate(n_active_non_embedding: float, num_experts: float) -> float:
    """Eq. 8: LR = exp(8.39 - 0.81 ln N_act_nonemb - 0.25 ln E) (AdamW peak learning rate)."""
    return math.exp(8.39 - 0.81 * math.log(n_active_non_embedding) - 0.25 * math.log(num_experts))

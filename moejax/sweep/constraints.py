"""Grid constraints: derive knobs from other knobs, or drop a point with the reason.

In: a point, ``{binding or derived input: value}`` (the axis values over the grid's literal fixed
bindings, see ``moejax.sweep.grid.expand``). Out: the point with knobs added or changed, or a
string saying why the point is dropped. Impossible grid settings (a budget no architecture in the
search space meets, a knob a constraint needs but nobody binds) raise ``ConfigError`` naming the
knob, its value and the allowed range.

Every constraint is a gin-configurable pure function; its own knobs are bound in the grid file
(``solve_depth_width.quantity = 'parameter_bytes_bf16'``), and a scope gives a second instance
different knobs (``Grid.constraints = [@lr/learning_rate_rule]``). Accounting uses
``moejax.model.accounting`` on the ``ModelConfig`` the point describes (``model_from_point``).

| constraint | reads | writes |
|---|---|---|
| ``keep_active_params_fixed`` | ``granularity`` G, E, K, the G = 1 width | d_expert = W/G, top_k = K·G (E·G experts if asked) |
| ``shared_expert_fraction`` | ``shared_fraction`` f, top_k, d_expert | one shared expert of width f·K·d_expert, top_k·(1-f) routed |
| ``heterogeneous_halves`` | ``heterogeneous`` | expert_groups ((E/2, d, K/2), (E, d/2, K)) |
| ``ffn_width_from_d_model`` | d_model | d_ff and d_expert = round(multiplier · d_model) |
| ``dense_when_single_expert`` | num_experts | ModelConfig.moe = None when E = 1 |
| ``solve_depth_width`` | ``param_budget`` (or another input), E, K | n_layers, d_model, n_heads, d_ff, d_expert |
| ``learning_rate_rule`` | the model | TrainConfig.learning_rate = exp(c)·N^a·E^b |
| ``steps_from_tokens`` | ``tokens``, batch_size, seq_len | TrainConfig.steps (and warmup) |
| ``steps_from_flop_budget`` | ``flop_budget``, the model, batch_size, seq_len | TrainConfig.steps (and warmup) |
| ``valid_model`` | the model | drops what ``validate_model_config`` rejects |
"""

from __future__ import annotations

import dataclasses
import math

import gin

from moejax.errors import ConfigError
from moejax.model import accounting
from moejax.model.config import (LatentAttentionConfig, ModelConfig, MoEConfig,
                                 validate_model_config)

MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
MOE_FIELDS = {f.name for f in dataclasses.fields(MoEConfig)}
LATENT_FIELDS = {f.name for f in dataclasses.fields(LatentAttentionConfig)}


def _require(point: dict, name: str, constraint: str):
    """The value of ``name`` in the point, or a ConfigError saying who needs it."""
    if name not in point:
        raise ConfigError(f"{constraint} needs {name}: bind it in Grid.bindings or make it an axis")
    return point[name]


def model_from_point(point: dict, vocab_size: int | None = None) -> ModelConfig:
    """The ModelConfig a point describes: its ModelConfig.*, MoEConfig.* and
    LatentAttentionConfig.* values over the dataclass defaults. MoE when any MoEConfig knob is
    bound, unless ``ModelConfig.moe = None``; latent attention likewise.

    Args:
      vocab_size: embedding rows when the point binds no ModelConfig.vocab_size (None: 0, for
        counts without embeddings).
    """
    model = {k.split(".", 1)[1]: v for k, v in point.items()
             if k.startswith("ModelConfig.") and k.split(".", 1)[1] in MODEL_FIELDS}
    moe = {k.split(".", 1)[1]: v for k, v in point.items()
           if k.startswith("MoEConfig.") and k.split(".", 1)[1] in MOE_FIELDS}
    latent = {k.split(".", 1)[1]: v for k, v in point.items()
              if k.startswith("LatentAttentionConfig.") and k.split(".", 1)[1] in LATENT_FIELDS}
    dense = "moe" in model and model["moe"] is None
    grouped_query = "latent_attention" in model and model["latent_attention"] is None
    model.pop("moe", None)
    model.pop("latent_attention", None)
    if latent and not grouped_query:
        model["latent_attention"] = LatentAttentionConfig(**latent)
    if model.get("vocab_size") is None:
        model["vocab_size"] = vocab_size if vocab_size is not None else 0
    if "expert_groups" in moe and moe["expert_groups"] is not None:
        moe["expert_groups"] = tuple(tuple(g) for g in moe["expert_groups"])
    return ModelConfig(**model, moe=None if dense or not moe else MoEConfig(**moe))


def _needs_vocab(model: ModelConfig, knob: str, vocab_size) -> None:
    if model.vocab_size == 0:
        raise ConfigError(f"{knob} = {vocab_size!r} is not allowed: an integer >= 1 (embedding rows "
                          "for the count), or bind ModelConfig.vocab_size in the grid")


QUANTITIES = {
    "total_params": lambda c: accounting.parameter_counts(c).total,
    "total_non_embedding_params": lambda c: accounting.parameter_counts(c).total_non_embedding,
    "active_params": lambda c: accounting.parameter_counts(c).active,
    "active_non_embedding_params": lambda c: accounting.parameter_counts(c).active_non_embedding,
    "parameter_bytes_bf16": lambda c: accounting.parameter_bytes(c, "bfloat16"),
    "training_state_bytes": accounting.training_state_bytes,
}
WITH_EMBEDDINGS = {"total_params", "active_params", "parameter_bytes_bf16", "training_state_bytes"}


def _routed_experts(model: ModelConfig) -> int:
    """E as Joint MoE counts it: routed experts per MoE layer (1 for a dense model)."""
    return 1 if model.moe is None else sum(g.num_experts for g in model.moe.groups)


@gin.configurable
def keep_active_params_fixed(point: dict, *, input: str = "granularity",
                             base_width: int | str = "ModelConfig.d_ff", top_k: int = 1,
                             scale_experts: bool = False) -> dict | str:
    """Finer experts at the same active expert parameters (and expert FLOPs) per token.

    At granularity G each expert has width W / G and each token picks K·G of them, so the active
    expert width K·W (3·d_model·K·W parameters per MoE layer) stays fixed; only the router grows.

    Args:
      input: the derived input holding G (an integer >= 1).
      base_width: W, the expert width at G = 1: an integer, or the binding that holds it
        ('ModelConfig.d_ff' for Krajewski's G = d_ff / d_expert; 'ModelConfig.d_model' for
        Slicing & Dicing's tie top_k · d_expert = d_model).
      top_k: K, experts per token at G = 1.
      scale_experts: multiply MoEConfig.num_experts by G too (Krajewski: same total parameters);
        False keeps the number of experts the point names (total parameters shrink with G).
    """
    granularity = _require(point, input, "keep_active_params_fixed")
    if not isinstance(granularity, int) or granularity < 1:
        raise ConfigError(f"Grid.axes[{input!r}] has {granularity!r}: granularity must be an integer >= 1")
    width = base_width if isinstance(base_width, int) else _require(
        point, base_width, "keep_active_params_fixed.base_width")
    experts = _require(point, "MoEConfig.num_experts", "keep_active_params_fixed")
    if width % granularity:
        return f"granularity {granularity} does not divide the expert width {width}"
    experts = experts * granularity if scale_experts else experts
    if top_k * granularity > experts:
        return f"top_k {top_k} x granularity {granularity} > {experts} experts"
    return {**point, "MoEConfig.num_experts": experts, "MoEConfig.d_expert": width // granularity,
            "MoEConfig.top_k": top_k * granularity}


@gin.configurable
def shared_expert_fraction(point: dict, *, input: str = "shared_fraction") -> dict | str:
    """Give a fraction f of the active expert width to one always-on shared expert.

    K routed experts of width d become K·(1 - f) routed experts plus a shared expert of width
    f·K·d: the active expert width stays K·d (Slicing & Dicing: a 0.5·d_model shared expert plus
    top-2 of 0.25·d_model experts). f = 0 leaves the point unchanged.
    """
    fraction = _require(point, input, "shared_expert_fraction")
    if not fraction:
        return point
    top_k = _require(point, "MoEConfig.top_k", "shared_expert_fraction")
    width = _require(point, "MoEConfig.d_expert", "shared_expert_fraction")
    routed, shared = top_k * (1 - fraction), fraction * top_k * width
    if routed < 1 or routed != int(routed) or shared != int(shared):
        return (f"shared fraction {fraction} of top_k {top_k} x d_expert {width} leaves no whole "
                "number of routed experts")
    return {**point, "MoEConfig.top_k": int(routed), "MoEConfig.num_shared_experts": 1,
            "MoEConfig.d_shared_expert": int(shared)}


@gin.configurable
def heterogeneous_halves(point: dict, *, input: str = "heterogeneous") -> dict | str:
    """Split E experts of width d (top-K) into two routed groups with the same total and active
    expert width: E/2 of width d (top-K/2) and E of width d/2 (top-K) (Slicing & Dicing's
    16@0.25 top-2 + 32@0.125 top-4 from 32@0.25 top-4). False leaves the point unchanged."""
    if not _require(point, input, "heterogeneous_halves"):
        return point
    experts = _require(point, "MoEConfig.num_experts", "heterogeneous_halves")
    top_k = _require(point, "MoEConfig.top_k", "heterogeneous_halves")
    width = _require(point, "MoEConfig.d_expert", "heterogeneous_halves")
    if experts % 2 or top_k % 2 or width % 2:
        return f"heterogeneous halves need even E, K and d_expert, got {experts}, {top_k}, {width}"
    return {**point, "MoEConfig.expert_groups": ((experts // 2, width, top_k // 2),
                                                 (experts, width // 2, top_k))}


@gin.configurable
def ffn_width_from_d_model(point: dict, *, multiplier: float = 4.0,
                           knobs: tuple = ("ModelConfig.d_ff", "MoEConfig.d_expert")) -> dict | str:
    """Set each of ``knobs`` to round(multiplier · d_model) (Joint MoE: d_ff = d_expert = 3·d,
    so an expert is a whole dense feed-forward of 9·d² parameters)."""
    d_model = _require(point, "ModelConfig.d_model", "ffn_width_from_d_model")
    return {**point, **{knob: int(round(multiplier * d_model)) for knob in knobs}}


@gin.configurable
def dense_when_single_expert(point: dict) -> dict:
    """E = 1 is the dense model: ModelConfig.moe = None (no router, no expert dispatch)."""
    if point.get("MoEConfig.num_experts") == 1:
        return {**point, "ModelConfig.moe": None}
    return point


def _largest_width(quantity, n_layers: int, widths: list[int], budget: float, build):
    """The largest width in ``widths`` (ascending) whose quantity is <= budget, by bisection
    (every count grows with d_model), or None."""
    lo, hi = 0, len(widths) - 1
    if quantity(build(n_layers, widths[0])) > budget:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if quantity(build(n_layers, widths[mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return widths[lo]


@gin.configurable
def solve_depth_width(point: dict, *, input: str = "param_budget", quantity: str = "total_params",
                      vocab_size: int | None = None, n_layers_range: tuple = (2, 48),
                      d_model_range: tuple = (128, 8192), width_step: int = 128,
                      head_dim: int = 128, d_ff_multiplier: float = 4.0,
                      expert_width_multiplier: float | None = 1.0, aspect_ratio: float = 64.0,
                      tolerance: float = 0.1, on_infeasible: str = "error",
                      context_tokens: int = 0) -> dict | str:
    """Choose n_layers and d_model (and n_heads, d_ff, d_expert from them) to fill a budget.

    Search space: n_layers in n_layers_range (inclusive), d_model a multiple of width_step in
    d_model_range; n_heads = d_model / head_dim, d_ff = round(d_ff_multiplier · d_model),
    d_expert = round(expert_width_multiplier · d_model) (None: keep the point's d_expert). For
    each depth the widest d_model whose quantity is <= budget is a candidate when it reaches
    (1 - tolerance) · budget; of the candidates the one with d_model / n_layers closest to
    aspect_ratio (in log) wins, the shallower on a tie. Every other knob (E, K, vocabulary,
    tied embeddings, dense layers) comes from the point.

    Args:
      input: the derived input holding the budget (parameters or bytes, as ``quantity`` says).
      quantity: one of QUANTITIES (counts in parameters, ``*_bytes*`` in bytes).
      vocab_size: embedding rows for the count when the point binds no ModelConfig.vocab_size.
      on_infeasible: 'error' (ConfigError naming the budget and the reachable range) or 'drop'.
      context_tokens: with a ``*_bytes*`` quantity, the bf16 KV cache of this many tokens
        (``accounting.kv_cache_bytes_per_token``: grouped-query or latent, as the point says)
        counts against the budget too: a serving-memory budget.
    """
    if quantity not in QUANTITIES:
        raise ConfigError(f"solve_depth_width.quantity = {quantity!r} is not allowed: one of "
                          f"{sorted(QUANTITIES)}")
    if width_step % head_dim or on_infeasible not in ("error", "drop") or not 0 < tolerance < 1:
        raise ConfigError(f"solve_depth_width: width_step = {width_step} must be a multiple of "
                          f"head_dim = {head_dim}, on_infeasible = {on_infeasible!r} one of "
                          f"('error', 'drop'), tolerance = {tolerance} in (0, 1)")
    if not (isinstance(context_tokens, int) and context_tokens >= 0) or (
            context_tokens and "bytes" not in quantity):
        raise ConfigError(f"solve_depth_width.context_tokens = {context_tokens!r} is not allowed: "
                          "a whole number >= 0, and > 0 only with a *_bytes* quantity")
    budget = float(_require(point, input, "solve_depth_width"))

    def count(c: ModelConfig) -> float:
        cache = context_tokens * accounting.kv_cache_bytes_per_token(c) if context_tokens else 0
        return QUANTITIES[quantity](c) + cache

    def derived(n_layers: int, d_model: int) -> dict:
        knobs = {"ModelConfig.n_layers": n_layers, "ModelConfig.d_model": d_model,
                 "ModelConfig.n_heads": d_model // head_dim,
                 "ModelConfig.d_ff": int(round(d_ff_multiplier * d_model))}
        if expert_width_multiplier is not None:
            knobs["MoEConfig.d_expert"] = int(round(expert_width_multiplier * d_model))
        return knobs

    def build(n_layers: int, d_model: int) -> ModelConfig:
        return model_from_point({**point, **derived(n_layers, d_model)}, vocab_size)

    if quantity in WITH_EMBEDDINGS:
        _needs_vocab(build(1, width_step), "solve_depth_width.vocab_size", vocab_size)
    widths = list(range(_ceil_to(d_model_range[0], width_step), d_model_range[1] + 1, width_step))
    best = None
    for n_layers in range(n_layers_range[0], n_layers_range[1] + 1):
        d_model = _largest_width(count, n_layers, widths, budget, build)
        if d_model is None or count(build(n_layers, d_model)) < (1 - tolerance) * budget:
            continue
        score = abs(math.log(d_model / n_layers / aspect_ratio))
        if best is None or score < best[0]:
            best = (score, n_layers, d_model)
    if best is None:
        smallest = count(build(n_layers_range[0], widths[0]))
        largest = count(build(n_layers_range[1], widths[-1]))
        reason = (f"solve_depth_width: {input} = {budget:g} ({quantity}) is not reachable within "
                  f"{tolerance:.0%} below it: n_layers in {tuple(n_layers_range)}, d_model in "
                  f"{tuple(d_model_range)} step {width_step} give {smallest:g} to {largest:g} "
                  f"for the point's other knobs")
        if on_infeasible == "drop":
            return reason
        raise ConfigError(reason)
    return {**point, **derived(best[1], best[2])}


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


PARAMETER_KINDS = {"active_non_embedding": "active_non_embedding_params", "active": "active_params",
                   "total": "total_params", "total_non_embedding": "total_non_embedding_params"}


@gin.configurable
def learning_rate_rule(point: dict, *, log_coefficient: float = 8.39,
                       params_exponent: float = -0.81, experts_exponent: float = -0.25,
                       params: str = "active_non_embedding", vocab_size: int | None = None,
                       max_learning_rate: float | None = None, significant_digits: int = 3) -> dict:
    """TrainConfig.learning_rate = exp(log_coefficient) · N^params_exponent · E^experts_exponent.

    The defaults are Joint MoE's Eq. 8 (N = active non-embedding parameters, E = routed experts,
    1 for dense): 1.458e-3 at N = 1e8, E = 1; 8.67e-4 at N = 1e8, E = 8. Set experts_exponent = 0
    for a dense-style power law in N only.

    Args:
      params: which N: 'active_non_embedding', 'active', 'total' or 'total_non_embedding'.
      vocab_size: embedding rows when N includes embeddings and the point binds no vocab_size.
      max_learning_rate: clip to this (None: no clip); power laws fitted on 1e8 parameters give
        absurd rates for the tiny CPU models.
      significant_digits: the learning rate is rounded to this many digits (readable configs).
    """
    if params not in PARAMETER_KINDS:
        raise ConfigError(f"learning_rate_rule.params = {params!r} is not allowed: one of "
                          f"{sorted(PARAMETER_KINDS)}")
    model = model_from_point(point, vocab_size)
    if PARAMETER_KINDS[params] in WITH_EMBEDDINGS:
        _needs_vocab(model, "learning_rate_rule.vocab_size", vocab_size)
    rate = power_law_learning_rate(QUANTITIES[PARAMETER_KINDS[params]](model),
                                   _routed_experts(model), log_coefficient, params_exponent,
                                   experts_exponent)
    if max_learning_rate is not None:
        rate = min(rate, max_learning_rate)
    return {**point, "TrainConfig.learning_rate": float(f"{rate:.{significant_digits}g}")}


def power_law_learning_rate(n_params: float, num_experts: float, log_coefficient: float,
                            params_exponent: float, experts_exponent: float) -> float:
    """exp(log_coefficient) · n_params^params_exponent · num_experts^experts_exponent."""
    return math.exp(log_coefficient + params_exponent * math.log(n_params)
                    + experts_exponent * math.log(num_experts))


def _with_steps(point: dict, steps: int, warmup_fraction: float | None, min_steps: int,
                what: str) -> dict | str:
    if steps < min_steps:
        return f"{what} gives {steps} steps < {min_steps}"
    point = {**point, "TrainConfig.steps": steps}
    if warmup_fraction is not None:
        point["TrainConfig.warmup_steps"] = int(round(warmup_fraction * steps))
    return point


def tokens_per_step(point: dict, constraint: str) -> int:
    """DataConfig.batch_size x DataConfig.seq_len of the point (tokens per optimizer step)."""
    return (_require(point, "DataConfig.batch_size", constraint)
            * _require(point, "DataConfig.seq_len", constraint))


@gin.configurable
def steps_from_tokens(point: dict, *, input: str = "tokens", warmup_fraction: float | None = None,
                      min_steps: int = 1) -> dict | str:
    """TrainConfig.steps = round(tokens / (batch_size · seq_len)).

    Args:
      input: the derived input holding the training tokens.
      warmup_fraction: also set TrainConfig.warmup_steps = round(fraction · steps) (None: keep).
      min_steps: drop points with fewer steps.
    """
    tokens = _require(point, input, "steps_from_tokens")
    steps = int(round(tokens / tokens_per_step(point, "steps_from_tokens")))
    return _with_steps(point, steps, warmup_fraction, min_steps, f"{input} = {tokens:g}")


FLOP_COUNTS = ("6n", "exact")


@gin.configurable
def steps_from_flop_budget(point: dict, *, input: str = "flop_budget", flops: str = "6n",
                           vocab_size: int | None = None, warmup_fraction: float | None = None,
                           min_steps: int = 1) -> dict | str:
    """TrainConfig.steps = floor(budget / (training FLOPs per token · batch_size · seq_len)).

    Args:
      input: the derived input holding the training budget in FLOPs.
      flops: '6n' (6 · active parameters with embeddings per token, Joint MoE's convention) or
        'exact' (every matmul incl. attention over seq_len, ``accounting.training_flops_per_token``).
      vocab_size: embedding rows when the point binds no ModelConfig.vocab_size.
    """
    if flops not in FLOP_COUNTS:
        raise ConfigError(f"steps_from_flop_budget.flops = {flops!r} is not allowed: one of {FLOP_COUNTS}")
    model = model_from_point(point, vocab_size)
    _needs_vocab(model, "steps_from_flop_budget.vocab_size", vocab_size)
    per_step = tokens_per_step(point, "steps_from_flop_budget")
    per_token = (accounting.training_flops_per_token_6n(model) if flops == "6n" else
                 accounting.training_flops_per_token(model, point["DataConfig.seq_len"]))
    budget = _require(point, input, "steps_from_flop_budget")
    steps = int(budget // (per_token * per_step))
    return _with_steps(point, steps, warmup_fraction, min_steps, f"{input} = {budget:g}")


@gin.configurable
def valid_model(point: dict, *, vocab_size: int | None = None) -> dict | str:
    """Drop points whose model ``validate_model_config`` rejects (the message is the reason)."""
    try:
        validate_model_config(model_from_point(point, vocab_size or 1))
    except ConfigError as e:
        return str(e)
    return point

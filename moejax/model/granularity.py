"""Expert granularity: derive expert width, count and top-k so that active parameters stay fixed.

In: a dense feed-forward width and a granularity. Out: an ``MoEConfig`` (also usable from gin:
``ModelConfig.moe = @fine_grained_moe()``).

- Krajewski et al. 2024: G = d_ff / d_expert. Splitting each of E experts of width d_ff into G
  experts of width d_ff / G, and routing to G·K of them, keeps total and active parameters fixed
  (the routers grow by a factor G).
- Slicing & Dicing 2026 tie top-k to width: top_k * d_expert / d_model = 1.
"""

from __future__ import annotations

import dataclasses

import gin

from moejax.errors import ConfigError
from moejax.model.config import MoEConfig


@gin.configurable
def fine_grained_moe(d_ff: int = gin.REQUIRED, granularity: int = 1, num_experts: int = 8,
                     top_k: int = 2, base: MoEConfig | None = None) -> MoEConfig:
    """E·G experts of width d_ff / G with top-k K·G: same total and active expert parameters as
    E experts of width d_ff with top-k K.

    Args:
      d_ff: width of one expert at granularity 1 (normally the dense feed-forward width).
      granularity: G, how many slices each expert is cut into (Krajewski's G).
      num_experts, top_k: E and K at granularity 1.
      base: other MoE knobs to keep (balancing, router...); its E, K and d_expert are replaced.
    """
    if not isinstance(granularity, int) or granularity < 1:
        raise ConfigError(f"fine_grained_moe.granularity = {granularity!r} is not allowed: "
                          "an integer >= 1")
    if d_ff % granularity:
        raise ConfigError(f"fine_grained_moe.granularity = {granularity} is not allowed: it must "
                          f"divide d_ff = {d_ff} (expert width d_ff / G must be an integer)")
    base = base if base is not None else MoEConfig()
    return dataclasses.replace(base, num_experts=num_experts * granularity,
                               d_expert=d_ff // granularity, top_k=top_k * granularity,
                               expert_groups=None)


@gin.configurable
def width_tied_moe(d_model: int = gin.REQUIRED, expert_width_multiplier: float = 0.25,
                   num_experts: int = 32, base: MoEConfig | None = None) -> MoEConfig:
    """Slicing & Dicing's tie: experts of width m·d_model with top-k = 1 / m (e.g. 32 experts of
    0.25·d, top-4), so the active expert width equals d_model."""
    d_expert = d_model * expert_width_multiplier
    top_k = 1.0 / expert_width_multiplier
    if d_expert != int(d_expert) or top_k != int(top_k):
        raise ConfigError(f"width_tied_moe.expert_width_multiplier = {expert_width_multiplier} "
                          f"is not allowed: d_model * m and 1 / m must be integers "
                          f"(d_model = {d_model})")
    base = base if base is not None else MoEConfig()
    return dataclasses.replace(base, num_experts=num_experts, d_expert=int(d_expert),
                               top_k=int(top_k), expert_groups=None)

"""The attention a planned model uses: its parameters and its KV cache, per block.

In: the (continuous) width d of a member of the Joint MoE family (App. A: heads of 64, so
n_heads = n_blocks = d / 64). Out: the attention parameters of one block and the values one
block caches per token, for three variants:

- ``MultiHead()``: the paper's family. 4 d^2 parameters (query, key, value, output), 2 d cached
  values (a key and a value per head).
- ``GroupedQuery(group)``: ``group`` query heads share each key/value head (Ainslie et al. 2023).
  (2 + 2 / group) d^2 parameters, 2 d / group cached values.
- ``Latent(kv_rank, rope_dim)``: multi-head latent attention (DeepSeek-V2, arXiv 2405.04434),
  keys and values expanded per head from a ``kv_rank``-wide latent, one rotary key of
  ``rope_dim`` shared by the heads, queries projected directly; head dims 64 (position-free
  query/key part and value). Cached: the latent and the rotary key, kv_rank + rope_dim values
  whatever the width. Parameters: queries d (d + n_heads rope_dim) = (1 + rope_dim / 64) d^2,
  latent and rotary-key projections (kv_rank + rope_dim) d, key and value up-projections 2 kv_rank
  d, output d^2.

The loss law was fit on multi-head models: the planner prices an active parameter the same
whichever attention it sits in, and assumes the variant costs no quality at equal parameters
(GQA's authors report quality near multi-head attention at group 8, DeepSeek-V2's report MLA at or
above it). Norm parameters are left out, as in the paper's counting. ``configure`` turns a
planned width's multi-head ``ModelConfig`` into the variant's, which ``moejax.model.accounting``
then counts exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from moejax.model.config import LatentAttentionConfig, ModelConfig

HEAD_DIM = 64  # the Joint MoE family's head width


class PlannedAttention(Protocol):
    def parameters_per_block(self, d_model: float) -> float: ...

    def cache_values_per_block(self, d_model: float) -> float: ...

    def configure(self, config: ModelConfig) -> ModelConfig: ...

    def describe(self) -> str: ...

    def spec(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class MultiHead:
    """Multi-head attention: a key and a value per head and token."""

    def parameters_per_block(self, d_model: float) -> float:
        return 4.0 * d_model**2

    def cache_values_per_block(self, d_model: float) -> float:
        return 2.0 * d_model

    def configure(self, config: ModelConfig) -> ModelConfig:
        return config

    def describe(self) -> str:
        return "multi-head attention (2 d cached values per token and block)"

    def spec(self) -> str:
        return "mha"


@dataclasses.dataclass(frozen=True)
class GroupedQuery:
    """Grouped-query attention: ``group`` query heads per key/value head."""

    group: int

    def __post_init__(self):
        if isinstance(self.group, bool) or not isinstance(self.group, int) or self.group < 1:
            raise ValueError(f"grouped-query attention needs a whole group >= 1 of query heads "
                             f"per key/value head, got {self.group!r}")

    def parameters_per_block(self, d_model: float) -> float:
        return (2.0 + 2.0 / self.group) * d_model**2

    def cache_values_per_block(self, d_model: float) -> float:
        return 2.0 * d_model / self.group

    def configure(self, config: ModelConfig) -> ModelConfig:
        """Key/value heads: the divisor of n_heads nearest n_heads / group (a smaller cache on a
        tie), since a concrete model's heads must split evenly into groups."""
        target = config.n_heads / self.group
        divisors = [k for k in range(1, config.n_heads + 1) if config.n_heads % k == 0]
        kv_heads = min(divisors, key=lambda k: (abs(k - target), k))
        return dataclasses.replace(config, n_kv_heads=kv_heads)

    def describe(self) -> str:
        return (f"grouped-query attention, {self.group} query heads per key/value head "
                f"(2 d / {self.group} cached values per token and block)")

    def spec(self) -> str:
        return f"gqa:{self.group}"


@dataclasses.dataclass(frozen=True)
class Latent:
    """Multi-head latent attention with a ``kv_rank``-wide latent and a ``rope_dim``-wide
    rotary key shared by the heads."""

    kv_rank: int
    rope_dim: int = HEAD_DIM // 2

    def __post_init__(self):
        for name, value in (("kv_rank", self.kv_rank), ("rope_dim", self.rope_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"latent attention needs a whole {name} >= 1, got {value!r}")
        if self.rope_dim % 2:
            raise ValueError(f"latent attention's rotary key needs an even rope_dim (rotation "
                             f"turns pairs of values), got {self.rope_dim}")

    def parameters_per_block(self, d_model: float) -> float:
        return ((2.0 + self.rope_dim / HEAD_DIM) * d_model**2
                + (3.0 * self.kv_rank + self.rope_dim) * d_model)

    def cache_values_per_block(self, d_model: float) -> float:
        return float(self.kv_rank + self.rope_dim)

    def configure(self, config: ModelConfig) -> ModelConfig:
        return dataclasses.replace(config, latent_attention=LatentAttentionConfig(
            kv_lora_rank=self.kv_rank, qk_rope_head_dim=self.rope_dim,
            qk_nope_head_dim=HEAD_DIM, v_head_dim=HEAD_DIM, q_lora_rank=None))

    def describe(self) -> str:
        return (f"multi-head latent attention, a {self.kv_rank}-wide latent and a "
                f"{self.rope_dim}-wide rotary key ({self.kv_rank + self.rope_dim} cached values "
                "per token and block)")

    def spec(self) -> str:
        return f"mla:{self.kv_rank}:{self.rope_dim}"


def parse_attentions(text: str) -> tuple[PlannedAttention, ...]:
    """A comma-separated list of ``parse_attention`` forms, each once, in the order given."""
    attentions = tuple(dict.fromkeys(parse_attention(item) for item in text.split(",")
                                     if item.strip()))
    if not attentions:
        raise ValueError(f"attention {text!r} names none; use mha, gqa:GROUP or mla:KV_RANK")
    return attentions


def parse_attention(text: str) -> PlannedAttention:
    """``mha``, ``gqa:GROUP`` or ``mla:KV_RANK[:ROPE_DIM]`` (``spec()`` gives it back) as a
    planned attention; ValueError naming the accepted forms otherwise."""
    forms = "mha, gqa:GROUP (e.g. gqa:8) or mla:KV_RANK[:ROPE_DIM] (e.g. mla:256 or mla:512:64)"
    name, _, rest = text.strip().partition(":")
    try:
        numbers = [int(part) for part in rest.split(":")] if rest else []
    except ValueError:
        raise ValueError(f"attention {text!r}: {rest!r} is not whole numbers; "
                         f"use {forms}") from None
    if name == "mha" and not numbers:
        return MultiHead()
    if name == "gqa" and len(numbers) == 1:
        return GroupedQuery(numbers[0])
    if name == "mla" and len(numbers) in (1, 2):
        return Latent(*numbers)
    raise ValueError(f"attention {text!r} is not one of {forms}")

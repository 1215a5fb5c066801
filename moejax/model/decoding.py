"""What autoregressive decoding keeps between steps, and how a batch of prompts is laid out.

A ``DecodeCache`` holds, for every attention layer, the keys and values of S slots (for latent
attention, each slot's latent and shared rotary key: ``LatentCache``), the segment
id of every slot (-1 while unwritten) and how many slots are written. ``Transformer.extend``
appends T tokens to it and returns their logits; prefilling a prompt and generating one token
are the same call with T = prompt length and T = 1.

Prompts of different lengths are left-padded so that every row's next token lands in the same
slot: padding has segment 0 (masked out, as packing padding is in training) and each real token
has segment 1 and its position inside its own sequence. Training inputs start every sequence with
token 0 (``moejax.data.pipeline``: targets shifted right), so each prompt does too.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moejax.model.accounting import kv_cache_bytes_per_token
from moejax.model.config import ModelConfig
from moejax.model.latent_attention import LatentCache
from moejax.model.layers import LayerCache

START_TOKEN = 0  # the input that precedes a sequence's first token in training
PADDING_SEGMENT, PROMPT_SEGMENT, UNWRITTEN_SEGMENT = 0, 1, -1


class DecodeCache(NamedTuple):
    layers: tuple[LayerCache | LatentCache, ...]
    segment_ids_BS: jax.Array  # int32; -1 on slots not written yet
    length: jax.Array  # int32 scalar: slots written


def empty_layer_cache(config: ModelConfig, batch: int, slots: int) -> LayerCache | LatentCache:
    """One layer's zero cache of ``slots`` positions per row, in the compute dtype."""
    dtype = jnp.dtype(config.compute_dtype)
    mla = config.latent_attention
    if mla is not None:
        return LatentCache(jnp.zeros((batch, slots, mla.kv_lora_rank), dtype),
                           jnp.zeros((batch, slots, mla.qk_rope_head_dim), dtype))
    shape = (batch, config.kv_heads, slots, config.head_dim)
    return LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def init_cache(config: ModelConfig, batch: int, slots: int) -> DecodeCache:
    """An empty cache of ``slots`` positions per row, in the compute dtype."""
    # A buffer per layer (not one shared), so that a step may donate the cache and update it
    # in place.
    return DecodeCache(tuple(empty_layer_cache(config, batch, slots)
                             for _ in range(config.n_layers)),
                       jnp.full((batch, slots), UNWRITTEN_SEGMENT, jnp.int32),
                       jnp.zeros((), jnp.int32))


def cache_bytes(config: ModelConfig, batch: int, slots: int) -> int:
    """Bytes of a cache's keys and values, or latents (segment ids aside): what the planner
    budgets per token (``accounting.kv_cache_bytes_per_token``) times the slots."""
    return batch * slots * kv_cache_bytes_per_token(config, config.compute_dtype)


class PromptBatch(NamedTuple):
    tokens_BP: np.ndarray  # int32, each row START_TOKEN + the prompt, left-padded with 0
    positions_BP: np.ndarray  # int32, 0 at START_TOKEN; 0 on padding
    segment_ids_BP: np.ndarray  # int32, PROMPT_SEGMENT on real tokens, PADDING_SEGMENT on padding
    lengths_B: np.ndarray  # int32, real tokens per row (START_TOKEN included)


def left_padded(prompts: Sequence[Sequence[int]]) -> PromptBatch:
    """Lay ``prompts`` (token ids, possibly empty) out as one left-padded batch."""
    if not prompts:
        raise ValueError("no prompts to lay out")
    rows = [[START_TOKEN, *map(int, prompt)] for prompt in prompts]
    width = max(map(len, rows))
    tokens = np.zeros((len(rows), width), np.int32)
    positions = np.zeros((len(rows), width), np.int32)
    segments = np.full((len(rows), width), PADDING_SEGMENT, np.int32)
    for b, row in enumerate(rows):
        pad = width - len(row)
        tokens[b, pad:] = row
        positions[b, pad:] = np.arange(len(row))
        segments[b, pad:] = PROMPT_SEGMENT
    return PromptBatch(tokens, positions, segments, np.array(list(map(len, rows)), np.int32))

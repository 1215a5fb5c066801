"""The decoder-only transformer: tokens in, float32 logits and per-MoE-layer statistics out.

Pre-norm blocks (RMSNorm -> attention -> residual, RMSNorm -> feed-forward -> residual); each
block's feed-forward is a dense SwiGLU or an MoE layer, as ``moe_layer_indices`` decides. A dense
model is this same code with no MoE blocks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.model.config import ModelConfig, moe_layer_indices
from moejax.model.decoding import DecodeCache
from moejax.model.latent_attention import LatentAttention, LatentCache
from moejax.model.layers import Attention, LayerCache, RMSNorm, SwiGLU
from moejax.model.moe import MoEFeedForward, MoEStats
from moejax.parallel.rules import constrain, logical_param


def attention_layer(c: ModelConfig, *, out_scale: float, rngs: nnx.Rngs) -> nnx.Module:
    """The block's attention: grouped-query (``Attention``) or latent (``LatentAttention``)."""
    dt = jnp.dtype(c.compute_dtype)
    if c.latent_attention is not None:
        return LatentAttention(c.d_model, c.n_heads, c.latent_attention, rope_theta=c.rope_theta,
                               out_scale=out_scale, compute_dtype=dt, rngs=rngs,
                               norm_eps=c.norm_eps)
    return Attention(c.d_model, c.n_heads, c.kv_heads, c.head_dim, rope_theta=c.rope_theta,
                     out_scale=out_scale, compute_dtype=dt, rngs=rngs, qk_norm=c.qk_norm,
                     norm_eps=c.norm_eps)


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, *, is_moe: bool, rngs: nnx.Rngs):
        c = config
        dt = jnp.dtype(c.compute_dtype)
        out_scale = 1.0 / math.sqrt(2 * c.n_layers)
        self.is_moe = is_moe
        self.attn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.attn = attention_layer(c, out_scale=out_scale, rngs=rngs)
        self.ff_norm = RMSNorm(c.d_model, c.norm_eps)
        if is_moe:
            self.ff = MoEFeedForward(c.d_model, c.moe, n_layers=c.n_layers, init_std=c.init_std,
                                     compute_dtype=dt, rngs=rngs)
        else:
            self.ff = SwiGLU(c.d_model, c.dense_d_ff, out_scale=out_scale, compute_dtype=dt,
                             rngs=rngs)

    def __call__(self, x_BTD, positions_BT, segment_ids_BT, tokens_BT, *, train: bool = False,
                 rng=None):
        x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), positions_BT, segment_ids_BT)
        h_BTD = self.ff_norm(x_BTD)
        if self.is_moe:
            y_BTD, stats = self.ff(h_BTD, segment_ids_BT > 0, train=train, rng=rng,
                                   token_ids_BT=tokens_BT)
        else:
            y_BTD, stats = self.ff(h_BTD), None
        return x_BTD + y_BTD.astype(x_BTD.dtype), stats

    def extend(self, x_BTD, positions_BT, segment_ids_BT, tokens_BT,
               layer_cache: LayerCache | LatentCache, key_segments_BS,
               start) -> tuple[jax.Array, LayerCache | LatentCache]:
        """The block on T new tokens over its cached keys and values, or latents (decoding, eval
        mode)."""
        attended_BTD, layer_cache = self.attn.extend(self.attn_norm(x_BTD), positions_BT,
                                                     segment_ids_BT, layer_cache, key_segments_BS,
                                                     start)
        x_BTD = x_BTD + attended_BTD
        h_BTD = self.ff_norm(x_BTD)
        if self.is_moe:
            y_BTD, _ = self.ff(h_BTD, segment_ids_BT > 0, token_ids_BT=tokens_BT)
        else:
            y_BTD = self.ff(h_BTD)
        return x_BTD + y_BTD.astype(x_BTD.dtype), layer_cache


def _call_block(block: Block, x_BTD, positions_BT, segment_ids_BT, tokens_BT, rng, train: bool):
    return block(x_BTD, positions_BT, segment_ids_BT, tokens_BT, train=train, rng=rng)


# ModelConfig.remat -> what jax.checkpoint may keep of a block for the backward pass
_REMAT_POLICIES = {"block": jax.checkpoint_policies.nothing_saveable,
                   "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def block_runner(remat: str):
    """``_call_block``, rematerialised as ``remat`` says ("none": as it is)."""
    if remat == "none":
        return _call_block
    return nnx.remat(_call_block, policy=_REMAT_POLICIES[remat], static_argnums=(6,))


class Transformer(nnx.Module):
    """Token embedding, ``n_layers`` blocks, final RMSNorm, tied or untied output projection."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        self.compute_dtype = jnp.dtype(c.compute_dtype)
        moe_blocks = set(moe_layer_indices(c))
        self.embed_VD = logical_param(
            jax.nn.initializers.normal(c.init_std)(rngs.params(), (c.vocab_size, c.d_model)),
            ("vocab", "embed"))
        self.blocks = nnx.List([Block(c, is_moe=i in moe_blocks, rngs=rngs)
                                for i in range(c.n_layers)])
        self.final_norm = RMSNorm(c.d_model, c.norm_eps)
        if not c.tie_embeddings:
            self.unembed_DV = logical_param(
                jax.nn.initializers.truncated_normal(1.0 / math.sqrt(c.d_model))(
                    rngs.params(), (c.d_model, c.vocab_size)), ("embed", "vocab"))

    def __call__(self, tokens_BT: jax.Array, positions_BT: jax.Array | None = None,
                 segment_ids_BT: jax.Array | None = None, *, train: bool = False,
                 rng: jax.Array | None = None) -> tuple[jax.Array, list[MoEStats]]:
        """Returns logits (B, T, V) float32 and the MoEStats of every MoE block, in block order.

        positions default to 0..T-1 and segment ids to a single segment (no packing). ``train``
        selects training behaviour (router jitter, training capacity factor); ``rng`` feeds the
        jitter and may be None.
        """
        batch, seq = tokens_BT.shape
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones((batch, seq), jnp.int32)
        x_BTD = self._embed(tokens_BT)
        moe_stats = []
        run = block_runner(self.config.remat)
        for index, block in enumerate(self.blocks):
            block_rng = None if rng is None else jax.random.fold_in(rng, index)
            x_BTD, stats = run(block, x_BTD, positions_BT, segment_ids_BT, tokens_BT, block_rng,
                               train)
            if stats is not None:
                moe_stats.append(stats)
        return self._logits(x_BTD), moe_stats

    def extend(self, tokens_BT: jax.Array, positions_BT: jax.Array, segment_ids_BT: jax.Array,
               cache: DecodeCache) -> tuple[jax.Array, DecodeCache]:
        """Logits (B, T, V) float32 of T new tokens appended to ``cache`` at slots
        ``cache.length ..``, and the cache holding them too (``moejax.model.decoding``). Eval
        mode; MoE statistics are not kept. Segment 0 marks padding, as in training."""
        start = cache.length
        key_segments_BS = jax.lax.dynamic_update_slice(cache.segment_ids_BS,
                                                       segment_ids_BT.astype(jnp.int32), (0, start))
        x_BTD = self._embed(tokens_BT)
        layers = []
        for block, layer_cache in zip(self.blocks, cache.layers):
            x_BTD, layer_cache = block.extend(x_BTD, positions_BT, segment_ids_BT, tokens_BT,
                                              layer_cache, key_segments_BS, start)
            layers.append(layer_cache)
        return self._logits(x_BTD), DecodeCache(tuple(layers), key_segments_BS,
                                                start + tokens_BT.shape[1])

    def _embed(self, tokens_BT):
        x_BTD = jnp.take(self.embed_VD[...], tokens_BT, axis=0).astype(self.compute_dtype)
        return constrain(x_BTD, ("batch", "seq", "embed"))

    def _logits(self, x_BTD):
        x_BTD = self.final_norm(x_BTD)
        if self.config.tie_embeddings:
            w_DV = self.embed_VD[...].T
        else:
            w_DV = self.unembed_DV[...]
        logits_BTV = jnp.dot(x_BTD, w_DV.astype(self.compute_dtype),
                             preferred_element_type=jnp.float32)
        return constrain(logits_BTV.astype(jnp.float32), ("batch", "seq", "vocab"))

"""Multi-head latent attention (MLA; DeepSeek-V2 and DeepSeek-V3): keys and values come from one
small latent per token, so a decoding cache holds C + R numbers per token and layer.

In/out: activations x_BTD in the compute dtype, as ``moejax.model.layers.Attention``, with the
same packing mask (``layers.cached_attention_mask``) and the same interface (``__call__`` for
training and scoring, ``extend`` for decoding over a ``LatentCache``).

Per token: the latent c = RMSNorm(x W_kv_down) (C), one rotary key k_rope = rope(x W_k_rope) (R)
shared by every head, and per head n a query [q_nope (P) | rope(q_rope) (R)] from x (or from
RMSNorm(x W_q_down) when the query has its own latent). Head n's key is [c W_k_up[n] | k_rope],
its value c W_v_up[n]; scores are scaled by 1/sqrt(P + R).

Two ways to compute the same attention, tested equal (tests/model/test_latent_attention.py):
- ``__call__`` (training) expands every token's key and value per head: the cheapest in FLOPs
  when every query attends over the whole sequence once.
- ``extend`` (decoding) keeps only c and k_rope in the cache and folds the up-projections into
  the query (q_nope W_k_up[n]^T is a query in latent space) and into the output (the attention-
  weighted latent times W_v_up[n]), so it never expands the cached tokens. That costs more FLOPs
  per cached token (N (2C + R) against N (P + R + V), ``accounting``) and reads far fewer bytes,
  which is what bounds a decoding step.

Letters: B batch, T/S query/key positions, D d_model, N heads, C key/value latent (kv_lora_rank),
Q query latent (q_lora_rank), P position-free query/key features per head (qk_nope_head_dim),
R rotary features (qk_rope_head_dim), K = P + R query/key features per head, V value features.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.model.config import LatentAttentionConfig
from moejax.model.layers import (RMSNorm, _linear_init, attention_mask, cached_attention_mask,
                                 masked_softmax, rotary_embedding, write_slots)
from moejax.parallel.rules import constrain, logical_param


class LatentCache(NamedTuple):
    """One latent-attention layer's cache: every slot's normed latent and rotated shared key."""

    latent_BSC: jax.Array
    rope_keys_BSR: jax.Array


def write_latent_cache(cache: LatentCache, latent_BTC, rope_keys_BTR, start) -> LatentCache:
    """``cache`` with T new latents and rotary keys written at slots start .. start+T-1."""
    at = (0, start, 0)
    return LatentCache(write_slots(cache.latent_BSC, latent_BTC, at),
                       write_slots(cache.rope_keys_BSR, rope_keys_BTR, at))


class LatentAttention(nnx.Module):
    """Causal multi-head latent attention with a rotary key shared by all heads."""

    def __init__(self, d_model: int, n_heads: int, mla: LatentAttentionConfig, *,
                 rope_theta: float, out_scale: float, compute_dtype, rngs: nnx.Rngs,
                 norm_eps: float = 1e-6):
        self.n_heads, self.mla = n_heads, mla
        self.rope_theta, self.compute_dtype = rope_theta, compute_dtype
        C, Q, P, R, V = (mla.kv_lora_rank, mla.q_lora_rank, mla.qk_nope_head_dim,
                         mla.qk_rope_head_dim, mla.v_head_dim)
        K, N = P + R, n_heads
        init = _linear_init(d_model)
        if Q is None:
            self.w_q_DNK = logical_param(init(rngs.params(), (d_model, N, K)),
                                         ("embed", "heads", "head_dim"))
        else:
            self.w_q_down_DQ = logical_param(init(rngs.params(), (d_model, Q)),
                                             ("embed", "latent"))
            self.q_norm = RMSNorm(Q, norm_eps, ("latent",))
            self.w_q_up_QNK = logical_param(_linear_init(Q)(rngs.params(), (Q, N, K)),
                                            ("latent", "heads", "head_dim"))
        self.w_kv_down_DC = logical_param(init(rngs.params(), (d_model, C)), ("embed", "latent"))
        self.w_k_rope_DR = logical_param(init(rngs.params(), (d_model, R)),
                                         ("embed", "head_dim"))
        self.kv_norm = RMSNorm(C, norm_eps, ("latent",))
        self.w_k_up_CNP = logical_param(_linear_init(C)(rngs.params(), (C, N, P)),
                                        ("latent", "heads", "head_dim"))
        self.w_v_up_CNV = logical_param(_linear_init(C)(rngs.params(), (C, N, V)),
                                        ("latent", "heads", "head_dim"))
        self.w_o_NVD = logical_param(_linear_init(N * V, out_scale)(rngs.params(), (N, V, d_model)),
                                     ("heads", "head_dim", "embed"))

    def _w(self, param) -> jax.Array:
        return param[...].astype(self.compute_dtype)

    def _project(self, x_BTD, positions_BT):
        """Position-free queries (B, T, N, P), rotated queries (B, T, N, R), the normed latent
        (B, T, C) and the rotated shared key (B, T, R)."""
        x = x_BTD.astype(self.compute_dtype)
        if self.mla.q_lora_rank is None:
            q_BTNK = jnp.einsum("btd,dnk->btnk", x, self._w(self.w_q_DNK))
        else:
            q_latent_BTQ = self.q_norm(jnp.dot(x, self._w(self.w_q_down_DQ)))
            q_BTNK = jnp.einsum("btq,qnk->btnk", q_latent_BTQ, self._w(self.w_q_up_QNK))
        q_BTNK = constrain(q_BTNK, ("batch", "seq", "heads", "head_dim"))
        q_nope_BTNP, q_rope_BTNR = jnp.split(q_BTNK, [self.mla.qk_nope_head_dim], axis=-1)
        q_rope_BTNR = rotary_embedding(q_rope_BTNR, positions_BT, self.rope_theta)
        latent_BTC = self.kv_norm(jnp.dot(x, self._w(self.w_kv_down_DC)))
        k_rope_BTR = rotary_embedding(jnp.dot(x, self._w(self.w_k_rope_DR))[:, :, None, :],
                                      positions_BT, self.rope_theta)[:, :, 0, :]
        return q_nope_BTNP, q_rope_BTNR, latent_BTC, k_rope_BTR

    def _scale(self) -> float:
        return 1.0 / math.sqrt(self.mla.qk_head_dim)

    def _out(self, out_BTNV):
        return jnp.einsum("btnv,nvd->btd", out_BTNV, self._w(self.w_o_NVD))

    def __call__(self, x_BTD, positions_BT, segment_ids_BT):
        """Attention of the sequence over itself with every token's keys and values expanded."""
        q_nope_BTNP, q_rope_BTNR, latent_BTC, k_rope_BTR = self._project(x_BTD, positions_BT)
        k_nope_BTNP = jnp.einsum("btc,cnp->btnp", latent_BTC, self._w(self.w_k_up_CNP))
        v_BTNV = constrain(jnp.einsum("btc,cnv->btnv", latent_BTC, self._w(self.w_v_up_CNV)),
                           ("batch", "seq", "heads", "head_dim"))
        scores_BNTS = (jnp.einsum("btnp,bsnp->bnts", q_nope_BTNP, k_nope_BTNP)
                       + jnp.einsum("btnr,bsr->bnts", q_rope_BTNR, k_rope_BTR)) * self._scale()
        probs_BNTS = masked_softmax(scores_BNTS, attention_mask(segment_ids_BT))
        out_BTNV = jnp.einsum("bnts,bsnv->btnv", probs_BNTS.astype(v_BTNV.dtype), v_BTNV)
        return self._out(out_BTNV)

    def extend(self, x_BTD, positions_BT, segment_ids_BT, cache: LatentCache, key_segments_BS,
               start) -> tuple[jax.Array, LatentCache]:
        """Attention of T new tokens, written at slots ``start .. start+T-1`` of ``cache``, over
        every slot up to their own, in latent space (the up-projections absorbed)."""
        q_nope_BTNP, q_rope_BTNR, latent_BTC, k_rope_BTR = self._project(x_BTD, positions_BT)
        cache = write_latent_cache(cache, latent_BTC, k_rope_BTR, start)
        latent_BSC = cache.latent_BSC.astype(self.compute_dtype)
        # q_nope . (c W_k_up[n]) = (q_nope W_k_up[n]^T) . c: a query in latent space
        q_latent_BTNC = jnp.einsum("btnp,cnp->btnc", q_nope_BTNP, self._w(self.w_k_up_CNP))
        scores_BNTS = (jnp.einsum("btnc,bsc->bnts", q_latent_BTNC, latent_BSC)
                       + jnp.einsum("btnr,bsr->bnts", q_rope_BTNR,
                                    cache.rope_keys_BSR.astype(self.compute_dtype)))
        mask = cached_attention_mask(segment_ids_BT, key_segments_BS, start)
        probs_BNTS = masked_softmax(scores_BNTS * self._scale(), mask)
        # sum_s p_s (c_s W_v_up[n]) = (sum_s p_s c_s) W_v_up[n]
        out_latent_BTNC = jnp.einsum("bnts,bsc->btnc", probs_BNTS.astype(latent_BSC.dtype),
                                     latent_BSC)
        out_BTNV = jnp.einsum("btnc,cnv->btnv", out_latent_BTNC, self._w(self.w_v_up_CNV))
        return self._out(out_BTNV), cache

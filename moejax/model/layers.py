"""Dense transformer pieces: RMSNorm, query/key norms, rotary embedding, grouped-query causal
attention, SwiGLU.

In/out: activations x_BTD in the compute dtype. Parameters are float32 and cast at use.
Attention runs through ``jax.nn.dot_product_attention`` with a mask that is causal and keeps
packed documents apart (a token attends only to earlier tokens of its own segment). For decoding,
``Attention.extend`` attends new tokens over a ``LayerCache`` of earlier keys and values with the
same rule (``cached_attention_mask``), through ``attend_to_cache`` on the cache's head-major
layout; tests/model/test_decoding.py checks the two agree.

Shapes: B batch, T/S query/key positions, D d_model, N query heads, G key/value heads, H head dim,
F feed-forward hidden.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.parallel.rules import constrain, logical_param


def _linear_init(fan_in: int, scale: float = 1.0):
    return jax.nn.initializers.truncated_normal(scale / math.sqrt(fan_in))


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) * scale over the trailing ``scale.ndim`` axes of x, computed in float32 and
    returned in x's dtype."""
    axes = tuple(range(-scale.ndim, 0))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32**2, axis=axes, keepdims=True) + eps)
    return (normed * scale).astype(x.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm over the trailing axes that ``shape`` names: (D,) for the residual stream; (H,)
    normalises each head of an (..., N, H) projection on its own with one scale for all heads,
    (N, H) all heads of a token together with a scale per feature."""

    def __init__(self, shape: int | tuple[int, ...], eps: float = 1e-6,
                 axis_names: tuple[str, ...] = ("norm",)):
        self.eps = eps
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.scale = logical_param(jnp.ones(shape, jnp.float32), axis_names)

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.scale[...], self.eps)


class NoNorm(nnx.Module):
    """The identity, holding no parameters (``qk_norm = "none"``)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def _no_qk_norm(heads: int, head_dim: int, heads_axis: str, eps: float) -> nnx.Module:
    return NoNorm()


def _per_head_qk_norm(heads: int, head_dim: int, heads_axis: str, eps: float) -> nnx.Module:
    return RMSNorm((head_dim,), eps, ("head_dim",))


def _across_heads_qk_norm(heads: int, head_dim: int, heads_axis: str, eps: float) -> nnx.Module:
    return RMSNorm((heads, head_dim), eps, (heads_axis, "head_dim"))


# ModelConfig.qk_norm -> the norm applied to queries and to keys before the rotary embedding,
# built as f(heads, head_dim, logical heads axis, eps). Queries and keys each get their own scale.
QK_NORMS = {"none": _no_qk_norm,  # plain attention
            "per_head": _per_head_qk_norm,  # each head over its H features (Qwen3-MoE, Gemma 3)
            "across_heads": _across_heads_qk_norm}  # all N*H features (OLMoE, OLMo 2)


def rotary_embedding(x_BTNH: jax.Array, positions_BT: jax.Array, theta: float) -> jax.Array:
    """Rotate pairs (i, i + H/2) of every head by angle position * theta^(-2i/H)."""
    head_dim = x_BTNH.shape[-1]
    half = head_dim // 2
    inv_freq_h = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles_BTh = positions_BT.astype(jnp.float32)[..., None] * inv_freq_h
    sin = jnp.sin(angles_BTh)[:, :, None, :]
    cos = jnp.cos(angles_BTh)[:, :, None, :]
    x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_BTNH.dtype)


def attention_mask(segment_ids_BT: jax.Array) -> jax.Array:
    """(B, 1, T, S) boolean: causal and within the same packed segment (the sequence attending
    to itself, as a cache it fills from slot 0 would hold it)."""
    return cached_attention_mask(segment_ids_BT, segment_ids_BT, 0)


class LayerCache(NamedTuple):
    """One attention layer's keys and values at every slot of a decoding cache, (B, G, S, H):
    head-major, so that each head's slots are contiguous and a decoding step's products over
    them need no transpose of the cache (on XLA:CPU a (B, S, G, H) cache was transposed at every
    step: one layer's scores 15x slower at 2,048 slots, the whole step 4-6x at batch 16,
    ``benchmarks/decode.py``)."""

    keys_BGSH: jax.Array
    values_BGSH: jax.Array


def write_slots(buffer: jax.Array, x: jax.Array, at: tuple) -> jax.Array:
    """``buffer`` with ``x``, cast to the buffer's dtype, written from index ``at``."""
    return jax.lax.dynamic_update_slice(buffer, x.astype(buffer.dtype), at)


def write_layer_cache(cache: LayerCache, k_BTGH, v_BTGH, start) -> LayerCache:
    """``cache`` with T new keys and values written at slots start .. start+T-1."""
    at = (0, 0, start, 0)
    return LayerCache(write_slots(cache.keys_BGSH, jnp.swapaxes(k_BTGH, 1, 2), at),
                      write_slots(cache.values_BGSH, jnp.swapaxes(v_BTGH, 1, 2), at))


def masked_softmax(scores_BNTS: jax.Array, mask_B1TS: jax.Array) -> jax.Array:
    """Softmax over S in float32 of the scores the mask keeps (masked ones get weight 0); the
    mask broadcasts over the head axes (one (B, 1, T, S) mask, or (B, 1, 1, T, S) for
    grouped heads)."""
    scores = jnp.where(mask_B1TS, scores_BNTS.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


def attend_to_cache(q_BTNH, cache: LayerCache, mask_B1TS) -> jax.Array:
    """(B, T, N, H): softmax(q k / sqrt(H)) v of T queries over the cached slots the mask keeps
    (float32 softmax), query head n reading key/value head n // (N / G) as
    ``jax.nn.dot_product_attention`` does in training."""
    batch, seq, heads, head_dim = q_BTNH.shape
    kv_heads = cache.keys_BGSH.shape[1]
    q_BTGRH = q_BTNH.reshape(batch, seq, kv_heads, heads // kv_heads, head_dim)
    keys_BGSH = cache.keys_BGSH.astype(q_BTNH.dtype)
    scores_BGRTS = jnp.einsum("btgrh,bgsh->bgrts", q_BTGRH, keys_BGSH) / math.sqrt(head_dim)
    probs_BGRTS = masked_softmax(scores_BGRTS, mask_B1TS[:, :, None]).astype(q_BTNH.dtype)
    out_BTGRH = jnp.einsum("bgrts,bgsh->btgrh", probs_BGRTS,
                           cache.values_BGSH.astype(q_BTNH.dtype))
    return out_BTGRH.reshape(batch, seq, heads, head_dim)


def cached_attention_mask(segment_ids_BT, key_segments_BS, start) -> jax.Array:
    """(B, 1, T, S) boolean for T queries at slots start .. start+T-1 over S cached slots: a query
    sees the slots up to its own that hold its segment (slots not yet written hold segment -1)."""
    seq, slots = segment_ids_BT.shape[1], key_segments_BS.shape[1]
    causal_TS = (start + jnp.arange(seq))[:, None] >= jnp.arange(slots)[None, :]
    same_segment_BTS = segment_ids_BT[:, :, None] == key_segments_BS[:, None, :]
    return (causal_TS[None] & same_segment_BTS)[:, None]


class Attention(nnx.Module):
    """Causal multi-head attention with grouped-query key/value heads and rotary positions;
    queries and keys pass through ``QK_NORMS[qk_norm]`` before the rotation."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, *,
                 rope_theta: float, out_scale: float, compute_dtype, rngs: nnx.Rngs,
                 qk_norm: str = "none", norm_eps: float = 1e-6):
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_norm = QK_NORMS[qk_norm](n_heads, head_dim, "heads", norm_eps)
        self.k_norm = QK_NORMS[qk_norm](n_kv_heads, head_dim, "kv_heads", norm_eps)
        self.rope_theta = rope_theta
        self.compute_dtype = compute_dtype
        init = _linear_init(d_model)
        self.w_q_DNH = logical_param(init(rngs.params(), (d_model, n_heads, head_dim)),
                                     ("embed", "heads", "head_dim"))
        self.w_k_DGH = logical_param(init(rngs.params(), (d_model, n_kv_heads, head_dim)),
                                     ("embed", "kv_heads", "head_dim"))
        self.w_v_DGH = logical_param(init(rngs.params(), (d_model, n_kv_heads, head_dim)),
                                     ("embed", "kv_heads", "head_dim"))
        self.w_o_NHD = logical_param(
            _linear_init(n_heads * head_dim, out_scale)(rngs.params(), (n_heads, head_dim, d_model)),
            ("heads", "head_dim", "embed"))

    def _project(self, x_BTD, positions_BT):
        """Queries (B, T, N, H), and keys and values (B, T, G, H), normed and rotated."""
        dt = self.compute_dtype
        x = x_BTD.astype(dt)
        q_BTNH = jnp.einsum("btd,dnh->btnh", x, self.w_q_DNH[...].astype(dt))
        k_BTGH = jnp.einsum("btd,dgh->btgh", x, self.w_k_DGH[...].astype(dt))
        v_BTGH = jnp.einsum("btd,dgh->btgh", x, self.w_v_DGH[...].astype(dt))
        q_BTNH = constrain(rotary_embedding(self.q_norm(q_BTNH), positions_BT, self.rope_theta),
                           ("batch", "seq", "heads", "head_dim"))
        k_BTGH = constrain(rotary_embedding(self.k_norm(k_BTGH), positions_BT, self.rope_theta),
                           ("batch", "seq", "kv_heads", "head_dim"))
        return q_BTNH, k_BTGH, constrain(v_BTGH, ("batch", "seq", "kv_heads", "head_dim"))

    def _out(self, out_BTNH):
        return jnp.einsum("btnh,nhd->btd", out_BTNH, self.w_o_NHD[...].astype(self.compute_dtype))

    def __call__(self, x_BTD, positions_BT, segment_ids_BT):
        q_BTNH, k_BTGH, v_BTGH = self._project(x_BTD, positions_BT)
        return self._out(jax.nn.dot_product_attention(q_BTNH, k_BTGH, v_BTGH,
                                                      mask=attention_mask(segment_ids_BT)))

    def extend(self, x_BTD, positions_BT, segment_ids_BT, cache: LayerCache, key_segments_BS,
               start) -> tuple[jax.Array, LayerCache]:
        """Attention of T new tokens, written at slots ``start .. start+T-1`` of ``cache``, over
        every slot up to their own (decoding; ``key_segments_BS`` already holds theirs)."""
        q_BTNH, k_BTGH, v_BTGH = self._project(x_BTD, positions_BT)
        cache = write_layer_cache(cache, k_BTGH, v_BTGH, start)
        mask = cached_attention_mask(segment_ids_BT, key_segments_BS, start)
        return self._out(attend_to_cache(q_BTNH, cache, mask)), cache


class SwiGLU(nnx.Module):
    """Dense feed-forward silu(x W_gate) * (x W_up) W_out, gate/up fused as (D, 2F)."""

    def __init__(self, d_model: int, d_ff: int, *, out_scale: float, compute_dtype,
                 rngs: nnx.Rngs):
        self.compute_dtype = compute_dtype
        self.w_in_DF2 = logical_param(_linear_init(d_model)(rngs.params(), (d_model, 2 * d_ff)),
                                      ("embed", "mlp"))
        self.w_out_FD = logical_param(
            _linear_init(d_ff, out_scale)(rngs.params(), (d_ff, d_model)), ("mlp", "embed"))

    def __call__(self, x_BTD):
        """x is (B, T, D), or (T, D) tokens when used as the MoE layer's shared experts."""
        dt = self.compute_dtype
        token_names = ("batch", "seq")[:x_BTD.ndim - 1]
        gate, up = jnp.split(jnp.dot(x_BTD.astype(dt), self.w_in_DF2[...].astype(dt)), 2, axis=-1)
        hidden = constrain(jax.nn.silu(gate) * up, token_names + ("mlp",))
        return jnp.dot(hidden, self.w_out_FD[...].astype(dt))

"""Multi-head latent attention against a float64 numpy reference written from the DeepSeek-V2
paper's equations (one head at a time, keys and values expanded), and its two computations (the
expanded training one and the absorbed decoding one) against each other."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.errors import ConfigError
from moejax.model.config import (LatentAttentionConfig, ModelConfig, MoEConfig,
                                 validate_model_config)
from moejax.model.latent_attention import LatentAttention, LatentCache

D, N, THETA, EPS = 40, 3, 10_000.0, 1e-6
WITHOUT_QUERY_LATENT = LatentAttentionConfig(kv_lora_rank=12, qk_rope_head_dim=6,
                                             qk_nope_head_dim=10, v_head_dim=7)
WITH_QUERY_LATENT = dataclasses.replace(WITHOUT_QUERY_LATENT, q_lora_rank=16)


def _layer(mla, seed=0):
    layer = LatentAttention(D, N, mla, rope_theta=THETA, out_scale=1.0,
                            compute_dtype=jnp.float32, rngs=nnx.Rngs(seed))
    # Norm scales away from 1, so that a norm applied in the wrong place shows.
    rng = np.random.default_rng(seed + 1)
    for norm in ("kv_norm", "q_norm"):
        if hasattr(layer, norm):
            scale = getattr(layer, norm).scale
            scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, scale.shape), jnp.float32)
    return layer


def _weights(layer):
    return {name: np.asarray(value[...], np.float64) for name, value in vars(layer).items()
            if name.startswith("w_")} | {
        f"{norm}_scale": np.asarray(getattr(layer, norm).scale[...], np.float64)
        for norm in ("kv_norm", "q_norm") if hasattr(layer, norm)}


def _rms(x, scale):
    return scale * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS)


def _rope(x_R, position):
    """Pairs (i, i + R/2) rotated by position * theta^(-2i/R)."""
    half = x_R.shape[-1] // 2
    angle = position * THETA ** (-np.arange(half) / half)
    a, b = x_R[:half], x_R[half:]
    return np.concatenate([a * np.cos(angle) - b * np.sin(angle),
                           b * np.cos(angle) + a * np.sin(angle)])


def reference(w, mla, x_TD, positions_T, segments_T):
    """(T, D) float64: DeepSeek-V2 Eq. 9-19 for one sequence, a query t over keys s <= t of
    its own segment."""
    x = np.asarray(x_TD, np.float64)
    P, R = mla.qk_nope_head_dim, mla.qk_rope_head_dim
    if mla.q_lora_rank is None:
        q = np.einsum("td,dnk->tnk", x, w["w_q_DNK"])
    else:
        q = np.einsum("tq,qnk->tnk", _rms(x @ w["w_q_down_DQ"], w["q_norm_scale"]),
                      w["w_q_up_QNK"])
    latent = _rms(x @ w["w_kv_down_DC"], w["kv_norm_scale"])  # c^KV_t
    k_rope = x @ w["w_k_rope_DR"]
    out = np.zeros((x.shape[0], N, mla.v_head_dim))
    for n in range(N):
        keys = [np.concatenate([latent[s] @ w["w_k_up_CNP"][:, n],
                                _rope(k_rope[s], positions_T[s])]) for s in range(len(x))]
        values = latent @ w["w_v_up_CNV"][:, n]
        for t in range(len(x)):
            query = np.concatenate([q[t, n, :P], _rope(q[t, n, P:P + R], positions_T[t])])
            seen = [s for s in range(t + 1) if segments_T[s] == segments_T[t]]
            scores = np.array([query @ keys[s] for s in seen]) / np.sqrt(P + R)
            probs = np.exp(scores - scores.max())
            out[t, n] = (probs / probs.sum()) @ values[seen]
    return np.einsum("tnv,nvd->td", out, w["w_o_NVD"])


def _inputs(seed, batch=2, seq=9):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, seq, D)).astype(np.float32)
    # Two packed documents in row 0 (positions restart), one with trailing padding in row 1.
    segments = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 1, 0, 0]], np.int32)
    positions = np.array([[0, 1, 2, 3, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6, 0, 1]], np.int32)
    return x, positions[:batch], segments[:batch]


@pytest.mark.parametrize("mla", [
    pytest.param(WITHOUT_QUERY_LATENT, marks=pytest.mark.slow, id="query_straight"),
    pytest.param(WITH_QUERY_LATENT, id="query_latent")])
def test_training_attention_matches_the_papers_equations(mla):
    layer = _layer(mla)
    x, positions, segments = _inputs(0)
    got = np.asarray(layer(jnp.asarray(x), jnp.asarray(positions), jnp.asarray(segments)))
    w = _weights(layer)
    for b in range(x.shape[0]):
        want = reference(w, mla, x[b], positions[b], segments[b])
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5, err_msg=f"row {b}")


@pytest.mark.parametrize("mla", [
    pytest.param(WITHOUT_QUERY_LATENT, marks=pytest.mark.slow, id="query_straight"),
    pytest.param(WITH_QUERY_LATENT, id="query_latent")])
def test_absorbed_decoding_equals_the_expanded_attention(mla):
    """Prefill 4 tokens, then one at a time, through the latent cache."""
    layer = _layer(mla, seed=2)
    x, positions, segments = _inputs(3)
    want = np.asarray(layer(jnp.asarray(x), jnp.asarray(positions), jnp.asarray(segments)))
    batch, seq = segments.shape
    cache = LatentCache(jnp.zeros((batch, seq + 2, mla.kv_lora_rank)),
                        jnp.zeros((batch, seq + 2, mla.qk_rope_head_dim)))
    key_segments = np.full((batch, seq + 2), -1, np.int32)
    got = []
    for start, stop in ((0, 4),) + tuple((t, t + 1) for t in range(4, seq)):
        key_segments[:, start:stop] = segments[:, start:stop]
        out, cache = layer.extend(jnp.asarray(x[:, start:stop]),
                                  jnp.asarray(positions[:, start:stop]),
                                  jnp.asarray(segments[:, start:stop]), cache,
                                  jnp.asarray(key_segments), start)
        got.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, rtol=2e-5, atol=2e-5)
    # The cache holds C + R numbers per token, nothing per head.
    assert cache.latent_BSC.shape == (batch, seq + 2, mla.kv_lora_rank)
    assert np.abs(np.asarray(cache.latent_BSC[:, seq:])).max() == 0  # slots not yet written


def test_gradients_reach_every_weight():
    layer = _layer(WITH_QUERY_LATENT)
    x, positions, segments = _inputs(4)
    graphdef, params = nnx.split(layer, nnx.Param)

    def loss(params):
        out = nnx.merge(graphdef, params)(jnp.asarray(x), jnp.asarray(positions),
                                          jnp.asarray(segments))
        return jnp.sum(out ** 2)

    grads = jax.grad(loss)(params)
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        assert np.abs(np.asarray(grad)).max() > 0, jax.tree_util.keystr(path)


BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=48,
                   moe=MoEConfig(num_experts=4, top_k=2, d_expert=16),
                   latent_attention=WITHOUT_QUERY_LATENT)


@pytest.mark.parametrize("fields, fragment", [
    ({"n_kv_heads": 2}, "ModelConfig.n_kv_heads = 2 is not allowed: None with latent_attention"),
    ({"d_head": 8}, "ModelConfig.d_head = 8"),
    ({"qk_norm": "per_head"}, "ModelConfig.qk_norm = 'per_head'"),
    ({"latent_attention": dataclasses.replace(WITHOUT_QUERY_LATENT, qk_rope_head_dim=5)},
     "LatentAttentionConfig.qk_rope_head_dim = 5 is not allowed: must be even"),
    ({"latent_attention": dataclasses.replace(WITHOUT_QUERY_LATENT, kv_lora_rank=0)},
     "LatentAttentionConfig.kv_lora_rank = 0"),
    ({"latent_attention": dataclasses.replace(WITHOUT_QUERY_LATENT, q_lora_rank=0)},
     "LatentAttentionConfig.q_lora_rank = 0"),
    ({"latent_attention": dataclasses.replace(WITHOUT_QUERY_LATENT, v_head_dim=2.5)},
     "LatentAttentionConfig.v_head_dim = 2.5"),
    ({"latent_attention": "mla"}, "ModelConfig.latent_attention = 'mla'"),
])
def test_impossible_latent_attention_is_named(fields, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        validate_model_config(dataclasses.replace(BASE, **fields))


def test_heads_need_not_divide_d_model():
    # Latent attention sets every head width itself: 5 heads on d_model 32 are fine.
    assert validate_model_config(dataclasses.replace(BASE, n_heads=5)).n_heads == 5

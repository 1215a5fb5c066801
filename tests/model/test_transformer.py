"""Whole-model properties: causality, packing isolation, parameter shapes, dense == no MoE,
what query/key norms make attention invariant to."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.model import ModelConfig, MoEConfig, build_model, moe_layer_indices

MOE = MoEConfig(num_experts=4, top_k=2, d_expert=16)
CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=48,
                  moe=MOE, moe_every=1)


def test_attention_is_causal():
    model = build_model(CFG)
    params = model.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (1, 12), 0, 64)
    apply = jax.jit(model.apply)
    logits, _ = apply(params, tokens)
    for t in (3, 7, 11):
        changed = tokens.at[0, t].set((tokens[0, t] + 1) % 64)
        logits2, _ = apply(params, changed)
        np.testing.assert_allclose(logits[0, :t], logits2[0, :t], rtol=1e-6, atol=1e-6)
        assert not np.allclose(logits[0, t:], logits2[0, t:])


def test_packed_segments_do_not_see_each_other():
    # Two documents packed in one row give the same logits as each on its own.
    model = build_model(CFG)
    params = model.init(jax.random.key(0))
    a = jax.random.randint(jax.random.key(1), (1, 5), 0, 64)
    b = jax.random.randint(jax.random.key(2), (1, 7), 0, 64)
    packed = jnp.concatenate([a, b], axis=1)
    segments = jnp.array([[1] * 5 + [2] * 7])
    positions = jnp.array([list(range(5)) + list(range(7))])
    apply = jax.jit(model.apply)
    logits, _ = apply(params, packed, positions, segments)
    alone_a, _ = apply(params, a)
    alone_b, _ = apply(params, b)
    np.testing.assert_allclose(logits[0, :5], alone_a[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[0, 5:], alone_b[0], rtol=1e-5, atol=1e-5)


def test_moe_layer_placement():
    assert moe_layer_indices(ModelConfig(n_layers=6, moe=MOE)) == (0, 1, 2, 3, 4, 5)
    assert moe_layer_indices(ModelConfig(n_layers=6, moe=MOE, moe_every=2)) == (1, 3, 5)
    assert moe_layer_indices(ModelConfig(n_layers=6, moe=MOE, first_dense_layers=2)) == (2, 3, 4, 5)
    assert moe_layer_indices(ModelConfig(n_layers=6, moe=MOE, moe_every=2,
                                         first_dense_layers=1)) == (2, 4)
    assert moe_layer_indices(ModelConfig(n_layers=6, moe=None)) == ()


def test_parameter_count_matches_hand_count():
    model = build_model(CFG)
    params = model.init(jax.random.key(0))
    n = sum(x.size for x in jax.tree.leaves(params))
    d, v, e, fe = 32, 64, 4, 16
    attention = d * 4 * 8 + 2 * d * 2 * 8 + 4 * 8 * d  # q, k and v (2 kv heads), out
    moe_ff = d * e + e * (d * 2 * fe + fe * d)
    per_block = attention + moe_ff + 2 * d
    assert n == v * d + 3 * per_block + d


def test_dense_model_has_no_moe_stats_and_untied_head():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=48,
                      tie_embeddings=False)
    model = build_model(cfg)
    params = model.init(jax.random.key(0))
    logits, stats = jax.jit(model.apply)(params, jnp.zeros((2, 4), jnp.int32))
    assert stats == [] and logits.shape == (2, 4, 64) and logits.dtype == jnp.float32
    assert params["unembed_DV"].shape == (32, 64)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = ModelConfig(**{**CFG.__dict__, "compute_dtype": "bfloat16"})
    model = build_model(cfg)
    params = model.init(jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, cfg.vocab_size)
    logits, stats = jax.jit(model.apply)(params, tokens)
    assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
    # the same parameters in float32: within bfloat16 rounding, and not the same numbers
    reference, _ = jax.jit(build_model(CFG).apply)(params, tokens)
    difference = float(jnp.max(jnp.abs(logits - reference)))
    assert 0.0 < difference < 3e-2 * (1.0 + float(jnp.max(jnp.abs(reference))))
    # every matmul runs in bfloat16 but the router's and the routing bookkeeping's (an operand
    # whose last dimension is the expert count or top-k: scores, gates, loads), kept in float32
    precisions = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                precisions.append(([str(v.aval.dtype) for v in eqn.invars],
                                   [v.aval.shape for v in eqn.invars]))
            for value in eqn.params.values():
                inner = getattr(value, "jaxpr", value)
                if hasattr(inner, "eqns"):
                    walk(inner)

    walk(jax.make_jaxpr(model.apply)(params, tokens).jaxpr)
    bf16 = [shapes for dtypes, shapes in precisions if dtypes == ["bfloat16", "bfloat16"]]
    f32 = [shapes for dtypes, shapes in precisions if dtypes == ["float32", "float32"]]
    assert len(bf16) + len(f32) == len(precisions) and len(bf16) > len(f32)
    routing = {MOE.num_experts, MOE.top_k}
    for shapes in f32:
        assert any(shape and shape[-1] in routing for shape in shapes), shapes


def _scale_head_0_queries(params, factor):
    """Every block's query projection of head 0 (w_q_DNH[:, 0]) times ``factor``."""
    blocks = {i: {**b, "attn": {**b["attn"], "w_q_DNH": b["attn"]["w_q_DNH"].at[:, 0].multiply(
        factor)}} for i, b in params["blocks"].items()}
    return {**params, "blocks": blocks}


@pytest.mark.parametrize("qk_norm, invariant", [("none", False), ("per_head", True),
                                                ("across_heads", False)])
def test_a_per_head_norm_makes_attention_blind_to_one_heads_query_scale(qk_norm, invariant):
    """RMSNorm of each head's query undoes any scaling of that head's projection; a norm across
    heads undoes only a common scaling of all heads (next test), and no norm neither."""
    model = build_model(dataclasses.replace(CFG, qk_norm=qk_norm))
    params = model.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, 64)
    apply = jax.jit(model.apply)
    logits, _ = apply(params, tokens)
    scaled, _ = apply(_scale_head_0_queries(params, 7.0), tokens)
    assert np.allclose(logits, scaled, rtol=1e-4, atol=1e-4) == invariant


@pytest.mark.parametrize("qk_norm", ["per_head", "across_heads"])
def test_query_key_norms_undo_a_common_scale_of_queries_and_keys(qk_norm):
    model = build_model(dataclasses.replace(CFG, qk_norm=qk_norm))
    params = model.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, 64)
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 5.0 if any(getattr(k, "key", "") in ("w_q_DNH", "w_k_DGH")
                                       for k in path) else x, params)
    apply = jax.jit(model.apply)
    np.testing.assert_allclose(apply(params, tokens)[0], apply(scaled, tokens)[0], rtol=1e-4,
                               atol=1e-4)
    attn = params["blocks"][0]["attn"]
    heads_shape = {"per_head": (8,), "across_heads": (4, 8)}[qk_norm]
    assert attn["q_norm"]["scale"].shape == heads_shape
    assert attn["k_norm"]["scale"].shape == {"per_head": (8,), "across_heads": (2, 8)}[qk_norm]

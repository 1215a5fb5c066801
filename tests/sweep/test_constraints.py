"""The constraint library against hand-computed values."""

import math

import pytest

from moejax.errors import ConfigError
from moejax.model.accounting import parameter_counts
from moejax.sweep.constraints import (dense_when_single_expert, heterogeneous_halves,
                                      keep_active_params_fixed, learning_rate_rule,
                                      model_from_point, power_law_learning_rate,
                                      shared_expert_fraction, solve_depth_width,
                                      steps_from_flop_budget, steps_from_tokens, valid_model)
from moejax.sweep.grid import top_k_at_most_experts

# A dense 2-block model: per block attention 4·128² = 65,536, SwiGLU 3·128·512 = 196,608 and two
# norms 256; plus the final norm 128: 2 · 262,400 + 128 = 524,928 non-embedding parameters.
DENSE = {"ModelConfig.n_layers": 2, "ModelConfig.d_model": 128, "ModelConfig.n_heads": 2,
         "ModelConfig.d_ff": 512, "ModelConfig.moe": None}
DENSE_NON_EMBEDDING = 524_928


def test_model_from_point_counts_by_hand():
    assert parameter_counts(model_from_point(DENSE)).total == DENSE_NON_EMBEDDING
    assert parameter_counts(model_from_point(DENSE, vocab_size=256)).total == (
        DENSE_NON_EMBEDDING + 256 * 128)  # tied embedding
    moe = model_from_point({**DENSE, "ModelConfig.moe": 0, "MoEConfig.num_experts": 4})
    assert moe.moe is not None and moe.moe.num_experts == 4
    # latent attention's knobs count: per block 128·(48 + 16) (latent and rotary key)
    # + 48·2·(32 + 32) (expansion) + 128·2·48 (queries) + 2·32·128 (output), and the latent's
    # norm of 48, instead of 4·128² attention weights
    latent = model_from_point({**DENSE, "ModelConfig.latent_attention": 0,
                               "LatentAttentionConfig.kv_lora_rank": 48,
                               "LatentAttentionConfig.qk_rope_head_dim": 16,
                               "LatentAttentionConfig.qk_nope_head_dim": 32,
                               "LatentAttentionConfig.v_head_dim": 32})
    per_block = 128 * 64 + 48 * 2 * 64 + 128 * 2 * 48 + 2 * 32 * 128 + 48 - 4 * 128 ** 2
    assert parameter_counts(latent).total == DENSE_NON_EMBEDDING + 2 * per_block
    grouped = model_from_point({**DENSE, "ModelConfig.latent_attention": None,
                                "LatentAttentionConfig.kv_lora_rank": 48})
    assert grouped.latent_attention is None


def test_keep_active_params_fixed_derives_width_and_top_k():
    point = {"MoEConfig.num_experts": 8, "ModelConfig.d_ff": 1024, "granularity": 4}
    out = keep_active_params_fixed(point)
    assert (out["MoEConfig.num_experts"], out["MoEConfig.d_expert"], out["MoEConfig.top_k"]) == (8, 256, 4)
    out = keep_active_params_fixed(point, scale_experts=True, top_k=2)
    assert (out["MoEConfig.num_experts"], out["MoEConfig.d_expert"], out["MoEConfig.top_k"]) == (32, 256, 8)
    out = keep_active_params_fixed({**point, "ModelConfig.d_model": 512},
                                   base_width="ModelConfig.d_model")
    assert out["MoEConfig.d_expert"] * out["MoEConfig.top_k"] == 512  # Slicing & Dicing's tie
    assert "does not divide" in keep_active_params_fixed({**point, "granularity": 3})
    assert "> 2 experts" in keep_active_params_fixed({**point, "MoEConfig.num_experts": 2})
    # Active expert parameters: 3 · d_model · K · d_ff = 3 · 128 · 1024 per MoE block at every G.
    base = {**DENSE, "ModelConfig.moe": 0, "ModelConfig.d_ff": 1024, "MoEConfig.num_experts": 16}
    for granularity in (1, 2, 4, 8):
        model = model_from_point(keep_active_params_fixed({**base, "granularity": granularity}))
        assert parameter_counts(model).routed_experts_active == 2 * 3 * 128 * 1024


def test_shared_and_heterogeneous_keep_the_active_width():
    point = {"MoEConfig.num_experts": 32, "MoEConfig.top_k": 4, "MoEConfig.d_expert": 64,
             "shared_fraction": 0.5, "heterogeneous": True}
    shared = shared_expert_fraction(point)
    assert (shared["MoEConfig.top_k"], shared["MoEConfig.num_shared_experts"],
            shared["MoEConfig.d_shared_expert"]) == (2, 1, 128)
    assert shared_expert_fraction({**point, "shared_fraction": 0}) == {**point, "shared_fraction": 0}
    assert "no whole number" in shared_expert_fraction({**point, "shared_fraction": 0.3})
    halves = heterogeneous_halves(point)
    assert halves["MoEConfig.expert_groups"] == ((16, 64, 2), (32, 32, 4))
    assert "even" in heterogeneous_halves({**point, "MoEConfig.top_k": 1})


def test_dense_when_single_expert_then_top_k_is_not_checked():
    point = dense_when_single_expert({"MoEConfig.num_experts": 1, "MoEConfig.top_k": 2})
    assert point["ModelConfig.moe"] is None and top_k_at_most_experts(point) == point
    assert "ModelConfig.moe" not in dense_when_single_expert({"MoEConfig.num_experts": 4})


def test_solve_depth_width_fills_the_budget():
    # Dense, head_dim 64, d_ff = 4 d: non-embedding params = n · (16 d² + 2 d) + d. At n = 16,
    # d = 256 that is 16 · 1,049,088 + 256 = 16,785,664, and d / n = 16 = the target aspect.
    knobs = dict(input="param_budget", quantity="total_non_embedding_params", head_dim=64,
                 width_step=64, n_layers_range=(2, 32), d_model_range=(64, 1024),
                 expert_width_multiplier=None, aspect_ratio=16.0, tolerance=0.01)
    out = solve_depth_width({"ModelConfig.moe": None, "param_budget": 16_785_664}, **knobs)
    assert (out["ModelConfig.n_layers"], out["ModelConfig.d_model"], out["ModelConfig.n_heads"],
            out["ModelConfig.d_ff"]) == (16, 256, 4, 1024)
    with pytest.raises(ConfigError, match=r"param_budget = 1000 .* not reachable .* n_layers in \(2, 32\)"):
        solve_depth_width({"ModelConfig.moe": None, "param_budget": 1000}, **knobs)
    dropped = solve_depth_width({"ModelConfig.moe": None, "param_budget": 1000}, **knobs,
                                on_infeasible="drop")
    assert "not reachable" in dropped
    with pytest.raises(ConfigError, match="solve_depth_width.quantity"):
        solve_depth_width({"param_budget": 1e6}, quantity="flops")
    with pytest.raises(ConfigError, match="solve_depth_width.vocab_size"):
        solve_depth_width({"param_budget": 1e6}, quantity="total_params")


def test_solve_depth_width_counts_the_kv_cache_of_a_serving_budget():
    # The model above (n = 16, d = 256, 4 heads of 64) with 1,000 tied embedding rows:
    # 16,785,664 + 256,000 parameters, 2 bytes each, plus a bf16 multi-head KV cache of
    # 16 blocks x 2 x 256 values x 2 bytes = 16,384 bytes per token, for 1,000 tokens.
    budget = 2 * (16_785_664 + 256_000) + 1000 * 16_384
    point = {"ModelConfig.moe": None, "ModelConfig.tie_embeddings": True, "memory": budget}
    knobs = dict(input="memory", quantity="parameter_bytes_bf16", head_dim=64, width_step=64,
                 n_layers_range=(2, 32), d_model_range=(64, 1024), vocab_size=1000,
                 expert_width_multiplier=None, aspect_ratio=16.0, tolerance=0.01)
    out = solve_depth_width(point, **knobs, context_tokens=1000)
    assert (out["ModelConfig.n_layers"], out["ModelConfig.d_model"]) == (16, 256)
    weights_only = solve_depth_width(point, **{**knobs, "tolerance": 0.1})  # all to weights
    assert weights_only["ModelConfig.d_model"] * weights_only["ModelConfig.n_layers"] > 16 * 256
    with pytest.raises(ConfigError, match="solve_depth_width.context_tokens"):
        solve_depth_width({"param_budget": 1e6}, quantity="total_params", context_tokens=10)


def test_solve_depth_width_moe_memory_budget():
    # 8 experts of width d, top-2, bf16 bytes of all parameters incl. an untied 1000-row vocab.
    point = {"MoEConfig.num_experts": 8, "MoEConfig.top_k": 2, "ModelConfig.tie_embeddings": False,
             "ModelConfig.vocab_size": 1000, "budget": 2e8}
    out = solve_depth_width(point, input="budget", quantity="parameter_bytes_bf16", tolerance=0.05)
    model = model_from_point(out)
    assert 0.95 * 2e8 <= 2 * parameter_counts(model).total <= 2e8
    assert model.moe.d_expert == model.d_model and model.n_heads == model.d_model // 128


def test_learning_rate_rule_is_joint_moe_eq8():
    assert power_law_learning_rate(1e8, 1, 8.39, -0.81, -0.25) == pytest.approx(1.458e-3, rel=1e-3)
    assert power_law_learning_rate(1e8, 8, 8.39, -0.81, -0.25) == pytest.approx(8.67e-4, rel=1e-3)
    out = learning_rate_rule(DENSE)
    assert out["TrainConfig.learning_rate"] == pytest.approx(
        math.exp(8.39) * DENSE_NON_EMBEDDING ** -0.81, rel=5e-3)  # 3 digits
    custom = learning_rate_rule(DENSE, log_coefficient=0.0, params_exponent=-0.5, experts_exponent=0)
    assert custom["TrainConfig.learning_rate"] == pytest.approx(DENSE_NON_EMBEDDING ** -0.5, rel=5e-3)


def test_steps_from_tokens_and_flop_budget():
    data = {"DataConfig.batch_size": 8, "DataConfig.seq_len": 128}  # 1,024 tokens per step
    out = steps_from_tokens({**data, "tokens": 1e6}, warmup_fraction=0.1)
    assert (out["TrainConfig.steps"], out["TrainConfig.warmup_steps"]) == (977, 98)
    assert "0 steps < 1" in steps_from_tokens({**data, "tokens": 100})
    with pytest.raises(ConfigError, match="DataConfig.batch_size"):
        steps_from_tokens({"tokens": 1e6})
    # 6 N with N = 524,928 + 256 · 128 (tied embedding) = 557,696: 3,346,176 FLOPs per token.
    budget = 6 * 557_696 * 1024 * 100 + 5
    out = steps_from_flop_budget({**DENSE, **data, "flop_budget": budget}, vocab_size=256)
    assert out["TrainConfig.steps"] == 100
    exact = steps_from_flop_budget({**DENSE, **data, "flop_budget": budget}, vocab_size=256,
                                   flops="exact")
    # exact: 3 x forward; forward = 2 x 524,288 matmul weights (attention and SwiGLU, no norms)
    # + attention scores and values 2 x (2 · 128 context · 2 heads · 64) x 2 blocks = 131,072
    # + unembedding 2 · 128 · 256 = 65,536 -> 1,245,184; 3,735,552 per token, 89.58 steps
    assert exact["TrainConfig.steps"] == 89
    with pytest.raises(ConfigError, match="steps_from_flop_budget.vocab_size"):
        steps_from_flop_budget({**DENSE, **data, "flop_budget": budget})


def test_valid_model_drops_with_the_validation_message():
    assert valid_model(DENSE) == DENSE
    assert "ModelConfig.n_heads" in valid_model({**DENSE, "ModelConfig.n_heads": 3})

"""Accounting against the initialised model, the Joint MoE paper's run grid and Krajewski's Table 2."""

import csv
import os

import jax
import numpy as np
import pytest

from moejax.model import ModelConfig, MoEConfig, build_model
from moejax.model.config import LatentAttentionConfig
from moejax.model import accounting
from moejax.model.granularity import fine_grained_moe, width_tied_moe
from moejax.errors import ConfigError

import moejax

JOINT_MOE_CSV = os.path.join(os.path.dirname(moejax.__file__), "laws", "data",
                             "jointmoe_appendixE_runs.csv")

CONFIGS = {
    "dense_untied": ModelConfig(vocab_size=300, d_model=64, n_layers=3, n_heads=4, d_ff=96,
                                tie_embeddings=False),
    "moe_gqa": ModelConfig(vocab_size=300, d_model=64, n_layers=4, n_heads=8, n_kv_heads=2,
                           d_ff=96, moe=MoEConfig(num_experts=8, top_k=2, d_expert=96),
                           moe_every=2, first_dense_layers=1),
    "fine_grained": ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, d_ff=96,
                                moe=fine_grained_moe(d_ff=96, granularity=4, num_experts=4,
                                                     top_k=1)),
    "shared": ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, d_ff=96,
                          moe=MoEConfig(num_experts=8, top_k=2, d_expert=32,
                                        num_shared_experts=2, d_shared_expert=16)),
    "qk_norm_per_head": ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4,
                                    n_kv_heads=2, d_head=12, d_ff=96, qk_norm="per_head",
                                    moe=MoEConfig(num_experts=4, top_k=2, d_expert=32)),
    "qk_norm_across_heads": ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4,
                                        n_kv_heads=2, d_head=12, d_ff=96,
                                        qk_norm="across_heads"),
    "hash": ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, d_ff=96,
                        moe=MoEConfig(num_experts=8, top_k=2, d_expert=32, routing="hash")),
    "heterogeneous": ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, d_ff=96,
                                 moe=MoEConfig(expert_groups=((16, 16, 2), (32, 8, 4)),
                                               num_shared_experts=1, d_shared_expert=32,
                                               bias_update_rate=0.001),
                                 dense_ff_multiplier=1.5, first_dense_layers=1, n_kv_heads=2),
    "latent": ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, d_ff=96,
                          latent_attention=LatentAttentionConfig(
                              kv_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=16,
                              v_head_dim=12)),
    "latent_query_latent": ModelConfig(vocab_size=300, d_model=64, n_layers=3, n_heads=5,
                                       d_ff=96, moe=MoEConfig(num_experts=4, top_k=2,
                                                              d_expert=32, num_shared_experts=1),
                                       first_dense_layers=1,
                                       latent_attention=LatentAttentionConfig(
                                           kv_lora_rank=24, qk_rope_head_dim=8,
                                           qk_nope_head_dim=16, v_head_dim=12, q_lora_rank=20)),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_total_parameters_equal_the_initialised_model(name):
    config = CONFIGS[name]
    params = build_model(config).abstract_params  # shapes of what init creates, no allocation
    held = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert accounting.parameter_counts(config).total == held


def test_active_parameters_by_hand():
    c = CONFIGS["shared"]
    counts = accounting.parameter_counts(c)
    d, v, layers = 64, 300, 2
    attention = 4 * d * d
    expert = 3 * d * 32
    per_block_active = attention + 2 * d + d * 8 + 2 * expert + 3 * d * 32  # shared: 2 x 16 wide
    assert counts.active == v * d + layers * per_block_active + d
    assert counts.active_non_embedding == counts.active - v * d
    assert counts.total - counts.active == layers * 6 * expert  # the 6 experts not chosen


def test_granularity_keeps_active_and_total_expert_parameters():
    base = ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, d_ff=96,
                       moe=fine_grained_moe(d_ff=96, granularity=1, num_experts=4, top_k=1))
    for g in (2, 4, 8):
        fine = ModelConfig(**{**base.__dict__, "moe": fine_grained_moe(d_ff=96, granularity=g,
                                                                        num_experts=4, top_k=1)})
        a, b = accounting.parameter_counts(base), accounting.parameter_counts(fine)
        assert (b.routed_experts, b.routed_experts_active) == (a.routed_experts,
                                                               a.routed_experts_active)
        assert fine.moe.num_experts == 4 * g and fine.moe.top_k == g and fine.moe.d_expert == 96 // g
        assert accounting.paper_quantities(fine)["krajewski.G"] == g
    with pytest.raises(ConfigError, match="granularity"):
        fine_grained_moe(d_ff=96, granularity=5)
    tied = width_tied_moe(d_model=64, expert_width_multiplier=0.25, num_experts=32)
    assert (tied.top_k, tied.d_expert) == (4, 16) and tied.top_k * tied.d_expert == 64


def _joint_moe_config(row):
    d, n, h, e = (int(float(row[k])) for k in ("d_model", "n_blocks", "n_heads", "E"))
    moe = None if e == 1 else MoEConfig(num_experts=e, top_k=1, d_expert=3 * d)
    # Joint MoE App. A: untied embeddings (2dV), V = 50257, SwiGLU hidden 3d, every block MoE.
    return ModelConfig(vocab_size=50257, d_model=d, n_layers=n, n_heads=h, d_ff=3 * d,
                       tie_embeddings=False, moe=moe)


def test_joint_moe_counts_match_the_papers_table_within_6_percent():
    with open(JOINT_MOE_CSV) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 270
    worst, compared = 0.0, 0
    for row in rows:
        q = accounting.paper_quantities(_joint_moe_config(row))
        for ours, key in ((q["joint_moe.N_total"], "N_total_reported"),
                          (q["joint_moe.N_act"], "N_act_reported")):
            if row[key]:  # a few rows report only one of the two counts
                worst = max(worst, abs(ours / float(row[key]) - 1.0))
                compared += 1
    assert compared > 400 and worst < 0.06, (compared, worst)


@pytest.mark.parametrize("dense_params,tokens,granularity,expected", [
    (100e6, 4.37e9, 8, 2.95e18), (1e9, 28.94e9, 16, 1.93e20), (3e9, 72.90e9, 16, 1.41e21),
    (7e9, 137.60e9, 32, 6.46e21), (70e9, 941.07e9, 32, 4.16e23), (300e9, 2.96e12, 64, 5.69e24),
    (1e12, 7.94e12, 64, 4.97e25),
])
def test_krajewski_flops_reproduce_table_2(dense_params, tokens, granularity, expected):
    # Their family: dense non-embedding params 12 d^2 n_blocks with d = 64 n_blocks; E = 64.
    d_model = (dense_params * 64 / 12.0) ** (1 / 3)
    flops = accounting.krajewski_training_flops(d_model, d_model / 64, 64, granularity, tokens)
    assert abs(flops / expected - 1) < 0.01


def test_latent_attention_by_hand():
    """DeepSeek-V2's per-token cache of (d_c + d_h^R) numbers per layer, and the projections."""
    c = CONFIGS["latent_query_latent"]
    d, n, layers, C, R, P, V, Q = 64, 5, 3, 24, 8, 16, 12, 20
    attention = (d * Q + Q * n * (P + R)  # query down and up
                 + d * (C + R)  # latent and shared rotary key
                 + C * n * (P + V)  # keys' position-free parts and values from the latent
                 + n * V * d)  # output
    counts = accounting.parameter_counts(c)
    assert counts.attention == layers * attention
    assert counts.norms == (2 * layers + 1) * d + layers * (C + Q)
    assert accounting.kv_cache_bytes_per_token(c) == layers * (C + R) * 2
    # Grouped-query attention of the same heads would cache 2 * n * (P + R) numbers per layer.
    assert 2 * n * (P + R) / (C + R) == 7.5
    context = 100
    training = 2 * context * n * ((P + R) + V)  # scores over expanded keys, weighted values
    decoding = 2 * context * n * ((C + R) + C)  # the same over cached latents
    difference = accounting.inference_flops_per_token(c, context) - \
        accounting.forward_flops_per_token(c, context)
    assert difference == layers * (decoding - training)


def test_flops_and_memory_by_hand():
    c = CONFIGS["dense_untied"]
    counts = accounting.parameter_counts(c)
    seq = 128
    forward = 2 * (counts.attention + counts.dense_ff) + 2 * 2 * seq * 64 * 3 + 2 * 64 * 300
    assert accounting.forward_flops_per_token(c, seq) == forward
    assert accounting.training_flops_per_token(c, seq) == 3 * forward
    assert accounting.training_flops_per_token_6n(c) == 6 * counts.active
    assert accounting.kv_cache_bytes_per_token(c) == 2 * 3 * 64 * 2
    assert accounting.training_state_bytes(c) == 16 * counts.total
    q = accounting.paper_quantities(CONFIGS["moe_gqa"])
    assert q["abnar.S"] == (8 - 2) / 8 and q["liew.s"] == 4.0 and q["liew.G"] == 64 / 96
    assert q["slicing_dicing.multiplier"] == 96 / 64

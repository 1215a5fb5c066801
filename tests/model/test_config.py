"""Impossible configurations fail fast, before anything compiles, naming the knob."""

import time

import pytest

from moejax.model import ConfigError, ModelConfig, MoEConfig, validate_model_config


@pytest.mark.parametrize("config,knob", [
    (ModelConfig(vocab_size=64, moe=MoEConfig(num_experts=4, top_k=8)), "MoEConfig.top_k"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(num_experts=0)), "MoEConfig.num_experts"),
    (ModelConfig(vocab_size=64, d_model=100, n_heads=3), "ModelConfig.n_heads"),
    (ModelConfig(vocab_size=64, n_heads=4, n_kv_heads=3), "ModelConfig.n_kv_heads"),
    (ModelConfig(vocab_size=64, compute_dtype="float8"), "ModelConfig.compute_dtype"),
    (ModelConfig(vocab_size=64, qk_norm="layer"), "ModelConfig.qk_norm"),
    (ModelConfig(vocab_size=64, n_layers=2, first_dense_layers=2, moe=MoEConfig()),
     "ModelConfig.first_dense_layers"),
    (ModelConfig(vocab_size=None), "ModelConfig.vocab_size"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(d_expert=0)), "MoEConfig.d_expert"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(capacity_factor=-1.0)), "MoEConfig.capacity_factor"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(eval_capacity_factor=0.0)),
     "MoEConfig.eval_capacity_factor"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(expert_groups=((16, 64, 2), (4, 32, 8)))),
     r"MoEConfig.expert_groups\[1\].top_k"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(expert_groups=((16, 64),))), "MoEConfig.expert_groups"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(router_scores="relu")), "MoEConfig.router_scores"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(routing="random")), "MoEConfig.routing"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(routing="hash", bias_update_rate=1e-3)),
     "MoEConfig.bias_update_rate"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(routing="hash", router_jitter=0.1)),
     "MoEConfig.router_jitter"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(gmm_impl="mosaic_gpu")),  # float32 compute
     "MoEConfig.gmm_impl"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(aux_loss_scope="batch")), "MoEConfig.aux_loss_scope"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(bias_update_rate=-0.1)), "MoEConfig.bias_update_rate"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(num_shared_experts=-1)),
     "MoEConfig.num_shared_experts"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(router_jitter=1.5)), "MoEConfig.router_jitter"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(num_experts=8, router_groups=3)),
     "MoEConfig.router_groups = 3 .*a divisor of num_experts = 8"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(num_experts=8, router_groups=4,
                                              router_groups_per_token=5)),
     r"MoEConfig.router_groups_per_token = 5 .*\[1, router_groups = 4\]"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(num_experts=8, top_k=4, router_groups=4)),
     "MoEConfig.router_groups_per_token = 1 .*2 experts per group >= top_k = 4"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(expert_groups=((8, 64, 2), (6, 32, 2)),
                                              router_groups=4)),
     r"MoEConfig.router_groups = 4 .*num_experts = 6 \(expert_groups\[1\]\)"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(num_experts=8, routing="hash", router_groups=2)),
     "MoEConfig.router_groups = 2 .*routing = 'hash'"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(routed_scaling=0.0)), "MoEConfig.routed_scaling"),
    (ModelConfig(vocab_size=64, moe=MoEConfig(routing="expert_choice", routed_scaling=2.0)),
     "MoEConfig.routed_scaling = 2.0 .*routing = 'expert_choice'"),
])
def test_invalid_config_names_the_knob(config, knob):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=knob if "\\" in knob or ".*" in knob
                       else knob.replace(".", r"\.")):
        validate_model_config(config)
    assert time.perf_counter() - start < 1.0


def test_valid_config_passes():
    cfg = ModelConfig(vocab_size=64, moe=MoEConfig(num_experts=4, top_k=4))
    assert validate_model_config(cfg) is cfg

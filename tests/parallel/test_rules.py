"""Logical axis rules: names -> PartitionSpec; every parameter carries names; constrain is inert
without a mesh."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from moejax.errors import ConfigError
from moejax.ginconf import parse_gin
from moejax.model import ModelConfig, MoEConfig, build_model
from moejax.parallel.mesh import MeshConfig, make_mesh
from moejax.parallel.rules import (DEFAULT_RULES, constrain, logical_param, logical_to_spec,
                                   sharding_rules)

CONFIG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                     moe=MoEConfig(num_experts=4, top_k=2, d_expert=32, num_shared_experts=1,
                                   bias_update_rate=0.1))


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MeshConfig(data=1, fsdp=2, expert=2, tensor=2))


@pytest.mark.multidevice
def test_expert_weights_split_experts_embed_and_hidden(mesh):
    spec = logical_to_spec(("expert", "embed", "expert_mlp"), DEFAULT_RULES, mesh, (4, 32, 64))
    assert spec == P("expert", "fsdp", "tensor")


@pytest.mark.multidevice
def test_batch_claims_fsdp_so_activation_embed_stays_whole(mesh):
    assert logical_to_spec(("batch", "seq", "embed"), DEFAULT_RULES, mesh) == P(("fsdp", "expert"))


@pytest.mark.multidevice
def test_size_one_axes_are_dropped_and_indivisible_dims_replicated(mesh):
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), DEFAULT_RULES, mesh,
                           (32, 1, 16)) == P("fsdp")  # 1 kv head cannot split over tensor=2
    data8 = make_mesh(MeshConfig(data=8))
    assert logical_to_spec(("embed", "mlp"), DEFAULT_RULES, data8, (32, 64)) == P()


def test_overrides_change_rules_and_unknown_names_fail():
    assert sharding_rules({"embed": None, "mlp": "expert"})["embed"] == ()
    assert sharding_rules({"embed": None, "mlp": "expert"})["mlp"] == ("expert",)
    with pytest.raises(ConfigError, match="unknown logical axis 'embedding'.*known: batch"):
        sharding_rules({"embedding": None})
    with pytest.raises(ConfigError, match="mesh axes \\['model'\\]"):
        sharding_rules({"embed": "model"})
    parse_gin([], ["sharding_rules.overrides = {'vocab': None}"])
    assert sharding_rules()["vocab"] == ()


@pytest.mark.parametrize("latent", [False, True])
def test_every_parameter_has_one_logical_name_per_dimension(latent):
    from moejax.model.config import LatentAttentionConfig

    config = CONFIG if not latent else dataclasses.replace(
        CONFIG, latent_attention=LatentAttentionConfig(q_lora_rank=24))
    model = build_model(config)
    names = jax.tree.leaves(model.logical_axes, is_leaf=lambda x: isinstance(x, tuple))
    shapes = jax.tree.leaves(model.abstract_params)
    assert len(names) == len(shapes) > 0
    for n, a in zip(names, shapes):
        assert len(n) == len(a.shape) and all(k in DEFAULT_RULES for k in n)
    experts = model.logical_axes["blocks"][0]["ff"]["groups"][0]["experts"]
    assert experts["w_in_EDF2"] == ("expert", "embed", "expert_mlp")


def test_logical_param_checks_rank_and_constrain_is_a_no_op_without_mesh():
    with pytest.raises(ValueError, match="2 logical names"):
        logical_param(jnp.zeros((3,)), ("embed", "mlp"))
    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(constrain(x, ("batch", "embed")), x)

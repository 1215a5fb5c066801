"""The whole MoE training step (forward, both gradients of every expert matmul, router, sort,
optimizer) lowered for TPU and for CUDA with each accelerator kernel, from this CPU-only machine;
then the expert-parallel step on an 8-device data x expert mesh, whose ragged all-to-all XLA:CPU
cannot run, so that lowering is the only check of it here.

The kernels' own tests lower them one by one; this catches what only appears inside the model:
an op of the dispatch or the loss without a TPU or GPU lowering, a kernel that the model calls
with shapes or dtypes it cannot take, or a silent fall back to ``ragged_dot``.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

from moejax.kernels import platform
from moejax.model import ModelConfig, MoEConfig, build_model
from moejax.parallel import sharding
from moejax.parallel.mesh import MeshConfig, make_mesh
from moejax.parallel.rules import sharding_rules
from moejax.train.config import TrainConfig
from moejax.train.optim import make_optimizer, make_schedule
from moejax.train.step import init_train_state, make_train_step
from tests.lowering import TRITON_CALL, UNGUARANTEED_CALLS, export_for

TARGETS = {  # impl: (export platform, the device choose() sees, its kernel's custom call)
    "pallas_tpu": ("tpu", platform.Device("tpu", "TPU v5 lite", None), "tpu_custom_call"),
    "pallas_gpu": ("cuda", platform.Device("gpu", "NVIDIA H100 80GB HBM3", (9, 0)), TRITON_CALL),
    "mosaic_gpu": ("cuda", platform.Device("gpu", "NVIDIA H100 80GB HBM3", (9, 0)), "mosaic_gpu"),
}


def _check_kernel_calls(text: str, kernel_call: str) -> list[str]:
    """All custom calls of the program; 12 of them the expert kernel's, and no ragged_dot."""
    calls = re.findall(r"stablehlo\.custom_call @([\w$.]+)\(", text)
    kernel_calls = [name for name in calls if name.startswith(kernel_call)]
    # 2 MoE layers x (gate/up, down) x (forward, input gradient, weight gradient)
    assert len(kernel_calls) == 12, sorted(set(calls))
    assert "ragged_dot" not in text  # no expert matmul fell back to XLA's
    return calls


def _batch(size: int, seq: int, vocab: int):
    tokens = jax.random.randint(jax.random.key(0), (size, seq + 1), 0, vocab)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "loss_weights": jnp.ones((size, seq)), "segment_ids": jnp.ones((size, seq), jnp.int32),
            "positions": jnp.broadcast_to(jnp.arange(seq), (size, seq))}


@pytest.mark.parametrize("impl", sorted(TARGETS))
def test_the_moe_train_step_lowers_with_the_accelerator_kernel(impl):
    target, device, kernel_call = TARGETS[impl]
    # bfloat16 compute as configs/accelerator.gin sets it (Mosaic GPU's only type); widths the
    # Hopper kernel's 64-wide tiles cut raggedly; 8 experts, top-2, a shared expert beside them
    config = ModelConfig(vocab_size=512, d_model=192, n_layers=2, n_heads=2, d_ff=256,
                         compute_dtype="bfloat16", moe_every=1,
                         moe=MoEConfig(num_experts=8, top_k=2, d_expert=160, num_shared_experts=1,
                                       gmm_impl=impl))
    model = build_model(config)
    train = TrainConfig(steps=10, warmup_steps=2)
    tx = make_optimizer(train)
    state = jax.eval_shape(lambda: init_train_state(model, tx, seed=0))
    step = make_train_step(model, tx, make_schedule(train))
    batch = jax.eval_shape(lambda: _batch(4, 64, config.vocab_size))

    # the compiled kernel, not its interpreter; choose() and the Triton stage budget see the
    # target device, not this CPU
    with platform.targeting(device):
        exported = export_for(step, target, state, batch)

    assert exported.platforms == (target,)
    _check_kernel_calls(exported.mlir_module(), kernel_call)
    new_state, _ = exported.out_tree.unflatten(exported.out_avals)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state) \
        == jax.tree.map(lambda a: (a.shape, a.dtype), state)


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (the fake CPU mesh)")
@pytest.mark.parametrize("impl", ["pallas_tpu", "pallas_gpu"])
def test_the_expert_parallel_train_step_lowers_with_the_ragged_exchange(impl):
    from jax import export

    target, device, kernel_call = TARGETS[impl]
    config = ModelConfig(vocab_size=512, d_model=256, n_layers=2, n_heads=2, d_ff=256,
                         compute_dtype="bfloat16", moe_every=1,
                         # ep_exchange "auto": the ragged one on the target, dense here
                         moe=MoEConfig(num_experts=8, top_k=2, d_expert=128, gmm_impl=impl))
    model = build_model(config)
    train = TrainConfig(steps=10, warmup_steps=2)
    tx = make_optimizer(train)
    mesh, rules = make_mesh(MeshConfig(data=2, expert=4)), sharding_rules()
    setup = sharding.setup_sharded_training(model, tx, mesh, rules, batch_size=8)
    step = sharding.make_sharded_train_step(model, tx, make_schedule(train), mesh, rules,
                                            setup.state_shardings)
    state = sharding.abstract_sharded_state(model, tx, setup.state_shardings)
    batch = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=setup.batch_sharding),
        jax.eval_shape(lambda: _batch(8, 64, config.vocab_size)))

    with platform.targeting(device):  # its kernels and its (ragged) exchange
        exported = export.export(step, platforms=[target], disabled_checks=[
            export.DisabledSafetyCheck.custom_call(name)
            for name in UNGUARANTEED_CALLS])(state, batch)

    assert exported.platforms == (target,) and exported.nr_devices == 8
    calls = _check_kernel_calls(exported.mlir_module(), kernel_call)
    # 2 layers x (send, send back) x (forward, backward), within each group of 4 expert shards
    assert calls.count("ragged_all_to_all") == 8
    assert "replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]>" in exported.mlir_module()
    shardings = exported.in_shardings_jax(mesh)  # the state's leaves, then the batch's 5
    assert [s.spec for s in shardings[-5:]] == [setup.batch_sharding.spec] * 5
    assert any("expert" in str(s.spec) for s in shardings[:-5])  # expert weights stay sharded

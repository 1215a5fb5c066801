"""Training on meshes of the fake 8-device CPU platform gives the losses of one device; the state
is sharded as the rules say; checkpoints move between meshes.

Tolerance: float32 losses agree to 1e-5 relative (measured: within 5e-7 after 4 steps); the
partitioned programs sum the same numbers in a different order, nothing more.
"""

import dataclasses

import jax
import numpy as np
import pytest

from moejax.errors import ConfigError
from moejax.model import ModelConfig, MoEConfig, build_model
from moejax.model import capacity as capacity_lib
from moejax.model.config import LatentAttentionConfig
from moejax.model.experts import swiglu_experts_batched
from moejax.parallel import sharding as sh
from moejax.parallel.mesh import MeshConfig, make_mesh
from moejax.parallel.rules import activation_sharding, logical_sharding, sharding_rules
from moejax.train.checkpoint import Checkpointer
from moejax.train.config import TrainConfig
from moejax.train.optim import make_optimizer, make_schedule
from moejax.train.step import init_train_state, make_train_step

pytestmark = pytest.mark.multidevice

RTOL = 1e-5
STEPS = 3  # on the mesh; the checkpoint tests continue for one more
BATCH, SEQ, VOCAB = 8, 16, 64


def config(capacity_factor=None):
    return ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                       moe=MoEConfig(num_experts=4, top_k=2, d_expert=32, gmm_impl="xla",
                                     capacity_factor=capacity_factor))


TRAIN = TrainConfig(steps=10, warmup_steps=0, learning_rate=1e-2)
TX, SCHEDULE = make_optimizer(TRAIN), make_schedule(TRAIN)


def batch(seed):
    tokens = np.asarray(jax.random.randint(jax.random.key(seed), (BATCH, SEQ + 1), 0, VOCAB))
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "loss_weights": np.ones((BATCH, SEQ), np.float32),
            "segment_ids": np.ones((BATCH, SEQ), np.int32),
            "positions": np.broadcast_to(np.arange(SEQ, dtype=np.int32), (BATCH, SEQ)).copy()}


class Sharded:
    """A model trained on one mesh: its shardings, jitted step and state."""

    def __init__(self, model, mesh_config):
        self.model = model
        self.mesh = make_mesh(mesh_config)
        self.rules = sharding_rules()
        self.setup = sh.setup_sharded_training(model, TX, self.mesh, self.rules, batch_size=BATCH)
        self.step = sh.make_sharded_train_step(model, TX, SCHEDULE, self.mesh, self.rules,
                                               self.setup.state_shardings)

    def init(self):
        return sh.init_sharded_train_state(self.model, TX, 0, self.setup.state_shardings)

    def run(self, state, first, last):
        losses = []
        for i in range(first, last):
            state, metrics = self.step(state, sh.put_batch(batch(i), self.setup.batch_sharding))
            losses.append(float(metrics["loss"]))
        return state, losses


def single_device_losses(model, steps, step=None):
    state = init_train_state(model, TX, seed=0)
    step = step or make_train_step(model, TX, SCHEDULE)
    losses = []
    for i in range(steps):
        state, metrics = step(state, batch(i))
        losses.append(float(metrics["loss"]))
    return losses


@pytest.fixture(scope="module")
def model():
    return build_model(config())


@pytest.fixture(scope="module")
def single_step(model):
    return make_train_step(model, TX, SCHEDULE)


@pytest.fixture(scope="module")
def reference(model, single_step):
    return single_device_losses(model, STEPS + 1, single_step)


@pytest.fixture(scope="module")
def fsdp_expert_tensor(model):
    """fsdp=2 x expert=2 x tensor=2, trained STEPS steps (shared by the checkpoint tests)."""
    run = Sharded(model, MeshConfig(data=1, fsdp=2, expert=2, tensor=2))
    state, losses = run.run(run.init(), 0, STEPS)
    return run, state, losses


def test_fsdp_expert_tensor_mesh_matches_one_device(fsdp_expert_tensor, reference):
    run, state, losses = fsdp_expert_tensor
    np.testing.assert_allclose(losses, reference[:STEPS], rtol=RTOL)
    w_in = state.params["blocks"][0]["ff"]["groups"][0]["experts"]["w_in_EDF2"]
    assert w_in.sharding.spec == jax.sharding.PartitionSpec("expert", "fsdp", "tensor")
    assert w_in.addressable_shards[0].data.shape == (2, 16, 32)
    mu = state.opt_state[1][0].mu["blocks"][0]["ff"]["groups"][0]["experts"]["w_in_EDF2"]
    assert mu.sharding == w_in.sharding  # optimizer moments sharded like their parameters
    # The dropless layers took the expert-parallel shard_map: tokens move by all-to-all.
    hlo = run.step.lower(state, sh.put_batch(batch(0), run.setup.batch_sharding)).as_text()
    assert "all_to_all" in hlo


@pytest.mark.slow
@pytest.mark.parametrize("mesh_config", [MeshConfig(data=8), MeshConfig(data=2, expert=4)],
                         ids=["data8", "data2_expert4"])
def test_more_meshes_match_one_device(model, reference, mesh_config):
    run = Sharded(model, mesh_config)
    _, losses = run.run(run.init(), 0, STEPS)
    np.testing.assert_allclose(losses, reference[:STEPS], rtol=RTOL)


@pytest.mark.slow
def test_capacity_routing_on_expert_mesh_matches_one_device():
    model = build_model(config(capacity_factor=1.25))
    run = Sharded(model, MeshConfig(data=2, expert=4))
    _, losses = run.run(run.init(), 0, STEPS)
    np.testing.assert_allclose(losses, single_device_losses(model, STEPS), rtol=RTOL)


@pytest.mark.slow
def test_latent_attention_on_fsdp_expert_tensor_mesh_matches_one_device():
    latent = LatentAttentionConfig(kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                   v_head_dim=8, q_lora_rank=12)
    model = build_model(dataclasses.replace(config(), latent_attention=latent))
    run = Sharded(model, MeshConfig(data=1, fsdp=2, expert=2, tensor=2))
    state, losses = run.run(run.init(), 0, STEPS)
    np.testing.assert_allclose(losses, single_device_losses(model, STEPS), rtol=RTOL)
    attn = state.params["blocks"][0]["attn"]
    # heads split over tensor, the latent kept whole, the residual dimension over fsdp
    assert attn["w_k_up_CNP"].sharding.spec == jax.sharding.PartitionSpec(None, "tensor")
    assert attn["w_kv_down_DC"].sharding.spec == jax.sharding.PartitionSpec("fsdp")


def test_capacity_dispatch_is_an_all_to_all_over_expert_and_exact():
    mesh, rules = make_mesh(MeshConfig(data=2, expert=4)), sharding_rules()
    tokens, d_model, experts, top_k, hidden, slots = 64, 16, 4, 2, 8, 40
    keys = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(keys[0], (tokens, d_model))
    ids = jax.random.randint(keys[1], (tokens, top_k), 0, experts)
    weights = jax.random.uniform(keys[2], (tokens, top_k))
    w_in = jax.random.normal(keys[3], (experts, d_model, 2 * hidden))
    w_out = jax.random.normal(keys[4], (experts, hidden, d_model))

    def layer(x, ids, weights, w_in, w_out):
        slot, kept = capacity_lib.capacity_slots(ids, experts, slots)
        return capacity_lib.capacity_dispatch_combine(
            x, ids, weights, kept, slot, experts, slots,
            lambda buffers: swiglu_experts_batched(buffers, w_in, w_out))

    def sharded_layer(*args):
        with activation_sharding(mesh, rules):
            return layer(*args)

    names = [("batch", None)] * 3 + [("expert", "embed", "expert_mlp"),
                                     ("expert", "expert_mlp", "embed")]
    args = [jax.device_put(a, logical_sharding(n, rules, mesh, a.shape))
            for a, n in zip((x, ids, weights, w_in, w_out), names)]
    compiled = jax.jit(sharded_layer).lower(*args).compile()
    assert "all-to-all" in compiled.as_text()
    np.testing.assert_allclose(compiled(*args), jax.jit(layer)(x, ids, weights, w_in, w_out),
                               rtol=1e-5, atol=1e-5)


def _state_bytes_per_device(model, mesh_config):
    """Per-device output bytes of the compiled sharded init: the train state one device holds
    (the train step's arguments are the same state plus the batch)."""
    mesh, rules = make_mesh(mesh_config), sharding_rules()
    shardings = sh.train_state_shardings(model, TX, mesh, rules)
    compiled = jax.jit(lambda: init_train_state(model, TX, 0),
                       out_shardings=shardings).lower().compile()
    return compiled.memory_analysis().output_size_in_bytes


def test_each_device_holds_one_over_ep_of_the_expert_parameters(model):
    """data=8 vs data=2 x expert=4: the only difference in a device's state is the expert
    weights and their two Adam moments, held whole vs in quarters."""
    expert_bytes = sum(leaf.size * leaf.dtype.itemsize for path, leaf in
                       jax.tree_util.tree_leaves_with_path(model.abstract_params)
                       if "experts" in jax.tree_util.keystr(path))
    replicated = _state_bytes_per_device(model, MeshConfig(data=8))
    expert_parallel = _state_bytes_per_device(model, MeshConfig(data=2, expert=4))
    assert replicated - expert_parallel == 3 * expert_bytes * (1 - 1 / 4)


def test_batch_that_does_not_split_over_the_mesh_fails_clearly(model):
    mesh = make_mesh(MeshConfig(data=8))
    with pytest.raises(ConfigError, match=r"batch_size = 12 .* divisible by the 8 devices"):
        sh.setup_sharded_training(model, TX, mesh, sharding_rules(), batch_size=12)


def _save(directory, state):
    checkpointer = Checkpointer(str(directory), async_save=False)
    checkpointer.save(STEPS, state, {"step": STEPS})
    checkpointer.close()


def _restore(directory, abstract_state):
    checkpointer = Checkpointer(str(directory), async_save=False)
    try:
        return checkpointer.restore(STEPS, abstract_state)[0]
    finally:
        checkpointer.close()


def test_checkpoint_from_one_mesh_continues_on_another(model, fsdp_expert_tensor, reference,
                                                       single_step, tmp_path):
    run, state, _ = fsdp_expert_tensor
    _save(tmp_path, state)
    _, same_mesh = run.run(_restore(tmp_path, sh.abstract_sharded_state(
        model, TX, run.setup.state_shardings)), STEPS, STEPS + 1)

    data8 = Sharded(model, MeshConfig(data=8))
    restored = _restore(tmp_path, sh.abstract_sharded_state(model, TX, data8.setup.state_shardings))
    w_in = restored.params["blocks"][0]["ff"]["groups"][0]["experts"]["w_in_EDF2"]
    assert w_in.sharding.spec == jax.sharding.PartitionSpec()  # now replicated, data parallel
    _, other_mesh = data8.run(restored, STEPS, STEPS + 1)

    one_device = _restore(tmp_path, jax.eval_shape(lambda: init_train_state(model, TX, 0)))
    assert len(w_in.sharding.device_set) == 8
    assert {len(x.sharding.device_set) for x in jax.tree.leaves(one_device)} == {1}
    _, single = single_step(one_device, batch(STEPS))
    np.testing.assert_allclose(other_mesh, same_mesh, rtol=RTOL)
    np.testing.assert_allclose(float(single["loss"]), same_mesh[0], rtol=RTOL)
    np.testing.assert_allclose(same_mesh[0], reference[STEPS], rtol=RTOL)

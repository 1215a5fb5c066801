"""The jitted train step: balancing biases outside the optimizer, gradient accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from moejax.model import ModelConfig, MoEConfig, build_model
from moejax.train.config import TrainConfig
from moejax.train.optim import make_optimizer, make_schedule
from moejax.train.step import init_train_state, make_train_step

CONFIG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                     moe=MoEConfig(num_experts=4, top_k=2, d_expert=32, bias_update_rate=0.05,
                                   router_jitter=0.0))


def batch(seed=0, size=4, seq=16):
    tokens = jax.random.randint(jax.random.key(seed), (size, seq + 1), 0, 64)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "loss_weights": jnp.ones((size, seq)), "segment_ids": jnp.ones((size, seq), jnp.int32),
            "positions": jnp.broadcast_to(jnp.arange(seq), (size, seq))}


def setup(accum=1, tx=None, config=CONFIG):
    model = build_model(config)
    train = TrainConfig(steps=10, warmup_steps=0, learning_rate=1e-2, weight_decay=0.5)
    tx = tx if tx is not None else make_optimizer(train)
    step = make_train_step(model, tx, make_schedule(train), grad_accum_steps=accum)
    return init_train_state(model, tx, seed=0), step


def test_bias_moves_by_rate_times_sign_of_load_gap_and_never_enters_the_optimizer():
    state, step = setup()
    assert all(b.shape == (4,) for b in jax.tree.leaves(state.buffers))
    opt_paths = [jax.tree_util.keystr(path)
                 for path, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)]
    assert opt_paths and not any("bias_E" in p for p in opt_paths)
    old = [np.asarray(b) for b in jax.tree.leaves(state.buffers)]
    new_state, metrics = step(state, batch())
    for before, after, layer in zip(old, jax.tree.leaves(new_state.buffers), metrics["moe"]):
        load = np.asarray(layer["tokens_per_expert"])
        np.testing.assert_allclose(after, before + 0.05 * np.sign(load.mean() - load), rtol=1e-6)


def test_gradient_accumulation_gives_the_same_bias_update_and_loads():
    # SGD: the update is linear in the gradient, so averaged micro-batch gradients must match
    # (Adam would turn float noise in near-zero gradients into full-size updates of either sign).
    # The Switch loss is computed per micro-batch (f and p averaged within it), which legitimately
    # changes its gradient, so it is off here; everything else must agree.
    config = ModelConfig(**{**CONFIG.__dict__, "moe": MoEConfig(
        **{**CONFIG.moe.__dict__, "aux_loss_weight": 0.0})})
    single_state, single_step = setup(accum=1, tx=optax.sgd(0.1), config=config)
    accum_state, accum_step = setup(accum=2, tx=optax.sgd(0.1), config=config)
    b = batch(seed=3)
    s1, m1 = single_step(single_state, b)
    s2, m2 = accum_step(accum_state, b)
    for l1, l2 in zip(m1["moe"], m2["moe"]):
        np.testing.assert_allclose(l1["tokens_per_expert"], l2["tokens_per_expert"])
    for b1, b2 in zip(jax.tree.leaves(s1.buffers), jax.tree.leaves(s2.buffers)):
        np.testing.assert_allclose(b1, b2)
    # every micro-batch has the same number of tokens, so the averaged gradients agree too
    for p1, p2 in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)

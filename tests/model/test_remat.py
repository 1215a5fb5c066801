"""ModelConfig.remat: recomputing blocks in the backward pass changes memory, not the math.

The reference is the same model without rematerialisation: every variant must give its loss,
logits and gradients (with router jitter, so the per-block keys must reach the recomputation
unchanged), and the compiled step must hold fewer temporary bytes (XLA:GPU's own memory analysis
of the programs, compiled for an H100 without one).
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.errors import ConfigError
from moejax.model import ModelConfig, MoEConfig, build_model
from moejax.model.config import validate_model_config
from moejax.parallel import gpu_topology

MOE = MoEConfig(num_experts=4, top_k=2, d_expert=32, router_jitter=0.1)
CFG = ModelConfig(vocab_size=128, d_model=64, n_layers=4, n_heads=4, d_ff=96, moe=MOE,
                  moe_every=2)


def _loss_and_grads(config, tokens):
    model = build_model(config)
    params = model.init(jax.random.key(0))
    buffers = model.init_buffers()

    def loss(p):
        logits, stats = model.apply(p, tokens, buffers=buffers, train=True,
                                    rng=jax.random.key(7))
        aux = sum(s.aux_loss for s in stats)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1)) + aux, logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, logits, grads


@pytest.mark.parametrize("remat", ["block", pytest.param("dots", marks=pytest.mark.slow)])
def test_remat_gives_the_same_loss_and_gradients(remat):
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 128)
    value, logits, grads = _loss_and_grads(CFG, tokens)
    value_r, logits_r, grads_r = _loss_and_grads(dataclasses.replace(CFG, remat=remat), tokens)
    np.testing.assert_allclose(value_r, value, rtol=1e-6)
    np.testing.assert_allclose(logits_r, logits, rtol=1e-5, atol=1e-6)
    flat, flat_r = jax.tree.leaves(grads), jax.tree.leaves(grads_r)
    assert len(flat) == len(flat_r)
    for g, g_r in zip(flat, flat_r):
        np.testing.assert_allclose(g_r, g, rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(gpu_topology.plugin_dir(), "jax_plugins")),
    reason="JAX's CUDA plugin not installed (launch/setup.sh dev installs it on Linux x86_64)")
@pytest.mark.slow  # a GPU compile (12 s); the loss and gradient tests above stay fast
def test_remat_compiles_to_fewer_temporary_bytes_for_an_h100():
    """XLA:GPU's buffer assignment, compiled here for an H100 (XLA:CPU's schedule keeps most
    of the activations alive either way, so its figures do not show it): a dense 8-block model
    at 4,096 tokens took 729 MiB of temporaries, 144 with "block", 360 with "dots"."""
    from moejax.kernels import platform
    from moejax.parallel import topology

    device = topology.compile_only_devices("h100")[0]
    where = jax.sharding.SingleDeviceSharding(device)
    config = ModelConfig(vocab_size=128, d_model=256, n_layers=8, n_heads=4, d_ff=512)
    tokens = jax.ShapeDtypeStruct((16, 256), jnp.int32, sharding=where)

    def temp_bytes(remat):
        model = build_model(dataclasses.replace(config, remat=remat))
        params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=where),
                              jax.eval_shape(model.init, jax.random.key(0)))

        def loss(p, t):
            logits, _ = model.apply(p, t, train=True)
            return jnp.mean(logits)

        with platform.targeting(platform.Device("gpu", device.device_kind, (9, 0))):
            compiled = jax.jit(jax.grad(loss)).lower(params, tokens).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    none, block, dots = temp_bytes("none"), temp_bytes("block"), temp_bytes("dots")
    assert block < dots < none and block < 0.5 * none, (none, block, dots)


def test_an_unknown_remat_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"ModelConfig.remat = 'all'.*'none', 'block', 'dots'"):
        validate_model_config(dataclasses.replace(CFG, remat="all"))

"""The MoE layer against a plain per-token loop over experts, forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.model.config import MoEConfig
from moejax.model.moe import MoEFeedForward


def reference_moe(x_TD, w_DE, w_in_EDF2, w_out_EFD, top_k, renormalize):
    """A plain loop over experts: each expert runs densely on every token, and a token keeps the
    output of an expert only if that expert is among its top_k (no sorting, no grouped matmul)."""
    probs_TE = jax.nn.softmax(x_TD @ w_DE, axis=-1)
    rank_TE = jnp.argsort(jnp.argsort(-probs_TE, axis=-1), axis=-1)  # 0 = best expert
    chosen_TE = rank_TE < top_k
    gate_TE = jnp.where(chosen_TE, probs_TE, 0.0)
    if renormalize:
        gate_TE = gate_TE / gate_TE.sum(-1, keepdims=True)
    y_TD = jnp.zeros_like(x_TD)
    for e in range(w_DE.shape[1]):
        gate, up = jnp.split(x_TD @ w_in_EDF2[e], 2, axis=-1)
        y_TD = y_TD + gate_TE[:, e:e + 1] * ((jax.nn.silu(gate) * up) @ w_out_EFD[e])
    return y_TD


def _layer_and_params(num_experts, top_k, renormalize, d_model=8, d_expert=6, seed=0):
    moe = MoEConfig(num_experts=num_experts, top_k=top_k, d_expert=d_expert, renormalize=renormalize)
    layer = MoEFeedForward(d_model, moe, n_layers=2, init_std=0.5, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(layer, nnx.Param)
    return graphdef, params


@pytest.mark.parametrize("num_experts,top_k,renormalize", [(4, 1, False), (4, 2, False),
                                                           (5, 3, True), (8, 2, True)])
def test_moe_layer_matches_expert_loop(num_experts, top_k, renormalize):
    graphdef, params = _layer_and_params(num_experts, top_k, renormalize)
    x_BTD = jax.random.normal(jax.random.key(1), (2, 5, 8))
    mask = jnp.ones((2, 5), bool)

    def layer_out(params, x):
        return nnx.merge(graphdef, params)(x, mask)[0]

    def ref_out(params, x):
        p = nnx.to_pure_dict(params)
        y = reference_moe(x.reshape(-1, 8), p["router"]["w_DE"], p["experts"]["w_in_EDF2"],
                          p["experts"]["w_out_EFD"], top_k, renormalize)
        return y.reshape(x.shape)

    layer_out, ref_out = jax.jit(layer_out), jax.jit(ref_out)
    np.testing.assert_allclose(layer_out(params, x_BTD), ref_out(params, x_BTD), rtol=1e-5,
                               atol=1e-5)
    # Gradients w.r.t. every parameter and the input, through a non-trivial scalar.
    probe = jax.random.normal(jax.random.key(2), x_BTD.shape)
    g_layer = jax.grad(lambda p, x: jnp.sum(layer_out(p, x) * probe), argnums=(0, 1))(params, x_BTD)
    g_ref = jax.grad(lambda p, x: jnp.sum(ref_out(p, x) * probe), argnums=(0, 1))(params, x_BTD)
    for a, b in zip(jax.tree.leaves(g_layer), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_tokens_per_expert_counts_real_tokens_only():
    graphdef, params = _layer_and_params(4, 2, False)
    x = jax.random.normal(jax.random.key(3), (1, 6, 8))
    mask = jnp.array([[1, 1, 1, 1, 0, 0]], bool)
    _, stats = nnx.merge(graphdef, params)(x, mask)
    assert float(stats.tokens_per_expert_E.sum()) == 4 * 2

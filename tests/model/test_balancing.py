"""Router losses against values computed by hand."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from moejax.model.balancing import (load_imbalance, router_entropy, router_z_loss, switch_aux_loss,
                                    tokens_per_expert)


def test_switch_aux_loss_hand_computed():
    # 4 tokens, 2 experts, top-1. Tokens 0,1,2 -> expert 0; token 3 -> expert 1.
    scores = jnp.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    ids = jnp.array([[0], [0], [0], [1]])
    # f = (3/4, 1/4); p = (mean 0.9,.8,.6,.3 = 0.65, 0.35); loss = 2 * (0.75*0.65 + 0.25*0.35)
    expected = 2 * (0.75 * 0.65 + 0.25 * 0.35)
    np.testing.assert_allclose(switch_aux_loss(scores, ids), expected, rtol=1e-6)


def test_switch_aux_loss_top2_and_mask():
    scores = jnp.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [1 / 3, 1 / 3, 1 / 3]])
    ids = jnp.array([[0, 1], [1, 2], [2, 0]])
    mask = jnp.array([1, 1, 0])  # third token is padding
    # real tokens: assignments e0:1, e1:2, e2:1 of 4 -> f = (.25, .5, .25)
    # p = mean of first two rows = (.3, .45, .25)
    expected = 3 * (0.25 * 0.3 + 0.5 * 0.45 + 0.25 * 0.25)
    np.testing.assert_allclose(switch_aux_loss(scores, ids, mask), expected, rtol=1e-6)
    np.testing.assert_allclose(tokens_per_expert(ids, 3, mask), [1, 2, 1])


def test_uniform_routing_gives_aux_loss_one():
    scores = jnp.full((8, 4), 0.25)
    ids = jnp.array([[0], [1], [2], [3], [0], [1], [2], [3]])
    np.testing.assert_allclose(switch_aux_loss(scores, ids), 1.0, rtol=1e-6)


def test_router_z_loss_hand_computed():
    logits = jnp.array([[0.0, 0.0], [1.0, 2.0]])
    lse = [math.log(2.0), math.log(math.e + math.e**2)]
    np.testing.assert_allclose(router_z_loss(logits), (lse[0] ** 2 + lse[1] ** 2) / 2, rtol=1e-6)
    np.testing.assert_allclose(router_z_loss(logits, jnp.array([0, 1])), lse[1] ** 2, rtol=1e-6)


def test_sequence_aux_loss_averages_per_sequence_values():
    from moejax.model.balancing import sequence_aux_loss

    scores = jnp.array([[[0.9, 0.1], [0.8, 0.2]], [[0.4, 0.6], [0.2, 0.8]]])
    ids = jnp.array([[[0], [0]], [[1], [0]]])
    # sequence 0: f = (1, 0), p = (0.85, 0.15) -> 2 * 0.85 = 1.7
    # sequence 1: f = (.5, .5), p = (0.3, 0.7) -> 2 * (.15 + .35) = 1.0
    np.testing.assert_allclose(sequence_aux_loss(scores, ids), (1.7 + 1.0) / 2, rtol=1e-6)
    # the global loss over the same tokens is different: f = (.75,.25), p = (.575,.425)
    np.testing.assert_allclose(switch_aux_loss(scores.reshape(4, 2), ids.reshape(4, 1)),
                               2 * (0.75 * 0.575 + 0.25 * 0.425), rtol=1e-6)


def test_balancing_bias_moves_a_skewed_router_towards_uniform_load():
    import jax

    from moejax.model.balancing import bias_update, load_imbalance
    from moejax.model.router import route_top_k

    num_experts, top_k = 8, 2
    skew = jnp.linspace(2.0, -2.0, num_experts)  # expert 0 strongly preferred
    logits = jax.random.normal(jax.random.key(0), (512, num_experts)) + skew
    bias = jnp.zeros(num_experts)
    first = None
    for _ in range(300):
        routing = route_top_k(logits, top_k, bias_E=bias)
        load = tokens_per_expert(routing.expert_ids_TK, num_experts)
        first = float(load_imbalance(load)) if first is None else first
        bias = bias_update(bias, load, rate=0.01)
    final = float(load_imbalance(load))
    # sign updates keep oscillating around balance, so ask for a clear move, not equality
    assert first > 2.5 and final < 1.4 and final < first / 2, (first, final)
    # the bias chose experts, but the weights are the unbiased softmax scores
    np.testing.assert_allclose(routing.weights_TK,
                               jnp.take_along_axis(jax.nn.softmax(logits), routing.expert_ids_TK,
                                                   axis=-1), rtol=1e-6)


def test_router_entropy_hand_computed():
    uniform = jnp.full((3, 4), 0.25)
    assert float(router_entropy(uniform)) == pytest.approx(math.log(4), rel=1e-6)
    one_hot = jnp.eye(4)[:3]
    assert float(router_entropy(one_hot)) == pytest.approx(0.0, abs=1e-6)
    # tokens: uniform over 4 (ln 4), split over 2 (ln 2), one-hot (0, masked out): mean of the
    # two real tokens; sigmoid-like scores that do not sum to 1 are normalised first
    mixed = jnp.array([[0.25, 0.25, 0.25, 0.25], [0.9, 0.9, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    got = float(router_entropy(mixed, mask_T=jnp.array([1, 1, 0])))
    assert got == pytest.approx((math.log(4) + math.log(2)) / 2, rel=1e-6)


def test_load_imbalance_hand_computed():
    assert float(load_imbalance(jnp.array([2.0, 4.0, 6.0, 0.0]))) == pytest.approx(2.0)
    assert float(load_imbalance(jnp.array([5.0, 5.0]))) == pytest.approx(1.0)
    assert float(load_imbalance(jnp.zeros(4))) == 0.0  # nothing routed

"""Router losses against values computed by hand."""

import math

import jax.numpy as jnp
import numpy as np

from moejax.model.balancing import router_z_loss, switch_aux_loss, tokens_per_expert


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

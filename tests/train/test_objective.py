import jax.numpy as jnp
import numpy as np

from moejax.model.config import MoEConfig
from moejax.model.moe import MoEStats
from moejax.train.objective import cross_entropy_sum, objective


def test_cross_entropy_matches_numpy_log_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    targets = rng.integers(0, 5, size=(2, 3))
    weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    total, count = cross_entropy_sum(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    np.testing.assert_allclose(total, (nll * weights).sum(), rtol=1e-5)
    assert float(count) == 3.0


def test_objective_adds_weighted_router_losses_averaged_over_layers():
    logits = jnp.zeros((1, 2, 4))
    targets = jnp.zeros((1, 2), jnp.int32)
    weights = jnp.ones((1, 2))
    def stats_with(aux, z):
        zero = jnp.float32(0.0)
        return MoEStats(jnp.float32(aux), jnp.float32(z), jnp.ones(4), zero, zero, zero, zero,
                        (jnp.ones(4),))

    stats = [stats_with(1.0, 2.0), stats_with(3.0, 4.0)]
    moe = MoEConfig(aux_loss_weight=0.1, z_loss_weight=0.01)
    parts = objective(logits, targets, weights, stats, moe)
    np.testing.assert_allclose(parts.cross_entropy, np.log(4.0), rtol=1e-6)
    np.testing.assert_allclose(parts.total, np.log(4.0) + 0.1 * 2.0 + 0.01 * 3.0, rtol=1e-6)

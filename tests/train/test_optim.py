import jax.numpy as jnp
import numpy as np
import pytest

from moejax.model.config import ConfigError
from moejax.train.config import TrainConfig, validate_train_config
from moejax.train.optim import decay_mask, make_schedule


def test_cosine_schedule_warmup_peak_and_end():
    c = TrainConfig(steps=110, warmup_steps=10, learning_rate=1e-3, schedule="cosine",
                    final_lr_fraction=0.1)
    s = make_schedule(c)
    np.testing.assert_allclose(s(5), 0.5e-3, rtol=1e-6)
    np.testing.assert_allclose(s(10), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(s(60), 1e-3 * (0.1 + 0.9 * 0.5), rtol=1e-5)  # half-way: cos = 0
    np.testing.assert_allclose(s(110), 1e-4, rtol=1e-5)


def test_wsd_schedule_is_flat_then_linear():
    c = TrainConfig(steps=100, warmup_steps=10, learning_rate=1e-3, schedule="wsd",
                    decay_fraction=0.2, final_lr_fraction=0.0)
    s = make_schedule(c)
    np.testing.assert_allclose([s(20), s(79)], [1e-3, 1e-3], rtol=1e-6)
    np.testing.assert_allclose(s(90), 0.5e-3, rtol=1e-5)
    np.testing.assert_allclose(s(100), 0.0, atol=1e-9)


def test_weight_decay_skips_norm_scales():
    params = {"norm": {"scale": jnp.ones(4)}, "w": jnp.ones((4, 4)), "e": jnp.ones((2, 4, 4))}
    assert decay_mask(params) == {"norm": {"scale": False}, "w": True, "e": True}


@pytest.mark.parametrize("field,value", [("warmup_steps", 500), ("schedule", "linear"),
                                         ("learning_rate", 0.0), ("checkpoint_every", 0)])
def test_bad_train_config_names_the_knob(field, value):
    c = TrainConfig(steps=100, **{field: value})
    with pytest.raises(ConfigError, match=f"TrainConfig.{field}"):
        validate_train_config(c)

import numpy as np
import pytest

from moejax.laws import saturating_expert_count


def test_e_hat_of_one_is_e_start():
    assert saturating_expert_count(1.0, 2.0732, 290.4521) == pytest.approx(2.0732, rel=1e-12)


def test_e_hat_saturates_at_e_max_and_increases():
    values = saturating_expert_count(np.array([1, 2, 8, 64, 1e6, 1e12]), 2.0, 300.0)
    assert np.all(np.diff(values) > 0)
    assert values[-1] == pytest.approx(300.0, rel=1e-6)


def test_e_hat_is_identity_without_saturation():
    # E_start -> 1 and E_max -> infinity gives Ê = E.
    assert saturating_expert_count(16.0, 1.0 + 1e-12, 1e15) == pytest.approx(16.0, rel=1e-6)

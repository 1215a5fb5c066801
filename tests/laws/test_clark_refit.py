"""Refit Clark et al. 2022's laws on their released data (targets from LAWS.md)."""

import pytest

from moejax.laws import clark_fit_subset, fit, load_dataset


@pytest.fixture(scope="module")
def curves():
    return load_dataset("clark2022")


@pytest.mark.parametrize("router, a, c", [("S-Base", -0.082, 0.009), ("RL-R", -0.083, 0.012),
                                          ("Hash", -0.087, 0.012)])
def test_router_refit_targets(curves, router, a, c):
    result = fit(clark_fit_subset(curves, router), "clark")
    assert result.converged, result.convergence
    assert result.parameters["a"] == pytest.approx(a, abs=0.002)
    assert result.parameters["c"] == pytest.approx(c, abs=0.003)


def test_dense_refit_targets(curves):
    result = fit(clark_fit_subset(curves, router=None), "clark_dense")
    assert result.converged
    assert result.parameters["alpha_N"] == pytest.approx(0.078, rel=0.10)
    assert result.parameters["N_c"] == pytest.approx(3.6e13, rel=0.10)

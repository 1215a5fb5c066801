import pytest

from moejax.laws import get_law
from moejax.plan import chinchilla_compute_optimal, numerical_compute_optimal

PUBLISHED = get_law("chinchilla").published["hoffmann2022"]


def test_closed_form_matches_numerical_optimum():
    for flops in (1e20, 5.76e23):
        closed = chinchilla_compute_optimal(PUBLISHED, flops)
        numeric = numerical_compute_optimal("chinchilla", PUBLISHED, flops)
        assert closed[0] == pytest.approx(numeric[0], rel=1e-4)
        assert 6 * closed[0] * closed[1] == pytest.approx(flops, rel=1e-12)


def test_gopher_budget_gives_tens_of_billions():
    # With the published approach-3 fit, Gopher's 5.76e23 FLOPs give a ~40B-parameter model.
    n_opt, d_opt = chinchilla_compute_optimal(PUBLISHED, 5.76e23)
    assert 30e9 < n_opt < 50e9 and 1e12 < d_opt < 3e12

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


def test_vectorised_frontier_matches_closed_form():
    from moejax.plan.optimal import compute_optimal_frontier

    budgets = [1e19, 1e21, 1e23]
    n_grid, d_grid, _ = compute_optimal_frontier("chinchilla", PUBLISHED, budgets)
    for budget, n_opt in zip(budgets, n_grid):
        assert n_opt == pytest.approx(chinchilla_compute_optimal(PUBLISHED, budget)[0], rel=0.03)

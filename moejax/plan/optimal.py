"""Numerical compute-optimal allocation for any registered law.

In: a law name, its paper-named parameters, a training budget F (FLOPs, C = 6 N D with N the law's
N variable) and fixed values of the law's other variables (E, G, S ...). Out: (N, D) minimising the
predicted loss. ``compute_optimal_frontier`` does many budgets at once on a fine grid of ln N (one
vectorised law evaluation, for plots); ``numerical_compute_optimal`` refines one budget to 1e-10 in
ln N. Use the closed forms in ``chinchilla`` and ``joint_moe`` where they exist; this is for the
laws that have none (Yun, Krajewski, Abnar).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import scipy.optimize

from moejax.laws.forms import get_law

_GRID_POINTS = 401


def _check(law, fixed):
    missing = [v for v in law.variable_names if v not in ("N", "D") and v not in fixed]
    if missing:
        raise ValueError(f"law {law.name!r} needs fixed values for {', '.join(missing)}")
    if "D" not in law.variable_names:
        raise ValueError(f"law {law.name!r} has no token variable D; compute-optimal is undefined")


def compute_optimal_frontier(law_name: str, parameters: Mapping[str, float], budgets: Sequence[float],
                             flops_per_param_token: float = 6.0, n_bounds: tuple[float, float] = (1e5, 1e14),
                             **fixed: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N_opt, D_opt, loss) arrays over `budgets` (FLOPs), each the best of a 401-point ln N grid
    (spacing ~0.05 in ln N, so N within ~2.5 % and the loss within ~1e-4 relative)."""
    law = get_law(law_name)
    _check(law, fixed)
    tokens_times_params = np.asarray(budgets, dtype=np.float64)[:, None] / flops_per_param_token
    log_n = np.linspace(math.log(n_bounds[0]), math.log(n_bounds[1]), _GRID_POINTS)[None, :]
    n_grid = np.broadcast_to(np.exp(log_n), (tokens_times_params.shape[0], _GRID_POINTS))
    d_grid = tokens_times_params / n_grid
    variables = {"N": n_grid.ravel(), "D": d_grid.ravel()}
    variables.update({k: np.full(n_grid.size, float(v)) for k, v in fixed.items()})
    losses = law.predict(parameters, variables).reshape(n_grid.shape)
    losses = np.where(d_grid >= 1.0, losses, np.inf)  # under one token is no training run
    best = np.argmin(losses, axis=1)
    rows = np.arange(len(best))
    return n_grid[rows, best], d_grid[rows, best], losses[rows, best]


def numerical_compute_optimal(law_name: str, parameters: Mapping[str, float], flops: float,
                              flops_per_param_token: float = 6.0, n_bounds: tuple[float, float] = (1e5, 1e14),
                              **fixed: float) -> tuple[float, float]:
    """(N, D) minimising law(N, D, **fixed) at flops_per_param_token * N * D = flops."""
    law = get_law(law_name)
    n_grid_best, _, _ = compute_optimal_frontier(law_name, parameters, [flops], flops_per_param_token, n_bounds,
                                                 **fixed)
    budget = flops / flops_per_param_token
    step = (math.log(n_bounds[1]) - math.log(n_bounds[0])) / (_GRID_POINTS - 1)

    def loss_at(log_n):
        n = math.exp(log_n)
        variables = {"N": np.array([n]), "D": np.array([budget / n])}
        variables.update({k: np.array([float(v)]) for k, v in fixed.items()})
        return float(law.predict(parameters, variables)[0])

    centre = math.log(n_grid_best[0])
    result = scipy.optimize.minimize_scalar(loss_at, bounds=(centre - step, centre + step), method="bounded",
                                            options={"xatol": 1e-10})
    n_opt = math.exp(result.x)
    return n_opt, budget / n_opt

"""Numerical compute-optimal allocation for any registered law.

In: a law name, its paper-named parameters, a training budget F (FLOPs, C = 6 N D with N the law's
N variable) and fixed values of the law's other variables (E, G, S ...). Out: (N, D) minimising the
predicted loss, found by a bounded search over ln N. Use the closed forms in ``chinchilla`` and
``joint_moe`` where they exist; this is for the laws that have none (Yun, Krajewski, Abnar).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import scipy.optimize

from moejax.laws.forms import get_law


def numerical_compute_optimal(law_name: str, parameters: Mapping[str, float], flops: float,
                              flops_per_param_token: float = 6.0, n_bounds: tuple[float, float] = (1e5, 1e14),
                              **fixed: float) -> tuple[float, float]:
    """(N, D) minimising law(N, D, **fixed) at flops_per_param_token * N * D = flops."""
    law = get_law(law_name)
    missing = [v for v in law.variable_names if v not in ("N", "D") and v not in fixed]
    if missing:
        raise ValueError(f"law {law_name!r} needs fixed values for {', '.join(missing)}")
    if "D" not in law.variable_names:
        raise ValueError(f"law {law_name!r} has no token variable D; compute-optimal is undefined")
    budget = flops / flops_per_param_token

    def loss_at(log_n):
        n = math.exp(log_n)
        variables = {"N": np.array([n]), "D": np.array([budget / n])}
        variables.update({k: np.array([float(v)]) for k, v in fixed.items()})
        return float(law.predict(parameters, variables)[0])

    low, high = math.log(n_bounds[0]), min(math.log(n_bounds[1]), math.log(budget) - 1e-6)
    grid = np.linspace(low, high, 241)
    values = [loss_at(x) for x in grid]
    k = int(np.argmin(values))
    bracket = (grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)])
    result = scipy.optimize.minimize_scalar(loss_at, bounds=bracket, method="bounded", options={"xatol": 1e-10})
    n_opt = math.exp(result.x)
    return n_opt, budget / n_opt

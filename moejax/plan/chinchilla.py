"""Chinchilla closed-form compute-optimal allocation.

In: Chinchilla-law parameters {A, B, E, alpha, beta} and a training budget in FLOPs (C = 6 N D).
Out: (N_opt parameters, D_opt tokens):
    N_opt = G (C/6)^(beta/(alpha+beta)),  D_opt = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta)).
"""

from __future__ import annotations

from typing import Mapping


def chinchilla_compute_optimal(parameters: Mapping[str, float], flops: float) -> tuple[float, float]:
    """(parameters, tokens) minimising E + A/N^alpha + B/D^beta subject to 6 N D = flops."""
    a, b = parameters["A"], parameters["B"]
    alpha, beta = parameters["alpha"], parameters["beta"]
    scale = (alpha * a / (beta * b)) ** (1.0 / (alpha + beta))
    n_opt = scale * (flops / 6.0) ** (beta / (alpha + beta))
    d_opt = (flops / 6.0) ** (alpha / (alpha + beta)) / scale
    return float(n_opt), float(d_opt)

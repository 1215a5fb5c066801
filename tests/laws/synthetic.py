"""Synthetic points drawn from known law parameters, shared by the law tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moejax.laws import get_law

TRUE_PARAMETERS = {
    "chinchilla": {"A": 406.4, "B": 410.7, "E": 1.69, "alpha": 0.34, "beta": 0.28},
    "joint_moe": get_law("joint_moe").published["table3"],
    "yun": {"A": 400.0, "alpha": 0.3, "B": 0.3, "beta": 0.5, "C": 400.0, "gamma": 0.3, "F": 1.5, "d": 0.001,
            "E_start": 2.0, "E_max": 300.0},
    "krajewski": get_law("krajewski").published["table1"],
    "clark": {"a": -0.082, "b": -0.108, "c": 0.009, "d": 1.104, "E_start": 1.847, "E_max": 314.5},
    "clark_dense": {"alpha_N": 0.078, "N_c": 3.6e13},
    "abnar": get_law("abnar").published["abnar2025"],
}


def synthetic_points(law_name: str, n_points: int = 300, noise: float = 0.002, seed: int = 0) -> pd.DataFrame:
    """Log-uniform N, D over a realistic range, E / G / S on the grids the papers used, and
    ln L = ln L_true + Normal(0, noise)."""
    rng = np.random.default_rng(seed)
    law = get_law(law_name)

    def log_uniform(low, high):
        return np.exp(rng.uniform(np.log(low), np.log(high), n_points))

    variables = {"N": log_uniform(1e7, 1e10), "D": log_uniform(1e9, 1e12)}
    if law_name == "joint_moe":
        variables["N"] = log_uniform(5e7, 3e9)
    if law_name.startswith("clark"):
        variables["N"] = log_uniform(1.5e7, 1.3e9)
    variables["E"] = rng.choice([1, 2, 4, 8, 16, 32, 64, 128, 256, 512] if law_name == "clark"
                                else [1, 2, 4, 8, 16, 32, 64], n_points).astype(float)
    variables["G"] = rng.choice([1, 2, 4, 8, 16], n_points).astype(float)
    variables["S"] = 1.0 - 1.0 / rng.choice([1, 2, 4, 8, 16, 32], n_points).astype(float)
    variables = {k: v for k, v in variables.items() if k in law.variable_names}
    loss = law.predict(TRUE_PARAMETERS[law_name], variables) * np.exp(rng.normal(0.0, noise, n_points))
    return pd.DataFrame({**variables, "loss": loss})

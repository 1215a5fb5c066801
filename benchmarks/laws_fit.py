"""Benchmark: wall time of full-grid law fits on synthetic points (target < 20 s each on 2 CPU cores).

Prints one JSON line per figure: the Chinchilla fit over its full initialisation grid (4,500 starts)
on 250 points, and the Joint MoE fit over its grid (3^9 paper starts x 9 Ê starts) on 300 points
with the paper's held-out protocol. Wall seconds include JIT compilation (a cold first fit).

    python benchmarks/laws_fit.py
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd

from moejax.laws import fit, get_law


def _points(law_name: str, n_points: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    law = get_law(law_name)
    truth = next(iter(law.published.values()))
    variables = {"N": np.exp(rng.uniform(np.log(5e7), np.log(5e9), n_points)),
                 "D": np.exp(rng.uniform(np.log(1e9), np.log(5e11), n_points))}
    if "E" in law.variable_names:
        variables["E"] = rng.choice([1, 2, 4, 8, 16, 32, 64], n_points).astype(float)
    loss = law.predict(truth, variables) * np.exp(rng.normal(0.0, 0.005, n_points))
    return pd.DataFrame({**variables, "loss": loss})


def main() -> None:
    for law_name, n_points, holdout in (("chinchilla", 250, None), ("joint_moe", 300, "paper")):
        points = _points(law_name, n_points, seed=0)
        began = time.perf_counter()
        result = fit(points, law_name, holdout=holdout)
        seconds = time.perf_counter() - began
        print(json.dumps({
            "figure": f"{law_name}_full_grid_fit", "points": n_points, "starts": result.convergence["n_starts"],
            "starts_optimised": result.convergence["n_starts_optimised"], "wall_seconds": round(seconds, 2),
            "stage_seconds": {k: round(v, 2) for k, v in result.convergence["stage_seconds"].items()},
            "converged": result.converged, "train_rmse": result.train_rmse, "holdout_rmse": result.holdout_rmse,
            "target_seconds": 20}))


if __name__ == "__main__":
    main()

"""Embedded data sets for fitting laws without training anything.

In: a data set name. Out: a pandas DataFrame. ``clark2022`` is the run data released with Clark
et al. 2022 (DeepMind, CC-BY 4.0; see ``data/README.md``): 5,799 evaluations of 223 runs every
10,000 steps. ``clark_fit_subset`` selects the rows the paper fitted and names the columns the
``clark`` / ``clark_dense`` laws read: ``N`` (dense_parameter_count, parameters seen per token),
``E`` (num_experts, 1 for dense) and ``loss`` (a chosen loss column, nats/token).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

DATA_DIR = Path(__file__).resolve().parent / "data"
DATASETS = {"clark2022": DATA_DIR / "clark2022_curves.csv.gz"}
CLARK_ROUTERS = ("S-Base", "RL-R", "Hash")


def load_dataset(name: str) -> pd.DataFrame:
    """The raw table of data set ``name`` (one of ``DATASETS``)."""
    try:
        path = DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None
    return pd.read_csv(path)


def clark_fit_subset(curves: pd.DataFrame, router: str | None = "S-Base", loss_column: str = "loss_validation",
                     parameter_column: str = "dense_parameter_count", routing_frequency: float = 0.5,
                     top_k: int = 1, seed: int = 42) -> pd.DataFrame:
    """The paper's fit subset: the final evaluation of each run (hyper_id) with routing_frequency
    0.5, k = 1 and seed 42, for ``router`` plus the Dense runs (E = 1). ``router=None`` gives the
    Dense runs alone (for ``clark_dense``). Adds columns N, E, loss; sorted by (E, N)."""
    if router is not None and router not in CLARK_ROUTERS:
        raise ValueError(f"router {router!r}: choose one of {', '.join(CLARK_ROUTERS)} or None for dense only")
    if loss_column not in curves.columns:
        losses = [c for c in curves.columns if c.startswith("loss")]
        raise ValueError(f"loss column {loss_column!r} is not in the data; its loss columns: "
                         f"{', '.join(losses)}")
    if parameter_column not in curves.columns:
        raise ValueError(f"parameter column {parameter_column!r} is not in the data; its columns: "
                         f"{', '.join(curves.columns)}")
    final = curves.loc[curves.groupby("hyper_id")["step"].idxmax()]
    keep = ((final["routing_frequency"] - routing_frequency).abs() < 1e-9) & (final["k"] == top_k) \
        & (final["seed"] == seed)
    routers = ["Dense"] + ([router] if router is not None else [])
    subset = final[keep & final["router_type"].isin(routers)].copy()
    subset["N"] = subset[parameter_column].astype(float)
    subset["E"] = subset["num_experts"].astype(float)
    subset["loss"] = subset[loss_column].astype(float)
    return subset.sort_values(["E", "N"]).reset_index(drop=True)

"""Design grids: a gin grid in, trained runs, points, a fitted law and a report out.

``grid`` declares and expands a grid (pure), ``constraints`` derives or drops points (active
parameters at finer granularity, depth and width for a budget, learning rate, steps from tokens or
FLOPs), ``launch`` makes run directories and a manifest and runs them (local processes, or printed
commands), ``tpu_vm`` runs them on a Cloud TPU VM through gcloud, then evaluation, fit and report
(``report``). The command is ``moejax sweep``.
"""

from moejax.sweep.grid import Grid, GridPoint, expand, load_grid, top_k_at_most_experts

__all__ = ["Grid", "GridPoint", "expand", "load_grid", "top_k_at_most_experts"]

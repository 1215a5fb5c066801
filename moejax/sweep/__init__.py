"""Design grids: a gin grid in, trained runs, points, a fitted law and a report out.

``grid`` declares and expands a grid (pure), ``launch`` makes run directories and a manifest and
runs them (local processes, or printed commands), then evaluates, fits and reports
(``report``). The command is ``moejax sweep``.
"""

from moejax.sweep.grid import Grid, GridPoint, expand, load_grid, top_k_at_most_experts

__all__ = ["Grid", "GridPoint", "expand", "load_grid", "top_k_at_most_experts"]

"""Design grids declared in gin, expanded into runs.

In: a grid gin file binding ``Grid.*`` — the base run config files, fixed bindings, axes (any gin
binding with a list of values), constraints, and the evaluation and fit to run afterwards.
Out: ``expand(grid)`` -> the list of ``GridPoint``s (one per kept combination, in axis order) and
the dropped combinations with the reason; each point is a set of gin bindings that, added to the
base files, is a complete run config.

Constraints are callables ``(bindings: dict) -> dict | str``: return the (possibly changed)
bindings to keep a point, or a string saying why it is dropped. ``valid_model`` (the default)
drops combinations the model validation rejects, e.g. top-k larger than the expert count.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, Callable, Sequence

import gin

from moejax.errors import ConfigError

Constraint = Callable[[dict], "dict | str"]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Grid:
    """A design grid.

    Attributes:
      name: the grid's name (prefix of every run id).
      base_gin_files: run config files every point starts from (paths or names under configs/).
      bindings: gin bindings shared by every point, e.g. ('TrainConfig.steps = 60',).
      axes: {binding name: [values]}; the grid is their cartesian product, first axis slowest.
      constraints: callables applied in order to each combination (see module docstring).
      eval_steps: which checkpoints ``moejax eval`` scores afterwards: 'latest', 'all' or 'N,M'.
      fit_law: a law name for ``moejax fit`` after evaluation (None: no fit).
      fit_columns: the law-variable mapping for the fit, e.g. 'N=n_active,D=tokens_seen,loss=loss'.
    """

    name: str = "grid"
    base_gin_files: Sequence[str] = ()
    bindings: Sequence[str] = ()
    axes: dict = dataclasses.field(default_factory=dict)
    constraints: Sequence[Constraint] = ()
    eval_steps: str = "all"
    fit_law: str | None = None
    fit_columns: str = ""


@dataclasses.dataclass(frozen=True)
class GridPoint:
    run_id: str
    values: dict  # axis binding -> value
    bindings: tuple[str, ...]  # the grid's fixed bindings then one per axis

    def gin_text(self, grid: Grid) -> str:
        """The complete run config: includes of the base files, then every binding."""
        lines = [f"# {grid.name}: {self.run_id}"]
        lines += [f"include '{path}'" for path in grid.base_gin_files]
        lines += list(self.bindings)
        return "\n".join(lines) + "\n"


def _short(name: str) -> str:
    return name.split(".")[-1]


def run_id(grid_name: str, index: int, values: dict) -> str:
    """'<grid>-<index>-<knob><value>_...', filesystem-safe and stable for a given grid."""
    parts = [f"{_short(k)}{v}" for k, v in values.items()]
    tail = re.sub(r"[^A-Za-z0-9.=_-]+", "", "_".join(parts))[:80]
    return f"{grid_name}-{index:03d}" + (f"-{tail}" if tail else "")


def combinations(axes: dict) -> list[dict]:
    """The cartesian product of the axes as dicts, the first axis varying slowest."""
    names = list(axes)
    for name in names:
        if not isinstance(axes[name], (list, tuple)) or not axes[name]:
            raise ConfigError(f"Grid.axes[{name!r}] = {axes[name]!r}: each axis needs a non-empty "
                              "list of values")
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


def _binding(name: str, value: Any) -> str:
    return f"{name} = {value!r}"


def expand(grid: Grid) -> tuple[list[GridPoint], list[tuple[dict, str]]]:
    """(kept points, [(dropped combination, reason)]) of the grid, in axis order."""
    kept, dropped = [], []
    for values in combinations(dict(grid.axes)):
        point: dict | str = dict(values)
        for constraint in grid.constraints:
            point = constraint(point)
            if isinstance(point, str):
                break
        if isinstance(point, str):
            dropped.append((values, point))
            continue
        index = len(kept)
        kept.append(GridPoint(run_id(grid.name, index, point), point,
                              tuple(grid.bindings) + tuple(_binding(k, v) for k, v in point.items())))
    return kept, dropped


@gin.configurable
def top_k_at_most_experts(point: dict) -> dict | str:
    """Drop combinations whose MoEConfig.top_k exceeds MoEConfig.num_experts."""
    experts, top_k = point.get("MoEConfig.num_experts"), point.get("MoEConfig.top_k")
    if experts is not None and top_k is not None and top_k > experts:
        return f"MoEConfig.top_k = {top_k} > MoEConfig.num_experts = {experts}"
    return point


def load_grid(path: str) -> Grid:
    """Parse a grid gin file (it binds only Grid.* and constraint knobs) into a Grid."""
    from moejax.ginconf import parse_gin

    parse_gin([path], [])
    return Grid()

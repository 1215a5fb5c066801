"""Design grids declared in gin, expanded into runs.

In: a grid gin file binding ``Grid.*`` — the base run config files, fixed bindings, axes (any gin
binding with a list of values), constraints, and the evaluation and fit to run afterwards.
Out: ``expand(grid)`` -> the list of ``GridPoint``s (one per kept combination, in axis order) and
the dropped combinations with the reason; each point is a set of gin bindings that, added to the
base files, is a complete run config.

Axes come in three kinds:

- a gin binding, ``'MoEConfig.num_experts': [8, 16]``;
- zipped bindings that vary together, ``'ModelConfig.n_layers, ModelConfig.d_model': [(8, 512),
  (16, 1024)]`` (one value tuple per point, not a product: a ladder of model sizes, or the rows of
  a published table);
- a derived input without a dot, ``'tokens': [5e9, 1e10]``: not a gin knob, so some constraint
  must read it and turn it into bindings (``steps_from_tokens``); it is recorded in the manifest
  and as a comment in the run config. An input no constraint reads is an error (a misspelt knob).

Constraints are callables ``(bindings: dict) -> dict | str``: return the (possibly changed)
bindings to keep a point, or a string saying why it is dropped. The library is
``moejax.sweep.constraints``; ``top_k_at_most_experts`` drops top-k larger than the expert count.
"""

from __future__ import annotations

import ast
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
        lines += [f"# {k} = {v!r} (derived input)" for k, v in self.values.items() if is_derived(k)]
        lines += [f"include '{path}'" for path in grid.base_gin_files]
        lines += list(self.bindings)
        return "\n".join(lines) + "\n"


def is_derived(name: str) -> bool:
    """A derived input ('tokens', 'granularity') rather than a gin binding ('Class.knob')."""
    return "." not in name


def short_knob(name: str) -> str:
    """'MoEConfig.top_k' -> 'top_k' (run ids, report columns)."""
    return name.split(".")[-1]


def _short_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_id(grid_name: str, index: int, values: dict) -> str:
    """'<grid>-<index>-<knob><value>_...' over the axis values (what constraints derive follows
    from them), filesystem-safe and stable for a given grid."""
    parts = [f"{short_knob(k)}{_short_value(v)}" for k, v in values.items()]
    tail = re.sub(r"[^A-Za-z0-9.=_-]+", "", "_".join(parts))[:80]
    return f"{grid_name}-{index:03d}" + (f"-{tail}" if tail else "")


def axis_names(axis: str) -> list[str]:
    """The binding names of one axis: 'a, b' (zipped) -> ['a', 'b']."""
    return [name.strip() for name in axis.split(",")]


def _axis_points(axis: str, values: Any) -> list[dict]:
    """One axis as a list of {name: value}; zipped axes need tuples of matching length."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"Grid.axes[{axis!r}] = {values!r}: each axis needs a non-empty list of "
                          "values")
    names = axis_names(axis)
    if len(names) == 1:
        return [{names[0]: value} for value in values]
    for value in values:
        if not isinstance(value, (list, tuple)) or len(value) != len(names):
            raise ConfigError(f"Grid.axes[{axis!r}] has the value {value!r}: a zipped axis of "
                              f"{len(names)} names needs tuples of {len(names)} values")
    return [dict(zip(names, value)) for value in values]


def combinations(axes: dict) -> list[dict]:
    """The cartesian product of the axes as dicts, the first axis varying slowest."""
    per_axis = [_axis_points(axis, values) for axis, values in axes.items()]
    names = [name for axis in axes for name in axis_names(axis)]
    if len(set(names)) != len(names):
        raise ConfigError(f"Grid.axes names a binding twice: {sorted(names)}")
    return [{k: v for part in parts for k, v in part.items()}
            for parts in itertools.product(*per_axis)]


class _ReadTracker(dict):
    """A point that remembers which keys a constraint looked up (to catch unread inputs)."""

    def __init__(self, point: dict, read: set):
        super().__init__(point)
        self._read = read

    def __getitem__(self, key):
        self._read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self._read.add(key)
        return super().__contains__(key)


def _binding(name: str, value: Any) -> str:
    return f"{name} = {value!r}"


def fixed_values(bindings: Sequence[str]) -> dict:
    """{name: value} of the grid's fixed bindings whose value is a Python literal (the ones a
    constraint can read; references such as '@MoEConfig()' are left out)."""
    values = {}
    for binding in bindings:
        name, _, text = binding.partition("=")
        try:
            values[name.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            continue
    return values


def expand(grid: Grid) -> tuple[list[GridPoint], list[tuple[dict, str]]]:
    """(kept points, [(dropped combination, reason)]) of the grid, in axis order.

    Each constraint sees the axis values over the grid's literal fixed bindings, so it can read,
    say, ``DataConfig.batch_size`` from ``Grid.bindings``; the base gin files are not read. A
    point keeps the axis values and whatever the constraints changed or added.
    """
    fixed = fixed_values(grid.bindings)
    kept, dropped, read = [], [], set()
    for values in combinations(dict(grid.axes)):
        point: dict | str = {**fixed, **values}
        for constraint in grid.constraints:
            point = constraint(_ReadTracker(point, read))
            if isinstance(point, str):
                break
            point = dict(point)
        if isinstance(point, str):
            dropped.append((values, point))
            continue
        point = {**{k: point[k] for k in values if k in point},
                 **{k: v for k, v in point.items()
                    if k not in values and (k not in fixed or v != fixed[k])}}
        index = len(kept)
        bindings = tuple(_binding(k, v) for k, v in point.items() if not is_derived(k))
        kept.append(GridPoint(run_id(grid.name, index, values), point,
                              tuple(grid.bindings) + bindings))
    unread = sorted({name for axis in grid.axes for name in axis_names(axis)
                     if is_derived(name) and name not in read})
    if unread:
        raise ConfigError(f"Grid.axes {unread} are neither gin bindings ('Class.knob') nor read by "
                          f"any of Grid.constraints {[_name(c) for c in grid.constraints]}: a "
                          "misspelt knob, or a missing constraint")
    return kept, dropped


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", repr(fn))


@gin.configurable
def top_k_at_most_experts(point: dict) -> dict | str:
    """Drop combinations whose MoEConfig.top_k exceeds MoEConfig.num_experts."""
    if "ModelConfig.moe" in point and point["ModelConfig.moe"] is None:
        return point  # a dense point: the MoE knobs are unused
    experts, top_k = point.get("MoEConfig.num_experts"), point.get("MoEConfig.top_k")
    if experts is not None and top_k is not None and top_k > experts:
        return f"MoEConfig.top_k = {top_k} > MoEConfig.num_experts = {experts}"
    return point


def check_bindings(grid: Grid, points: Sequence[GridPoint]) -> None:
    """Parse the base files and the bindings of each distinct set of knobs the points bind, so a
    misspelt knob fails before any run starts (GinConfigError naming it, with close names)."""
    from moejax.ginconf import GinConfigError, parse_gin

    seen = set()
    for point in points:
        knobs = tuple(b.partition("=")[0].strip() for b in point.bindings)
        if knobs in seen:
            continue
        seen.add(knobs)
        try:
            parse_gin(grid.base_gin_files, point.bindings)
        except GinConfigError as e:
            raise GinConfigError(f"grid {grid.name!r}, run {point.run_id}: {e}") from None


def check_after_training(grid: Grid) -> None:
    """Check what runs only after every run trained (which checkpoints to score, the law and its
    column mapping), so a misspelt law fails before the first run, not hours later."""
    from moejax.eval.score import parse_steps
    from moejax.laws.fitting import LOSS_KEY, FitInputError, parse_columns
    from moejax.laws.forms import get_law

    try:
        parse_steps(str(grid.eval_steps))
    except ValueError as e:
        raise ConfigError(f"Grid.eval_steps = {grid.eval_steps!r}: {e}") from None
    if grid.fit_law is None:
        if grid.fit_columns:
            raise ConfigError(f"Grid.fit_columns = {grid.fit_columns!r} but Grid.fit_law is None: "
                              "name the law to fit, or leave out the columns")
        return
    try:
        law = get_law(grid.fit_law)
    except KeyError as e:
        raise ConfigError(f"Grid.fit_law = {grid.fit_law!r}: {e.args[0]}") from None
    known = (*law.variable_names, LOSS_KEY)
    try:
        columns = parse_columns(str(grid.fit_columns))
    except FitInputError as e:
        raise ConfigError(f"Grid.fit_columns = {grid.fit_columns!r}: {e}") from None
    for key in columns:
        if key not in known:
            raise ConfigError(f"Grid.fit_columns = {grid.fit_columns!r}: {key!r} is not a variable "
                              f"of law {law.name!r} (variables: {', '.join(known)})")


def load_grid(path: str) -> Grid:
    """Parse a grid gin file (it binds only Grid.* and constraint knobs) into a Grid, its
    evaluation and fit checked (``check_after_training``)."""
    from moejax.ginconf import parse_gin

    parse_gin([path], [])
    grid = Grid()
    check_after_training(grid)
    return grid

"""``moejax fit``: fit a scaling law to scored points and write results, a report and plots.

In: ``--points=FILE`` (``moejax eval``'s JSONL, CSV or Parquet, or any CSV) or
``--dataset=clark2022`` (the embedded Clark et al. 2022 runs, subset as in the paper for
``--router``), ``--law=NAME``, optional ``--columns=N=n_active,D=tokens,loss=val_loss``,
``--holdout``, ``--bootstrap=N``.
Out, in ``--out=DIR`` (each file written atomically): ``fit.json`` (the ``FitResult``),
``report.md`` (parameters with confidence intervals, RMSE, convergence), and PNG plots:
``fitted_vs_observed.png``, ``residuals.png``, ``loss_vs_compute.png`` (points and the fitted
compute-optimal frontier per expert count), ``iso_loss.png`` (contours of the fitted law).
A bad input (an option out of range, an unreadable or empty points file, an --out that cannot be
a directory) stops the command before fitting with ``moejax fit: error: ...`` on stderr, exit 2,
and nothing written.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from moejax import files
from moejax.arguments import integer_at_least
from moejax.laws.datasets import CLARK_ROUTERS, DATASETS, clark_fit_subset, load_dataset
from moejax.laws.fitting import FitInputError, FitResult, fit, parse_columns, predict
from moejax.laws.forms import get_law, list_laws


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--points", type=Path,
                        help="scored points (CSV, JSONL or Parquet, as moejax eval writes them)")
    source.add_argument("--dataset", choices=sorted(DATASETS), help="an embedded data set")
    parser.add_argument("--law", default=None, help=f"law to fit: {', '.join(list_laws())} "
                        "(default: clark for --dataset, chinchilla for --points)")
    parser.add_argument("--router", default="S-Base", help=f"clark2022 router: {', '.join(CLARK_ROUTERS)} "
                        "or 'dense' (Dense runs only)")
    parser.add_argument("--loss-column", default="loss_validation", help="clark2022 loss column")
    parser.add_argument("--columns", default="", help="law_var=column,... (e.g. N=n_active,loss=val_loss)")
    parser.add_argument("--holdout", type=_holdout, default=None,
                        help="'paper', 'lowest:K', K or a fraction of lowest-loss runs")
    parser.add_argument("--bootstrap", type=integer_at_least(0), default=0,
                        help="number of bootstrap refits (0: none)")
    parser.add_argument("--confidence", type=_confidence, default=0.95,
                        help="bootstrap interval level, between 0 and 1")
    parser.add_argument("--seed", type=integer_at_least(0), default=0,
                        help="bootstrap resampling seed")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# argparse types: a bad value stops the command before anything is read or fitted.

def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"{text} is not between 0 and 1 (exclusive); e.g. 0.95 for 95 % intervals")
    return value


def _holdout(text: str) -> str | int | float:
    """'paper' or 'none' as given, K (also 'lowest:K') as an int, a fraction in (0, 1) as is."""
    if text in ("paper", "none"):
        return text
    count = text.removeprefix("lowest:")
    if count.isascii() and count.isdigit():
        return int(count)
    try:
        fraction = float(text)
    except ValueError:
        fraction = None
    if fraction is not None and 0 < fraction < 1:
        return fraction
    raise argparse.ArgumentTypeError(
        f"{text!r}: give 'paper', 'none', 'lowest:K' or K (hold out the K lowest-loss runs, K a "
        "whole number) or a fraction between 0 and 1 of them")


def _load_points(args) -> tuple[pd.DataFrame, str]:
    if args.points is not None:
        return read_points_table(str(args.points)), args.law or "chinchilla"
    curves = load_dataset(args.dataset)
    router = None if args.router.lower() == "dense" else args.router
    law = args.law or ("clark_dense" if router is None else "clark")
    return clark_fit_subset(curves, router, loss_column=args.loss_column), law


def read_points_table(path: str) -> pd.DataFrame:
    """Points from ``moejax eval`` (JSON lines, CSV or Parquet, schema-checked) or any user CSV.
    Raises ``FitInputError`` naming ``path`` when it cannot be read or holds no points."""
    if os.path.isdir(path):
        raise FitInputError(f"points file {path} is a directory; give a CSV, JSONL or Parquet file")
    try:
        if os.path.getsize(path) == 0:
            raise FitInputError(f"points file {path} is empty")
        table = _read_points_file(path)
        if len(table) == 0:
            with open(path, "rb") as f:
                blank = not f.read().strip()
            raise FitInputError(f"points file {path} is empty" if blank else
                                f"{path} holds no points: it names columns but has no rows")
    except FileNotFoundError:
        raise FitInputError(f"points file {path} does not exist") from None
    except UnicodeDecodeError as err:
        raise FitInputError(f"{path} is not a points file: not UTF-8 text ({err.reason} at byte "
                            f"{err.start})") from None
    except OSError as err:
        raise FitInputError(f"cannot read points file {path}: {err.strerror or err}") from None
    return table


def _read_points_file(path: str) -> pd.DataFrame:
    from moejax.eval.points import (  # light: no TensorFlow
        SCHEMA_VERSION, SUFFIX_FORMATS, PointsError, SchemaVersionError, load_points)

    suffix_format = SUFFIX_FORMATS.get(os.path.splitext(path)[1].lower())
    if suffix_format in ("jsonl", "parquet"):  # only moejax eval's points come in these formats
        try:
            return load_points(path)
        except SchemaVersionError:
            if _claims_schema(path, suffix_format):
                raise  # moejax eval's points of another version: the message says what to do
            raise FitInputError(
                f"{path} is not a moejax eval points file: its points have no schema_version. "
                f"moejax eval writes schema_version ({SCHEMA_VERSION}), run_id and step in every "
                "point; write hand-made points as CSV instead (any column names, mapped to the "
                "law's variables with --columns)") from None
    try:
        return load_points(path)  # a CSV from moejax eval (typed, schema-checked)
    except PointsError:
        if _claims_schema(path, "csv"):
            raise  # a CSV from moejax eval that fails its check is not read as a plain table
    try:
        return pd.read_csv(path)  # a CSV that did not come from moejax eval
    except pd.errors.EmptyDataError:
        raise FitInputError(f"points file {path} is empty") from None
    except (ValueError, pd.errors.ParserError) as err:  # also UnicodeDecodeError
        raise FitInputError(f"{path} is not a readable CSV file ({err})") from None


def _claims_schema(path: str, format: str) -> bool:
    """Whether the file says it is moejax eval output: a schema_version column or field."""
    if format == "parquet":
        import pyarrow.parquet as pq

        return "schema_version" in pq.read_schema(path).names
    with open(path, newline="", errors="replace") as f:
        if format == "csv":
            return "schema_version" in next(csv.reader(f), [])
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "schema_version" in record:
                return True
    return False


def _check_out(out: Path) -> None:
    """Refuse an --out that cannot become a directory before any fitting (and create nothing)."""
    problem = files.directory_problem(out)
    if problem:
        raise FitInputError(f"--out {out}: {problem}")


def _write_outputs(out: Path, outputs: dict[str, bytes]) -> None:
    """Each file atomically; if one cannot be written, the new files and directories this run
    made are removed again (the results of an earlier fit it replaced cannot come back)."""
    created = [p for p in (out, *out.parents) if not p.exists()]  # the leaf first
    new = [out / name for name in outputs if not (out / name).exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, payload in outputs.items():
            files.write_atomic(out / name, payload)
    except OSError:
        for path in new:
            path.unlink(missing_ok=True)
        for directory in created:
            try:
                directory.rmdir()
            except OSError:
                break
        raise


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render_report(result: FitResult, source: str) -> str:
    law = get_law(result.law)
    lines = [f"# Fit of `{law.name}` to {source}", "", f"Form: {law.description}  ", f"Reference: {law.reference}", "",
             "## Parameters", ""]
    has_ci = bool(result.intervals)
    published = next(iter(law.published.values()), {})
    headers = ["parameter", "value"] + ([f"{100 * result.confidence:g} % CI"] if has_ci else []) + \
        (["published"] if published else [])
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name in law.parameter_names:
        row = f"| {name} | {_fmt(result.parameters[name])} |"
        if has_ci:
            low, high = result.intervals[name]
            row += f" [{_fmt(low)}, {_fmt(high)}] |"
        if published:
            row += f" {_fmt(published.get(name))} |"
        lines.append(row)
    converged = result.bootstrap_converged_fraction
    if has_ci and converged is not None and converged < 0.5:
        refits = len(result.bootstrap_parameters)
        lines += ["", f"**Caution:** only {round(converged * refits)} of {refits} bootstrap refits "
                  "converged, so these intervals mostly span refits stopped short: the points pin "
                  "this law down poorly (too few runs, or too little spread in its variables)."]
    conv = result.convergence
    lines += ["", "## Quality", "", "| quantity | value |", "|---|---|",
              f"| training points | {result.n_train} |", f"| held-out points | {result.n_holdout} |",
              f"| objective (sum of {'Huber δ=' + _fmt(result.huber_delta) if result.huber_delta else 'squared error'}"
              f" / 2 on ln L) | {_fmt(result.objective)} |",
              f"| train RMSE of ln L | {_fmt(result.train_rmse)} |",
              f"| held-out RMSE of ln L | {_fmt(result.holdout_rmse)} |",
              "", "## Convergence", "", "| quantity | value |", "|---|---|",
              f"| converged | {result.converged} |"]
    for key in ("method", "n_starts", "n_starts_optimised", "n_starts_converged", "n_starts_at_best",
                "newton_iterations", "lbfgs_message", "lbfgs_iterations", "gradient_max_abs", "selection"):
        lines.append(f"| {key} | {_fmt(conv.get(key))} |")
    if result.bootstrap_parameters:
        unit = "rows" if result.bootstrap_unit == "row" else f"whole runs (`{result.bootstrap_unit}`)"
        lines.append(f"| bootstrap refits | {len(result.bootstrap_parameters)} "
                     f"({100 * result.bootstrap_converged_fraction:.0f} % converged), resampling {unit} |")
    lines += ["", f"Fitted in {result.seconds:.1f} s.", ""]
    return "\n".join(lines)


def _png(figure) -> bytes:
    return files.figure_png(figure, dpi=120, bbox_inches="tight")


def make_plots(result: FitResult, points: pd.DataFrame) -> dict[str, bytes]:
    """PNG bytes by file name. Uses matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    law = get_law(result.law)
    columns = result.columns
    observed = points[columns["loss"]].to_numpy(dtype=float)
    predicted = predict(result, points)
    variables = {name: points[columns[name]].to_numpy(dtype=float) for name in law.variable_names}
    colour_key = "E" if "E" in variables else ("G" if "G" in variables else ("S" if "S" in variables else None))
    colours = np.log(variables[colour_key] + 1e-9 if colour_key != "S" else 1 - variables["S"]) \
        if colour_key else None
    plots = {}

    figure, axis = plt.subplots(figsize=(5, 5))
    scatter = axis.scatter(observed, predicted["loss_pred"], c=colours, s=14,
                           cmap="viridis" if colours is not None else None)
    if "loss_lower" in predicted:
        # A percentile band need not contain the point fit; clip so error bars stay non-negative.
        below = np.clip(predicted["loss_pred"] - predicted["loss_lower"], 0, None)
        above = np.clip(predicted["loss_upper"] - predicted["loss_pred"], 0, None)
        axis.errorbar(observed, predicted["loss_pred"], yerr=[below, above], fmt="none", ecolor="0.6", lw=0.8)
    low, high = observed.min(), observed.max()
    axis.plot([low, high], [low, high], "k--", lw=1)
    axis.set(xlabel="observed loss", ylabel="fitted loss", title=f"{law.name}: fitted vs observed")
    if colour_key:
        figure.colorbar(scatter, label=f"ln {colour_key if colour_key != 'S' else '(1 - S)'}")
    plots["fitted_vs_observed.png"] = _png(figure)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.scatter(variables["N"], np.log(observed) - np.log(predicted["loss_pred"]), c=colours, s=14)
    axis.axhline(0, color="k", lw=1)
    axis.set(xscale="log", xlabel="N", ylabel="ln L_obs − ln L_fit", title=f"{law.name}: residuals")
    plots["residuals.png"] = _png(figure)
    plt.close(figure)

    fixed_values = sorted(set(variables[colour_key])) if colour_key else [None]
    if len(fixed_values) > 8:
        fixed_values = list(np.unique(np.quantile(variables[colour_key], np.linspace(0, 1, 6), method="nearest")))
    cmap = plt.get_cmap("viridis")
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    if "D" in variables:
        compute = 6.0 * variables["N"] * variables["D"]
        axis.scatter(compute, observed, c=colours, s=12, alpha=0.6)
        from moejax.plan.optimal import compute_optimal_frontier

        budgets = np.geomspace(compute.min(), compute.max() * 10, 40)
        for index, value in enumerate(fixed_values):
            fixed = {} if value is None else {colour_key: value}
            others = {k: float(np.median(v)) for k, v in variables.items() if k not in ("N", "D", colour_key)}
            _, _, frontier = compute_optimal_frontier(law.name, result.parameters, budgets, **fixed, **others)
            label = "frontier" if value is None else f"{colour_key}={value:g}"
            axis.plot(budgets, frontier, color=cmap(index / max(len(fixed_values) - 1, 1)), label=label)
        axis.set(xlabel="training compute 6 N D (FLOPs)",
                 title=f"{law.name}: loss vs compute, compute-optimal frontier")
    else:  # no token variable (Clark): loss against parameters per expert count
        axis.scatter(variables["N"], observed, c=colours, s=12, alpha=0.6)
        grid = np.geomspace(variables["N"].min(), variables["N"].max(), 50)
        for index, value in enumerate(fixed_values):
            inputs = {"N": grid, **({} if value is None else {colour_key: np.full_like(grid, value)})}
            label = "fit" if value is None else f"{colour_key}={value:g}"
            axis.plot(grid, law.predict(result.parameters, inputs), color=cmap(index / max(len(fixed_values) - 1, 1)),
                      label=label)
        axis.set(xlabel="N (parameters per token; compute ∝ N at fixed tokens)",
                 title=f"{law.name}: loss vs N per expert count")
    axis.set(xscale="log", yscale="log", ylabel="loss")
    axis.legend(fontsize=7)
    plots["loss_vs_compute.png"] = _png(figure)
    plt.close(figure)

    second = "D" if "D" in variables else colour_key
    if second is not None:
        figure, axis = plt.subplots(figsize=(6, 4.5))
        n_grid = np.geomspace(variables["N"].min(), variables["N"].max(), 80)
        low, high = variables[second].min(), variables[second].max()
        other_grid = np.geomspace(low, max(high, low * 1.01), 80) if second != "S" else np.linspace(0, high, 80)
        n_mesh, other_mesh = np.meshgrid(n_grid, other_grid)
        inputs = {"N": n_mesh.ravel(), second: other_mesh.ravel()}
        for name in law.variable_names:
            if name not in inputs:
                inputs[name] = np.full(n_mesh.size, float(np.median(variables[name])))
        surface = law.predict(result.parameters, inputs).reshape(n_mesh.shape)
        contours = axis.contour(n_mesh, other_mesh, surface, levels=12, cmap="viridis")
        axis.clabel(contours, fontsize=7, fmt="%.3g")
        axis.scatter(variables["N"], variables[second], s=6, c="k", alpha=0.4)
        axis.set(xscale="log", yscale="log" if second != "S" else "linear", xlabel="N", ylabel=second,
                 title=f"{law.name}: iso-loss contours")
        plots["iso_loss.png"] = _png(figure)
        plt.close(figure)
    return plots


def _error(message) -> int:
    print(f"moejax fit: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    try:
        _check_out(args.out)
        points, law_name = _load_points(args)
        # Points of one run (its checkpoints, from moejax eval) are not independent draws: the
        # bootstrap resamples whole runs when the points name them.
        run_column = "run_id" if "run_id" in points.columns else None
        result = fit(points, law_name, columns=parse_columns(args.columns), holdout=args.holdout,
                     bootstrap=args.bootstrap, confidence=args.confidence, seed=args.seed,
                     run_column=run_column, progress=not args.no_progress)
    except KeyError as err:  # str() of a KeyError quotes its message
        return _error(err.args[0] if err.args else err)
    except (FitInputError, ValueError, OSError) as err:
        return _error(err)
    source = str(args.points) if args.points is not None else f"{args.dataset} ({args.router}, {args.loss_column})"
    # Everything is rendered before the first file is written: a failure leaves nothing behind.
    outputs = {"fit.json": result.to_json().encode(),
               "report.md": render_report(result, source).encode(), **make_plots(result, points)}
    try:
        _write_outputs(args.out, outputs)
    except OSError as err:
        return _error(f"cannot write the results to --out {args.out}: {err}")
    print(json.dumps({"law": result.law, "parameters": result.parameters, "train_rmse": result.train_rmse,
                      "holdout_rmse": result.holdout_rmse, "converged": result.converged, "out": str(args.out)}))
    return 0 if result.converged else 1

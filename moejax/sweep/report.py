"""The sweep report: a Markdown table of runs, one figure of every run's loss curve, and the
fitted law with its plots.

In: the sweep root, its manifest and what evaluation and the fit produced. Out:
``<root>/report.md`` and ``<root>/loss_curves.png`` (both written atomically); the fit's own
plots (fitted vs observed, loss against compute with the compute-optimal frontier) are shown
from ``<root>/fit/``.
"""

from __future__ import annotations

import json
import os

from moejax import files
from moejax.sweep.grid import short_knob
from moejax.train import kernel_log
from moejax.train.loop import last_validation
from moejax.train.metrics import load_jsonl


def _plot_curves(root: str, runs: list[dict]) -> str | None:
    curves = []
    for run in runs:
        path = os.path.join(run["dir"], "eval.jsonl")
        if os.path.exists(path):
            all_records = load_jsonl(path)
            mixture = all_records[0]["task"] if all_records else None  # logged first
            records = [r for r in all_records if r["task"] == mixture]
            if records:
                curves.append((run["run_id"], sorted((r["step"], r["loss"]) for r in records)))
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, points in curves:
        ax.plot(*zip(*points), marker="o", ms=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(root, "loss_curves.png")
    files.write_figure(path, fig, dpi=110)
    plt.close(fig)
    return path


def _fit_section(fit_dir: str, converged: bool | None) -> list[str]:
    """The fitted law: parameters, error and the fit's plots (paths relative to the root)."""
    path = os.path.join(fit_dir, "fit.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        fit = json.load(f)
    state = "converged" if fit.get("converged", converged) else "did **not** converge"
    lines = ["", f"## Fitted law: `{fit['law']}` ({state})", "",
             f"{fit['n_train']} points; RMSE of ln L {fit['train_rmse']:.4g}. Details: "
             "[`fit/report.md`](fit/report.md).", "", "| parameter | value |", "|---|---|"]
    lines += [f"| {name} | {value:.6g} |" for name, value in fit["parameters"].items()]
    plots = [("fitted_vs_observed.png", "fitted against observed loss"),
             ("loss_vs_compute.png", "loss against training compute, with the fitted "
              "compute-optimal frontier"),
             ("iso_loss.png", "iso-loss contours of the fitted law")]
    for name, caption in plots:
        if os.path.exists(os.path.join(fit_dir, name)):
            lines += ["", f"![{caption}](fit/{name})"]
    return lines


def write_report(root: str, manifest: dict, outcome: dict) -> str:
    knobs = list(dict.fromkeys(k for run in manifest["runs"] for k in run.get("values", {})))
    lines = [f"# Sweep `{manifest['grid']}`", "",
             "| run | " + "".join(f"{short_knob(k)} | " for k in knobs)
             + "status | minutes | validation loss (mixture) | expert matmuls |",
             "|---|" + "---|" * len(knobs) + "---|---|---|---|"]
    for run in manifest["runs"]:
        scores = last_validation(run["dir"])
        mixture = next(iter(scores.values()), None) if scores else None
        loss = f"{mixture:.4f}" if mixture is not None else "—"
        minutes = f"{run['seconds'] / 60:.1f}" if run.get("seconds") else "—"
        values = "".join(f"{run.get('values', {}).get(k, '—')} | " for k in knobs)
        kernels = kernel_log.describe(run["dir"]) or "—"
        lines.append(f"| {run['run_id']} | {values}{run['status']} | {minutes} | {loss} | "
                     f"{kernels} |")
    if manifest.get("dropped"):
        lines += ["", "Dropped by constraints:", ""]
        lines += [f"- {d['values']}: {d['reason']}" for d in manifest["dropped"]]
    curves = _plot_curves(root, manifest["runs"])
    if curves:
        lines += ["", "![validation loss of every run](loss_curves.png)"]
    if outcome.get("points"):
        lines += ["", f"Points: `{os.path.relpath(outcome['points'], root)}`."]
    if outcome.get("fit"):
        lines += _fit_section(outcome["fit"], outcome.get("fit_converged"))
    elif outcome.get("fit_error"):
        lines += ["", f"Fit failed: {outcome['fit_error'].rstrip('.')}."]
    path = os.path.join(root, "report.md")
    files.write_atomic(path, "\n".join(lines) + "\n")
    return path

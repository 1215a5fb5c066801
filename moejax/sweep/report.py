"""The sweep report: a Markdown table of runs and one figure of every run's loss curve.

In: the sweep root, its manifest and what evaluation and the fit produced. Out:
``<root>/report.md`` and ``<root>/loss_curves.png`` (both written atomically).
"""

from __future__ import annotations

import os

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
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return path


def write_report(root: str, manifest: dict, outcome: dict) -> str:
    lines = [f"# Sweep `{manifest['grid']}`", "",
             "| run | status | " + "validation loss (mixture) |", "|---|---|---|"]
    for run in manifest["runs"]:
        scores = last_validation(run["dir"])
        mixture = next(iter(scores.values()), None) if scores else None
        loss = f"{mixture:.4f}" if mixture is not None else "—"
        lines.append(f"| {run['run_id']} | {run['status']} | {loss} |")
    if manifest.get("dropped"):
        lines += ["", "Dropped by constraints:", ""]
        lines += [f"- {d['values']}: {d['reason']}" for d in manifest["dropped"]]
    curves = _plot_curves(root, manifest["runs"])
    if curves:
        lines += ["", "![validation loss of every run](loss_curves.png)"]
    if outcome.get("points"):
        lines += ["", f"Points: `{os.path.relpath(outcome['points'], root)}`."]
    if outcome.get("fit"):
        lines += ["Fit: [`fit/report.md`](fit/report.md)."]
    elif outcome.get("fit_error"):
        lines += [f"Fit failed: {outcome['fit_error']}."]
    path = os.path.join(root, "report.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    return path

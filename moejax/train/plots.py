"""Loss curves of a run directory as a PNG.

In: ``metrics.jsonl`` and ``eval.jsonl`` of a workdir. Out: ``<workdir>/loss_curve.png`` with the
training loss (and its cross-entropy part) and every validation task's loss against step, written
atomically (``moejax.files``).
"""

from __future__ import annotations

import os

from moejax import files
from moejax.train.metrics import load_jsonl


def plot_loss_curves(workdir: str) -> str | None:
    """Write loss_curve.png; returns its path, or None when there is nothing to plot."""
    train_path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(train_path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = load_jsonl(train_path)
    evals = load_jsonl(os.path.join(workdir, "eval.jsonl")) if os.path.exists(
        os.path.join(workdir, "eval.jsonl")) else []
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    steps = [r["step"] for r in train]
    ax.plot(steps, [r["ce_loss"] for r in train], lw=0.8, alpha=0.6, label="train cross-entropy")
    for task in sorted({r["task"] for r in evals}):
        points = sorted((r["step"], r["loss"]) for r in evals if r["task"] == task)
        ax.plot(*zip(*points), marker="o", ms=3, label=f"validation: {task}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(os.path.basename(os.path.abspath(workdir)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(workdir, "loss_curve.png")
    files.write_figure(path, fig, dpi=120)
    plt.close(fig)
    return path

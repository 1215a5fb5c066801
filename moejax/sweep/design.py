"""A grid's design before any compute is spent: one line per run with its axis values and what
its configs amount to (``moejax.model.describe``: total and active parameters, training tokens
and FLOPs), printed by ``moejax sweep --dry_run``.

In: the manifest's runs (each with its ``dir`` holding the complete ``run.gin``). Out: a text
table; a run whose configs fail validation shows the error in place of the numbers.
"""

from __future__ import annotations

import os

from moejax.errors import ConfigError


def design_rows(runs: list[dict]) -> list[dict]:
    """Per run: run_id, its axis values and the summary numbers, or the error."""
    from moejax.ginconf import GinConfigError
    from moejax.model.describe import summary
    from moejax.train.cli import load_configs
    from moejax.train.loop import validate_all

    rows = []
    for run in runs:
        row = {"run_id": run["run_id"], "values": run["values"]}
        try:
            model, data, train = load_configs([os.path.join(run["dir"], "run.gin")], [])
            described = summary(validate_all(model, data, train), data, train)
        except (GinConfigError, ConfigError, FileNotFoundError) as error:
            row["error"] = str(error).splitlines()[0]
        else:
            p, t = described["parameters"], described["training"]
            row.update(n_total=p["total"], n_active=p["active"], tokens=t["tokens"],
                       flops=t["flops"])
        rows.append(row)
    return rows


def design_table(runs: list[dict]) -> str:
    """The rows of ``design_rows`` as aligned text."""
    from moejax.model.describe import short_count

    rows = design_rows(runs)
    cells = [["run", "values", "N_total", "N_active", "tokens", "FLOPs"]]
    for row in rows:
        values = " ".join(f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else
                          f"{k.split('.')[-1]}={v}" for k, v in row["values"].items())
        numbers = ([f"error: {row['error']}", "", "", ""] if "error" in row else
                   [short_count(row["n_total"]), short_count(row["n_active"]),
                    short_count(row["tokens"]), f"{row['flops']:.3g}"])
        cells.append([row["run_id"], values, *numbers])
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in cells)

"""Plot ``benchmarks/gmm.py`` results: each contender's throughput as a ratio of the dense matmul.

In: one or more JSON-lines files written by ``gmm.py`` (grid lines; ``--parts`` lines are
skipped). Out: one PNG with a row of horizontal bar panels, one bar per (case, contender):
forward / dense, forward + backward / dense, and, where ragged_dot was timed, the speed-up over
``jax.lax.ragged_dot`` (log scale). The issue's targets are drawn as dashed lines (CPU: 0.8 of
dense forward + backward; GPU: 0.85 of dense and 5x ragged_dot). A contender that failed on a
case is marked "failed" instead of a bar.

  python benchmarks/plot_gmm.py benchmarks/results/h100-2026-11-22/gmm_grid.jsonl --out grid.png
  python benchmarks/plot_gmm.py a.jsonl b.jsonl --out both.png --title "before / after"
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moejax import files  # noqa: E402

TARGETS = {"cpu": {"ratio_vs_dense": 0.8},
           "gpu": {"ratio_vs_dense": 0.85, "ratio_vs_ragged_dot": 5.0}}
PANELS = (("ratio_vs_dense_fwd", "forward / dense"),
          ("ratio_vs_dense", "forward + backward / dense"),
          ("ratio_vs_ragged_dot", "forward + backward: speed-up over ragged_dot"))
REQUIRED = ("case", "impl", "ratio_vs_dense_fwd", "ratio_vs_dense")


class PlotInputError(ValueError):
    """A results file that is not what gmm.py writes; the message names the file and line."""


def read_lines(paths: list[str]) -> list[dict]:
    """gmm.py grid records from every file, in order; --parts records are skipped."""
    records = []
    for path in paths:
        with open(path) as f:
            for number, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as error:
                    raise PlotInputError(f"{path}:{number}: not JSON ({error})") from None
                if not isinstance(record, dict):
                    raise PlotInputError(f"{path}:{number}: not a JSON object")
                if "fwd_ratio" in record or "drhs_ratio" in record:
                    continue  # a --parts line: each kernel apart, not this plot
                missing = [key for key in REQUIRED if key not in record]
                if missing:
                    raise PlotInputError(f"{path}:{number}: not a gmm.py grid line (no "
                                         f"{', '.join(missing)})")
                records.append(dict(record, source=os.path.splitext(os.path.basename(path))[0]))
    if not records:
        raise PlotInputError(f"no gmm.py grid lines in {', '.join(paths)}")
    return records


def contender(record: dict, several_devices: bool, by_source: bool) -> str:
    """'cpu', 'pallas_gpu [128, 64, 256, 8, 3]', then ' @ device' when the records come from
    several devices and ' (file)' when the same contender ran a case in several files."""
    label = record["impl"]
    if record.get("tiling"):
        label += f" {record['tiling']}"
    if several_devices:
        label += f" @ {record.get('device', '?')}"
    if by_source:
        label += f" ({record['source']})"
    return label


def labeller(records: list[dict]):
    """The contender label function for these records (see ``contender``)."""
    several_devices = len({str(r.get("device", "?")) for r in records}) > 1
    keys = [(r["case"], contender(r, several_devices, False)) for r in records]
    by_source = len(set(keys)) < len(keys)
    return lambda record: contender(record, several_devices, by_source)


def failure(record: dict, key: str) -> str | None:
    """Why a figure is missing, from gmm.py's ``errors`` ({timed function: message}): ragged_dot's
    functions are named "xla_*", the contender's and dense's everything else."""
    errors = record.get("errors") or {}
    ragged = key == "ratio_vs_ragged_dot"
    if record["impl"] == "xla":  # the contender is ragged_dot itself
        messages = [] if ragged else list(errors.values())
    else:
        messages = [m for name, m in errors.items() if name.startswith("xla_") == ragged]
    if not messages:
        return None
    what = "ragged_dot failed" if ragged else "failed"
    return f"{what} (out of memory)" if any("RESOURCE_EXHAUSTED" in m for m in messages) else what


def plot(records: list[dict], out: str, title: str | None = None) -> str:
    """Write the figure to ``out`` (atomically); returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    devices = sorted({str(r.get("device", "?")) for r in records})
    backends = {r.get("backend") for r in records}
    label_of = labeller(records)
    cases = list(dict.fromkeys(r["case"] for r in records))
    labels = list(dict.fromkeys(label_of(r) for r in records))
    by_key = {(r["case"], label_of(r)): r for r in records}
    panels = [p for p in PANELS if any(r.get(p[0]) is not None for r in records)]

    height = 0.8 / len(labels)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 2.5,
                                                          0.35 * len(cases) * len(labels) + 1.8),
                                sharey=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (key, name) in zip(axes[0], panels):
        for slot, label in enumerate(labels):
            ys, values, failed = [], [], []
            for row, case in enumerate(cases):
                record = by_key.get((case, label))
                if record is None:
                    continue  # this contender did not run this case
                y = row + (slot - (len(labels) - 1) / 2) * height
                if record.get(key) is None:
                    reason = failure(record, key)
                    if reason:
                        failed.append((y, reason))
                    continue
                ys.append(y)
                values.append(float(record[key]))
            axis.barh(ys, values, height=height * 0.9, color=colours[slot % len(colours)],
                      label=label)
            for y, reason in failed:
                axis.text(0.02, y, reason, va="center", fontsize=7, color="red",
                          transform=axis.get_yaxis_transform())
        for backend in backends:
            target = TARGETS.get(backend, {}).get(key)
            if target is not None:
                axis.axvline(target, ls="--", color="black", lw=1)
                axis.text(target, len(cases) - 0.45, f" target {target:g}", fontsize=7,
                          va="top")
        if key == "ratio_vs_ragged_dot":
            axis.set_xscale("log")
            axis.set_xlim(left=1.0)
            axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
                lambda value, _: f"{value:g}x"))
        else:
            axis.axvline(1.0, color="grey", lw=0.6)
        axis.set_title(name, fontsize=9)
        axis.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(cases)))
    axes[0][0].set_yticklabels(cases, fontsize=7)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    dtypes = sorted({str(r.get("dtype", "?")) for r in records})
    versions = sorted({str(r.get("jax", "?")) for r in records})
    dates = sorted({str(r.get("date", "?")) for r in records})
    figure.suptitle(title or (f"{', '.join(devices)}: {', '.join(dtypes)}, JAX "
                              f"{', '.join(versions)}, {', '.join(dates)}"), fontsize=10)
    figure.tight_layout()
    files.write_figure(out, figure, dpi=110)
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="JSON-lines files from benchmarks/gmm.py")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--title", help="figure title (default: devices, dtypes, JAX, dates)")
    args = parser.parse_args(argv)
    try:
        records = read_lines(args.results)
    except (OSError, PlotInputError) as error:
        print(f"plot_gmm: error: {error}", file=sys.stderr)
        return 2
    print(plot(records, args.out, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())

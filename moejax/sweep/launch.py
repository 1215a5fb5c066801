"""Running a grid: run directories, a manifest, launchers, then evaluation, fit and report.

In: a ``Grid`` and a root directory. Out, under the root: ``<run_id>/run.gin`` (the complete run
config) and the run's own outputs, ``manifest.json`` (every run with its bindings and status:
pending, done, failed, or dropped with the reason), ``points.jsonl`` (``moejax eval``),
``fit/`` (``moejax fit``) and ``report.md`` with ``loss_curves.png``.

Launchers: ``local`` trains the runs one after another, each in its own ``moejax train`` process
(a crash or a bad config fails that run only), skipping finished runs and resuming partial ones;
``print`` prints the commands without running anything; ``tpu_vm`` (``moejax.sweep.tpu_vm``)
runs the same ``moejax train`` on every worker of a Cloud TPU VM through ``gcloud``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable

from moejax import files
from moejax.sweep.grid import Grid, check_bindings, expand

MANIFEST = "manifest.json"


def train_command(run_dir: str) -> list[str]:
    return [sys.executable, "-m", "moejax.cli", "train", f"--gin_file={run_dir}/run.gin",
            f"--workdir={run_dir}"]


def _matches(value, wanted: str) -> bool:
    """--only compares as text, numbers by value ('tokens=5e9' matches 5000000000.0)."""
    if str(value) == str(wanted):
        return True
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return False


def prepare(grid: Grid, root: str, *, only: dict | None = None) -> tuple[dict, list[dict]]:
    """Write the manifest of every run of the grid and the run directories of the runs ``only``
    selects (all without it). A run already in the manifest keeps its status and time, so a
    sweep narrowed with ``only`` neither forgets the others nor their minutes. Returns the
    manifest and its selected runs (the same dicts: a launcher updating them updates it)."""
    os.makedirs(root, exist_ok=True)
    kept, dropped = expand(grid)
    only = only or {}
    selected = [p for p in kept if all(_matches(p.values.get(k), v) for k, v in only.items())]
    check_bindings(grid, selected)
    path = os.path.join(root, MANIFEST)
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = {r["run_id"]: r for r in json.load(f)["runs"]}
    for point in selected:
        run_dir = os.path.join(root, point.run_id)
        os.makedirs(run_dir, exist_ok=True)
        files.write_atomic(os.path.join(run_dir, "run.gin"), point.gin_text(grid))
    runs = []
    for point in kept:
        before = old.get(point.run_id, {})
        run = {"run_id": point.run_id, "dir": os.path.join(root, point.run_id),
               "values": point.values, "status": before.get("status", "pending")}
        if before.get("seconds") is not None:
            run["seconds"] = before["seconds"]
        runs.append(run)
    manifest = {"grid": grid.name, "runs": runs,
                "dropped": [{"values": v, "reason": r} for v, r in dropped]}
    save_manifest(root, manifest)
    chosen = {p.run_id for p in selected}
    return manifest, [r for r in runs if r["run_id"] in chosen]


def save_manifest(root: str, manifest: dict) -> None:
    files.write_atomic(os.path.join(root, MANIFEST), json.dumps(manifest, indent=2, default=str))


def is_finished(run_dir: str) -> bool:
    """True when the run's newest finalized checkpoint is its last step."""
    from moejax.train.run import checkpoint_steps, load_run_configs

    if not os.path.exists(os.path.join(run_dir, "config.json")):
        return False
    steps = checkpoint_steps(run_dir)
    return bool(steps) and steps[-1] >= load_run_configs(run_dir)[2].steps


def run_local(root: str, manifest: dict, *, log: Callable[[str], None] = print,
              env: dict[str, str] | None = None,
              save: Callable[[dict], None] | None = None) -> dict:
    """Train every run not finished yet, in order; one failure does not stop the others.

    env: the training processes' environment (None: this one's; ``allocator.training_environment``
    gives one with tcmalloc preloaded). save: called after each run (default: writes ``manifest``
    as the root's manifest; a launcher given a selection saves the whole manifest instead)."""
    save = save or (lambda m: save_manifest(root, m))
    runs = manifest["runs"]
    for index, run in enumerate(runs, 1):
        if is_finished(run["dir"]):
            run["status"] = "done"
            log(f"[{index}/{len(runs)}] {run['run_id']}: finished earlier, skipped")
            continue
        log(f"[{index}/{len(runs)}] {run['run_id']}: training")
        start = time.time()
        with open(os.path.join(run["dir"], "train.log"), "a") as out:
            code = subprocess.call(train_command(run["dir"]), stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
        run["status"] = "done" if code == 0 and is_finished(run["dir"]) else "failed"
        run["seconds"] = round(time.time() - start, 1)
        if run["status"] == "failed":
            log(f"    failed (exit {code}); see {run['dir']}/train.log")
        save(manifest)
    return manifest


def print_commands(manifest: dict, *, log: Callable[[str], None] = print) -> None:
    for run in manifest["runs"]:
        log(" ".join(train_command(run["dir"])))


def evaluate_and_fit(grid: Grid, root: str, manifest: dict, *, runs: list[dict] | None = None,
                     log: Callable[[str], None] = print) -> dict:
    """Score the finished ones of ``runs`` (default: the manifest's) into points.jsonl, fit the
    grid's law to every point there, write the report of the whole manifest."""
    from moejax.eval import score_runs

    done = [r["dir"] for r in (manifest["runs"] if runs is None else runs) if r["status"] == "done"]
    points_path, failures = None, None
    if done:
        points_path = os.path.join(root, "points.jsonl")
        summary = score_runs(done, grid.eval_steps, points_path=points_path, progress=False, log=log)
        failures = len(summary.failures)
    return fit_and_report(grid, root, manifest, points_path, eval_failures=failures)


def fit_and_report(grid: Grid, root: str, manifest: dict, points_path: str | None, *,
                   eval_failures: int | None = None) -> dict:
    """Fit the grid's law to the points (when it names one) and write the report."""
    outcome = {"points": points_path, "fit": None, "fit_error": None,
               "eval_failures": eval_failures}
    if points_path and grid.fit_law:
        from moejax.cli import main as moejax_main

        args = ["fit", f"--points={points_path}", f"--law={grid.fit_law}",
                f"--out={os.path.join(root, 'fit')}", "--no-progress"]
        if grid.fit_columns:
            args.append(f"--columns={grid.fit_columns}")
        code = moejax_main(args)
        # 0: converged; 1: fitted and reported, but the optimiser did not converge; else failed.
        outcome["fit"] = os.path.join(root, "fit") if code in (0, 1) else None
        outcome["fit_converged"] = code == 0
        outcome["fit_error"] = None if code in (0, 1) else f"moejax fit exited {code}"
    from moejax.sweep.report import write_report

    outcome["report"] = write_report(root, manifest, outcome)
    return outcome

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

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from typing import Callable

from moejax import files
from moejax.errors import ConfigError
from moejax.sweep.grid import Grid, GridPoint, axis_names, check_bindings, expand

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


def select(grid: Grid, kept: list[GridPoint], dropped: list[tuple[dict, str]],
           only: dict) -> list[GridPoint]:
    """The points whose values match every ``only`` item; ConfigError naming the item when one
    is no axis of the grid or matches none of its values, or when together they match nothing."""
    axes = [name for axis in grid.axes for name in axis_names(axis)]
    for key, wanted in only.items():
        have = list(dict.fromkeys(str(p.values[key]) for p in kept if key in p.values))
        if not have and key not in axes:
            raise ConfigError(f"--only={key}={wanted}: {key!r} is not an axis of grid "
                              f"{grid.name!r} (axes: {', '.join(axes)})")
        if not any(_matches(value, wanted) for value in have):
            raise ConfigError(f"--only={key}={wanted}: grid {grid.name!r} has no run with {key} = "
                              f"{wanted} (its values: {', '.join(have) or 'none kept'})"
                              + _dropped_reason(dropped, only))
    selected = [p for p in kept if all(_matches(p.values.get(k), v) for k, v in only.items())]
    if not selected:
        items = " ".join(f"--only={k}={v}" for k, v in only.items())
        raise ConfigError(f"{items}: no run of grid {grid.name!r} has these values together"
                          + _dropped_reason(dropped, only))
    return selected


def _dropped_reason(dropped: list[tuple[dict, str]], only: dict) -> str:
    for values, reason in dropped:
        if all(k in values and _matches(values[k], v) for k, v in only.items()):
            return f"; a constraint dropped {values}: {reason}"
    return ""


def _read_manifest(path: str) -> dict | None:
    """The manifest an earlier sweep left (None: there is none); ConfigError naming the file
    when it is not one, which is left as it is."""
    if not os.path.exists(path):
        return None
    advice = "move it aside (the run directories stay) or use another --root"
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read as a sweep manifest ({e}): {advice}") from None
    earlier = manifest.get("earlier_runs", []) if isinstance(manifest, dict) else []
    if not isinstance(manifest, dict):
        problem = f"holds a JSON {type(manifest).__name__}, not an object"
    elif not isinstance(manifest.get("grid"), str):
        problem = "has no 'grid' (the grid's name)"
    elif not isinstance(manifest.get("runs"), list):
        problem = "has no 'runs' list"
    elif not isinstance(earlier, list):
        problem = "has an 'earlier_runs' that is not a list"
    elif not all(isinstance(r, dict) and isinstance(r.get("run_id"), str)
                 for r in manifest["runs"] + earlier):
        problem = "has a run without a 'run_id'"
    else:
        return manifest
    raise ConfigError(f"{path} is not a sweep manifest: it {problem}; {advice}")


def _settings(gin_text: str) -> list[str]:
    """The lines of a run config that configure something (comments and blank lines left out)."""
    lines = (line.strip() for line in gin_text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _check_unchanged(grid: Grid, root: str, points: list[GridPoint], recorded: dict) -> None:
    """ConfigError when a point's run directory holds outputs of a run config other than the one
    the grid now gives it (a grid edited in place: its checkpoints and scores would pass for the
    new config's). A run not started yet (only its run.gin, status pending) takes the new one.

    recorded: {run_id: the run's entry in the root's manifest}."""
    for point in points:
        run_dir = os.path.join(root, point.run_id)
        path = os.path.join(run_dir, "run.gin")
        started = (recorded.get(point.run_id, {}).get("status", "pending") != "pending"
                   or os.path.isdir(run_dir) and set(os.listdir(run_dir)) - {"run.gin"})
        if not started or not os.path.isfile(path):
            continue
        with open(path) as f:
            before = _settings(f.read())
        after = _settings(point.gin_text(grid))
        if before != after:
            old = [line for line in before if line not in after] or ["(none)"]
            new = [line for line in after if line not in before] or ["(none)"]
            raise ConfigError(f"grid {grid.name!r} now gives run {point.run_id} another config "
                              f"than its {path} ({old[0]!r} there, {new[0]!r} now), so its "
                              "outputs come from the old one: use another --root (or "
                              "Grid.name) for the edited grid")


def prepare(grid: Grid, root: str, *, only: dict | None = None) -> tuple[dict, list[dict]]:
    """Write the manifest of every run of the grid and the run directories of the runs ``only``
    selects (all without it). A run already in the manifest keeps its status and time, so a
    sweep narrowed with ``only`` neither forgets the others nor their minutes, and runs of an
    earlier version of the grid no longer in it stay in ``earlier_runs``. Returns the manifest
    and its selected runs (the same dicts: a launcher updating them updates it).

    Everything is checked before anything is written: a bad ``only``, a root that is a file or
    holds another grid's sweep or an unreadable manifest, or a run directory whose config the
    grid now changes raise ConfigError and leave the root as it was."""
    kept, dropped = expand(grid)
    if not kept:
        reasons = "; ".join(f"{values}: {reason}" for values, reason in dropped[:3])
        raise ConfigError(f"grid {grid.name!r} keeps no run: its constraints dropped all "
                          f"{len(dropped)} combination(s) ({reasons}{'; ...' * (len(dropped) > 3)})")
    selected = select(grid, kept, dropped, only or {})
    check_bindings(grid, selected)
    problem = files.directory_problem(root)
    if problem:
        raise ConfigError(f"--root={root}: {problem}: use another --root")
    path = os.path.join(root, MANIFEST)
    previous = _read_manifest(path) or {"grid": grid.name, "runs": []}
    if previous["grid"] != grid.name:
        raise ConfigError(f"--root={root} holds the sweep of grid {previous['grid']!r} "
                          f"({len(previous['runs'])} run(s) in {path}), not of grid "
                          f"{grid.name!r}: use another --root")
    old = {r["run_id"]: r for r in previous.get("earlier_runs", []) + previous["runs"]}
    _check_unchanged(grid, root, kept, old)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--root={root} cannot be created: {e.strerror}") from None
    for point in selected:
        run_dir = os.path.join(root, point.run_id)
        os.makedirs(run_dir, exist_ok=True)
        files.write_atomic(os.path.join(run_dir, "run.gin"), point.gin_text(grid))
    runs = []
    for point in kept:
        before = old.pop(point.run_id, {})
        run = {"run_id": point.run_id, "dir": os.path.join(root, point.run_id),
               "values": point.values, "status": before.get("status", "pending")}
        if before.get("seconds") is not None:
            run["seconds"] = before["seconds"]
        runs.append(run)
    manifest = {"grid": grid.name, "runs": runs,
                "dropped": [{"values": v, "reason": r} for v, r in dropped]}
    if old:  # what is left: runs of an earlier version of the grid, with what they recorded
        manifest["earlier_runs"] = list(old.values())
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
    from moejax.eval.score import parse_steps

    done = [r["dir"] for r in (manifest["runs"] if runs is None else runs) if r["status"] == "done"]
    points_path, failures = None, None
    if done:
        points_path = os.path.join(root, "points.jsonl")
        summary = score_runs(done, parse_steps(grid.eval_steps), points_path=points_path,
                             progress=False, log=log)
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
        err = _Tee(sys.stderr)
        try:
            with contextlib.redirect_stderr(err):
                code = moejax_main(args)
            # 0: converged; 1: fitted and reported, but the optimiser did not converge; else
            # failed, having said why on stderr
            error = None if code in (0, 1) else _fit_error(err.text.getvalue(), code)
        except Exception as e:  # noqa: BLE001 - after hours of training, report instead
            code, error = None, f"moejax fit failed: {type(e).__name__}: {e}"
        outcome["fit"] = os.path.join(root, "fit") if error is None else None
        outcome["fit_converged"] = code == 0
        outcome["fit_error"] = error
    from moejax.sweep.report import write_report

    outcome["report"] = write_report(root, manifest, outcome)
    return outcome


class _Tee(io.TextIOBase):
    """Passes what is written on to ``out`` and keeps a copy in ``text``."""

    def __init__(self, out):
        self.out, self.text = out, io.StringIO()

    def write(self, text: str) -> int:
        self.text.write(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def _fit_error(output: str, code: int) -> str:
    """What ``moejax fit`` said was wrong (its last 'moejax fit: error:' line), else its exit."""
    prefix = "moejax fit: error:"
    errors = [line[len(prefix):].strip() for line in output.splitlines() if line.startswith(prefix)]
    return errors[-1] if errors else f"moejax fit exited {code}"

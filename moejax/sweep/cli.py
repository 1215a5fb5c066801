"""``moejax sweep``: a grid gin file in; run directories, trained runs, points, fit, report out.

    moejax sweep --grid=configs/grids/smoke_cpu.gin --root=runs/smoke_grid \\
        [--launcher=local|print|tpu_vm] [--only='MoEConfig.num_experts=4'] [--dry_run]
    moejax sweep --grid=configs/grids/joint_moe.gin --root=runs/joint_moe --launcher=tpu_vm \\
        --tpu=my-v4 --zone=us-central2-b [--project=P] [--create [--queued]] [--dry_run]
    moejax sweep --grid=configs/grids/joint_moe.gin --root=runs/joint_moe --preflight=v5e:4x4
    moejax sweep --grid=configs/grids/joint_moe.gin --root=runs/joint_moe --preflight=h100:8
"""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """Expand a design grid (configs/grids/*.gin) into run directories under --root, each
with its complete run config (run.gin) and a manifest.json of runs with their status, then train
them, score every finished run (points.jsonl), fit the grid's law (fit/) and write report.md.
Re-running the same command skips finished runs and resumes partial ones; a root holds the
sweep of one grid, and bad input is refused before anything is written. Launchers: local (here,
one run after another; a failed run is reported and the others go on), print (print the train
commands), tpu_vm (gcloud: sync the code, install, run moejax train on every worker of a TPU VM,
logs per worker back in each run directory; --dry_run prints the exact gcloud commands).
--preflight=TOPOLOGY trains nothing: it compiles every run for that TPU slice (v5e:4x4) or those
NVIDIA GPUs (h100:8) with the target's own compiler here (no accelerator needed) and reports the
memory each device needs and whether it fits (preflight.json)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("--grid", required=True, help="grid gin file (path or name under configs/)")
    parser.add_argument("--root", required=True, help="directory for the runs, manifest and report")
    parser.add_argument("--launcher", choices=("local", "print", "tpu_vm"), default="local",
                        help="local: train here one run after another; print: print the commands; "
                             "tpu_vm: train on a Cloud TPU VM through gcloud (see --tpu)")
    parser.add_argument("--only", action="append", default=[],
                        help="keep only points with this axis value, e.g. 'MoEConfig.top_k=2' or "
                             "'tokens=5e9' (repeatable; all must match)")
    parser.add_argument("--dry_run", action="store_true",
                        help="write run directories and the manifest only; with tpu_vm, print the "
                             "gcloud commands instead of running them")
    parser.add_argument("--preflight", default=None, metavar="TOPOLOGY",
                        help="compile every run for this TPU slice (e.g. v5e:4x4) or these "
                             "GPUs (h100:8) instead of training: memory per device and fit, in "
                             "preflight.json; exit 3 if a run does not fit, 1 if one does not "
                             "compile")
    tpu = parser.add_argument_group("tpu_vm launcher")
    tpu.add_argument("--tpu", help="TPU VM (node) name")
    tpu.add_argument("--zone", help="GCP zone, e.g. us-central2-b")
    tpu.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
    tpu.add_argument("--accelerator_type", default="v4-8", help="e.g. v4-8, v5litepod-16 (--create)")
    tpu.add_argument("--runtime_version", default="tpu-ubuntu2204-base",
                     help="TPU software version (--create)")
    tpu.add_argument("--create", action="store_true", help="create the TPU VM first")
    tpu.add_argument("--queued", action="store_true",
                     help="create it as a queued resource and wait until ACTIVE")
    tpu.add_argument("--remote_root", default=None,
                     help="sweep root on the workers (default: moejax/<root name> under $HOME; "
                          "multi-host: a mount every worker shares)")


def _tpu_vm(args: argparse.Namespace):
    from moejax.errors import ConfigError
    from moejax.sweep.tpu_vm import TpuVm

    for flag in ("tpu", "zone"):
        if not getattr(args, flag):
            raise ConfigError(f"--{flag} is required with --launcher=tpu_vm")
    return TpuVm(name=args.tpu, zone=args.zone, project=args.project,
                 accelerator_type=args.accelerator_type, runtime_version=args.runtime_version,
                 create=args.create or args.queued, queued=args.queued,
                 remote_root=args.remote_root)


def parse_only(items: list[str]) -> dict[str, str]:
    """--only items 'KEY=VALUE' -> {KEY: VALUE}; ConfigError naming an item that is not one, or a
    key given twice (a point has one value: all items must match)."""
    from moejax.errors import ConfigError

    only = {}
    for item in items:
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise ConfigError(f"--only={item!r} is not KEY=VALUE (e.g. --only=MoEConfig.top_k=2)")
        if key in only:
            raise ConfigError(f"--only names {key} twice ({only[key]} and {value}); every --only "
                              "must match, so select one value per sweep")
        only[key] = value
    return only


def run(args: argparse.Namespace) -> int:
    from moejax.errors import ConfigError
    from moejax.ginconf import GinConfigError
    from moejax.sweep.allocator import training_environment
    from moejax.sweep.grid import load_grid
    from moejax.sweep.launch import (evaluate_and_fit, fit_and_report, prepare, print_commands,
                                     run_local, save_manifest)

    try:
        only = parse_only(args.only)
        vm = _tpu_vm(args) if args.launcher == "tpu_vm" else None
        grid = load_grid(args.grid)
        # Only the local launcher starts training processes on this machine.
        train_env, allocator = (training_environment() if args.launcher == "local"
                                else (None, ""))
        manifest, selected = prepare(grid, args.root, only=only)
    except (GinConfigError, ConfigError, ValueError) as e:
        print(f"moejax sweep: error: {e}", file=sys.stderr)
        return 2
    runs, dropped = manifest["runs"], manifest["dropped"]
    chosen = f", {len(selected)} selected by --only" if only else ""
    earlier = len(manifest.get("earlier_runs", []))
    kept = f", {earlier} run(s) of an earlier version of the grid kept" if earlier else ""
    print(f"grid {grid.name}: {len(runs)} run(s){chosen}, {len(dropped)} combination(s) dropped"
          f"{kept} -> {args.root}/manifest.json")
    # The launchers see the selected runs; what they record lands in the whole manifest.
    view = {**manifest, "runs": selected}

    def save(_view: dict) -> None:
        save_manifest(args.root, manifest)

    for d in dropped:
        print(f"  dropped {d['values']}: {d['reason']}")
    if args.dry_run:
        from moejax.sweep.design import design_table

        print(design_table(selected))
    if args.preflight:
        from moejax.sweep.preflight import exit_status, preflight

        try:
            records = preflight(args.root, view, args.preflight)
        except ConfigError as e:
            print(f"moejax sweep: error: {e}", file=sys.stderr)
            return 2
        return exit_status(records)
    if args.launcher == "tpu_vm":
        from moejax.sweep.tpu_vm import run_tpu_vm

        try:
            run_tpu_vm(args.root, view, vm, eval_steps=grid.eval_steps, dry_run=args.dry_run,
                       save=save)
        except RuntimeError as e:
            print(f"moejax sweep: error: {e}", file=sys.stderr)
            return 1
        if args.dry_run:
            return 0
        points = os.path.join(args.root, "points.jsonl")
        outcome = fit_and_report(grid, args.root, manifest,
                                 points if os.path.exists(points) else None)
    elif args.dry_run or args.launcher == "print":
        if args.launcher == "print":
            print_commands(view)
        return 0
    else:
        print(allocator)
        run_local(args.root, view, env=train_env, save=save)
        outcome = evaluate_and_fit(grid, args.root, manifest, runs=selected)
    failed = [r["run_id"] for r in selected if r["status"] != "done"]
    print(f"report: {os.path.abspath(outcome['report'])}")
    if failed:
        print(f"moejax sweep: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    if outcome.get("fit_error"):
        print(f"moejax sweep: the fit of {grid.fit_law} failed: {outcome['fit_error']}",
              file=sys.stderr)
    return 1 if failed or outcome.get("fit_error") else 0

"""``moejax sweep``: a grid gin file in; run directories, trained runs, points, fit, report out.

    moejax sweep --grid=configs/grids/smoke_cpu.gin --root=runs/smoke_grid \
        [--launcher=local|print] [--only='MoEConfig.num_experts=4'] [--dry_run]
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", required=True, help="grid gin file (path or name under configs/)")
    parser.add_argument("--root", required=True, help="directory for the runs, manifest and report")
    parser.add_argument("--launcher", choices=("local", "print"), default="local",
                        help="local: train here one run after another; print: print the commands")
    parser.add_argument("--only", action="append", default=[],
                        help="keep only points with this axis value, e.g. 'MoEConfig.top_k=2'")
    parser.add_argument("--dry_run", action="store_true",
                        help="expand the grid and write run directories and the manifest only")


def run(args: argparse.Namespace) -> int:
    from moejax.errors import ConfigError
    from moejax.ginconf import GinConfigError
    from moejax.sweep.grid import load_grid
    from moejax.sweep.launch import evaluate_and_fit, prepare, print_commands, run_local

    try:
        only = dict(item.split("=", 1) for item in args.only)
        grid = load_grid(args.grid)
        manifest = prepare(grid, args.root, only=only)
    except (GinConfigError, ConfigError, ValueError) as e:
        print(f"moejax sweep: error: {e}", file=sys.stderr)
        return 2
    runs, dropped = manifest["runs"], manifest["dropped"]
    print(f"grid {grid.name}: {len(runs)} run(s), {len(dropped)} combination(s) dropped "
          f"-> {args.root}/manifest.json")
    for d in dropped:
        print(f"  dropped {d['values']}: {d['reason']}")
    if args.dry_run or args.launcher == "print":
        if args.launcher == "print":
            print_commands(manifest)
        return 0
    manifest = run_local(args.root, manifest)
    outcome = evaluate_and_fit(grid, args.root, manifest)
    failed = [r["run_id"] for r in manifest["runs"] if r["status"] != "done"]
    print(f"report: {os.path.abspath(outcome['report'])}")
    if failed:
        print(f"moejax sweep: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0

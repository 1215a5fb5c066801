"""``moejax eval``: score checkpoints of one run, several runs or every run under a root, and merge
one point per (run, step) into a points file (t5x flag style).

    moejax eval --workdir=runs/a [--workdir=runs/b] [--root=runs] [--steps=latest|all|N,M] \
        [--points=points.jsonl] [--format=jsonl|csv|parquet] [--eval_batches=N] \
        [--eval_capacity_factor=none|X]

Exit status: 0 when every chosen (run, step) was scored, 1 when any failed (each failure is
reported, the others are still scored and written), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys

from moejax import files
from moejax.arguments import capacity_factor_or_none, integer_at_least


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", action="append", default=[],
                        help="a run directory to score; repeatable")
    parser.add_argument("--root", action="append", default=[],
                        help="score every run directory (one holding config.json) under this "
                             "directory; repeatable")
    parser.add_argument("--steps", default="latest",
                        help="'latest' (default), 'all' finalized checkpoints, or steps 'N,M'")
    parser.add_argument("--points", default=None,
                        help="points file to merge into (default: points.<format> in the "
                             "current directory)")
    parser.add_argument("--format", choices=("jsonl", "csv", "parquet"), default=None,
                        help="points file format (default: from the --points suffix, else jsonl)")
    parser.add_argument("--eval_batches", type=integer_at_least(1), default=None,
                        help="validation batches per task (default: the run's "
                             "TrainConfig.eval_batches)")
    parser.add_argument("--eval_capacity_factor", type=capacity_factor_or_none, default=None,
                        help="'none' (default): dropless evaluation whatever capacity the model "
                             "trained with; a number: evaluate with that capacity factor")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def resolve_workdirs(workdirs: list[str], roots: list[str]) -> list[str]:
    """Explicit run directories, then every run under each root; duplicates removed, order kept."""
    from moejax.eval.score import find_runs

    out: dict[str, None] = {}
    for workdir in workdirs:
        out.setdefault(os.path.abspath(workdir), None)
    for root in roots:
        if not os.path.isdir(root):
            raise ValueError(f"--root={root} is not a directory")
        for workdir in find_runs(root):
            out.setdefault(workdir, None)
    return list(out)


def run(args: argparse.Namespace) -> int:
    from moejax.eval.points import PointsError, points_format
    from moejax.eval.score import parse_steps, score_runs

    def error(message: str) -> int:
        print(f"moejax eval: error: {message}", file=sys.stderr)
        return 2

    if not args.workdir and not args.root:
        return error("give --workdir=RUN_DIR (repeatable) or --root=DIR")
    try:
        steps = parse_steps(args.steps)
        workdirs = resolve_workdirs(args.workdir, args.root)
        points_path = args.points or f"points.{args.format or 'jsonl'}"
        fmt = points_format(points_path, args.format)
        problem = files.directory_problem(os.path.dirname(os.path.abspath(points_path)))
        if problem:
            raise ValueError(f"--points {points_path}: {problem}")
    except (ValueError, PointsError) as e:
        return error(str(e))
    if not workdirs:
        return error(f"no run directories (with config.json) under {', '.join(args.root)}")

    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    try:
        summary = score_runs(workdirs, steps, points_path=points_path, format=fmt,
                             eval_batches=args.eval_batches,
                             eval_capacity_factor=args.eval_capacity_factor,
                             progress=not args.quiet, log=log)
    except PointsError as e:  # the existing points file is unreadable or of another schema
        print(f"moejax eval: error: {e}", file=sys.stderr)
        return 1

    scored_runs = sum(1 for r in summary.runs if r.points)
    where = (f"-> {os.path.abspath(points_path)}" if summary.points else
             f"(nothing written to {os.path.abspath(points_path)})")
    print(f"moejax eval: scored {len(summary.points)} checkpoint(s) of {scored_runs} of "
          f"{len(summary.runs)} run(s) {where}")
    if summary.failures:
        print(f"moejax eval: {len(summary.failures)} failure(s):", file=sys.stderr)
        for workdir, step, message in summary.failures:
            where = workdir + (f" step {step}" if step is not None else "")
            print(f"  {where}: {message}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run without the top-level ``moejax`` command (``python -m moejax.eval.cli``)."""
    parser = argparse.ArgumentParser(prog="moejax eval", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""``moejax train``: gin files and bindings in, a trained run directory out (t5x flag style).

    moejax train --gin_file=configs/smoke.gin [--gin_file=...] \
        [--gin_bindings='MoEConfig.num_experts = 8'] --workdir=runs/smoke

A gin config that binds ``MeshConfig`` (e.g. ``--gin_file=mesh/cpu8_expert.gin``) trains on a
device mesh; on a multi-host TPU VM or with ``JAX_COORDINATOR_ADDRESS`` set, the processes are
joined first (``moejax.parallel.distributed``).
"""

from __future__ import annotations

import argparse
import os
import sys

from moejax.ginconf import GinConfigError, parse_gin


def add_gin_arguments(parser: argparse.ArgumentParser) -> None:
    """--gin_file and --gin_bindings, as every command that reads a run's config takes them."""
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin file (path, or name under configs/); repeatable, applied in order")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="a gin binding such as 'TrainConfig.steps = 100'; repeatable")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_gin_arguments(parser)
    parser.add_argument("--workdir", required=True,
                        help="run directory: checkpoints, metrics, config; resumed if it exists")


def load_configs(gin_files, gin_bindings):
    """Parse gin and build the three configs (validation happens in run_training)."""
    parse_gin(gin_files, gin_bindings)
    from moejax.data import DataConfig
    from moejax.model.config import ModelConfig
    from moejax.train.config import TrainConfig

    return ModelConfig(), DataConfig(), TrainConfig()


def run(args: argparse.Namespace) -> int:
    import gin

    from moejax.model.config import ConfigError
    from moejax.parallel.distributed import is_primary, maybe_initialize_distributed
    from moejax.parallel.mesh import configured_mesh
    from moejax.parallel.rules import sharding_rules
    from moejax.train.checkpoint import CheckpointError, finalized_steps
    from moejax.train.loop import TrainingDiverged, run_training

    try:
        maybe_initialize_distributed()
        model, data, train = load_configs(args.gin_file, args.gin_bindings)
        mesh_config = configured_mesh()
        rules = sharding_rules() if mesh_config is not None else None
        summary = run_training(args.workdir, model, data, train,
                               gin_config=gin.operative_config_str(),  # after the mesh is read
                               mesh_config=mesh_config, rules=rules)
    except (GinConfigError, ConfigError, CheckpointError, TrainingDiverged, FileNotFoundError) as e:
        print(f"moejax train: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (GinConfigError, ConfigError)) else 1
    except KeyboardInterrupt:  # Ctrl-C: the checkpoints written so far are complete
        steps = finalized_steps(os.path.join(args.workdir, "checkpoints"))
        newest = (f"newest complete checkpoint: step {steps[-1]}; the same command resumes "
                  f"from it" if steps else "no checkpoint was written yet")
        print(f"moejax train: interrupted; {newest}", file=sys.stderr)
        return 130
    if not is_primary():
        return 0
    workdir = summary["workdir"]
    print(f"\nrun directory: {workdir}")
    print(f"  metrics:      {workdir}/metrics.jsonl, {workdir}/eval.jsonl")
    print(f"  checkpoints:  {workdir}/checkpoints/")
    print(f"  tensorboard:  tensorboard --logdir {workdir}/tensorboard")
    print(f"  kernels:      {workdir}/kernels.json (what each expert matmul ran with)")
    if summary.get("loss_curve"):
        print(f"  loss curves:  {summary['loss_curve']}")
    if summary.get("validation"):
        print("  validation loss (nats/token) at step "
              f"{summary['final_step']}: " +
              ", ".join(f"{k} {v:.4f}" for k, v in summary["validation"].items()))
    return 0

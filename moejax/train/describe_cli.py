"""``moejax describe``: what a configuration amounts to, from its gin files, in a second.

    moejax describe --gin_file=configs/base.gin --gin_file=models/moe_tiny_latent.gin \
        [--gin_bindings='MoEConfig.top_k = 4'] [--json]

Prints the architecture, exact parameter counts by part (total and active, with and without
embeddings), training and inference FLOPs per token, the training budget the configs spend,
memory, each paper's variables with ``--json``, and the notes of ``moejax.model.describe``: which
balancing is on, what capacity drops, what a routing rule implies. Nothing is built or compiled. A
wrong binding or an impossible configuration exits 2 naming it, as ``moejax train`` would.
"""

from __future__ import annotations

import argparse
import json
import sys

from moejax.ginconf import GinConfigError
from moejax.train.cli import add_gin_arguments, load_configs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_gin_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (with every paper's variables) instead")


def run(args: argparse.Namespace) -> int:
    from moejax.errors import ConfigError
    from moejax.model.describe import render, summary
    from moejax.train.loop import validate_all

    try:
        if not args.gin_file:
            raise ConfigError("no --gin_file: give the run's gin files (e.g. "
                              "--gin_file=configs/smoke.gin)")
        model, data, train = load_configs(args.gin_file, args.gin_bindings)
        described = summary(validate_all(model, data, train), data, train)
    except (GinConfigError, ConfigError, FileNotFoundError) as error:
        print(f"moejax describe: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(described, indent=2) if args.json else render(described))
    return 0

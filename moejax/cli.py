"""The ``moejax`` command: one subcommand per step of the data flow.

Each subcommand lives next to the code it drives (``moejax/train/cli.py`` for ``train`` ...) and
exposes ``add_arguments(parser)`` and ``run(args) -> int``. Imports are lazy so that ``moejax fit``
never pays for TensorFlow and ``moejax --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). A new subcommand is one line here plus its module.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("moejax.train.cli", "train a model from gin files into a workdir"),
    "lower": ("moejax.train.lower_cli", "lower a run's training step for TPU or GPU here, no "
              "accelerator needed: shapes, shardings, kernels, state per device; with "
              "--topology, compile it for a TPU slice or NVIDIA GPUs: memory per device"),
    "sweep": ("moejax.sweep.cli", "expand a design grid into runs, train, evaluate, fit and report"),
    "describe": ("moejax.train.describe_cli", "what a configuration amounts to: architecture, "
                 "exact parameter counts, FLOPs and memory per token, knob interactions"),
    "eval": ("moejax.eval.cli", "score checkpoints of runs and export one point per run and step"),
    "export": ("moejax.export.cli", "write a run's checkpoint as a Hugging Face model directory "
               "(Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3, Llama or Qwen3: safetensors, "
               "config and tokenizer)"),
    "generate": ("moejax.generate.cli", "continue prompts with a run's checkpoint (greedy or "
                 "sampled, through a key/value cache)"),
    "fit": ("moejax.laws.cli", "fit a scaling law to scored points (or the embedded Clark 2022 data)"),
    "plan": ("moejax.plan.cli", "recommend MoE configurations for compute, memory and inference budgets"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moejax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sp)
    return parser


def _run(command: str, module, args: argparse.Namespace) -> int:
    """A subcommand's ``run``, with what no subcommand handles itself reported in one line: a
    file the system refuses (permissions, a full disk, a path through a file) and Ctrl-C."""
    try:
        return int(module.run(args) or 0)
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        print(f"moejax {command}: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"moejax {command}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Build only the requested subcommand's parser when possible (keeps imports lazy).
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        sp = argparse.ArgumentParser(prog=f"moejax {argv[0]}", description=SUBCOMMANDS[argv[0]][1])
        module.add_arguments(sp)
        return _run(argv[0], module, sp.parse_args(argv[1:]))
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return _run(args.command, importlib.import_module(args._module), args)


if __name__ == "__main__":
    sys.exit(main())

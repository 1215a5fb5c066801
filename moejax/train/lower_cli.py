"""``moejax lower``: a run's training step lowered for TPU or an NVIDIA GPU on this machine, to
check a config (shapes, shardings, kernels, collectives, state per device) before booking the
accelerator.

    moejax lower --gin_file=configs/smoke.gin --gin_file=mesh/cpu8_expert.gin --target=tpu
    moejax lower --gin_file=... --gin_file=mesh/tpu_v5e_16.gin --target=tpu --devices=16 \
        --out=runs/lowered
    moejax lower --gin_file=configs/smoke.gin --target=cuda --gpu=8.6   # an A10G or RTX 30
    moejax lower --gin_file=... --gin_file=mesh/tpu_v5e_16.gin --topology=v5e:4x4
    moejax lower --gin_file=configs/models/moe_base.gin --topology=h100

``--topology`` compiles instead of only lowering, with the target's own compiler on its
compile-only devices (``moejax.parallel.topology``; ``launch/setup.sh dev`` installs what they
need): XLA:TPU for a TPU slice (libtpu), XLA:GPU and jaxlib's Triton for NVIDIA GPUs ("h100",
"h100:8"; JAX's CUDA plugin, no GPU or CUDA libraries). It reports the memory each device needs,
activations included, and whether it fits (on a GPU: in the share JAX's allocator takes).

The same gin files and bindings as ``moejax train``. JAX starts here on CPU with as many fake
devices as the mesh has (``--devices`` when an axis is -1). Prints a summary (JSON with
``--json``); ``--out`` also writes ``lowering.json`` and the program (``train_step.mlir``).
Exit 0 when the step lowered (compiled), 2 on a config error, 1 when the lowering or compile
failed (its error is printed: that is what the target would have refused), 3 when it compiled
but needs more memory than a device of the topology has.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from moejax import files
from moejax.ginconf import GinConfigError

TARGETS = ("tpu", "cuda")  # the platforms platform.target_device knows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from moejax.train.cli import add_gin_arguments

    add_gin_arguments(parser)
    parser.add_argument("--target", choices=TARGETS, default=None,
                        help="the platform to lower for (implied by --topology)")
    parser.add_argument("--topology", default=None,
                        help="compile for this TPU slice (v5e:2x2, v5e:4x4, v6e:2x4, "
                             "v5p:2x2x1) or these GPUs (h100, h100:8, h200, a100-80gb:8, l4) "
                             "with the target's compiler: memory per device, activations "
                             "included")
    parser.add_argument("--gpu", default="9.0",
                        help="with --target=cuda: the GPU's compute capability (9.0 H100, 8.0 "
                             "A100, 8.6 A10G, 8.9 L4, 7.5 T4); 'auto' and the kernels follow it")
    parser.add_argument("--devices", type=int, default=None,
                        help="devices of the target (default: the mesh's product; 1 without "
                             "a mesh)")
    parser.add_argument("--out", default=None,
                        help="directory for lowering.json and train_step.mlir")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _parse_capability(text: str) -> tuple[int, int]:
    from moejax.kernels.platform import parse_capability

    capability = parse_capability(text)
    if capability is None:
        raise ValueError(f"--gpu {text!r}: a compute capability such as 9.0 or 8.6")
    return capability


def _start_jax_with(num_devices: int) -> None:
    """CPU with ``num_devices`` fake devices, if JAX has not started a backend yet."""
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return  # lower_train_step says so if there are too few
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(flags + [
        f"--xla_force_host_platform_device_count={num_devices}"])
    jax.config.update("jax_platforms", "cpu")


def _print_summary(summary) -> None:
    gib = 2.0 ** 30
    compiled = summary.compiled
    if compiled is None:
        print(f"lowered the training step for {summary.target} ({summary.device}) on "
              f"{summary.devices} device(s), mesh {summary.mesh}")
    else:
        compiler = "XLA:TPU" if summary.target == "tpu" else "XLA:GPU"
        print(f"compiled the training step with {compiler} for {summary.device} (topology "
              f"{compiled['topology']}) on {summary.devices} device(s) in {compiled['seconds']} "
              f"s, mesh {summary.mesh}")
        hbm = compiled["hbm_bytes"]
        usable = "" if summary.target == "tpu" else " usable by JAX"
        verdict = ("memory not known for this device" if hbm is None else
                   f"of {hbm / gib:.1f} GiB{usable}: "
                   + ("fits" if compiled["fits"] else "DOES NOT FIT"))
        print(f"  memory per device: {compiled['total_bytes'] / gib:.3f} GiB {verdict} "
              f"(arguments {compiled['argument_bytes'] / gib:.3f}, outputs "
              f"{(compiled['output_bytes'] - compiled['alias_bytes']) / gib:.3f} beyond the "
              f"donated state, temporaries {compiled['temp_bytes'] / gib:.3f}, code "
              f"{compiled['code_bytes'] / gib:.3f})")
    print(f"  parameters:        {summary.parameters:,}")
    print(f"  state per device:  {summary.state_bytes_per_device / gib:.3f} GiB of "
          f"{summary.state_bytes / gib:.3f} GiB (parameters, optimizer state, buffers; "
          "activations come on top)")
    for kernel in summary.kernels:
        rows, k, n = kernel["rows_k_n"]
        print(f"  expert matmul {rows} x {k} x {n}: {kernel['requested']} -> {kernel['choice']}")
    print("  custom calls:      " + (", ".join(f"{name} x{count}" for name, count
                                             in summary.custom_calls.items()) or "none"))
    print("  collectives:       " + (", ".join(f"{name} x{count}" for name, count
                                             in summary.collectives.items()) or "none"))
    if compiled is not None:
        print("  compiled, with the partitioner's: " + (", ".join(
            f"{name} x{count}" for name, count in compiled["collectives"].items()) or "none"))


def run(args: argparse.Namespace) -> int:
    from moejax.errors import ConfigError

    try:
        if args.topology is not None and args.target is not None:
            from moejax.parallel.gpu_topology import is_gpu_name

            implied = "cuda" if is_gpu_name(args.topology) else "tpu"
            if args.target != implied:
                raise ValueError(f"--topology={args.topology} compiles for {implied}; "
                                 f"--target={args.target} asks for another platform")
        if args.topology is None and args.target is None:
            raise ValueError("give --target (tpu, cuda) or a --topology (v5e:4x4, h100:8)")
        problem = args.out and files.directory_problem(args.out)
        if problem:
            raise ValueError(f"--out {args.out}: {problem}")
        capability = _parse_capability(args.gpu) if args.target == "cuda" else None
        from moejax.parallel.mesh import configured_mesh
        from moejax.train.cli import load_configs
        from moejax.train.lower import (DoesNotFit, compile_train_step, devices_needed,
                                        fit_hints, lower_train_step)

        model, data, train = load_configs(args.gin_file, args.gin_bindings)
        mesh_config = configured_mesh()
        if args.topology is None:
            num_devices = devices_needed(mesh_config, args.devices)
            _start_jax_with(num_devices)
        else:
            _start_jax_with(1)  # the devices are the topology's
    except (GinConfigError, ConfigError, ValueError, FileNotFoundError) as error:
        print(f"moejax lower: error: {error}", file=sys.stderr)
        return 2
    target = args.target or "the topology"
    try:
        if args.topology is None:
            exported, summary = lower_train_step(model, data, train, mesh_config, target,
                                                 num_devices, capability)
            program = exported.mlir_module()
        else:
            compiled, summary = compile_train_step(model, data, train, mesh_config,
                                                   args.topology, args.devices)
            program = compiled.as_text()
    except (ConfigError, FileNotFoundError) as error:
        print(f"moejax lower: error: {error}", file=sys.stderr)
        return 2
    except DoesNotFit as error:
        print(f"moejax lower: does not fit on {args.topology}: {error}\n  "
              f"{fit_hints(model, train)}", file=sys.stderr)
        return 3
    except Exception as error:  # noqa: BLE001 - the target refused the program: say why
        print(f"moejax lower: the step does not {'compile' if args.topology else 'lower'} for "
              f"{args.topology or target}: "
              f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    # the program: StableHLO as exported, or the HLO XLA compiled
    program_file = "train_step.mlir" if args.topology is None else "train_step.hlo"
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        files.write_atomic(os.path.join(args.out, "lowering.json"),
                           json.dumps(summary.to_json(), indent=1) + "\n")
        files.write_atomic(os.path.join(args.out, program_file), program)
    if args.json:
        print(json.dumps(summary.to_json()))
    else:
        _print_summary(summary)
        if summary.compiled is not None and summary.compiled["fits"] is False:
            print(f"  {fit_hints(model, train)}")
        if args.out:
            print(f"  written:           {args.out}/lowering.json, {args.out}/{program_file}")
    compiled = summary.compiled
    return 3 if compiled is not None and compiled["fits"] is False else 0

"""``moejax lower``: a run's training step lowered for TPU or an NVIDIA GPU on this machine, to
check a config (shapes, shardings, kernels, collectives, state per device) before booking the
accelerator.

    moejax lower --gin_file=configs/smoke.gin --gin_file=mesh/cpu8_expert.gin --target=tpu
    moejax lower --gin_file=... --gin_file=mesh/tpu_v5e_16.gin --target=tpu --devices=16 \
        --out=runs/lowered
    moejax lower --gin_file=configs/smoke.gin --target=cuda --gpu=8.6   # an A10G or RTX 30

The same gin files and bindings as ``moejax train``. JAX starts here on CPU with as many fake
devices as the mesh has (``--devices`` when an axis is -1). Prints a summary (JSON with
``--json``); ``--out`` also writes ``lowering.json`` and the program (``train_step.mlir``).
Exit 0 when the step lowered, 2 on a config error, 1 when the lowering failed (its error is
printed: that is what the target would have refused).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from moejax.ginconf import GinConfigError

TARGETS = ("tpu", "cuda")  # the platforms platform.target_device knows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from moejax.train.cli import add_gin_arguments

    add_gin_arguments(parser)
    parser.add_argument("--target", choices=TARGETS, required=True,
                        help="the platform to lower for")
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
    print(f"lowered the training step for {summary.target} ({summary.device}) on "
          f"{summary.devices} device(s), mesh {summary.mesh}")
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


def run(args: argparse.Namespace) -> int:
    from moejax.errors import ConfigError

    try:
        capability = _parse_capability(args.gpu) if args.target == "cuda" else None
        from moejax.parallel.mesh import configured_mesh
        from moejax.train.cli import load_configs
        from moejax.train.lower import devices_needed, lower_train_step

        model, data, train = load_configs(args.gin_file, args.gin_bindings)
        mesh_config = configured_mesh()
        num_devices = devices_needed(mesh_config, args.devices)
        _start_jax_with(num_devices)
    except (GinConfigError, ConfigError, ValueError, FileNotFoundError) as error:
        print(f"moejax lower: error: {error}", file=sys.stderr)
        return 2
    try:
        exported, summary = lower_train_step(model, data, train, mesh_config, args.target,
                                             num_devices, capability)
    except (ConfigError, FileNotFoundError) as error:
        print(f"moejax lower: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the target refused the program: say why
        print(f"moejax lower: the step does not lower for {args.target}: "
              f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if args.out:
        from moejax import files

        os.makedirs(args.out, exist_ok=True)
        files.write_atomic(os.path.join(args.out, "lowering.json"),
                           json.dumps(summary.to_json(), indent=1) + "\n")
        files.write_atomic(os.path.join(args.out, "train_step.mlir"), exported.mlir_module())
    if args.json:
        print(json.dumps(summary.to_json()))
    else:
        _print_summary(summary)
        if args.out:
            print(f"  written:           {args.out}/lowering.json, {args.out}/train_step.mlir")
    return 0

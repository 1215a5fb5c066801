"""A run's training step lowered for TPU or an NVIDIA GPU on this machine, no accelerator needed.

In: the model, data and train configs and the mesh of a run (as ``moejax train`` reads them from
gin), a target ("tpu", "cuda") and enough devices here to stand for the target's (fake CPU
devices: ``--xla_force_host_platform_device_count``). Out: the step exported with ``jax.export``
for that platform, and a summary of it (``LoweringSummary``).

Lowering runs every lowering rule of the target: the accelerator kernels are built as they
would be there (Mosaic TPU, Triton, Mosaic GPU: not their interpreters), shapes and shardings
are checked, and the collectives are placed. What it cannot show is past the target's own
compiler: speed, the activations' memory, register and shared-memory allocation. The summary
gives what lowering does know: the program's custom calls and collectives, the kernel each
expert matmul resolved to, and the bytes of parameters and optimizer state each device holds
under the run's shardings (activations come on top).

``compile_train_step`` goes past lowering: on the compile-only devices of a TPU slice (libtpu)
or of NVIDIA GPUs (JAX's CUDA plugin; ``moejax.parallel.topology``) the target's own compiler
(XLA:TPU and Mosaic; XLA:GPU, Triton and Mosaic GPU) compiles the step as it would there, so the
kernels' VMEM or shared memory is checked and the memory each device needs, activations
included, comes from the compiler itself.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp

from moejax.data.pipeline import BATCH_KEYS
from moejax.errors import ConfigError
from moejax.kernels import platform, record
from moejax.model.functional import build_model
from moejax.parallel import sharding, topology
from moejax.parallel.mesh import MeshConfig, make_mesh
from moejax.parallel.rules import sharding_rules
from moejax.train.loop import validate_all
from moejax.train.optim import make_optimizer, make_schedule

_COLLECTIVES = ("all_to_all", "all_gather", "reduce_scatter", "all_reduce", "collective_permute")


@dataclasses.dataclass(frozen=True)
class LoweringSummary:
    """What a lowered training step holds. ``state_bytes_per_device``: the largest shard of
    parameters, optimizer state and buffers any device holds."""

    target: str
    device: str
    devices: int
    mesh: dict
    parameters: int
    state_bytes: int
    state_bytes_per_device: int
    custom_calls: dict
    collectives: dict
    kernels: list
    # compile_train_step: topology, seconds, memory_of(...), compiled_collectives(...)
    compiled: dict | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _per_device_bytes(abstract_state) -> tuple[int, int]:
    """(total bytes, bytes one device holds: a shard of every leaf) of a state of
    ShapeDtypeStructs carrying their shardings."""
    total = per_device = 0
    for leaf in jax.tree.leaves(abstract_state):
        itemsize = jnp.dtype(leaf.dtype).itemsize
        total += math.prod(leaf.shape) * itemsize
        per_device += math.prod(leaf.sharding.shard_shape(leaf.shape)) * itemsize
    return total, per_device


def _abstract_batch(batch_size: int, seq_len: int, batch_sharding) -> dict:
    """The training batch's keys (the data pipeline's), int32 but the float32 loss weights."""
    return {key: jax.ShapeDtypeStruct((batch_size, seq_len),
                                      jnp.float32 if key == "loss_weights" else jnp.int32,
                                      sharding=batch_sharding)
            for key in BATCH_KEYS.values()}


def count_ops(text: str) -> tuple[dict, dict]:
    """(custom call targets, collectives) of a StableHLO module's text, with their counts."""
    calls = collections.Counter(re.findall(r"stablehlo\.custom_call @([\w$.]+)\(", text))
    collectives = {name: len(re.findall(rf'"?stablehlo\.{name}"?[( ]', text))
                   for name in _COLLECTIVES}
    collectives["ragged_all_to_all"] = calls.get("ragged_all_to_all", 0)
    return dict(sorted(calls.items())), {k: v for k, v in collectives.items() if v}


def devices_needed(mesh_config: MeshConfig | None, requested: int | None) -> int:
    """How many devices the lowering stands in for: ``requested``, else the mesh's product (a
    mesh with a -1 axis needs ``requested``), else 1 (no mesh: one device)."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--devices {requested}: must be >= 1")
        return requested
    if mesh_config is None:
        return 1
    sizes = mesh_config.sizes()
    if any(size == -1 for size in sizes.values()):
        raise ConfigError(f"the mesh {sizes} leaves an axis at -1 (all the remaining devices): "
                          "give the target's device count with --devices N")
    return math.prod(sizes.values())


def _training_program(model_config, data_config, train_config, mesh_config, devices, rules):
    """(jitted step, abstract state, abstract batch, mesh) of a run on ``devices``."""
    mesh_config = mesh_config if mesh_config is not None else MeshConfig(data=1)
    mesh = make_mesh(mesh_config, devices)  # a ConfigError names a mismatch
    rules = rules if rules is not None else sharding_rules()
    model = build_model(model_config)
    tx = make_optimizer(train_config)
    setup = sharding.setup_sharded_training(model, tx, mesh, rules,
                                            batch_size=data_config.batch_size,
                                            grad_accum_steps=train_config.grad_accum_steps)
    step = sharding.make_sharded_train_step(model, tx, make_schedule(train_config), mesh, rules,
                                            setup.state_shardings,
                                            grad_accum_steps=train_config.grad_accum_steps)
    state = sharding.abstract_sharded_state(model, tx, setup.state_shardings)
    batch = _abstract_batch(data_config.batch_size, data_config.seq_len, setup.batch_sharding)
    return step, state, batch, mesh


def _summary(target, device_kind, num_devices, mesh, state, text, kernels,
             compiled=None) -> LoweringSummary:
    custom_calls, collectives = count_ops(text)
    total, per_device = _per_device_bytes(state)
    return LoweringSummary(
        target=target, device=device_kind, devices=num_devices, mesh=dict(mesh.shape),
        parameters=sum(math.prod(p.shape) for p in jax.tree.leaves(state.params)),
        state_bytes=total, state_bytes_per_device=per_device, custom_calls=custom_calls,
        collectives=collectives,
        kernels=[{"requested": entry["requested"], "impl": entry["impl"],
                  "choice": entry["choice"],
                  "rows_k_n": [entry["problem"][k] for k in ("rows", "k", "n")]}
                 for entry in kernels],
        compiled=compiled)


def lower_train_step(model_config, data_config, train_config, mesh_config: MeshConfig | None,
                     target: str, num_devices: int = 1,
                     capability: tuple[int, int] | None = None, rules=None):
    """(jax.export.Exported, LoweringSummary) of the run's training step for ``target`` on
    ``num_devices`` devices (the first ones here stand for the target's).

    ``mesh_config`` None: one device, as ``moejax train`` runs without a mesh.
    """
    from jax import export

    device = platform.target_device(target, capability)
    model_config = validate_all(model_config, data_config, train_config)
    here = jax.devices()
    if len(here) < num_devices:
        raise ConfigError(f"lowering for {num_devices} devices needs as many here; this process "
                          f"has {len(here)} ({here[0].platform}). moejax lower starts JAX with "
                          "fake CPU devices itself: run it in a fresh process")
    step, state, batch, mesh = _training_program(model_config, data_config, train_config,
                                                 mesh_config, here[:num_devices], rules)
    checks = [export.DisabledSafetyCheck.custom_call(name)
              for name in platform.EXPORT_UNGUARANTEED_CALLS]
    with platform.targeting(device), record.recording() as kernels:
        exported = export.export(step, platforms=[target], disabled_checks=checks)(state, batch)
    summary = _summary(target, device.kind, exported.nr_devices, mesh, state,
                       exported.mlir_module(), kernels)
    return exported, summary


_HLO_COLLECTIVE = re.compile(r"\s(all-gather|all-reduce|reduce-scatter|all-to-all|"
                             r"collective-permute|ragged-all-to-all)(?:-start)?\(")


def compiled_collectives(hlo_text: str) -> dict:
    """Collectives of a compiled (partitioned) HLO module with their counts: those the SPMD
    partitioner added (FSDP's all-gathers, say) as well as the program's own; an async pair
    counts once."""
    found = collections.Counter(m.group(1) for m in _HLO_COLLECTIVE.finditer(hlo_text))
    return dict(sorted(found.items()))


def memory_of(compiled, device_kind: str) -> dict:
    """Bytes one device needs for a compiled program, from XLA's own analysis: its arguments
    (parameters, optimizer state, batch), outputs less those written over donated arguments,
    temporaries (activations, gradients, collectives' buffers) and code; and whether that fits
    the device's HBM (None where the kind's HBM is not known)."""
    stats = compiled.memory_analysis()
    parts = {"argument_bytes": stats.argument_size_in_bytes,
             "output_bytes": stats.output_size_in_bytes,
             "alias_bytes": stats.alias_size_in_bytes,
             "temp_bytes": stats.temp_size_in_bytes,
             "code_bytes": stats.generated_code_size_in_bytes}
    need = (parts["argument_bytes"] + parts["output_bytes"] - parts["alias_bytes"]
            + parts["temp_bytes"] + parts["code_bytes"])
    hbm = topology.hbm_bytes(device_kind)
    return {**parts, "total_bytes": need, "hbm_bytes": hbm,
            "fits": None if hbm is None else need <= hbm}


def fit_hints(model_config, train_config) -> str:
    """What usually brings a step that does not fit under the device's memory, for this run:
    rematerialised blocks (if not already), a micro-batch half the size, more devices."""
    hints = []
    if model_config.remat != "block":
        hints.append("ModelConfig.remat = 'block' (recompute each block's activations in the "
                     "backward pass)")
    hints.append(f"TrainConfig.grad_accum_steps = {2 * train_config.grad_accum_steps} (half the "
                 "activations per micro-batch)")
    hints.append("a mesh over more devices (parameters and optimizer state shard over fsdp)")
    return "to fit, try: " + "; or ".join(hints)


class DoesNotFit(Exception):
    """XLA:TPU refused the step for want of HBM; the message is its own, with the sizes."""


def compile_train_step(model_config, data_config, train_config, mesh_config: MeshConfig | None,
                       topology_name: str, num_devices: int | None = None, rules=None):
    """(jax.stages.Compiled, LoweringSummary) of the run's training step compiled by the
    target's own compiler (XLA:TPU and Mosaic; XLA:GPU and Triton) for the first
    ``num_devices`` compile-only devices of ``topology_name`` (a TPU slice "v5e:4x4" or GPUs
    "h100:8"; default: all of them where the mesh has a -1 axis, else the mesh's product; one
    without a mesh). The summary's ``compiled`` holds the compile time and ``memory_of`` the
    program. ``DoesNotFit`` when XLA:TPU finds the step too big for the devices' HBM (XLA:GPU
    does not refuse; ``compiled["fits"]`` says it)."""
    devices = topology.compile_only_devices(topology_name)
    if num_devices is None and mesh_config is not None and -1 in mesh_config.sizes().values():
        num_devices = len(devices)
    num_devices = devices_needed(mesh_config, num_devices)
    if num_devices > len(devices):
        raise ConfigError(f"the mesh needs {num_devices} devices; topology {topology_name!r} "
                          f"has {len(devices)}")
    device = platform.device_of(devices[0])  # a compile-only device: "tpu" or "gpu"
    kind, target = device.kind, "cuda" if device.backend == "gpu" else "tpu"
    model_config = validate_all(model_config, data_config, train_config)
    step, state, batch, mesh = _training_program(model_config, data_config, train_config,
                                                 mesh_config, devices[:num_devices], rules)
    start = time.perf_counter()
    with platform.targeting(device), record.recording() as kernels:
        lowered = step.lower(state, batch)
        try:
            compiled = lowered.compile()
        except Exception as error:  # noqa: BLE001 - only the HBM verdict is ours to name
            if "RESOURCE_EXHAUSTED" in str(error) and "HBM" in str(error):
                raise DoesNotFit(f"the step needs more HBM than a {kind} device has: "
                                 f"{error}") from None
            raise
    seconds = time.perf_counter() - start
    summary = _summary(target, kind, num_devices, mesh, state, lowered.as_text(), kernels,
                       compiled={"topology": topology_name, "seconds": round(seconds, 1),
                                 **memory_of(compiled, kind),
                                 "collectives": compiled_collectives(compiled.as_text())})
    return compiled, summary

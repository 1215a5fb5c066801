"""The device mesh of a run: four named axes declared in gin, validated before anything compiles.

In: ``MeshConfig`` (axis sizes, one of them may be -1 for "the rest") and the devices to use
(default: every device of every process). Out: a ``jax.sharding.Mesh`` with the axes, in order,

- ``data``: pure data parallelism (the batch is split, parameters are replicated);
- ``fsdp``: data parallelism whose devices also split the parameters and optimizer state;
- ``expert``: expert parallelism (experts split; the batch is split too, so tokens travel to
  their experts with an all-to-all);
- ``tensor``: attention heads, feed-forward hidden and vocabulary split (Megatron style).

Which tensor dimension goes on which axis is not decided here but by the logical-axis rules of
``moejax.parallel.rules``. The axes are ``AxisType.Auto``: GSPMD propagates shardings from the
annotated parameters, batches and activations.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import gin
import jax
import numpy as np

from moejax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "expert", "tensor")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the four mesh axes; their product must equal the number of devices.

    Attributes:
      data: data-parallel replicas (-1 = every device the other axes leave).
      fsdp: devices that split the batch *and* shard parameters and optimizer state (ZeRO-3).
      expert: devices that split the experts of every MoE layer (and the batch).
      tensor: devices that split heads, feed-forward hidden and vocabulary.
    """

    data: int = -1
    fsdp: int = 1
    expert: int = 1
    tensor: int = 1

    def sizes(self) -> dict[str, int]:
        return {axis: getattr(self, axis) for axis in MESH_AXES}


def configured_mesh() -> MeshConfig | None:
    """``MeshConfig()`` when the parsed gin config binds any ``MeshConfig`` knob, else None.

    This is how ``moejax train`` decides between one device (no mesh named: every existing run
    config keeps its behaviour) and a mesh; ``MeshConfig.data = -1`` alone means every device
    on ``data``.
    """
    for axis in MESH_AXES:
        try:
            gin.query_parameter(f"MeshConfig.{axis}")
        except ValueError:
            continue
        return MeshConfig()
    return None


def _describe(config: MeshConfig) -> str:
    return " x ".join(f"{axis}={size}" for axis, size in config.sizes().items())


def resolve_mesh_shape(config: MeshConfig, num_devices: int) -> dict[str, int]:
    """Axis sizes with the -1 filled in; ConfigError names the axes, sizes and device count.

    Pure: no devices are touched, so a wrong mesh fails in microseconds.
    """
    sizes = config.sizes()
    for axis, size in sizes.items():
        if not isinstance(size, int) or (size < 1 and size != -1):
            raise ConfigError(f"MeshConfig.{axis} = {size!r} is not allowed: a positive integer, "
                              f"or -1 for the devices the other axes leave")
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ConfigError(f"MeshConfig has -1 on {len(free)} axes ({', '.join(free)}); at most one "
                          f"axis may take 'the rest' ({_describe(config)})")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"MeshConfig {_describe(config)}: the fixed axes need a multiple of {fixed} "
                f"devices, but there are {num_devices}; MeshConfig.{free[0]} = -1 cannot fill it")
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(
            f"MeshConfig {_describe(config)} has {fixed} devices in all, but there are "
            f"{num_devices}: the product of the axis sizes must equal the device count "
            f"(use -1 on one axis for 'the rest')")
    return sizes


def make_mesh(config: MeshConfig | None = None,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A Mesh with axes ('data', 'fsdp', 'expert', 'tensor') over ``devices`` (default: all).

    The config is checked against the device count first (``resolve_mesh_shape``).
    ``jax.make_mesh`` orders the devices for the physical topology (TPU rings, hosts contiguous
    along the leading axes); an explicit device list is used in the order given.
    """
    config = config if config is not None else MeshConfig()
    explicit = devices is not None
    devices = list(devices) if explicit else jax.devices()
    shape = resolve_mesh_shape(config, len(devices))
    axis_sizes = tuple(shape[axis] for axis in MESH_AXES)
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if explicit:
        return jax.sharding.Mesh(np.asarray(devices, dtype=object).reshape(axis_sizes), MESH_AXES,
                                 axis_types=axis_types)
    return jax.make_mesh(axis_sizes, MESH_AXES, axis_types, devices=devices)


def mesh_shape(mesh: jax.sharding.Mesh) -> dict[str, int]:
    """{'data': 2, 'fsdp': 1, ...}: JSON-able description for logs and checkpoint metadata."""
    return {name: int(size) for name, size in mesh.shape.items()}

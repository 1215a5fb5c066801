"""Logical axis names -> mesh axes: how a researcher changes sharding without touching the model.

In: the logical names a tensor's dimensions carry (``('embed', 'heads', 'head_dim')`` on the
query projection, ``('batch', 'seq', 'embed')`` on the residual stream), a rules table and a mesh.
Out: a ``PartitionSpec``. The model only names its dimensions (``logical_param`` at a parameter's
definition, ``constrain`` on key activations); the table below, overridable from gin with
``sharding_rules.overrides = {'embed': None, ...}``, decides where they go (the t5x / MaxText
logical-rules idea).

``logical_to_spec`` reads the rule of every dimension in order and keeps a mesh axis only if
- its size is > 1 (an axis of size 1 shards nothing),
- no earlier dimension of the same tensor already used it (so the batch, which claims ``fsdp``,
  keeps activations' ``embed`` dimension whole while parameters' ``embed`` is FSDP-sharded), and
- the dimension stays divisible by the product of the axes kept so far. A dimension that does not
  divide (e.g. 1 key/value head on ``tensor = 2``) is replicated over that axis instead, and a
  note is logged once: replication is always correct, only less memory-efficient, and failing
  instead would make a whole class of small models untrainable on a given mesh. The batch is the
  exception: ``moejax.parallel.sharding`` checks it divides the batch axes and fails clearly.

``constrain(x, names)`` is a no-op unless a ``activation_sharding(mesh, rules)`` context is active
(single-device code and unit tests never see a mesh). The context is thread-local and only set
while a sharded step is being traced, like flax's ``logical_axis_rules``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from typing import Mapping, Sequence

import gin
import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from moejax.errors import ConfigError
from moejax.parallel.mesh import MESH_AXES

LogicalNames = tuple  # one logical name (or None = never sharded) per dimension
Rules = Mapping[str, tuple]  # logical name -> mesh axes, in the order they split the dimension

DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    # activations
    "batch": ("data", "fsdp", "expert"),  # tokens are split over the expert axis too, so the MoE
    "seq": (),                             # layer's dispatch is an all-to-all, not a broadcast
    "capacity": ("data", "fsdp"),  # slots of an expert's capacity buffer (E, C, D)
    # parameters (and the activation dimensions of the same name)
    "embed": ("fsdp",),  # D: parameters FSDP-sharded; activations keep it whole (batch took fsdp)
    "vocab": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "latent": (),  # latent attention's C and Q: small, replicated
    "mlp": ("tensor",),  # dense feed-forward hidden F (and 2F of the fused gate/up weight)
    "expert": ("expert",),  # E of the expert weights and of the dispatch buffers
    "expert_mlp": ("tensor",),  # an expert's hidden F
    "router_experts": (),  # E of the router projection: tiny, replicated so logits stay local
    "norm": (),
}

_log = logging.getLogger(__name__)
_noted: set = set()


def _axes(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@gin.configurable
def sharding_rules(overrides: Mapping | None = None) -> dict[str, tuple[str, ...]]:
    """The logical-axis rules: DEFAULT_RULES with ``overrides`` applied.

    Args:
      overrides: {logical name: mesh axis, tuple of mesh axes, or None (replicate)}; e.g. in gin
        ``sharding_rules.overrides = {'embed': None, 'expert_mlp': None}`` turns FSDP off and
        keeps experts whole over ``tensor``. Unknown names are an error that lists the known ones.
    """
    rules = dict(DEFAULT_RULES)
    for name, value in (overrides or {}).items():
        if name not in rules:
            raise ConfigError(f"sharding_rules.overrides names an unknown logical axis {name!r}; "
                              f"known: {', '.join(sorted(rules))}")
        axes = _axes(value)
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            raise ConfigError(f"sharding_rules.overrides[{name!r}] = {value!r} names mesh axes "
                              f"{unknown} that do not exist; mesh axes are {MESH_AXES}")
        rules[name] = axes
    return rules


def _note(message: str) -> None:
    if message not in _noted:
        _noted.add(message)
        _log.info(message)


def logical_to_spec(names: Sequence[str | None], rules: Rules, mesh: jax.sharding.Mesh,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
    """PartitionSpec of a tensor whose dimensions carry ``names`` (see the module docstring).

    With ``shape`` given, a dimension that its mesh axes do not divide is replicated over them.
    """
    if shape is not None and len(shape) != len(names):
        raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(f"logical axis {name!r} has no sharding rule; known: "
                             f"{', '.join(sorted(rules))}")
        kept = []
        for axis in _axes(rules[name]):
            size = mesh.shape.get(axis, 1)
            if size == 1 or axis in used:
                continue
            if shape is not None and shape[dim] % (math.prod(mesh.shape[a] for a in kept) * size):
                _note(f"dimension {name!r} of size {shape[dim]} does not divide over mesh axis "
                      f"{axis!r} (size {size}); replicated over it")
                continue
            kept.append(axis)
        used.update(kept)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def logical_sharding(names, rules: Rules, mesh: jax.sharding.Mesh, shape=None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, rules, mesh, shape))


# --- annotations used by the model ------------------------------------------------------------

def logical_param(value: jax.Array, names: LogicalNames) -> nnx.Param:
    """An nnx.Param whose dimensions carry logical names (flax's ``out_sharding`` metadata).

    ``eager_sharding=False``: the names are only read by ``moejax.parallel.sharding``; flax must
    not try to place the value on a mesh when the module is built.
    """
    names = tuple(names)
    if len(names) != value.ndim:
        raise ValueError(f"{len(names)} logical names {names} for a parameter of shape "
                         f"{value.shape}")
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


class _Active(threading.local):
    mesh: jax.sharding.Mesh | None = None
    rules: Rules | None = None


_ACTIVE = _Active()


@contextlib.contextmanager
def activation_sharding(mesh: jax.sharding.Mesh, rules: Rules):
    """While active (during tracing of a sharded step), ``constrain`` places activations."""
    previous = (_ACTIVE.mesh, _ACTIVE.rules)
    _ACTIVE.mesh, _ACTIVE.rules = mesh, rules
    try:
        yield
    finally:
        _ACTIVE.mesh, _ACTIVE.rules = previous


def constrain(x: jax.Array, names: LogicalNames) -> jax.Array:
    """``with_sharding_constraint`` by logical names; x unchanged when no mesh is active."""
    if _ACTIVE.mesh is None:
        return x
    return jax.lax.with_sharding_constraint(
        x, logical_sharding(names, _ACTIVE.rules, _ACTIVE.mesh, x.shape))

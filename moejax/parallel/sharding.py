"""Shardings of the train state and batches on a mesh, and the train/eval steps jitted over them.

In: a ``FunctionalModel`` (its ``logical_axes``), the optimizer, a mesh and logical-axis rules.
Out: ``NamedSharding`` trees for the ``TrainState`` (parameters from their logical names; the
optimizer state's moments mirror the parameters; step, rng, balancing biases and scalar optimizer
counters replicated), the batch sharding (rows over the ``batch`` rule's axes), an init that
creates the state directly in that layout (a large model never sits whole on one device), and
``jax.jit`` train and eval steps with explicit in/out shardings.

Shapes: B global batch rows, T sequence.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Mapping

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from moejax.errors import ConfigError
from moejax.model.functional import FunctionalModel
from moejax.parallel.rules import Rules, activation_sharding, logical_sharding, logical_to_spec
from moejax.train.step import TrainState, eval_step_fn, init_train_state, train_step_fn

BATCH_AXES = ("batch", "seq")


def _is_names(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(n, (str, type(None))) for n in x)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def param_shardings(model: FunctionalModel, mesh: jax.sharding.Mesh, rules: Rules) -> Any:
    """The params tree of NamedShardings, from each parameter's logical axis names."""
    return jax.tree.map(lambda names, abstract: logical_sharding(names, rules, mesh, abstract.shape),
                        model.logical_axes, model.abstract_params, is_leaf=_is_names)


def _mirror_params(abstract_tree: Any, params_abstract: Any, params_sharding: Any,
                   default: NamedSharding) -> Any:
    """Shardings for a tree that embeds copies of the params tree (optax moments): a leaf whose
    key path ends with a parameter's path and has that parameter's shape gets its sharding."""
    by_path = {}
    for (path, sharding), abstract in zip(
            jax.tree_util.tree_leaves_with_path(params_sharding), jax.tree.leaves(params_abstract)):
        by_path[tuple(path)] = (sharding, abstract.shape)

    def leaf_sharding(path, leaf):
        path = tuple(path)
        for start in range(len(path)):
            match = by_path.get(path[start:])
            if match is not None and match[1] == getattr(leaf, "shape", None):
                return match[0]
        return default

    return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_tree)


def train_state_shardings(model: FunctionalModel, tx: optax.GradientTransformation,
                          mesh: jax.sharding.Mesh, rules: Rules, seed: int = 0) -> TrainState:
    """A TrainState of NamedShardings for the state ``init_train_state(model, tx, seed)``."""
    abstract = jax.eval_shape(lambda: init_train_state(model, tx, seed))
    params = param_shardings(model, mesh, rules)
    rep = replicated(mesh)
    return TrainState(
        step=rep,
        params=params,
        opt_state=_mirror_params(abstract.opt_state, model.abstract_params, params, rep),
        buffers=jax.tree.map(lambda _: rep, abstract.buffers),
        rng=rep,
    )


def abstract_sharded_state(model: FunctionalModel, tx: optax.GradientTransformation,
                           shardings: TrainState, seed: int = 0) -> TrainState:
    """ShapeDtypeStructs carrying the target shardings: what orbax restores onto (any mesh)."""
    abstract = jax.eval_shape(lambda: init_train_state(model, tx, seed))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def init_sharded_train_state(model: FunctionalModel, tx: optax.GradientTransformation,
                             seed: int, shardings: TrainState) -> TrainState:
    """``init_train_state`` computed by a jit whose outputs are already sharded."""
    return jax.jit(lambda: init_train_state(model, tx, seed), out_shardings=shardings)()


def batch_shards(mesh: jax.sharding.Mesh, rules: Rules) -> int:
    """How many ways the batch rows are split (the product of the ``batch`` rule's mesh axes)."""
    spec = logical_to_spec(("batch",), rules, mesh)
    axes = spec[0] if spec else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def check_batch(batch_size: int, mesh: jax.sharding.Mesh, rules: Rules,
                grad_accum_steps: int = 1) -> None:
    """ConfigError unless every micro-batch splits evenly over the batch's mesh axes."""
    shards = batch_shards(mesh, rules)
    rows = batch_size // grad_accum_steps
    if rows % shards:
        raise ConfigError(
            f"DataConfig.batch_size = {batch_size} (over TrainConfig.grad_accum_steps = "
            f"{grad_accum_steps} micro-batches: {rows} rows each) must be divisible by the "
            f"{shards} devices the batch is split over (mesh {dict(mesh.shape)}, batch rule "
            f"{rules['batch']})")


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules) -> NamedSharding:
    """Sharding of every (B, T) batch array: rows over the batch axes, positions whole."""
    return NamedSharding(mesh, logical_to_spec(BATCH_AXES, rules, mesh))


def put_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """A global batch every process holds whole (e.g. validation batches) -> sharded arrays."""
    return {key: jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
            for key, value in batch.items()}


@contextlib.contextmanager
def _tracing_on(mesh: jax.sharding.Mesh, rules: Rules):
    """While a sharded step is traced: the mesh in context (the MoE layers pick their shard_map
    dispatch from it) and the activation constraints active."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), activation_sharding(mesh, rules):
        yield


def make_sharded_train_step(model: FunctionalModel, tx: optax.GradientTransformation,
                            schedule: optax.Schedule, mesh: jax.sharding.Mesh, rules: Rules,
                            state_shardings: TrainState, *, grad_accum_steps: int = 1) -> Callable:
    """jitted (state, batch) -> (state, metrics) with explicit shardings; the state is donated.

    The model's activation constraints (``moejax.parallel.rules.constrain``) are active while
    the step is traced. Metrics come back replicated.
    """
    step_fn = train_step_fn(model, tx, schedule, grad_accum_steps=grad_accum_steps)

    def sharded_step(state, batch):
        with _tracing_on(mesh, rules):
            return step_fn(state, batch)

    return jax.jit(sharded_step, in_shardings=(state_shardings, batch_sharding(mesh, rules)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))


def make_sharded_eval_step(model: FunctionalModel, mesh: jax.sharding.Mesh, rules: Rules,
                           state_shardings: TrainState) -> Callable:
    """jitted (params, buffers, batch) -> (nll sum, tokens), replicated float32 scalars."""
    step_fn = eval_step_fn(model)

    def sharded_eval(params, buffers, batch):
        with _tracing_on(mesh, rules):
            return step_fn(params, buffers, batch)

    return jax.jit(sharded_eval, in_shardings=(state_shardings.params, state_shardings.buffers,
                                               batch_sharding(mesh, rules)),
                   out_shardings=replicated(mesh))


@dataclasses.dataclass(frozen=True)
class ShardedTraining:
    """Everything the training loop needs to run on a mesh."""

    mesh: jax.sharding.Mesh
    rules: Rules
    state_shardings: TrainState
    batch_sharding: NamedSharding


def setup_sharded_training(model: FunctionalModel, tx: optax.GradientTransformation,
                           mesh: jax.sharding.Mesh, rules: Rules, *, batch_size: int,
                           grad_accum_steps: int = 1, seed: int = 0) -> ShardedTraining:
    """Check the batch against the mesh, then derive the state and batch shardings."""
    check_batch(batch_size, mesh, rules, grad_accum_steps)
    return ShardedTraining(mesh, rules, train_state_shardings(model, tx, mesh, rules, seed),
                           batch_sharding(mesh, rules))

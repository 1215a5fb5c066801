"""A functional face of the Flax model for jit, optax and orbax.

In: a validated ModelConfig. Out: ``FunctionalModel`` with
- ``init(rng) -> params``: a nested dict of float32 arrays, the exact pytree that is optimised;
- ``init_buffers() -> buffers``: non-trainable state the optimizer never sees (today the
  auxiliary-loss-free balancing biases; an empty dict when there are none);
- ``apply(params, tokens, positions, segment_ids, *, buffers, train, rng) -> (logits, moe_stats)``;
- ``extend(params, cache, tokens, positions, segment_ids, *, buffers) -> (logits, cache)``: T
  more tokens through a decoding cache (``moejax.model.decoding.init_cache``), in eval mode;
- ``logical_axes``: the params tree with, at every leaf, the tuple of logical axis names its
  dimensions carry (declared where the parameter is defined, ``moejax.parallel.rules.logical_param``),
  from which ``moejax.parallel.sharding`` derives the parameters' shardings on any mesh.
Keeping the train state plain pytrees lets sharding rules and checkpoint restores work on
ordinary dicts rather than on Flax objects.

Buffers flatten (``jax.tree.leaves``) in block order, then group order — the order of the
``MoEStats`` list and of each stats' ``group_loads`` — which ``update_balancing_biases`` relies on.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
from flax import nnx

from moejax.model import balancing
from moejax.model.config import ModelConfig, validate_model_config
from moejax.model.moe import MoEStats
from moejax.model.router import BalancingBias
from moejax.model.transformer import Transformer

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class FunctionalModel:
    config: ModelConfig
    init: Callable[[jax.Array], Params]
    init_buffers: Callable[[], Params]
    apply: Callable[..., tuple]
    abstract_params: Params
    logical_axes: Params
    extend: Callable[..., tuple]


def _logical_axes(abstract_params, pure_params: Params) -> Params:
    """The params tree with each leaf replaced by its parameter's logical axis names."""
    names_by_path, missing = {}, []
    for path, variable in nnx.to_flat_state(abstract_params):
        names = variable.get_metadata().get("out_sharding")
        if names is None or len(names) != len(variable.get_value().shape):
            missing.append("/".join(map(str, path)))
        names_by_path[tuple(path)] = tuple(names) if names is not None else None
    if missing:
        raise ValueError("parameters without logical axis names (define them with "
                         "moejax.parallel.rules.logical_param): " + ", ".join(missing))
    return jax.tree_util.tree_map_with_path(
        lambda path, _: names_by_path[tuple(k.key for k in path)], pure_params)


def build_model(config: ModelConfig) -> FunctionalModel:
    """Validate the config, then return pure init/apply functions over a params dict."""
    validate_model_config(config)
    abstract_model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_params, abstract_buffers = nnx.split(abstract_model, nnx.Param,
                                                            BalancingBias)
    has_buffers = bool(jax.tree.leaves(nnx.to_pure_dict(abstract_buffers)))

    def init(rng: jax.Array) -> Params:
        model = Transformer(config, rngs=nnx.Rngs(params=rng))
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def init_buffers() -> Params:
        return jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype),
                            nnx.to_pure_dict(abstract_buffers))

    def merged(params: Params, buffers: Params | None) -> Transformer:
        if buffers is None:
            if has_buffers:
                raise ValueError("this model has balancing biases: pass buffers=...")
            buffers = {}
        param_state = jax.tree.map(lambda x: x, abstract_params)  # fresh copies to fill in
        buffer_state = jax.tree.map(lambda x: x, abstract_buffers)
        nnx.replace_by_pure_dict(param_state, params)
        if has_buffers:
            nnx.replace_by_pure_dict(buffer_state, buffers)
        return nnx.merge(graphdef, param_state, buffer_state)

    def apply(params: Params, tokens_BT, positions_BT=None, segment_ids_BT=None, *,
              buffers: Params | None = None, train: bool = False, rng=None):
        return merged(params, buffers)(tokens_BT, positions_BT, segment_ids_BT, train=train,
                                       rng=rng)

    def extend(params: Params, cache, tokens_BT, positions_BT, segment_ids_BT, *,
               buffers: Params | None = None):
        return merged(params, buffers).extend(tokens_BT, positions_BT, segment_ids_BT, cache)

    pure_abstract_params = nnx.to_pure_dict(abstract_params)
    return FunctionalModel(config, init, init_buffers, apply, pure_abstract_params,
                           _logical_axes(abstract_params, pure_abstract_params), extend)


def update_balancing_biases(buffers: Params, moe_stats: Sequence[MoEStats], rate: float) -> Params:
    """One auxiliary-loss-free balancing step for every router, from that step's expert loads."""
    leaves, treedef = jax.tree.flatten(buffers)
    if not leaves:
        return buffers
    loads = [load for stats in moe_stats for load in stats.group_loads]
    if len(loads) != len(leaves):
        raise ValueError(f"{len(leaves)} balancing biases but {len(loads)} expert-load vectors")
    return jax.tree.unflatten(treedef, [balancing.bias_update(b, load, rate)
                                        for b, load in zip(leaves, loads)])

"""A functional face of the Flax model for jit, optax and orbax.

In: a validated ModelConfig. Out: ``FunctionalModel`` with ``init(rng) -> params`` (a nested dict
of float32 arrays, the exact pytree that is optimised and checkpointed) and
``apply(params, tokens, positions, segment_ids) -> (logits, moe_stats)``.
Keeping the train state a plain pytree lets later sharding rules and checkpoint restores work on
ordinary dicts rather than on Flax objects.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from flax import nnx

from moejax.model.config import ModelConfig, validate_model_config
from moejax.model.transformer import Transformer

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class FunctionalModel:
    config: ModelConfig
    init: Callable[[jax.Array], Params]
    apply: Callable[..., tuple]
    abstract_params: Params


def build_model(config: ModelConfig) -> FunctionalModel:
    """Validate the config, then return pure init/apply functions over a params dict."""
    validate_model_config(config)
    abstract_model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract_model, nnx.Param)

    def init(rng: jax.Array) -> Params:
        model = Transformer(config, rngs=nnx.Rngs(params=rng))
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def apply(params: Params, tokens_BT, positions_BT=None, segment_ids_BT=None):
        state = jax.tree.map(lambda x: x, abstract_state)  # a fresh copy to fill in
        nnx.replace_by_pure_dict(state, params)
        model = nnx.merge(graphdef, state)
        return model(tokens_BT, positions_BT, segment_ids_BT)

    return FunctionalModel(config, init, apply, nnx.to_pure_dict(abstract_state))

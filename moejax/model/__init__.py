"""The Flax MoE transformer and its configuration.

In: a ``ModelConfig`` (from gin). Out: a model whose ``apply`` maps tokens to float32 logits and
per-MoE-layer routing statistics. Pieces, one concept per module: ``config`` (knobs and
validation), ``layers`` (attention, norms, dense SwiGLU), ``router`` (scores and top-k),
``balancing`` (aux and z losses), ``dispatch`` (sort tokens by expert and back), ``experts``
(grouped-matmul SwiGLU experts), ``moe`` (the layer that joins them), ``transformer``,
``functional`` (init/apply over a params dict).
"""

from moejax.model.config import (ConfigError, ModelConfig, MoEConfig, moe_layer_indices,
                                 validate_model_config)
from moejax.model.functional import FunctionalModel, build_model
from moejax.model.moe import MoEStats
from moejax.model.transformer import Transformer

__all__ = [
    "ConfigError", "FunctionalModel", "ModelConfig", "MoEConfig", "MoEStats", "Transformer",
    "build_model", "moe_layer_indices", "validate_model_config",
]

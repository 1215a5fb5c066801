"""moejax: Mixture-of-Experts language models in JAX/Flax, from a design grid to a fitted law.

The packages follow the data flow: ``data`` (seqio tasks) -> ``model`` (Flax MoE transformer)
-> ``kernels`` (grouped matmuls) -> ``train`` (optax loop, orbax checkpoints) -> ``laws``
(scaling-law forms and fits).
"""

__version__ = "0.1.0"

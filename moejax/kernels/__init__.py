"""Grouped matrix multiplication for expert compute.

In: rows lhs (M, k) sorted by group, weights rhs (E, k, n), group_sizes (E,) int32 summing to at
most M. Out: (M, n) where rows of group e are multiplied by rhs[e] (rows past the sum are zero).

Today the only implementation is "xla": ``jax.lax.ragged_dot``, the reference every faster kernel
must match. Faster backends (Pallas TPU/GPU, a CPU path) plug in here behind the same call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla",)


def gmm(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, *, impl: str = "xla",
        preferred_element_type: jnp.dtype | None = None) -> jax.Array:
    """Grouped matmul: out[rows of group e] = lhs[rows of group e] @ rhs[e]."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"gmm impl = {impl!r} is not available; choose one of {IMPLEMENTATIONS}")
    return jax.lax.ragged_dot(lhs, rhs, group_sizes.astype(jnp.int32),
                              preferred_element_type=preferred_element_type)

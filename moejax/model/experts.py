"""A bank of E SwiGLU experts applied to rows already grouped by expert.

In: x_MD rows sorted by expert and group_sizes_E (dropless), or fixed-size buffers x_ECD
(capacity, expert choice). Out: each row transformed by its own expert: y = (silu(x @ w_gate) * (x @ w_up)) @ w_out. Gate and up projections are fused into one
(E, D, 2F) weight so each expert layer is two grouped matmuls.

Shapes: M routed rows, D d_model, F expert hidden, E experts.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.kernels import gmm
from moejax.parallel.rules import constrain, logical_param


def swiglu_experts(x_MD: jax.Array, w_in_EDF2: jax.Array, w_out_EFD: jax.Array,
                   group_sizes_E: jax.Array, compute_dtype=jnp.float32, *, gmm_impl: str = "auto",
                   group_offset: jax.Array | None = None) -> jax.Array:
    """Apply expert e's SwiGLU to the rows of group e; returns (M, D) in compute_dtype.

    With ``group_offset`` the weights hold only the local experts offset.. of the E groups in
    group_sizes_E (expert parallelism); rows of other experts come out zero.
    """
    x_MD = x_MD.astype(compute_dtype)
    h_MF2 = gmm(x_MD, w_in_EDF2.astype(compute_dtype), group_sizes_E, impl=gmm_impl,
                group_offset=group_offset, preferred_element_type=jnp.float32)
    gate_MF, up_MF = jnp.split(h_MF2, 2, axis=-1)
    a_MF = (jax.nn.silu(gate_MF) * up_MF).astype(compute_dtype)
    return gmm(a_MF, w_out_EFD.astype(compute_dtype), group_sizes_E, impl=gmm_impl,
               group_offset=group_offset, preferred_element_type=jnp.float32).astype(compute_dtype)


def swiglu_experts_batched(x_ECD: jax.Array, w_in_EDF2: jax.Array, w_out_EFD: jax.Array,
                           compute_dtype=jnp.float32) -> jax.Array:
    """Expert e's SwiGLU on its own fixed-size buffer x_ECD[e] (capacity and expert-choice paths)."""
    x_ECD = constrain(x_ECD.astype(compute_dtype), ("expert", "capacity", "embed"))
    h_ECF2 = jnp.einsum("ecd,edf->ecf", x_ECD, w_in_EDF2.astype(compute_dtype),
                        preferred_element_type=jnp.float32)
    gate_ECF, up_ECF = jnp.split(h_ECF2, 2, axis=-1)
    a_ECF = constrain((jax.nn.silu(gate_ECF) * up_ECF).astype(compute_dtype),
                      ("expert", "capacity", "expert_mlp"))
    return jnp.einsum("ecf,efd->ecd", a_ECF, w_out_EFD.astype(compute_dtype),
                      preferred_element_type=jnp.float32).astype(compute_dtype)


class SwiGLUExperts(nnx.Module):
    """Holds w_in (E, D, 2F) and w_out (E, F, D); float32 parameters."""

    def __init__(self, num_experts: int, d_model: int, d_expert: int, *, out_scale: float = 1.0,
                 compute_dtype=jnp.float32, gmm_impl: str = "auto", rngs: nnx.Rngs):
        self.compute_dtype = compute_dtype
        self.gmm_impl = gmm_impl
        init_in = jax.nn.initializers.truncated_normal(1.0 / math.sqrt(d_model))
        init_out = jax.nn.initializers.truncated_normal(out_scale / math.sqrt(d_expert))
        self.w_in_EDF2 = logical_param(init_in(rngs.params(), (num_experts, d_model, 2 * d_expert)),
                                       ("expert", "embed", "expert_mlp"))
        self.w_out_EFD = logical_param(init_out(rngs.params(), (num_experts, d_expert, d_model)),
                                       ("expert", "expert_mlp", "embed"))

    def __call__(self, x_MD: jax.Array, group_sizes_E: jax.Array) -> jax.Array:
        """Rows sorted by expert (dropless path)."""
        return swiglu_experts(x_MD, self.w_in_EDF2[...], self.w_out_EFD[...], group_sizes_E,
                              self.compute_dtype, gmm_impl=self.gmm_impl)

    def batched(self, x_ECD: jax.Array) -> jax.Array:
        """One fixed-size buffer per expert (capacity and expert-choice paths)."""
        return swiglu_experts_batched(x_ECD, self.w_in_EDF2[...], self.w_out_EFD[...],
                                      self.compute_dtype)

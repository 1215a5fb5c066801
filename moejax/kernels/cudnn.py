"""The "cudnn" grouped matmul: XLA's ragged_dot where cuDNN runs it, the Triton kernel elsewhere.

In/out as ``moejax.kernels.gmm`` / ``tgmm``. Recent XLA lowers ``jax.lax.ragged_dot`` on NVIDIA
GPUs (sm80+) to cuDNN's grouped matmul instead of the masked dense product. It is on by default
with cuDNN >= 9.22, and otherwise behind
``XLA_FLAGS=--xla_gpu_experimental_use_ragged_dot_fusion=true`` (openxla/xla#40189, #42313).
cuDNN covers the forward and the input gradient (ragged rows), not the weight gradient (a
contraction over ragged rows), which XLA still rewrites to a dense product over all groups.
So this implementation takes the two matmuls cuDNN can run from ``xla.gmm`` and the weight
gradient from the Triton kernel (``pallas_gpu.tgmm``, tiles from ``pallas_gpu_tiling``).

Whether cuDNN actually took the call depends on the XLA build, the cuDNN version and the GPU:
``xla_lowering()`` compiles a small ragged_dot and says which custom call XLA chose, and
``benchmarks/gpu_session.sh ragged`` records it next to the timings. Off a GPU both halves still
run (ragged_dot's dense lowering, the Triton kernel in Pallas's interpreter), which is how the
tests check them on CPU.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from moejax.kernels import pallas_gpu, xla

# The halves: ragged_dot for the forward and the input gradient (cuDNN where XLA lowers it
# there), the Triton kernel for the weight gradient (cuDNN's ragged matmul does not cover it).
gmm = xla.gmm
tgmm = pallas_gpu.tgmm


def xla_lowering(dtype=jnp.bfloat16) -> dict:
    """How this backend's XLA compiles a small ragged_dot forward (see ``summarize``)."""
    lhs = jax.ShapeDtypeStruct((256, 128), dtype)
    rhs = jax.ShapeDtypeStruct((4, 128, 128), dtype)
    sizes = jax.ShapeDtypeStruct((4,), jnp.int32)
    lowered = jax.jit(lambda x, w, s: jax.lax.ragged_dot(
        x, w, s, preferred_element_type=jnp.float32)).lower(lhs, rhs, sizes)
    return {"backend": jax.default_backend(),
            **summarize(lowered.as_text(), lowered.compile().as_text())}


def summarize(stablehlo: str, optimized_hlo: str) -> dict:
    """{"ragged_dot_op": whether JAX handed XLA a ragged_dot (on CPU JAX expands it to a masked
    dense dot itself), "custom_calls": custom-call targets of the optimized HLO,
    "fusion_kinds": backend kinds of its fusions (e.g. "__cudnn$fusion", "__triton_gemm"),
    "cudnn": whether cuDNN runs any of it}."""
    targets = sorted(set(re.findall(r'custom_call_target="([^"]+)"', optimized_hlo)))
    kinds = sorted(set(re.findall(r'"kind":"(__[^"]+)"', optimized_hlo)))
    return {"ragged_dot_op": "chlo.ragged_dot" in stablehlo, "custom_calls": targets,
            "fusion_kinds": kinds,
            "cudnn": any(name.startswith("__cudnn$") for name in targets + kinds)}

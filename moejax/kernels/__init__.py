"""Grouped matrix multiplication for expert compute, fast on every backend.

In: rows lhs (M, k) sorted by group, expert weights rhs (G, k, n), group_sizes (E,) int32 summing
to at most M. Out: (M, n), where the rows of group e are multiplied by that group's weights and
every other row is zero.

One call, ``gmm``, several implementations chosen by ``impl``:

=============  ===========================================================================
"cpu"          ``cpu.py``: a loop over row chunks, each an ordinary matmul with its group's
               weights (near dense-matmul speed on CPU).
"pallas_tpu"   ``pallas_tpu.py``: Mosaic kernel, megablox-style grid with scalar-prefetched
               group metadata. Runs interpreted (slowly) on other backends.
"pallas_gpu"   ``pallas_gpu.py``: Triton kernel. Runs interpreted (slowly) on other backends.
"mosaic_gpu"   ``mosaic_gpu.py``: Hopper kernel (TMA + wgmma, persistent grid), bfloat16/float16
               only. Lowered for CUDA and checked in the Mosaic GPU interpreter here; not yet
               timed on a GPU, so "auto" does not pick it.
"cudnn"        ``cudnn.py``: forward and input gradient through ragged_dot, which recent XLA
               runs on cuDNN's grouped matmul on NVIDIA GPUs (cuDNN >= 9.22, or
               ``XLA_FLAGS=--xla_gpu_experimental_use_ragged_dot_fusion=true``); the weight
               gradient, which cuDNN does not cover, through the Triton kernel. Not yet timed.
"xla"          ``xla.py``: ``jax.lax.ragged_dot``, the reference (masked dense compute on CPU
               and, by default, GPU: correct but slow).
"auto"         cpu -> "cpu", gpu -> "pallas_gpu", tpu -> "pallas_tpu"; a GPU older than
               Ampere (T4, V100: no Triton) -> "xla" (``platform.py``).
"tuned"        ``autotune.py``: the implementation and tiles measured fastest for this
               problem's shapes on this device, from the tuning table; a problem not in the
               table is measured while the caller is traced (seconds to minutes, once).
=============  ===========================================================================

``record.recording()`` collects what each traced call resolved to (a training run writes it to
``kernels.json`` in its run directory).

All implementations share one ``custom_vjp``: d_lhs = gmm(d_out, rhs transposed) and
d_rhs = tgmm(lhs, d_out), a transposed grouped matmul that gives empty groups zero gradient.
Tests (tests/kernels/) prove every implementation agrees with ragged_dot, forward and backward.

Expert parallelism (``group_offset``): a device holding G of the E experts passes rhs (G, k, n),
the *global* group_sizes (E,) and group_offset = index of its first expert. The call computes the
rows of groups offset .. offset+G-1 with rhs[0 .. G-1] and returns zeros for all other rows
(megablox's convention, with zeros where megablox leaves the output untouched). The gradient of
rhs covers the local experts only.
"""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np

from moejax.kernels import autotune, platform, record
from moejax.kernels.tiling import Tiling, default_tiling

IMPLEMENTATIONS = ("auto", "tuned", "cpu", "pallas_tpu", "pallas_gpu", "mosaic_gpu", "cudnn",
                   "xla")
__all__ = ["IMPLEMENTATIONS", "Tiling", "choose", "gmm", "resolve_impl", "tgmm"]


def resolve_impl(impl: str) -> str:
    """The implementation "auto" stands for on the default device; other names unchanged
    ("tuned" depends on the problem's shapes: see ``choose``)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"gmm impl = {impl!r} is not available; choose one of {IMPLEMENTATIONS}")
    if impl != "auto":
        return impl
    device = platform.current()
    return platform.auto_impl(device.backend, device.capability)


def _check_runs_here(impl: str):
    """Refuse, at trace time, a kernel this device cannot compile (a Triton kernel on a T4)."""
    device = platform.current()
    why = platform.unsupported(impl, device.backend, device.capability)
    if why is not None:
        fallback = platform.auto_impl(device.backend, device.capability)
        raise ValueError(f"gmm impl = {impl!r} cannot run on this {device.kind}: {why}. "
                         f"Use gmm_impl = 'auto', which picks {fallback!r} here.")


def choose(impl: str, tiling: Tiling | None,
           problem: autotune.Problem) -> tuple[str, Tiling]:
    """(implementation, tiles) a call runs with; "tuned" picks both for ``problem`` from the
    tuning table (measuring if needed), other names take ``tiling`` or their default."""
    requested = impl
    impl = resolve_impl(impl)
    with record.choosing():
        if impl == "tuned":
            if tiling is not None:
                raise ValueError("gmm impl = 'tuned' chooses the tiling itself; pass an explicit "
                                 "impl to set tiling")
            impl, tiling = autotune.tuned_choice(problem)
        elif tiling is None:
            tiling = default_tiling(impl)
        _check_runs_here(impl)
        record.note(requested, problem, impl, tiling)
    return impl, tiling


def _module(impl: str):
    # Imported on first use, so a JAX without Pallas still has the "cpu" and "xla" paths.
    return importlib.import_module(f"moejax.kernels.{impl}")


def _check(lhs, rhs, group_sizes, group_offset):
    if lhs.ndim != 2 or rhs.ndim != 3 or group_sizes.ndim != 1:
        raise ValueError(f"gmm wants lhs (M, k), rhs (G, k, n), group_sizes (E,); got "
                         f"{lhs.shape}, {rhs.shape}, {group_sizes.shape}")
    if lhs.shape[1] != rhs.shape[1]:
        raise ValueError(f"gmm: lhs has k = {lhs.shape[1]} but rhs has k = {rhs.shape[1]}")
    if rhs.shape[0] > group_sizes.shape[0]:
        raise ValueError(f"gmm: rhs has {rhs.shape[0]} groups, more than the "
                         f"{group_sizes.shape[0]} in group_sizes")
    if not jnp.issubdtype(group_sizes.dtype, jnp.integer):
        raise ValueError(f"gmm: group_sizes must be integers, got {group_sizes.dtype}")
    # Traced offsets (expert parallelism under shard_map) come from the mesh.
    if group_offset is not None and not isinstance(group_offset, jax.core.Tracer):
        offset = int(np.asarray(group_offset))
        if offset < 0 or offset + rhs.shape[0] > group_sizes.shape[0]:
            raise ValueError(f"gmm: group_offset {offset} with {rhs.shape[0]} local groups "
                             f"reaches past the {group_sizes.shape[0]} groups of group_sizes")
    if isinstance(group_sizes, jax.core.Tracer):
        return  # traced sizes (under jit) come from the router and are checked by its tests
    sizes = np.asarray(group_sizes)
    negative = np.flatnonzero(sizes < 0)
    if negative.size:
        raise ValueError(f"gmm: group_sizes must be >= 0; group {negative[0]} has "
                         f"{sizes[negative[0]]} rows")
    if int(sizes.sum()) > lhs.shape[0]:
        raise ValueError(f"gmm: group_sizes sum to {int(sizes.sum())} rows, more than the "
                         f"{lhs.shape[0]} rows of lhs")


def gmm(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, *, impl: str = "auto",
        tiling: Tiling | None = None, group_offset: jax.Array | int | None = None,
        preferred_element_type: jnp.dtype | None = None) -> jax.Array:
    """Grouped matmul: out[rows of group offset+g] = lhs[those rows] @ rhs[g], other rows zero.

    Args:
      lhs: (M, k) rows sorted by group id.
      rhs: (G, k, n) weights of groups group_offset .. group_offset+G-1 (G = E without offset).
      group_sizes: (E,) int rows per group, all groups; sum <= M (rows past the sum give zeros).
      impl: "auto", "tuned", "cpu", "pallas_tpu", "pallas_gpu", "mosaic_gpu", "cudnn" or "xla"
        (see the module docstring).
      tiling: tile sizes; None takes the gin-configured default of the implementation ("tuned":
        must be None).
      group_offset: scalar int (may be traced), first group this call owns; None = 0.
      preferred_element_type: output dtype (None: result type of lhs and rhs). Products always
        accumulate in float32.

    Returns:
      (M, n) array. Gradients: lhs and rhs get theirs (in their own dtypes, computed from the
      output gradient cast to lhs's dtype); group_sizes and group_offset get none.
    """
    _check(lhs, rhs, group_sizes, group_offset)
    out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype))
    impl, tiling = choose(impl, tiling,
                          autotune.Problem.of(lhs, rhs, group_sizes, out_dtype))
    offset = jnp.asarray(0 if group_offset is None else group_offset, jnp.int32).reshape(())
    return _gmm(lhs, rhs, group_sizes.astype(jnp.int32), offset, impl, tiling, out_dtype)


def tgmm(lhs: jax.Array, grad: jax.Array, group_sizes: jax.Array, *, num_groups: int,
         impl: str = "auto", tiling: Tiling | None = None,
         group_offset: jax.Array | int | None = None, out_dtype=None) -> jax.Array:
    """Transposed grouped matmul, the weight gradient: (G, k, n), out[g] = lhs_g.T @ grad_g.

    lhs (M, k) and grad (M, n) share gmm's row layout; lhs_g are the rows of group
    group_offset + g. Groups with no rows (and rows past the group-size sum) contribute zero.
    "tuned" takes the choice of the gmm whose weight gradient this is (lhs (M, k) times a
    (num_groups, k, n) rhs).
    """
    if lhs.ndim != 2 or grad.ndim != 2 or lhs.shape[0] != grad.shape[0]:
        raise ValueError(f"tgmm wants lhs (M, k) and grad (M, n) with the same rows; got "
                         f"{lhs.shape} and {grad.shape}")
    out_dtype = jnp.dtype(out_dtype or lhs.dtype)
    rhs = jax.ShapeDtypeStruct((num_groups, lhs.shape[1], grad.shape[1]), out_dtype)
    _check(lhs, rhs, group_sizes, group_offset)
    impl, tiling = choose(impl, tiling, autotune.Problem.of(lhs, rhs, group_sizes, grad.dtype))
    offset = jnp.asarray(0 if group_offset is None else group_offset, jnp.int32).reshape(())
    return _module(impl).tgmm(lhs, grad.astype(lhs.dtype), group_sizes.astype(jnp.int32), offset,
                              num_groups=num_groups, tiling=tiling, out_dtype=out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _gmm(lhs, rhs, group_sizes, group_offset, impl, tiling, out_dtype):
    return _module(impl).gmm(lhs, rhs, group_sizes, group_offset, tiling=tiling,
                             out_dtype=out_dtype)


def _gmm_fwd(lhs, rhs, group_sizes, group_offset, impl, tiling, out_dtype):
    out = _gmm(lhs, rhs, group_sizes, group_offset, impl, tiling, out_dtype)
    return out, (lhs, rhs, group_sizes, group_offset)


def _gmm_bwd(impl, tiling, out_dtype, residuals, grad_MN):
    lhs, rhs, group_sizes, group_offset = residuals
    kernels = _module(impl)
    grad_MN = grad_MN.astype(lhs.dtype)
    # d_lhs[rows of g] = grad[rows of g] @ rhs[g].T: the same grouped matmul, rhs transposed.
    grad_lhs = kernels.gmm(grad_MN, rhs, group_sizes, group_offset, tiling=tiling,
                           out_dtype=lhs.dtype, transpose_rhs=True)
    # d_rhs[g] = lhs[rows of g].T @ grad[rows of g]: the transposed grouped matmul.
    grad_rhs = kernels.tgmm(lhs, grad_MN, group_sizes, group_offset, num_groups=rhs.shape[0],
                            tiling=tiling, out_dtype=rhs.dtype)
    return grad_lhs, grad_rhs, None, None


_gmm.defvjp(_gmm_fwd, _gmm_bwd)

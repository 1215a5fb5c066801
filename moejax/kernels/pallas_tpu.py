"""The "pallas_tpu" grouped matmul: a Mosaic kernel in the style of jax's megablox.

In/out as ``moejax.kernels.gmm`` / ``tgmm``. Rows are cut into fixed tiles of block_m rows; a
tile holding rows of several groups is visited once per group (``metadata.covering_visits``), and
a visit keeps only its group's rows, so the grid is (n tiles, tiles_m + G - 1 visits, k tiles).
The visit table is scalar-prefetched into SMEM so the BlockSpec index maps can pick, per grid
step, which lhs row tile and which expert's weights to DMA into VMEM.

On a backend other than TPU the kernel runs in Pallas's TPU interpreter (correct, slow), which
is how the test suite checks it on CPU. Simplifications, each a possible speed-up later:
m, k and n are zero-padded to whole tiles in the wrapper (megablox masks the ragged k tile
in-kernel instead). Every output row is stored by the kernel (``metadata.covering_visits``:
tiles no local group touches get a zero visit), so no zeroing pass follows it.

Letters: M rows, K contraction, N output columns, G local groups, V visits; tm, tk, tn tiles.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from moejax.kernels import metadata, operands, platform
from moejax.kernels.tiling import Tiling, fit_tile, round_up


def _interpret():
    """Run natively on TPU; elsewhere in the TPU interpreter (uninitialized memory is NaN, so a
    kernel that forgets to write a block fails the tests loudly)."""
    return False if platform.current().backend == "tpu" else pltpu.InterpretParams()


def _compiler_params(semantics: tuple[str, ...], blocks, scratch_shape) -> pltpu.CompilerParams:
    """Mosaic's parameters, with a VMEM limit raised for tiles the default scope cannot hold.

    ``blocks``: (shape, dtype) of each pipelined block, double-buffered by Pallas;
    ``scratch_shape``: the float32 accumulator's."""
    need = 2 * sum(math.prod(shape) * jnp.dtype(dtype).itemsize for shape, dtype in blocks)
    need += math.prod(scratch_shape) * 4
    try:
        limit = platform.tpu_vmem_limit(need, platform.current().kind)
    except ValueError as error:
        tiles = ", ".join("x".join(map(str, shape)) + f" {jnp.dtype(dtype).name}"
                          for shape, dtype in blocks)
        raise ValueError(f"gmm impl 'pallas_tpu' with blocks {tiles}: {error}; choose smaller "
                         "tiles (pallas_tpu_tiling.block_m / block_k / block_n)") from None
    return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=limit)


def _tiles(tiling: Tiling, m: int, k: int, n: int) -> tuple[int, int, int]:
    # Small problems: shrink tiles to the (padded) dimension; TPU wants rows in multiples of
    # 16 (bfloat16 packing) and k, n in multiples of 128 lanes.
    return (fit_tile(tiling.block_m, m, 16), fit_tile(tiling.block_k, k, 128),
            fit_tile(tiling.block_n, n, 128))


def gmm(lhs_MK: jax.Array, rhs_GKN: jax.Array, group_sizes_E: jax.Array,
        group_offset: jax.Array, *, tiling: Tiling, out_dtype, transpose_rhs: bool = False
        ) -> jax.Array:
    """out[rows of local group g] = lhs[rows] @ rhs[g] (rhs[g].T if transpose_rhs); else 0."""
    m = lhs_MK.shape[0]
    n = rhs_GKN.shape[1] if transpose_rhs else rhs_GKN.shape[2]
    lhs, rhs, (tm, tk, tn), (m_pad, k_pad, n_pad), bounds, visits = operands.gmm_operands(
        lhs_MK, rhs_GKN, group_sizes_E, group_offset, functools.partial(_tiles, tiling),
        transpose_rhs)
    tiles_k = k_pad // tk

    # Index maps get the grid indices (n tile, visit, k tile), then the prefetched scalars.
    def lhs_index(j, v, kk, group_V, tile_V, *_):
        return tile_V[v], kk  # row tile of visit v, k tile kk

    def rhs_index(j, v, kk, group_V, tile_V, *_):
        # Weights of the visit's group; (n, k) blocks when rhs is stored transposed.
        return (group_V[v], j, kk) if transpose_rhs else (group_V[v], kk, j)

    def out_index(j, v, kk, group_V, tile_V, *_):
        return tile_V[v], j  # consecutive visits of one tile keep this block in VMEM

    def kernel(group_V, tile_V, own_start_V, own_end_V, store_start_V, store_end_V, live,
               lhs_ref, rhs_ref, out_ref, acc_ref):
        v, kk = pl.program_id(1), pl.program_id(2)

        @pl.when(kk == 0)
        def _():
            acc_ref[...] = jnp.zeros_like(acc_ref)

        @pl.when(own_end_V[v] > own_start_V[v])  # zero and dead visits compute nothing
        def _():
            contract = 1 if transpose_rhs else 0
            acc_ref[...] += jax.lax.dot_general(
                lhs_ref[...], rhs_ref[...], (((1,), (contract,)), ((), ())),
                preferred_element_type=jnp.float32)

        @pl.when(kk == tiles_k - 1)
        def _():
            # Global row of each element of the tile: the visit's own rows get products, the
            # rest of its store range zeros, and rows other visits store are left alone.
            row = tile_V[v] * tm + jax.lax.broadcasted_iota(jnp.int32, (tm, tn), 0)
            own = (row >= own_start_V[v]) & (row < own_end_V[v])
            stored = (row >= store_start_V[v]) & (row < store_end_V[v])
            kept = jnp.where(stored, 0.0, out_ref[...].astype(jnp.float32))
            out_ref[...] = jnp.where(own, acc_ref[...], kept).astype(out_ref.dtype)

    rhs_block = (None, tn, tk) if transpose_rhs else (None, tk, tn)
    call = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((m_pad, n_pad), out_dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=7,
            grid=(n_pad // tn, visits.group_V.shape[0], tiles_k),
            in_specs=[pl.BlockSpec((tm, tk), lhs_index), pl.BlockSpec(rhs_block, rhs_index)],
            out_specs=pl.BlockSpec((tm, tn), out_index),
            scratch_shapes=[pltpu.VMEM((tm, tn), jnp.float32)],
        ),
        compiler_params=_compiler_params(
            ("parallel", "arbitrary", "arbitrary"),
            [((tm, tk), lhs.dtype), (rhs_block[1:], rhs.dtype), ((tm, tn), out_dtype)],
            (tm, tn)),
        interpret=_interpret(),
        name="moejax_gmm",
    )
    out = call(visits.group_V, visits.tile_V, visits.own_start_V, visits.own_end_V,
               visits.store_start_V, visits.store_end_V, visits.num_live.reshape(1), lhs, rhs)
    return out[:m, :n] if (m, n) != (m_pad, n_pad) else out


def tgmm(lhs_MK: jax.Array, grad_MN: jax.Array, group_sizes_E: jax.Array,
         group_offset: jax.Array, *, num_groups: int, tiling: Tiling, out_dtype) -> jax.Array:
    """(G, K, N): out[g] = lhs[rows of local group g].T @ grad[those rows]; empty groups zero.

    Grid (k tiles, n tiles, visits): the visits of one group are consecutive, so one (tk, tn)
    float32 accumulator sums them and is stored at the group's last visit. An empty group has
    one visit whose rows are all masked: its block is stored as zeros by the kernel.
    """
    m, k = lhs_MK.shape
    n = grad_MN.shape[1]
    tm, tk, tn = _tiles(tiling, m, k, n)
    m_pad, k_pad, n_pad = round_up(m, tm), round_up(k, tk), round_up(n, tn)
    lhs, grad = operands.pad2(lhs_MK, m_pad, k_pad), operands.pad2(grad_MN, m_pad, n_pad)
    bounds = metadata.group_bounds(group_sizes_E, group_offset, num_groups)
    visits = metadata.tile_visits(bounds, m_pad, tm, empty_groups=True)  # every block written
    num_visits = visits.group_V.shape[0]

    def lhs_index(kk, j, v, group_V, tile_V, starts_G, ends_G, live):
        return tile_V[v], kk

    def grad_index(kk, j, v, group_V, tile_V, starts_G, ends_G, live):
        return tile_V[v], j

    def out_index(kk, j, v, group_V, tile_V, starts_G, ends_G, live):
        return group_V[v], kk, j  # stays in VMEM across the visits of one group

    def kernel(group_V, tile_V, starts_G, ends_G, live, lhs_ref, grad_ref, out_ref, acc_ref):
        v = pl.program_id(2)
        group = group_V[v]
        first_visit = (v == 0) | (group_V[jnp.maximum(v - 1, 0)] != group)
        last_visit = (v == num_visits - 1) | (group_V[jnp.minimum(v + 1, num_visits - 1)] != group)

        @pl.when(first_visit)
        def _():
            acc_ref[...] = jnp.zeros_like(acc_ref)

        @pl.when(v < live[0])
        def _():
            # Zero rows of other groups on both sides (they may hold anything, even NaN).
            row_lhs = tile_V[v] * tm + jax.lax.broadcasted_iota(jnp.int32, (tm, tk), 0)
            row_grad = tile_V[v] * tm + jax.lax.broadcasted_iota(jnp.int32, (tm, tn), 0)
            start, end = starts_G[group], ends_G[group]
            x = jnp.where((row_lhs >= start) & (row_lhs < end), lhs_ref[...], 0)
            g = jnp.where((row_grad >= start) & (row_grad < end), grad_ref[...], 0)
            acc_ref[...] += jax.lax.dot_general(x, g, (((0,), (0,)), ((), ())),
                                                preferred_element_type=jnp.float32)

        @pl.when(last_visit)
        def _():
            out_ref[...] = acc_ref[...].astype(out_ref.dtype)

    call = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((num_groups, k_pad, n_pad), out_dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=5,
            grid=(k_pad // tk, n_pad // tn, num_visits),
            in_specs=[pl.BlockSpec((tm, tk), lhs_index), pl.BlockSpec((tm, tn), grad_index)],
            out_specs=pl.BlockSpec((None, tk, tn), out_index),
            scratch_shapes=[pltpu.VMEM((tk, tn), jnp.float32)],
        ),
        compiler_params=_compiler_params(
            ("parallel", "parallel", "arbitrary"),
            [((tm, tk), lhs.dtype), ((tm, tn), grad.dtype), ((tk, tn), out_dtype)], (tk, tn)),
        interpret=_interpret(),
        name="moejax_tgmm",
    )
    out = call(visits.group_V, visits.tile_V, bounds.starts_G, bounds.ends_G,
               visits.num_live.reshape(1), lhs, grad)
    return out[:, :k, :n] if (k, n) != (k_pad, n_pad) else out

"""The "pallas_gpu" grouped matmul: a Triton kernel written with Pallas.

In/out as ``moejax.kernels.gmm`` / ``tgmm``. Triton has no scalar prefetch, so the visit table
(``metadata.covering_visits``: one visit per (group, row tile) pair, one per row tile no local
group touches) is an ordinary input that each program reads a few scalars from, and loads use
dynamic offsets into whole-array refs.

gmm: grid (n tiles, visits). Program (j, v) computes the (block_m, block_n) output tile of
visit v's row tile with its group's weights, looping over k, and stores its store range
(masked store): the group's rows as products, rows no local group owns as zeros. Store ranges
partition the rows, so visits may run in any order and no zeroing pass follows the kernel.
tgmm: grid (n tiles, k tiles, G). Program (j, i, g) loops over the row tiles of group g (none
for an empty group, whose gradient block is then stored as zeros) and sums lhs_tile.T @ grad_tile
over that group's rows; rows of other groups are masked out at the load.

On a backend other than GPU the kernels run in Pallas's interpreter (correct, slow), which is
how the test suite checks them on CPU. m, k and n are zero-padded to whole tiles in the wrapper,
so every load is in bounds.
Tiles (``tiling.pallas_gpu_tiling``) were tuned on an H100; speeds are in benchmarks/RESULTS.md.

Letters: M rows, K contraction, N output columns, G local groups, V visits; tm, tk, tn tiles.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from moejax.kernels import metadata, operands, platform
from moejax.kernels.tiling import Tiling, fit_tile, round_up


def _compiler_params(tiling: Tiling, stage_bytes: int, knobs: str):
    """Triton parameters (they also select the Triton lowering; without them a pallas_call on GPU
    is Mosaic GPU), pipelining no deeper than this GPU's shared memory holds: each buffered
    stage holds one pair of tiles (``platform.pipeline_buffers``; an A10G or L4 allows 99 KiB a
    block, an H100 227). ``knobs`` names the tiles' gin settings for the error when not even
    one stage fits."""
    device = platform.current()
    limit = platform.shared_memory_per_block(device.capability)
    if limit is not None and stage_bytes > limit - 1024:
        raise ValueError(
            f"pallas_gpu_tiling: {knobs} = {tiling.block_m}, {tiling.block_k}, {tiling.block_n} "
            f"need {stage_bytes // 1024} KiB of shared memory for one pipeline stage; this "
            f"{device.kind} allows {limit // 1024} KiB per block. Use smaller tiles.")
    budget = platform.pipeline_bytes(device.capability)
    stages = tiling.num_stages
    while stages > 1 and (platform.pipeline_buffers(stages, device.capability) * stage_bytes
                          > budget):
        stages -= 1
    return plgpu.CompilerParams(num_warps=tiling.num_warps, num_stages=stages)


def _interpret() -> bool:
    return platform.current().backend != "gpu"


def _tiles(tiling: Tiling, m: int, k: int, n: int) -> tuple[int, int, int]:
    # Triton dots need every tile dimension >= 16; tiles shrink for small problems.
    return (fit_tile(tiling.block_m, m, 16), fit_tile(tiling.block_k, k, 16),
            fit_tile(tiling.block_n, n, 16))


def gmm(lhs_MK: jax.Array, rhs_GKN: jax.Array, group_sizes_E: jax.Array,
        group_offset: jax.Array, *, tiling: Tiling, out_dtype, transpose_rhs: bool = False
        ) -> jax.Array:
    """out[rows of local group g] = lhs[rows] @ rhs[g] (rhs[g].T if transpose_rhs); else 0."""
    m = lhs_MK.shape[0]
    n = rhs_GKN.shape[1] if transpose_rhs else rhs_GKN.shape[2]
    lhs, rhs, (tm, tk, tn), (m_pad, k_pad, n_pad), bounds, visits = operands.gmm_operands(
        lhs_MK, rhs_GKN, group_sizes_E, group_offset, functools.partial(_tiles, tiling),
        transpose_rhs)

    def kernel(group_V, tile_V, own_start_V, own_end_V, store_start_V, store_end_V, live,
               lhs_ref, rhs_ref, out_ref):
        j, v = pl.program_id(0), pl.program_id(1)  # n tile, visit

        @pl.when(v < live[0])  # dead visits (past the live count) do nothing
        def _():
            group, tile = group_V[v], tile_V[v]
            own_start, own_end = own_start_V[v], own_end_V[v]
            rows = pl.ds(tile * tm, tm)  # the visit's row tile
            cols = pl.ds(j * tn, tn)  # this program's output columns

            def k_step(kk, acc):
                x = lhs_ref[rows, pl.ds(kk * tk, tk)]
                if transpose_rhs:  # rhs stored (G, N, K): contract the last axes
                    w = rhs_ref[group, cols, pl.ds(kk * tk, tk)]
                    return acc + jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())),
                                                     preferred_element_type=jnp.float32)
                w = rhs_ref[group, pl.ds(kk * tk, tk), cols]
                return acc + jnp.dot(x, w, preferred_element_type=jnp.float32)

            # Zero visits: no steps. The bounds are int32 arrays, not Python ints: JAX 0.10's
            # Triton lowering turned jnp.where(c, 16, 0) into a select of two booleans.
            k_steps = jnp.where(own_end > own_start, jnp.int32(k_pad // tk), jnp.int32(0))
            acc = jax.lax.fori_loop(0, k_steps, k_step, jnp.zeros((tm, tn), jnp.float32))
            # Global row of each output element: the group's rows get products, the other
            # rows of the visit's store range zeros (rows no local group owns).
            row = tile * tm + jax.lax.broadcasted_iota(jnp.int32, (tm, tn), 0)
            value = jnp.where((row >= own_start) & (row < own_end), acc, 0.0)
            stored = (row >= store_start_V[v]) & (row < store_end_V[v])
            plgpu.store(out_ref.at[rows, cols], value.astype(out_ref.dtype), mask=stored)

    with platform.naming_the_gpu(platform.current()):  # JAX >= 0.11's Triton asks which GPU
        out = pl.pallas_call(
            kernel,
            out_shape=jax.ShapeDtypeStruct((m_pad, n_pad), out_dtype),
            grid=(n_pad // tn, visits.group_V.shape[0]),
            interpret=_interpret(),
            compiler_params=_compiler_params(tiling, (tm * tk + tk * tn) * lhs.dtype.itemsize,
                                             "block_m, block_k, block_n"),
            name="moejax_gmm_gpu",
        )(visits.group_V, visits.tile_V, visits.own_start_V, visits.own_end_V,
          visits.store_start_V, visits.store_end_V, visits.num_live.reshape(1), lhs, rhs)
    return out[:m, :n] if (m, n) != (m_pad, n_pad) else out


def tgmm(lhs_MK: jax.Array, grad_MN: jax.Array, group_sizes_E: jax.Array,
         group_offset: jax.Array, *, num_groups: int, tiling: Tiling, out_dtype) -> jax.Array:
    """(G, K, N): out[g] = lhs[rows of local group g].T @ grad[those rows]; empty groups zero."""
    m, k = lhs_MK.shape
    n = grad_MN.shape[1]
    tiling = tiling.tgmm or tiling
    tm, tk, tn = _tiles(tiling, m, k, n)
    m_pad, k_pad, n_pad = round_up(m, tm), round_up(k, tk), round_up(n, tn)
    lhs, grad = operands.pad2(lhs_MK, m_pad, k_pad), operands.pad2(grad_MN, m_pad, n_pad)
    bounds = metadata.group_bounds(group_sizes_E, group_offset, num_groups)

    def kernel(starts_G, ends_G, lhs_ref, grad_ref, out_ref):
        # n tile, k tile, group: Triton launches axis 0 fastest, so the programs in flight
        # share a group and a k tile and re-read its rows of lhs from L2, not memory.
        j, i, g = pl.program_id(0), pl.program_id(1), pl.program_id(2)
        start, end = starts_G[g], ends_G[g]
        first_tile = start // tm  # row tile holding the group's first row
        end_tile = jnp.where(end > start, (end - 1) // tm + 1, first_tile)  # empty: no tiles

        def row_tile(t, acc):
            rows = pl.ds(t * tm, tm)
            row = t * tm + jax.lax.broadcasted_iota(jnp.int32, (tm, 1), 0)
            own = (row >= start) & (row < end)  # other groups' rows load as 0 (even NaN ones)
            x = plgpu.load(lhs_ref.at[rows, pl.ds(i * tk, tk)],
                           mask=jnp.broadcast_to(own, (tm, tk)), other=0)
            dy = plgpu.load(grad_ref.at[rows, pl.ds(j * tn, tn)],
                            mask=jnp.broadcast_to(own, (tm, tn)), other=0)
            return acc + jax.lax.dot_general(x, dy, (((0,), (0,)), ((), ())),
                                             preferred_element_type=jnp.float32)

        acc = jax.lax.fori_loop(first_tile, end_tile, row_tile, jnp.zeros((tk, tn), jnp.float32))
        out_ref[g, pl.ds(i * tk, tk), pl.ds(j * tn, tn)] = acc.astype(out_ref.dtype)

    with platform.naming_the_gpu(platform.current()):
        out = pl.pallas_call(
            kernel,
            out_shape=jax.ShapeDtypeStruct((num_groups, k_pad, n_pad), out_dtype),
            grid=(n_pad // tn, k_pad // tk, num_groups),
            interpret=_interpret(),
            compiler_params=_compiler_params(tiling, (tm * tk + tm * tn) * lhs.dtype.itemsize,
                                             "tgmm_block_m, tgmm_block_k, tgmm_block_n"),
            name="moejax_tgmm_gpu",
        )(bounds.starts_G, bounds.ends_G, lhs, grad)
    return out[:, :k, :n]

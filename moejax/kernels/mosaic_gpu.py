"""The "mosaic_gpu" grouped matmul: Hopper (sm_90) kernels in Pallas's Mosaic GPU back end.

In/out as ``moejax.kernels.gmm`` / ``tgmm``; 16-bit operands (bfloat16 or float16), float32
accumulation. Why a second GPU kernel: the Triton one ("pallas_gpu") reached only 0.68-0.80 of
cuBLAS even on a single group on an H100 (benchmarks/RESULTS.md; with a zeroing pass after the
kernel, since removed). Compiled for sm_90 (by the ``triton`` package, 3.9:
benchmarks/triton_compile.py), the Triton kernels do multiply with ``wgmma``, but they
load their tiles with per-thread ``cp.async`` copies from pointer arithmetic: no TMA, no
mbarriers. Here every tile is moved by TMA into swizzled
shared memory and multiplied by ``wgmma`` on a warpgroup, with several k steps in flight
(``plgpu.emit_pipeline``), in a persistent grid of one program per SM that walks the work list.

gmm: the work list is (visit, n tile) pairs, visits from ``metadata.covering_visits``: one per
(group, row tile) pair and one per row tile no local group touches. A visit computes its row
tile with its group's weights (a zero visit computes nothing), keeps its own rows and zeroes the
others, and stores rows [store_start, store_end) -- TMA stores need static shapes, so the rows
go out as a ladder of power-of-two slices. Store ranges partition the rows, so the output needs
no zeroing pass afterwards. TMA clips loads and stores at the
array edge, so m needs no padding to whole row tiles (row stores are exact), only to a multiple
of 8 (the swizzle tile's rows); a ragged k is zero-padded to whole tiles, and a ragged n gives a
wider output that is sliced (stores of whole tiles only: the interpreter drops a partly
out-of-bounds store where TMA would clip it). Every operand's minor
axis is zero-padded to whole tiles too: TMA's swizzled copies refuse a minor axis wider than the
swizzle (64 elements) that is not a multiple of it (d_expert = 160, say), which the interpreter
does not check and ``jax.export`` for CUDA does.
tgmm: the work list is (group, k tile, n tile) triples; each loops over the row tiles of its
group (none for an empty group: zeros); in the two tiles that straddle the group's edges the
rows of other groups are zeroed in shared memory before the product (the Triton kernel masks
at the load instead).

Waits. ``wgmma`` is asynchronous. Each k step issues its wgmmas and then waits until only they
are in flight (``wgmma_wait(1)``). The previous step's multiply has then finished reading its
tiles; only then can the pipeline release that stage to a new copy (``delay_release=1``): the
pattern of JAX's own Hopper matmuls. Without the wait, nothing kept a TMA copy from
overwriting tiles that a wgmma was still reading. The PTX has no wait in the k loop, and ptxas
added one of its own to the forward kernel: benchmarks/gpu_compile.py, 2026-11-24.
ptxas is strict about registers around wgmma. Once the wait was in, ptxas serialized every
wgmma of the forward kernel, each waiting for the one before: "C7514 ... serialized due to non
wgmma instructions reading accumulator registers". The cause is one value: the forward loads'
n coordinate (j times the tile width in swizzle units) is also the output store's column;
LLVM defined that register in both arms of the zero-visit branch, and it stayed live across
the wgmma loop (moving the store's copy to a register of its own, in the PTX by hand, was
enough to end the serialization). Writing the output as
(rows, n tiles, tn), whose column is plain j, ends that. The input-gradient and weight-gradient
kernels never shared one. tests/parallel/test_gpu_topology.py compiles all three to sm_90a and
checks the PTX's waits and ptxas's report.

Off a GPU the kernels run in JAX's Mosaic GPU interpreter, which simulates shared memory, TMA
and barriers on CPU (``mosaic_gpu_interpret``; tests/kernels/test_mosaic_gpu.py), and they
lower for CUDA through ``jax.export``. Whether they are faster than the Triton kernel is for a
GPU to say (``bash benchmarks/gpu_session.sh mosaic``).

Letters: M rows, K contraction, N output columns, G local groups, V visits; tm, tk, tn tiles.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from moejax.kernels import metadata, mosaic_gpu_interpret, platform
from moejax.kernels.tiling import Tiling, round_up

_HOPPER_SMS = 132  # H100/H200 SXM; the program count when no GPU is present to ask
_DTYPES = (jnp.bfloat16, jnp.float16)
_TMA_ROWS = 8  # rows of TMA's swizzle tile: a longer row axis must be a multiple of it
_DETECT_RACES = False  # the interpreter's happens-before race detector (slow; tests switch it on)


def _num_programs() -> int:
    if jax.default_backend() == "gpu":
        return int(getattr(jax.devices()[0], "core_count", _HOPPER_SMS) or _HOPPER_SMS)
    return _HOPPER_SMS


def _interpret():
    """None on a GPU; elsewhere the Mosaic GPU interpreter's parameters (mosaic_gpu_interpret)."""
    if platform.current().backend == "gpu":
        return None
    return mosaic_gpu_interpret.params(detect_races=_DETECT_RACES)


def _check_dtypes(*arrays):
    for array in arrays:
        if array.dtype not in _DTYPES:
            raise NotImplementedError(
                f"gmm impl 'mosaic_gpu' multiplies bfloat16 or float16 (wgmma); got "
                f"{array.dtype}. Use impl='pallas_gpu' (Triton) for float32.")


def _check_tiles(m_rows: int, contraction: int, cols: int, knobs: tuple[str, str, str]):
    """wgmma shapes: rows (M) a multiple of 64 (one warpgroup), contraction (K) of 16, columns
    (N) of 8 up to 256. Named by their gin knobs, since a bad tile fails deep in the lowering."""
    for value, ok, knob, rule in (
            (m_rows, m_rows % 64 == 0, knobs[0], "a multiple of 64 (wgmma rows)"),
            (contraction, contraction % 16 == 0, knobs[1], "a multiple of 16 (wgmma k)"),
            (cols, cols % 8 == 0 and cols <= 256, knobs[2], "a multiple of 8, <= 256")):
        if not ok:
            raise ValueError(f"mosaic_gpu_tiling.{knob} = {value}: must be {rule}")


def _check_shared_memory(stages: int, pair_elements: int, itemsize: int, knobs: str):
    """The pipeline keeps ``stages`` (at least 2) pairs of operand tiles in shared memory: more
    than the target GPU gives one block fails in Mosaic GPU's compile, far from the tiles. Read
    off that compile (benchmarks/gpu_compile.py): 4 stages of 128 x 128 + 128 x 128 bf16 tiles
    asked 262,176 bytes, the pairs' 262,144 and 32 for barriers."""
    device = platform.current()
    limit = platform.shared_memory_per_block(device.capability)
    need = max(2, stages) * pair_elements * itemsize
    if limit is not None and need > limit - 1024:
        raise ValueError(
            f"mosaic_gpu_tiling: {knobs} need {need // 1024} KiB of shared memory "
            f"({max(2, stages)} steps in flight of {pair_elements * itemsize // 1024} KiB); "
            f"this {device.kind} allows {limit // 1024} KiB per block. Use fewer stages or "
            "smaller tiles.")


def _kernel(body, out_type):
    return plgpu.kernel(body, out_type=out_type, grid=(_num_programs(),), grid_names=("sm",),
                        compiler_params=plgpu.CompilerParams(
                            lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
                        interpret=_interpret())


def _store_rows(tile_smem, out_gmem, first_row, start, count, tm: int, cols):
    """Store rows [start, start + count) of a (tm, tn) shared-memory tile to out rows
    first_row + start ...: one TMA store per set bit of count (TMA shapes are static)."""
    size = tm
    while size >= 1:
        @pl.when(count & size != 0)
        def _(size=size, start=start):
            plgpu.copy_smem_to_gmem(tile_smem.at[pl.ds(start, size)],
                                    out_gmem.at[pl.ds(first_row + start, size), cols])
        start = start + (count & size)
        size //= 2
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def _row_iota(shape):
    """Row index of each element of a tile, in the wgmma register layout. The layout cast only
    places values; the interpreter has no rule for it and runs the plain iota."""
    iota = jax.lax.broadcasted_iota(jnp.int32, shape, 0)
    return plgpu.layout_cast(iota, plgpu.Layout.WGMMA) if _interpret() is None else iota


def _pad_to(x, axis: int, tile: int):
    """Zero-pad one axis of x to whole tiles. Needed for a contraction (k) that is not whole
    tiles, and for every operand's minor axis: TMA's swizzled copies take a minor axis only if
    it is a multiple of the swizzle width (64 16-bit elements) or narrower than one."""
    size = x.shape[axis]
    if size % tile == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, round_up(size, tile) - size)
    return jnp.pad(x, widths)


def gmm(lhs_MK: jax.Array, rhs_GKN: jax.Array, group_sizes_E: jax.Array,
        group_offset: jax.Array, *, tiling: Tiling, out_dtype, transpose_rhs: bool = False
        ) -> jax.Array:
    """out[rows of local group g] = lhs[rows] @ rhs[g] (rhs[g].T if transpose_rhs); else 0."""
    _check_dtypes(lhs_MK, rhs_GKN)
    m, _ = lhs_MK.shape
    num_groups = rhs_GKN.shape[0]
    n = rhs_GKN.shape[1] if transpose_rhs else rhs_GKN.shape[2]
    tm, tk, tn = tiling.block_m, tiling.block_k, tiling.block_n
    _check_tiles(tm, tk, tn, ("block_m", "block_k", "block_n"))
    _check_shared_memory(tiling.num_stages, tm * tk + tk * tn, lhs_MK.dtype.itemsize,
                         "block_m, block_k, block_n, num_stages")
    lhs = _pad_to(_pad_to(lhs_MK, 1, tk), 0, _TMA_ROWS)
    rhs = _pad_to(rhs_GKN.astype(lhs.dtype), 2 if transpose_rhs else 1, tk)
    if not transpose_rhs:  # (G, k, n): n is rhs's minor axis
        rhs = _pad_to(rhs, 2, tn)
    k_steps = lhs.shape[1] // tk
    m_rows = lhs.shape[0]  # m, or m padded to whole swizzle rows (the extra rows store zeros)
    bounds = metadata.group_bounds(group_sizes_E, group_offset, num_groups)
    visits = metadata.covering_visits(bounds, m_rows, tm)
    grid_n = pl.cdiv(n, tn)

    def body(group_V, tile_V, own_start_V, own_end_V, store_start_V, store_end_V, live,
             lhs_gmem, rhs_gmem, out_gmem):
        @plgpu.nd_loop((live[0] * grid_n,), collective_axes="sm")
        def _(loop):
            v, j = loop.index[0] // grid_n, loop.index[0] % grid_n  # visit, n tile
            tile, group = tile_V[v], group_V[v]
            first_row = tile * tm
            own_start, own_end = own_start_V[v] - first_row, own_end_V[v] - first_row

            def accumulate(acc_ref):
                @pl.when(own_end > own_start)  # zero visits multiply nothing
                def _():
                    def step(_, x_smem, w_smem):
                        w = plgpu.transpose_ref(w_smem, (1, 0)) if transpose_rhs else w_smem
                        plgpu.wgmma(acc_ref, x_smem, w)
                        plgpu.wgmma_wait(1)  # one step in flight (module docstring)

                    w_block = (tn, tk) if transpose_rhs else (tk, tn)
                    plgpu.emit_pipeline(
                        step, grid=(k_steps,),
                        in_specs=[
                            plgpu.BlockSpec((tm, tk), lambda kk: (tile, kk), delay_release=1),
                            plgpu.BlockSpec(w_block, (lambda kk: (j, kk)) if transpose_rhs
                                            else (lambda kk: (kk, j)), delay_release=1)],
                        max_concurrent_steps=max(2, tiling.num_stages),
                    )(lhs_gmem, rhs_gmem.at[group])
                return acc_ref[...]

            acc = pl.run_scoped(accumulate, plgpu.ACC((tm, tn)))
            row = _row_iota((tm, tn))
            acc = jnp.where((row >= own_start) & (row < own_end), acc, 0.0)

            @functools.partial(pl.run_scoped, tile_smem=plgpu.SMEM((tm, tn), out_gmem.dtype))
            def _(tile_smem):
                tile_smem[...] = acc.astype(tile_smem.dtype)
                plgpu.commit_smem()
                start = store_start_V[v] - first_row
                _store_rows(tile_smem, out_gmem, first_row, start, store_end_V[v] - first_row
                            - start, tm, j)

    # (rows, n tiles, tn), not (rows, n): the store's column is then j, not the loads' j * tn
    # (module docstring: why that matters to ptxas).
    out = _kernel(body, jax.ShapeDtypeStruct((m_rows, grid_n, tn), out_dtype))(
        visits.group_V, visits.tile_V, visits.own_start_V, visits.own_end_V,
        visits.store_start_V, visits.store_end_V, visits.num_live.reshape(1), lhs, rhs)
    out = out.reshape(m_rows, grid_n * tn)
    return out[:m, :n] if (m_rows, grid_n * tn) != (m, n) else out


def tgmm(lhs_MK: jax.Array, grad_MN: jax.Array, group_sizes_E: jax.Array,
         group_offset: jax.Array, *, num_groups: int, tiling: Tiling, out_dtype) -> jax.Array:
    """(G, K, N): out[g] = lhs[rows of local group g].T @ grad[those rows]; empty groups zero."""
    _check_dtypes(lhs_MK, grad_MN)
    k = lhs_MK.shape[1]
    n = grad_MN.shape[1]
    tiling = tiling.tgmm or tiling
    tm, tk, tn = tiling.block_m, tiling.block_k, tiling.block_n  # tm: rows per step
    # The product is lhs_tile.T (tk, tm) @ grad_tile (tm, tn): tk are its wgmma rows.
    _check_tiles(tk, tm, tn, ("tgmm_block_k", "tgmm_block_m", "tgmm_block_n"))
    _check_shared_memory(tiling.num_stages, tm * tk + tm * tn, lhs_MK.dtype.itemsize,
                         "tgmm_block_m, tgmm_block_k, tgmm_block_n, tgmm_num_stages")
    bounds = metadata.group_bounds(group_sizes_E, group_offset, num_groups)
    grid_k, grid_n = pl.cdiv(k, tk), pl.cdiv(n, tn)

    def body(starts_G, ends_G, lhs_gmem, grad_gmem, out_gmem):
        @plgpu.nd_loop((num_groups * grid_k * grid_n,), collective_axes="sm")
        def _(loop):
            index = loop.index[0]
            g, i, j = index // (grid_k * grid_n), index // grid_n % grid_k, index % grid_n
            start, end = starts_G[g], ends_G[g]
            first_tile = start // tm
            num_tiles = jnp.where(end > start, (end - 1) // tm + 1 - first_tile, 0)

            def accumulate(acc_ref):
                @pl.when(num_tiles > 0)  # an empty group's gradient stays zero
                def _():
                    def step(t, x_smem, dy_smem):
                        row_start = (first_tile + t[0]) * tm

                        # A tile that straddles the group's edge (its first and last): zero the
                        # rows of other groups (and past M) on both sides -- they may hold NaN
                        # or inf, which a zero on the other side would not cancel. The previous
                        # step's wgmma reads another buffer (delay_release), so this is safe.
                        @pl.when((row_start < start) | (row_start + tm > end))
                        def _():
                            for ref, cols in ((x_smem, tk), (dy_smem, tn)):
                                row = row_start + _row_iota((tm, cols))
                                ref[...] = jnp.where((row >= start) & (row < end), ref[...],
                                                     jnp.zeros((), ref.dtype))
                            plgpu.commit_smem()

                        plgpu.wgmma(acc_ref, plgpu.transpose_ref(x_smem, (1, 0)), dy_smem)
                        plgpu.wgmma_wait(1)  # one step in flight (module docstring)

                    plgpu.emit_pipeline(
                        step, grid=(num_tiles,),
                        in_specs=[plgpu.BlockSpec((tm, tk), lambda t: (first_tile + t, i),
                                                  delay_release=1),
                                  plgpu.BlockSpec((tm, tn), lambda t: (first_tile + t, j),
                                                  delay_release=1)],
                        max_concurrent_steps=max(2, tiling.num_stages),
                    )(lhs_gmem, grad_gmem)
                return acc_ref[...]

            acc = pl.run_scoped(accumulate, plgpu.ACC((tk, tn)))

            @functools.partial(pl.run_scoped, tile_smem=plgpu.SMEM((tk, tn), out_gmem.dtype))
            def _(tile_smem):
                tile_smem[...] = acc.astype(tile_smem.dtype)
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(
                    tile_smem, out_gmem.at[g, pl.ds(i * tk, tk), pl.ds(j * tn, tn)])
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    lhs = _pad_to(_pad_to(lhs_MK, 1, tk), 0, _TMA_ROWS)  # the padded rows are in no group
    grad = _pad_to(_pad_to(grad_MN.astype(lhs_MK.dtype), 1, tn), 0, _TMA_ROWS)
    out = _kernel(body, jax.ShapeDtypeStruct((num_groups, grid_k * tk, grid_n * tn), out_dtype))(
        bounds.starts_G, bounds.ends_G, lhs, grad)
    return out[:, :k, :n] if (k % tk or n % tn) else out

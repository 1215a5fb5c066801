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
With ``num_warps = 8`` (``tgmm_num_warps`` for tgmm) a kernel is warp-specialized
(``_gmm_two_warpgroups``, ``_tgmm_two_warpgroups``): a producer warpgroup issues the copies
and two consumer warpgroups each multiply half of the output columns, so a 128 x 256 tile
needs no spilling.
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
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from moejax.kernels import metadata, mosaic_gpu_interpret, platform
from moejax.kernels.tiling import Tiling, round_up

_HOPPER_SMS = 132  # H100/H200 SXM; the program count when no GPU is present to ask
_INTERPRETED_PROGRAMS = 3
_DTYPES = (jnp.bfloat16, jnp.float16)
_TMA_ROWS = 8  # rows of TMA's swizzle tile: a longer row axis must be a multiple of it
_EPILOGUE_ROWS = 64  # rows of a consumer's output tile: a float32 128 x 256 one would not fit
_PRODUCER_REGISTERS = 40  # the copy-issuing warpgroup's registers per thread (JAX's choice)
_DETECT_RACES = False  # the interpreter's happens-before race detector (slow; tests switch it on)


def _num_programs() -> int:
    """One program per SM of the GPU, or of a Hopper when compiling for one without it. The
    interpreter runs 3: each then walks several work items, as programs do on a GPU given
    more work than SMs (their buffers, barriers and stores carried from item to item), and
    the simulation of the idle ones costs nothing."""
    if jax.default_backend() == "gpu":
        return int(getattr(jax.devices()[0], "core_count", _HOPPER_SMS) or _HOPPER_SMS)
    return _HOPPER_SMS if platform.current().backend == "gpu" else _INTERPRETED_PROGRAMS


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


def _check_shared_memory(stages: int, pair_elements: int, itemsize: int, knobs: str,
                         held_bytes: int = 0):
    """The pipeline keeps ``stages`` (at least 2) pairs of operand tiles in shared memory, and
    a kernel may hold ``held_bytes`` more for the whole run (the two-warpgroup forward's output
    tiles): more than the target GPU gives one block fails in Mosaic GPU's compile, far from
    the tiles. Read off that compile (benchmarks/gpu_compile.py): 4 stages of 128 x 128 +
    128 x 128 bf16 tiles asked 262,176 bytes, the pairs' 262,144 and 32 for barriers."""
    device = platform.current()
    limit = platform.shared_memory_per_block(device.capability)
    need = max(2, stages) * pair_elements * itemsize + held_bytes
    if limit is not None and need > limit - 1024:
        held = f" and {held_bytes // 1024} KiB of output tiles" if held_bytes else ""
        raise ValueError(
            f"mosaic_gpu_tiling: {knobs} need {need // 1024} KiB of shared memory "
            f"({max(2, stages)} steps in flight of {pair_elements * itemsize // 1024} KiB"
            f"{held}); this {device.kind} allows {limit // 1024} KiB per block. Use fewer "
            "stages or smaller tiles.")


def _compute_warpgroups(tiling: Tiling, cols: int, knob: str) -> int:
    """Warpgroups that multiply: ``num_warps`` 8 is two, each with half of the block_n output
    columns (and a third, producer warpgroup issuing the copies); up to 4 is one. A half must be
    whole 64-column swizzle tiles: it is a slice of the shared-memory tile the copies fill."""
    if tiling.num_warps <= 4:
        return 1
    if tiling.num_warps != 8 or cols % 128:
        raise ValueError(
            f"mosaic_gpu_tiling.{knob} = {tiling.num_warps}: 4 (one warpgroup) or 8 (two, "
            f"each with half of the output columns: block_n 128 or 256, here {cols})")
    return 2


def _epilogue_bytes(warpgroups: int, cols: int, out_dtype) -> int:
    """Shared memory the two consumers' output tiles hold for the whole kernel (_EPILOGUE_ROWS
    rows of cols / 2 each); none with one warpgroup (its tile reuses the pipeline's room)."""
    return _EPILOGUE_ROWS * cols * jnp.dtype(out_dtype).itemsize if warpgroups > 1 else 0


def _kernel(body, out_type, consumers: int = 1):
    """A persistent grid of one program per SM; with 2 ``consumers`` it is warp-specialized:
    three warpgroups (the axis "wg"), the producer last."""
    threads = {} if consumers == 1 else {"num_threads": consumers + 1, "thread_name": "wg"}
    return plgpu.kernel(body, out_type=out_type, grid=(_num_programs(),), grid_names=("sm",),
                        compiler_params=plgpu.CompilerParams(
                            lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
                        interpret=_interpret(), **threads)


def _store_rows(tile_smem, out_rows, start, count, tm: int):
    """Store rows [start, start + count) of a (tm, ...) shared-memory tile to
    ``out_rows(start, size)`` (the output rows it goes to): one TMA store per set bit of count
    (TMA shapes are static). The caller waits for the stores."""
    size = tm
    while size >= 1:
        @pl.when(count & size != 0)
        def _(size=size, start=start):
            plgpu.copy_smem_to_gmem(tile_smem.at[pl.ds(start, size)], out_rows(start, size))
        start = start + (count & size)
        size //= 2


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
    warpgroups = _compute_warpgroups(tiling, tn, "num_warps")
    held = _epilogue_bytes(warpgroups, tn, out_dtype)
    _check_shared_memory(tiling.num_stages, tm * tk + tk * tn, lhs_MK.dtype.itemsize,
                         "block_m, block_k, block_n, num_stages", held)
    lhs = _pad_to(_pad_to(lhs_MK, 1, tk), 0, _TMA_ROWS)
    rhs = _pad_to(rhs_GKN.astype(lhs.dtype), 2 if transpose_rhs else 1, tk)
    if not transpose_rhs:  # (G, k, n): n is rhs's minor axis
        rhs = _pad_to(rhs, 2, tn)
    m_rows = lhs.shape[0]  # m, or m padded to whole swizzle rows (the extra rows store zeros)
    bounds = metadata.group_bounds(group_sizes_E, group_offset, num_groups)
    visits = metadata.covering_visits(bounds, m_rows, tm)
    grid_n = pl.cdiv(n, tn)
    shape = _GmmShape(tm, tk, tn, lhs.shape[1] // tk, grid_n, tiling.num_stages, transpose_rhs)
    if warpgroups == 1:
        # (rows, n tiles, tn), not (rows, n): the store's column is then j, not the loads'
        # j * tn (module docstring: why that matters to ptxas).
        body, out_shape = _gmm_one_warpgroup(shape), (m_rows, grid_n, tn)
    else:  # (rows, n tiles, warpgroup, tn / 2): each warpgroup stores its own half
        body, out_shape = _gmm_two_warpgroups(shape), (m_rows, grid_n, 2, tn // 2)
    out = _kernel(body, jax.ShapeDtypeStruct(out_shape, out_dtype), warpgroups)(
        visits.group_V, visits.tile_V, visits.own_start_V, visits.own_end_V,
        visits.store_start_V, visits.store_end_V, visits.num_live.reshape(1), lhs, rhs)
    out = out.reshape(m_rows, grid_n * tn)
    return out[:m, :n] if (m_rows, grid_n * tn) != (m, n) else out


class _GmmShape(NamedTuple):
    """Static shape of one gmm kernel: tiles, k steps, n tiles, steps in flight, and whether
    rhs is (G, n, k)."""
    tm: int
    tk: int
    tn: int
    k_steps: int
    grid_n: int
    stages: int
    transpose_rhs: bool


class _Visit(NamedTuple):
    """One work item of gmm: visit v's row tile and group, n tile j, and the visit's own rows
    relative to the tile's first row."""
    v: jax.Array
    tile: jax.Array
    group: jax.Array
    j: jax.Array
    first_row: jax.Array
    own_start: jax.Array
    own_end: jax.Array


def _visit(index, grid_n: int, tm: int, group_V, tile_V, own_start_V, own_end_V) -> _Visit:
    v, j = index // grid_n, index % grid_n
    first_row = tile_V[v] * tm
    return _Visit(v, tile_V[v], group_V[v], j, first_row, own_start_V[v] - first_row,
                  own_end_V[v] - first_row)


def _store_range(item: _Visit, store_start_V, store_end_V):
    """(first, count) of the rows a visit stores, relative to its tile. Read in the epilogue,
    after the accumulator's wait, never before the k loop: LLVM sinks a value used only after
    the loop into the block between the loop and that wait, and ptxas then serializes every
    wgmma (C7514, as with the forward's output column; module docstring)."""
    start = store_start_V[item.v] - item.first_row
    return start, store_end_V[item.v] - item.first_row - start


def _w_spec(shape: _GmmShape, j, **kwargs):
    """rhs's block of k step kk and n tile j: (tk, tn), or (tn, tk) when rhs is transposed."""
    if shape.transpose_rhs:
        return plgpu.BlockSpec((shape.tn, shape.tk), lambda kk: (j, kk), **kwargs)
    return plgpu.BlockSpec((shape.tk, shape.tn), lambda kk: (kk, j), **kwargs)


def _own_rows(acc, item: _Visit, first: int = 0):
    """The accumulator (rows first... of the tile) with the rows of other groups zeroed."""
    row = first + _row_iota(acc.shape)
    return jnp.where((row >= item.own_start) & (row < item.own_end), acc, 0.0)


def _epilogue_chunks(acc, tile_smem, keep=None):
    """Put an accumulator in shared memory _EPILOGUE_ROWS rows at a time, through a consumer's
    own tile held for the whole kernel: yields (first row, the tile holding acc[first:...]) for
    the caller to store from. ``keep(chunk, first)``, if given, masks each chunk on the way.
    Before each write the consumer waits until its previous stores have read the tile -- not
    at the end of a store, so a store overlaps what comes next."""
    for first in range(0, acc.shape[0], _EPILOGUE_ROWS):
        chunk = acc[first:first + _EPILOGUE_ROWS]
        chunk = chunk if keep is None else keep(chunk, first)
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)
        tile_smem[...] = chunk.astype(tile_smem.dtype)
        plgpu.commit_smem()
        yield first, tile_smem


def _gmm_one_warpgroup(shape: _GmmShape):
    """One warpgroup issues the copies (``emit_pipeline``) and multiplies a (tm, tn) tile."""
    tm, tk, tn = shape.tm, shape.tk, shape.tn

    def body(*refs):
        *visit_refs, store_start_V, store_end_V, live, lhs_gmem, rhs_gmem, out_gmem = refs

        @plgpu.nd_loop((live[0] * shape.grid_n,), collective_axes="sm")
        def _(loop):
            item = _visit(loop.index[0], shape.grid_n, tm, *visit_refs)

            def accumulate(acc_ref):
                @pl.when(item.own_end > item.own_start)  # zero visits multiply nothing
                def _():
                    def step(_, x_smem, w_smem):
                        w = plgpu.transpose_ref(w_smem, (1, 0)) if shape.transpose_rhs else w_smem
                        plgpu.wgmma(acc_ref, x_smem, w)
                        plgpu.wgmma_wait(1)  # one step in flight (module docstring)

                    plgpu.emit_pipeline(
                        step, grid=(shape.k_steps,),
                        in_specs=[plgpu.BlockSpec((tm, tk), lambda kk: (item.tile, kk),
                                                  delay_release=1),
                                  _w_spec(shape, item.j, delay_release=1)],
                        max_concurrent_steps=max(2, shape.stages),
                    )(lhs_gmem, rhs_gmem.at[item.group])
                return acc_ref[...]

            acc = _own_rows(pl.run_scoped(accumulate, plgpu.ACC((tm, tn))), item)

            @functools.partial(pl.run_scoped, tile_smem=plgpu.SMEM((tm, tn), out_gmem.dtype))
            def _(tile_smem):
                tile_smem[...] = acc.astype(tile_smem.dtype)
                plgpu.commit_smem()
                _store_rows(tile_smem, lambda r, size: out_gmem.at[
                    pl.ds(item.first_row + r, size), item.j],
                    *_store_range(item, store_start_V, store_end_V), tm)
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    return body


def _consumers_pipeline(grid, in_specs, stages: int, step=None, acc_shape=None,
                        epilogue=None):
    """A warp-specialized pipeline (``emit_pipeline_warp_specialized``): the producer
    warpgroup ("wg" = 2, _PRODUCER_REGISTERS registers) copies the blocks of ``in_specs``;
    each consumer (0 and 1) runs ``step(indices, *tiles, acc_ref)`` on them into a fresh
    ``acc_shape`` accumulator, then ``epilogue(acc)``. Without step and epilogue, only for
    ``get_allocations``: buffers and barriers depend on the block shapes alone."""
    def context(run):
        @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC(acc_shape))
        def _(acc_ref):
            run(acc_ref)
            epilogue(acc_ref[...])

    ignore = lambda *_, **__: None  # noqa: E731
    return plgpu.emit_pipeline_warp_specialized(
        step or ignore, grid=grid, memory_registers=_PRODUCER_REGISTERS, in_specs=in_specs,
        wg_axis="wg", num_compute_wgs=2, max_concurrent_steps=stages,
        compute_context=ignore if epilogue is None else context)


def _gmm_two_warpgroups(shape: _GmmShape):
    """Warp specialization, after JAX's Hopper matmul (jax.experimental.pallas.ops.gpu.
    hopper_matmul_mgpu): a producer warpgroup (axis "wg" = 2, 40 registers) issues every TMA
    copy; two consumer warpgroups (0 and 1, the registers it gives up) multiply the same
    (tm, tk) lhs tile by their own halves of the (tk, tn) rhs tile, into a (tm, tn / 2)
    accumulator each (``emit_pipeline_warp_specialized``). While one waits for its wgmma, the
    other's keeps the tensor cores busy, so each waits for its own at once (``wgmma_wait(0)``)
    and a stage is released as soon as both have read it. Each consumer masks and stores its
    own half, 64 rows at a time, from its own shared-memory tile held for the whole kernel
    (``_epilogue_chunks``: 64 x 128 float32, where a whole 128 x 128 one would leave too
    little room for the pipeline); it waits for that tile's previous store only when it next
    writes it, so the last store overlaps the next visit's first copies. A zero visit runs the
    pipeline for no steps and stores zeros."""
    tm, tk, tn = shape.tm, shape.tk, shape.tn
    half = tn // 2
    stages = max(1, min(shape.stages, shape.k_steps))

    def specs(tile, j):
        return [plgpu.BlockSpec((tm, tk), lambda kk: (tile, kk)), _w_spec(shape, j)]

    def body(*refs):
        *visit_refs, store_start_V, store_end_V, live, lhs_gmem, rhs_gmem, out_gmem = refs
        # The buffers and barriers depend only on the block shapes: allocated once, outside
        # the loop over visits (a pipeline's own allocation would synchronize the warpgroups
        # at every visit).
        allocations = _consumers_pipeline((shape.k_steps,), specs(0, 0), stages
                                          ).get_allocations(lhs_gmem, rhs_gmem.at[0])

        @functools.partial(pl.run_scoped, allocations=allocations,
                           out_smem=plgpu.SMEM((2, _EPILOGUE_ROWS, half), out_gmem.dtype),
                           collective_axes="wg")
        def _(allocations, out_smem):
            wg = jax.lax.axis_index("wg")
            cols = pl.ds(wg * half, half)

            @plgpu.nd_loop((live[0] * shape.grid_n,), collective_axes="sm")
            def _(loop):
                item = _visit(loop.index[0], shape.grid_n, tm, *visit_refs)

                def step(_, x_smem, w_smem, acc_ref):
                    if shape.transpose_rhs:
                        w = plgpu.transpose_ref(w_smem.at[cols], (1, 0))
                    else:
                        w = w_smem.at[:, cols]
                    plgpu.wgmma(acc_ref, x_smem, w)
                    plgpu.wgmma_wait(0)
                    return acc_ref

                def epilogue(acc):
                    start, count = _store_range(item, store_start_V, store_end_V)
                    for first, chunk in _epilogue_chunks(
                            acc, out_smem.at[wg], lambda rows, first: _own_rows(rows, item, first)):
                        low = jnp.clip(start - first, 0, _EPILOGUE_ROWS)
                        high = jnp.clip(start + count - first, 0, _EPILOGUE_ROWS)
                        _store_rows(chunk, lambda r, size, first=first: out_gmem.at[
                            pl.ds(item.first_row + first + r, size), item.j, wg],
                            low, high - low, _EPILOGUE_ROWS)

                steps = jnp.where(item.own_end > item.own_start, shape.k_steps, 0)
                _consumers_pipeline((steps,), specs(item.tile, item.j), stages, step,
                                    (tm, half), epilogue,
                                    )(lhs_gmem, rhs_gmem.at[item.group], allocations=allocations)

            plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    return body


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
    warpgroups = _compute_warpgroups(tiling, tn, "tgmm_num_warps")
    if warpgroups > 1 and tk % 128:
        raise ValueError(
            f"mosaic_gpu_tiling.tgmm_block_k = {tk}: with tgmm_num_warps = 8 a multiple of 128 "
            "(each consumer warpgroup masks whole 64-column swizzle tiles of the lhs tile)")
    held = _epilogue_bytes(warpgroups, tn, out_dtype)
    _check_shared_memory(tiling.num_stages, tm * tk + tm * tn, lhs_MK.dtype.itemsize,
                         "tgmm_block_m, tgmm_block_k, tgmm_block_n, tgmm_num_stages", held)
    bounds = metadata.group_bounds(group_sizes_E, group_offset, num_groups)
    shape = _TgmmShape(tm, tk, tn, pl.cdiv(k, tk), pl.cdiv(n, tn), num_groups,
                       tiling.num_stages)
    lhs = _pad_to(_pad_to(lhs_MK, 1, tk), 0, _TMA_ROWS)  # the padded rows are in no group
    grad = _pad_to(_pad_to(grad_MN.astype(lhs_MK.dtype), 1, tn), 0, _TMA_ROWS)
    k_out, n_out = shape.grid_k * tk, shape.grid_n * tn
    if warpgroups == 1:
        body, out_shape = _tgmm_one_warpgroup(shape), (num_groups, k_out, n_out)
    else:  # (G, k, n tiles, warpgroup, tn / 2): each warpgroup stores its own half
        body = _tgmm_two_warpgroups(shape)
        out_shape = (num_groups, k_out, shape.grid_n, 2, tn // 2)
    out = _kernel(body, jax.ShapeDtypeStruct(out_shape, out_dtype),
                  warpgroups)(bounds.starts_G, bounds.ends_G, lhs, grad)
    out = out.reshape(num_groups, k_out, n_out)
    return out[:, :k, :n] if (k % tk or n % tn) else out


class _TgmmShape(NamedTuple):
    """Static shape of one tgmm kernel: tiles (tm the rows of a step), output tiles along k
    and n, local groups, steps in flight."""
    tm: int
    tk: int
    tn: int
    grid_k: int
    grid_n: int
    num_groups: int
    stages: int


def _tgmm_item(index, shape: _TgmmShape, starts_G, ends_G):
    """Work item ``index``: (group, k tile, n tile, the group's rows [start, end), its first
    row tile, how many row tiles it spans: 0 for an empty group)."""
    g = index // (shape.grid_k * shape.grid_n)
    i, j = index // shape.grid_n % shape.grid_k, index % shape.grid_n
    start, end = starts_G[g], ends_G[g]
    first_tile = start // shape.tm
    num_tiles = jnp.where(end > start, (end - 1) // shape.tm + 1 - first_tile, 0)
    return g, i, j, start, end, first_tile, num_tiles


def _zero_foreign_rows(ref, row_start, start, end):
    """Zero the rows of a (rows, cols) shared-memory tile outside the group's [start, end)."""
    row = row_start + _row_iota(ref.shape)
    ref[...] = jnp.where((row >= start) & (row < end), ref[...], jnp.zeros((), ref.dtype))


def _tgmm_one_warpgroup(shape: _TgmmShape):
    """One warpgroup copies (``emit_pipeline``) and multiplies a (tk, tn) tile."""
    tm, tk, tn = shape.tm, shape.tk, shape.tn

    def body(starts_G, ends_G, lhs_gmem, grad_gmem, out_gmem):
        @plgpu.nd_loop((shape.num_groups * shape.grid_k * shape.grid_n,), collective_axes="sm")
        def _(loop):
            g, i, j, start, end, first_tile, num_tiles = _tgmm_item(
                loop.index[0], shape, starts_G, ends_G)

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
                            _zero_foreign_rows(x_smem, row_start, start, end)
                            _zero_foreign_rows(dy_smem, row_start, start, end)
                            plgpu.commit_smem()

                        plgpu.wgmma(acc_ref, plgpu.transpose_ref(x_smem, (1, 0)), dy_smem)
                        plgpu.wgmma_wait(1)  # one step in flight (module docstring)

                    plgpu.emit_pipeline(
                        step, grid=(num_tiles,),
                        in_specs=[plgpu.BlockSpec((tm, tk), lambda t: (first_tile + t, i),
                                                  delay_release=1),
                                  plgpu.BlockSpec((tm, tn), lambda t: (first_tile + t, j),
                                                  delay_release=1)],
                        max_concurrent_steps=max(2, shape.stages),
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

    return body


def _tgmm_two_warpgroups(shape: _TgmmShape):
    """Warp-specialized, as ``_gmm_two_warpgroups``: the producer copies a group's (tm, tk) lhs
    and (tm, tn) grad tiles; consumer w multiplies the lhs tile (transposed) by its half of the
    grad tile into a (tk, tn / 2) accumulator. In a tile that straddles the group's edge both
    operands' foreign rows are zeroed, as in the one-warpgroup kernel, without two warpgroups
    writing one element: each zeroes its own half of the grad tile and half of the lhs tile's
    columns, then both meet at a barrier before either multiplies (the lhs tile is read by
    both)."""
    tm, tk, tn = shape.tm, shape.tk, shape.tn
    half = tn // 2
    stages = max(1, shape.stages)

    def specs(first_tile, i, j):
        return [plgpu.BlockSpec((tm, tk), lambda t: (first_tile + t, i)),
                plgpu.BlockSpec((tm, tn), lambda t: (first_tile + t, j))]

    def body(starts_G, ends_G, lhs_gmem, grad_gmem, out_gmem):
        # A static grid of `stages` steps: allocations for `stages` buffers (a shorter static
        # grid would shrink them), reused by every item's pipeline.
        allocations = _consumers_pipeline((stages,), specs(0, 0, 0), stages).get_allocations(
            lhs_gmem, grad_gmem)

        @functools.partial(pl.run_scoped, allocations=allocations,
                           out_smem=plgpu.SMEM((2, _EPILOGUE_ROWS, half), out_gmem.dtype),
                           masked=plgpu.Barrier(num_arrivals=2), collective_axes="wg")
        def _(allocations, out_smem, masked):
            wg = jax.lax.axis_index("wg")
            cols, lhs_cols = pl.ds(wg * half, half), pl.ds(wg * (tk // 2), tk // 2)

            @plgpu.nd_loop((shape.num_groups * shape.grid_k * shape.grid_n,),
                           collective_axes="sm")
            def _(loop):
                g, i, j, start, end, first_tile, num_tiles = _tgmm_item(
                    loop.index[0], shape, starts_G, ends_G)

                def step(t, x_smem, dy_smem, acc_ref):
                    row_start = (first_tile + t[0]) * tm

                    @pl.when((row_start < start) | (row_start + tm > end))
                    def _():
                        _zero_foreign_rows(x_smem.at[:, lhs_cols], row_start, start, end)
                        _zero_foreign_rows(dy_smem.at[:, cols], row_start, start, end)
                        plgpu.commit_smem()
                        plgpu.barrier_arrive(masked)
                        plgpu.barrier_wait(masked)

                    plgpu.wgmma(acc_ref, plgpu.transpose_ref(x_smem, (1, 0)),
                                dy_smem.at[:, cols])
                    plgpu.wgmma_wait(0)
                    return acc_ref

                def epilogue(acc):
                    for first, chunk in _epilogue_chunks(acc, out_smem.at[wg]):
                        plgpu.copy_smem_to_gmem(chunk, out_gmem.at[
                            g, pl.ds(i * tk + first, _EPILOGUE_ROWS), j, wg])

                _consumers_pipeline((num_tiles,), specs(first_tile, i, j), stages, step,
                                    (tk, half), epilogue,
                                    )(lhs_gmem, grad_gmem, allocations=allocations)

            plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    return body

"""Group metadata: where each group's rows are, and which blocks of rows a kernel visits.

In: ``group_sizes_E`` (int32, rows per group, all E groups of the layer), a ``group_offset`` and
the number G of groups this call owns (groups offset .. offset+G-1, "local" groups). Out: small
int32 arrays that the kernels read to know, for each step of their loop or grid, which rows to
load and which expert's weights to multiply them with. Everything here is a pure jnp function of
those few integers, so it is tested on hand-built examples in milliseconds (tests/kernels/
test_metadata.py) and computed on device inside jit.

Two layouts are used:

* ``row_chunks`` (the "cpu" path): each local group's rows are cut into chunks that start inside
  the group: as many full chunks of ``block_m`` rows as fit, then the remainder in power-of-two
  chunks (block_m/2, block_m/4, ...) down to ``min_block_m``, the last one rounded up. Chunks of
  one size form one "level"; a kernel runs one loop per level. Only the final chunk of a group
  can reach past the group's end, by less than ``min_block_m`` rows, so almost no work is
  wasted on padding even with many small groups.
* ``tile_visits`` (the Pallas kernels, as in megablox): rows are cut into fixed tiles of
  ``block_m`` rows aligned to row 0; a tile holding rows of several groups is visited once per
  group, and each visit keeps only that group's rows. At most tiles_m + G - 1 visits.

Letters: M rows, E groups in ``group_sizes``, G local groups, C chunks, V visits.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class GroupBounds(NamedTuple):
    """Row range [start, end) of each local group in lhs; (G,) int32 each."""

    starts_G: jax.Array
    ends_G: jax.Array


def group_bounds(group_sizes_E: jax.Array, group_offset: jax.Array | int,
                 num_local_groups: int) -> GroupBounds:
    """Rows of local groups offset .. offset+G-1 (rows are sorted by global group id)."""
    group_sizes_E = group_sizes_E.astype(jnp.int32)
    # ends_E[e] = first row after group e; starts_E[e] = ends_E[e] - size_e (exclusive cumsum).
    ends_E = jnp.cumsum(group_sizes_E)
    starts_E = ends_E - group_sizes_E
    offset = jnp.asarray(group_offset, jnp.int32).reshape(())
    starts_G = jax.lax.dynamic_slice_in_dim(starts_E, offset, num_local_groups)
    ends_G = jax.lax.dynamic_slice_in_dim(ends_E, offset, num_local_groups)
    return GroupBounds(starts_G, ends_G)


class ChunkLevel(NamedTuple):
    """The chunks of one size (``rows``, static) in group order, padded to a static count C.

    Attributes:
      rows: rows per chunk at this level (python int).
      group_C: local group id of each chunk (dead chunks repeat a valid id; never used).
      row_start_C: first lhs row of each chunk.
      valid_rows_C: rows of the chunk that belong to its group (the rest are masked).
      num_live: chunks of this level that exist (int32 scalar); chunks >= num_live are dead.
    """

    rows: int
    group_C: jax.Array
    row_start_C: jax.Array
    valid_rows_C: jax.Array
    num_live: jax.Array


def chunk_sizes(block_m: int, min_block_m: int) -> tuple[int, ...]:
    """Chunk sizes of the levels, largest first: block_m, block_m/2, ..., min_block_m."""
    if block_m < min_block_m or block_m & (block_m - 1) or min_block_m & (min_block_m - 1):
        raise ValueError(f"block_m = {block_m} and min_block_m = {min_block_m} must be powers "
                         "of two with min_block_m <= block_m")
    sizes, rows = [], block_m
    while rows >= min_block_m:
        sizes.append(rows)
        rows //= 2
    return tuple(sizes)


def row_chunks(bounds: GroupBounds, num_rows: int, block_m: int,
               min_block_m: int) -> tuple[ChunkLevel, ...]:
    """Cut every local group into chunks (see the module docstring); one ChunkLevel per size.

    A group of s rows gives s // block_m chunks at level 0; at each middle level of size b one
    chunk if the rows still left (fewer than 2b) are >= b; at the last level (min_block_m) the
    remaining r < 2 * min_block_m rows in cdiv(r, min_block_m) chunks, the last partly valid.
    """
    sizes = chunk_sizes(block_m, min_block_m)
    sizes_G = bounds.ends_G - bounds.starts_G
    left_G = sizes_G  # rows of each group not yet covered by a previous level
    levels = []
    for level, rows in enumerate(sizes):
        last = level == len(sizes) - 1
        if level == 0 and not last:
            count_G = left_G // rows  # full chunks only
        elif not last:
            count_G = (left_G >= rows).astype(jnp.int32)  # 0 or 1: left_G < 2 * rows here
        else:
            count_G = -(-left_G // rows)  # cdiv: the final chunk may be partly valid
        covered_G = sizes_G - left_G  # this level's chunks start this far into their group
        # Static bound on chunks at this level: all M rows in chunks of this size, plus one
        # partly valid chunk per group at the last level; and never more than the groups allow.
        num_groups = sizes_G.shape[0]
        if not last:  # chunks here are fully valid, and middle levels hold <= 1 per group
            max_chunks = num_rows // rows if level == 0 else min(num_groups, num_rows // rows)
        else:  # cdiv per group: <= M / rows + G chunks, and <= 2 per group after level 0
            max_chunks = -(-num_rows // rows) + num_groups
            max_chunks = max_chunks if level == 0 else min(2 * num_groups, max_chunks)
        chunk_ends_G = jnp.cumsum(count_G)  # chunks of groups <= g at this level
        chunk_starts_G = chunk_ends_G - count_G
        chunk_C = jnp.arange(max_chunks, dtype=jnp.int32)
        # Group of chunk c: the number of groups whose chunks all come before c.
        group_C = jnp.searchsorted(chunk_ends_G, chunk_C, side="right").astype(jnp.int32)
        group_C = jnp.minimum(group_C, num_groups - 1)  # dead chunks: any valid id
        index_in_group_C = chunk_C - chunk_starts_G[group_C]  # 0, 1, ... within its group
        row_start_C = bounds.starts_G[group_C] + covered_G[group_C] + index_in_group_C * rows
        valid_rows_C = jnp.clip(bounds.ends_G[group_C] - row_start_C, 0, rows)
        levels.append(ChunkLevel(rows, group_C, row_start_C.astype(jnp.int32),
                                 valid_rows_C.astype(jnp.int32),
                                 chunk_ends_G[-1].astype(jnp.int32)))
        left_G = left_G - count_G * rows
    return tuple(levels)


class TileVisits(NamedTuple):
    """The grid steps of a megablox-style kernel: visit v multiplies the rows of group_V[v]
    inside row tile tile_V[v] (rows tile*block_m .. +block_m), V = tiles_m + G - 1 (static).

    Attributes:
      group_V: local group id of each visit.
      tile_V: row-tile id of each visit.
      num_live: visits that exist; later visits repeat the last live one and must do nothing.
    """

    group_V: jax.Array
    tile_V: jax.Array
    num_live: jax.Array


def tile_visits(bounds: GroupBounds, num_rows: int, block_m: int,
                empty_groups: bool = False) -> TileVisits:
    """One visit per (group, row tile) pair holding rows of that group; empty groups: none, or
    with ``empty_groups`` one visit each (to a tile with none of its rows), so a kernel whose
    output blocks are the groups' writes every block. The bound tiles_m + G - 1 holds either
    way: nonempty groups touch at most tiles_m + (their count - 1) tiles."""
    num_groups = bounds.starts_G.shape[0]
    tiles_m = -(-num_rows // block_m)
    nonempty_G = bounds.ends_G > bounds.starts_G
    first_tile_G = jnp.minimum(bounds.starts_G // block_m, tiles_m - 1)  # the first row's tile
    last_tile_G = (bounds.ends_G - 1) // block_m  # tile holding the group's last row
    visits_G = jnp.where(nonempty_G, last_tile_G - first_tile_G + 1, 1 if empty_groups else 0)
    visit_ends_G = jnp.cumsum(visits_G)
    visit_starts_G = visit_ends_G - visits_G
    num_live = visit_ends_G[-1].astype(jnp.int32)
    # Consecutive groups share at most one tile, so tiles_m + G - 1 visits always suffice.
    visit_V = jnp.arange(tiles_m + num_groups - 1, dtype=jnp.int32)
    # Dead visits (v >= num_live) are clamped to the last live visit: they map to the block
    # already resident, so a kernel that skips their compute moves no data for them.
    live_visit_V = jnp.minimum(visit_V, jnp.maximum(num_live - 1, 0))
    group_V = jnp.searchsorted(visit_ends_G, live_visit_V, side="right").astype(jnp.int32)
    group_V = jnp.minimum(group_V, num_groups - 1)
    tile_V = first_tile_G[group_V] + (live_visit_V - visit_starts_G[group_V])
    tile_V = jnp.clip(tile_V, 0, tiles_m - 1)  # only matters when every group is empty
    return TileVisits(group_V, tile_V.astype(jnp.int32), num_live)


class CoveringVisits(NamedTuple):
    """Visits of a kernel that writes every output row itself (no zeroing pass after it).

    The visits of ``tile_visits`` (group visits, group order), then one zero visit per row tile
    that no local group touches. Visit v computes rows [own_start_V, own_end_V) of tile_V[v]
    with group_V[v]'s weights and stores rows [store_start_V, store_end_V): its own rows as
    products, the others as zeros. Store ranges partition rows 0 .. M-1 exactly; own ranges are
    empty for zero visits. Live visits <= tiles_m + G - 1 (each tile has max(1, groups in it)).

    Attributes:
      group_V, tile_V: local group (any valid id for zero visits) and row tile of each visit.
      own_start_V, own_end_V: rows whose values are products (global row ids).
      store_start_V, store_end_V: rows this visit writes (global row ids).
      num_live: visits that exist (group visits + zero visits); later ones do nothing.
    """

    group_V: jax.Array
    tile_V: jax.Array
    own_start_V: jax.Array
    own_end_V: jax.Array
    store_start_V: jax.Array
    store_end_V: jax.Array
    num_live: jax.Array


def covering_visits(bounds: GroupBounds, num_rows: int, block_m: int) -> CoveringVisits:
    """``tile_visits`` plus zero visits, with the row ranges each visit owns and stores.

    The local groups' rows are one interval [lo, hi); the tiles it touches are t_lo .. t_hi-1
    and every other tile gets a zero visit. Inside the touched tiles, the first group visit
    also stores the rows below lo of its tile and the last one the rows from hi to its tile's
    end (as zeros), so no row is left unwritten and none is written twice. Dead visits repeat
    the last live visit's tile and group (a kernel that maps them to blocks moves no data)
    with empty ranges.
    """
    groups = tile_visits(bounds, num_rows, block_m)
    tiles_m = -(-num_rows // block_m)
    lo, hi = bounds.starts_G[0], bounds.ends_G[-1]
    t_lo = jnp.where(hi > lo, lo // block_m, 0)
    touched = jnp.where(hi > lo, (hi - 1) // block_m + 1 - t_lo, 0)
    num_live = (groups.num_live + tiles_m - touched).astype(jnp.int32)
    v_V = jnp.arange(groups.group_V.shape[0], dtype=jnp.int32)
    live_V = v_V < num_live
    v_V = jnp.minimum(v_V, num_live - 1)  # dead visits: the last live one (num_live >= 1)
    is_group_V = v_V < groups.num_live
    zero_index_V = v_V - groups.num_live  # 0, 1, ... over the zero visits
    zero_tile_V = jnp.where(zero_index_V < t_lo, zero_index_V, zero_index_V + touched)
    tile_V = jnp.where(is_group_V, groups.tile_V[v_V], zero_tile_V)
    group_V = groups.group_V[v_V]
    tile_start_V = tile_V * block_m
    tile_end_V = jnp.minimum(tile_start_V + block_m, num_rows)
    own_start_V = jnp.clip(bounds.starts_G[group_V], tile_start_V, tile_end_V)
    own_end_V = jnp.clip(bounds.ends_G[group_V], tile_start_V, tile_end_V)
    store_start_V = jnp.where(v_V == 0, tile_start_V, own_start_V)  # the first group visit
    store_end_V = jnp.where(v_V == groups.num_live - 1, tile_end_V, own_end_V)  # the last
    store_start_V = jnp.where(is_group_V, store_start_V, tile_start_V)
    store_end_V = jnp.where(live_V, jnp.where(is_group_V, store_end_V, tile_end_V),
                            store_start_V)
    computes_V = is_group_V & live_V  # zero and dead visits own no rows
    own_start_V = jnp.where(computes_V, own_start_V, store_start_V)
    own_end_V = jnp.where(computes_V, own_end_V, store_start_V)
    return CoveringVisits(group_V, tile_V.astype(jnp.int32), own_start_V.astype(jnp.int32),
                          own_end_V.astype(jnp.int32), store_start_V.astype(jnp.int32),
                          store_end_V.astype(jnp.int32), num_live)

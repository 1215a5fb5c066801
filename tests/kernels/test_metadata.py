"""Group metadata on hand-built examples (moejax/kernels/metadata.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from moejax.kernels import metadata


def _bounds(sizes, offset=0, num_local=None):
    sizes = jnp.asarray(sizes, jnp.int32)
    return metadata.group_bounds(sizes, offset, num_local or sizes.shape[0])


def test_group_bounds_are_row_ranges_of_the_local_groups():
    bounds = _bounds([3, 0, 5, 2], offset=1, num_local=2)
    np.testing.assert_array_equal(bounds.starts_G, [3, 3])  # group 1 is empty at row 3
    np.testing.assert_array_equal(bounds.ends_G, [3, 8])


def _live(level):
    n = int(level.num_live)
    return (level.rows, list(np.asarray(level.group_C[:n])),
            list(np.asarray(level.row_start_C[:n])), list(np.asarray(level.valid_rows_C[:n])))


def test_row_chunks_binary_decomposition():
    # Group 0: 37 rows = 2 x 16 + 4 + 1 (last level of 1 row); group 1 empty; group 2: 8 rows.
    levels = metadata.row_chunks(_bounds([37, 0, 8]), 50, block_m=16, min_block_m=1)
    assert [level.rows for level in levels] == [16, 8, 4, 2, 1]
    assert _live(levels[0]) == (16, [0, 0], [0, 16], [16, 16])
    assert _live(levels[1]) == (8, [2], [37], [8])
    assert _live(levels[2]) == (4, [0], [32], [4])
    assert _live(levels[3]) == (2, [], [], [])
    assert _live(levels[4]) == (1, [0], [36], [1])


def test_row_chunks_last_level_rounds_up_and_marks_valid_rows():
    # min_block_m = 4: group 0 (6 rows) = 4 + a chunk of 4 with 2 valid rows; group 1 (3 rows)
    # one chunk of 4 with 3 valid; rows 9.. belong to no group.
    levels = metadata.row_chunks(_bounds([6, 3]), 12, block_m=8, min_block_m=4)
    assert _live(levels[0]) == (8, [], [], [])
    assert _live(levels[1]) == (4, [0, 0, 1], [0, 4, 6], [4, 2, 3])


def test_row_chunks_cover_each_group_exactly():
    rng = np.random.default_rng(0)
    for _ in range(6):
        sizes = rng.integers(0, 40, size=rng.integers(1, 8))
        m = int(sizes.sum()) + int(rng.integers(0, 5))
        offset = int(rng.integers(0, len(sizes)))
        levels = metadata.row_chunks(_bounds(sizes, offset, len(sizes) - offset), m, 16, 2)
        covered = np.zeros(m + 16, int)
        for level in levels:
            for group, start, valid in zip(*_live(level)[1:]):
                assert valid >= 1 and start + valid <= sizes[:offset + group + 1].sum()
                covered[start:start + valid] += 1
        start, end = sizes[:offset].sum(), sizes.sum()
        np.testing.assert_array_equal(covered[start:end], 1)  # every local row exactly once
        assert not covered[:start].any() and not covered[end:].any()


def test_chunk_sizes_must_be_powers_of_two():
    assert metadata.chunk_sizes(64, 16) == (64, 32, 16)
    with pytest.raises(ValueError, match="powers of two"):
        metadata.chunk_sizes(48, 16)


def test_tile_visits_visit_straddling_tiles_once_per_group():
    # Tiles of 4 rows; groups [0, 6), [6, 6) empty, [6, 9); 16 rows -> 4 tiles.
    visits = metadata.tile_visits(_bounds([6, 0, 3]), 16, block_m=4)
    assert int(visits.num_live) == 4  # (g0, t0), (g0, t1), (g2, t1), (g2, t2); t3: no group
    assert visits.group_V.shape == (4 + 3 - 1,)
    np.testing.assert_array_equal(visits.group_V, [0, 0, 2, 2, 2, 2])  # dead: repeat the last
    np.testing.assert_array_equal(visits.tile_V, [0, 1, 1, 2, 2, 2])


def test_tile_visits_can_visit_empty_groups_once():
    # The weight gradient's blocks are the groups: an empty group gets one visit (none of its
    # rows in it), in group order, within the same static bound tiles_m + G - 1.
    visits = metadata.tile_visits(_bounds([6, 0, 3, 0]), 16, block_m=4, empty_groups=True)
    assert int(visits.num_live) == 6 and visits.group_V.shape == (4 + 4 - 1,)
    np.testing.assert_array_equal(visits.group_V, [0, 0, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(visits.tile_V, [0, 1, 1, 1, 2, 2, 2])
    empty = metadata.tile_visits(_bounds([0, 0, 0]), 8, block_m=4, empty_groups=True)
    assert int(empty.num_live) == 3 and list(np.asarray(empty.group_V)) == [0, 1, 2, 2]


def test_tile_visits_with_offset_and_all_empty():
    visits = metadata.tile_visits(_bounds([5, 4, 7], offset=1, num_local=2), 16, block_m=4)
    assert int(visits.num_live) == 4  # group 1 rows 5..8 (tiles 1, 2), group 2 rows 9..15 (2, 3)
    np.testing.assert_array_equal(visits.group_V[:4], [0, 0, 1, 1])
    np.testing.assert_array_equal(visits.tile_V[:4], [1, 2, 2, 3])
    empty = metadata.tile_visits(_bounds([0, 0]), 8, block_m=4)
    assert int(empty.num_live) == 0 and np.all(np.asarray(empty.tile_V) < 2)


def test_covering_visits_hand_built():
    # 40 rows in tiles of 8; local groups 1..2 own rows 10..29 (group 1: 10..13, group 2:
    # 14..29). Tiles 0 and 4 hold no local row: zero visits. Tile 1 has rows 8..9 of another
    # expert (zeros, stored by the first group visit) and rows 10..13 and 14..15.
    visits = metadata.covering_visits(_bounds([10, 4, 16, 10], offset=1, num_local=2), 40, 8)
    n = int(visits.num_live)
    got = [tuple(int(a[v]) for a in visits[:6]) for v in range(n)]
    assert got == [  # group, tile, own rows, stored rows
        (0, 1, 10, 14, 8, 14), (1, 1, 14, 16, 14, 16), (1, 2, 16, 24, 16, 24),
        (1, 3, 24, 30, 24, 32),  # the last group visit stores rows 30, 31 as zeros
        (1, 0, 0, 0, 0, 8), (1, 4, 32, 32, 32, 40)]  # zero visits: own nothing
    assert visits.group_V.shape[0] == 5 + 2 - 1  # tiles_m + G - 1 (static)


@pytest.mark.parametrize("seed", range(15))
def test_covering_visits_store_every_row_once(seed):
    rng = np.random.default_rng(seed)
    num_groups, rows, block = int(rng.integers(1, 7)), int(rng.integers(1, 60)), int(
        rng.choice([1, 2, 4, 8, 16]))
    sizes = rng.integers(0, 12, num_groups) * (rng.random(num_groups) < 0.7)
    while sizes.sum() > rows:
        sizes = sizes // 2
    num_local = int(rng.integers(1, num_groups + 1))
    offset = int(rng.integers(0, num_groups - num_local + 1))
    visits = metadata.covering_visits(_bounds(sizes, offset, num_local), rows, block)
    live = int(visits.num_live)
    assert live <= -(-rows // block) + num_local - 1
    group, tile, own_start, own_end, store_start, store_end = (np.asarray(a) for a in visits[:6])
    stored, owner = np.zeros(rows, int), np.full(rows, -1)
    for v in range(live):
        assert tile[v] * block <= store_start[v] <= store_end[v] <= min((tile[v] + 1) * block,
                                                                          rows)
        assert own_start[v] == own_end[v] or store_start[v] <= own_start[v] <= own_end[
            v] <= store_end[v]
        stored[store_start[v]:store_end[v]] += 1
        owner[own_start[v]:own_end[v]] = group[v]
    assert (stored == 1).all()  # a partition of the rows
    want = np.full(rows, -1)
    starts = np.cumsum(sizes) - sizes
    for g in range(num_local):
        want[starts[offset + g]:starts[offset + g] + sizes[offset + g]] = g
    np.testing.assert_array_equal(owner, want)
    for v in range(live, group.shape[0]):  # dead visits: the last live block, empty ranges
        assert (tile[v], group[v]) == (tile[live - 1], group[live - 1])
        assert store_start[v] == store_end[v] and own_start[v] == own_end[v]

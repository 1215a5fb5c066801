"""Tile defaults per implementation and their gin knobs (moejax/kernels/tiling.py)."""

import gin
import pytest

from moejax.kernels import tiling


def test_defaults_per_implementation():
    assert tiling.default_tiling("cpu") == tiling.Tiling(block_m=512, block_k=1, block_n=1,
                                                         min_block_m=16, slab=2)
    assert tiling.default_tiling("pallas_tpu").block_k == 128
    gpu = tiling.default_tiling("pallas_gpu")
    assert (gpu.block_m, gpu.block_n, gpu.num_warps) == (128, 256, 8)
    assert gpu.tgmm is not None and gpu.tgmm.block_m == 64  # the weight gradient's own tiles
    hopper = tiling.default_tiling("mosaic_gpu")
    assert (hopper.block_m, hopper.block_k, hopper.block_n, hopper.num_stages) == (128, 64, 128, 4)
    assert hopper.tgmm is not None and hopper.tgmm.block_k == 128


def test_gin_binding_changes_the_default():
    with gin.unlock_config():
        gin.parse_config("cpu_tiling.block_m = 256\npallas_gpu_tiling.block_n = 64\n"
                         "mosaic_gpu_tiling.tgmm_block_n = 256")
    try:
        assert tiling.default_tiling("cpu").block_m == 256
        assert tiling.default_tiling("pallas_gpu").block_n == 64
        assert tiling.default_tiling("mosaic_gpu").tgmm.block_n == 256
    finally:
        gin.clear_config()


def test_fit_tile_shrinks_for_small_dimensions():
    assert tiling.fit_tile(128, 20) == 32
    assert tiling.fit_tile(128, 20, minimum=128) == 128
    assert tiling.fit_tile(64, 1000) == 64


def test_invalid_tiles_fail_fast():
    with pytest.raises(ValueError, match="min_block_m = 32 must be <= block_m = 16"):
        tiling.Tiling(block_m=16, min_block_m=32)
    with pytest.raises(ValueError, match="slab = -1"):
        tiling.Tiling(slab=-1)
    with pytest.raises(ValueError, match="num_stages = 0"):
        tiling.Tiling(num_stages=0)
    with pytest.raises(ValueError, match="Tiling.tgmm"):
        tiling.Tiling(tgmm=(64, 64, 64))

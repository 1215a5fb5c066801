"""The Hopper kernels ("mosaic_gpu") against ragged_dot, forward and both gradients.

Off a GPU they run in JAX's Mosaic GPU interpreter, which simulates shared memory, TMA copies
and barriers on CPU and fills fresh buffers and out-of-bounds reads with NaN (TMA would read
zeros), so a row the kernel forgets to store, or a value from past an array's edge that reaches
a result, fails the test (its wgmma reads transposed operands through
``moejax.kernels.mosaic_gpu_interpret``). Tiles are ones the hardware accepts (multiples of 64),
so m, k and n below are all ragged against them. The lowering test compiles nothing:
``jax.export`` lowers the kernels for CUDA through Mosaic GPU from this CPU-only machine. On a
GPU the same tests run the real kernels.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from moejax.kernels import Tiling, gmm, mosaic_gpu, mosaic_gpu_interpret, tgmm
from tests.kernels.reference import Problem, check_problem, problems

TILING = Tiling(block_m=64, block_k=64, block_n=64, min_block_m=1, num_stages=2,
                tgmm=Tiling(block_m=64, block_k=64, block_n=64, min_block_m=1, num_stages=2))
# The warp-specialized kernels: two consumer warpgroups of 64 columns each (the weight
# gradient's lhs tile 128 wide: each consumer masks one 64-column half of it).
TWO_WARPGROUPS = Tiling(block_m=64, block_k=64, block_n=128, min_block_m=1, num_warps=8,
                        num_stages=2, tgmm=Tiling(block_m=64, block_k=128, block_n=128,
                                                  min_block_m=1, num_warps=8, num_stages=2))
TILINGS = {"one warpgroup": TILING, "two warpgroups": TWO_WARPGROUPS}

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "gpu" and not mosaic_gpu_interpret.AVAILABLE,
    reason=f"this JAX ({jax.__version__}) has no Mosaic GPU interpreter and there is no GPU")

CASES = [  # empty groups, rows past the sum, offsets, groups over > 1 row tile, ragged m, k, n
    Problem(m=150, k=72, n=40, group_sizes=(30, 0, 70, 20), num_local=4, offset=None,
            dtype="bfloat16", out_dtype=None, seed=0),
    Problem(m=130, k=64, n=96, group_sizes=(10, 45, 0, 60, 5), num_local=3, offset=1,
            dtype="bfloat16", out_dtype="float32", seed=1),
    Problem(m=40, k=9, n=17, group_sizes=(0, 40, 0), num_local=3, offset=None,
            dtype="float16", out_dtype=None, seed=2),
]


@pytest.mark.parametrize("case,tiles", [
    (case, tiles) if case == 0 or tiles == "one warpgroup"
    else pytest.param(case, tiles, marks=pytest.mark.slow)  # ~10 s each in the interpreter
    for tiles in TILINGS for case in range(len(CASES))])
def test_matches_ragged_dot(case, tiles):
    # Off a GPU, 3 programs walk the work list: each does several visits, its buffers,
    # barriers and output tiles carried from one to the next.
    check_problem(CASES[case], "mosaic_gpu", TILINGS[tiles])


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="the race detector is the interpreter's")
@pytest.mark.parametrize("tiles", [  # two warpgroups: ~10 s, in the slow suite
    pytest.param(tiles, marks=[pytest.mark.slow] if tiles == "two warpgroups" else [])
    for tiles in TILINGS])
def test_interpreter_finds_no_race(monkeypatch, tiles):
    # Shared-memory buffers, TMA copies and barriers of the pipelines, happens-before checked
    # (the warp-specialized one's producer and consumers too). It does not flag an output
    # tile rewritten before its store has read it, nor the weight gradient's consumers
    # without their barrier (both tried): those rest on the kernels' own reasoning.
    monkeypatch.setattr(mosaic_gpu, "_DETECT_RACES", True)
    check_problem(CASES[1], "mosaic_gpu", TILINGS[tiles])
    assert not mosaic_gpu_interpret.races_found()


def test_two_warpgroups_need_whole_swizzle_halves():
    with pytest.raises(ValueError, match=r"mosaic_gpu_tiling.num_warps = 8: .*here 64"):
        gmm(jnp.zeros((64, 64), jnp.bfloat16), jnp.zeros((1, 64, 64), jnp.bfloat16),
            jnp.array([64]), impl="mosaic_gpu",
            tiling=Tiling(block_m=64, block_k=64, block_n=64, min_block_m=1, num_warps=8))
    with pytest.raises(ValueError, match=r"mosaic_gpu_tiling.num_warps = 16: 4 .* or 8"):
        gmm(jnp.zeros((64, 64), jnp.bfloat16), jnp.zeros((1, 64, 128), jnp.bfloat16),
            jnp.array([64]), impl="mosaic_gpu",
            tiling=Tiling(block_m=64, block_k=64, block_n=128, min_block_m=1, num_warps=16))
    narrow = dataclasses.replace(TWO_WARPGROUPS.tgmm, block_k=64)
    with pytest.raises(ValueError, match=r"mosaic_gpu_tiling.tgmm_block_k = 64: .*128"):
        tgmm(jnp.zeros((64, 64), jnp.bfloat16), jnp.zeros((64, 128), jnp.bfloat16),
             jnp.array([64]), num_groups=1, impl="mosaic_gpu",
             tiling=dataclasses.replace(TWO_WARPGROUPS, tgmm=narrow))


@pytest.mark.parametrize("tiles", TILINGS)
def test_garbage_past_the_sum_and_an_all_foreign_block_stay_out(tiles):
    # 200 rows, the local groups own 64..127: two whole row tiles get zero visits, and rows
    # past the sum hold NaN and inf; outputs and gradients must be exact zeros there.
    tiling = TILINGS[tiles]
    sizes = jnp.array([64, 30, 34, 10], jnp.int32)
    rng = np.random.default_rng(3)
    lhs = jnp.asarray(rng.standard_normal((200, 64)), jnp.bfloat16)
    lhs = lhs.at[138:].set(jnp.nan).at[150].set(jnp.inf)
    rhs = jnp.asarray(rng.standard_normal((2, 64, 64)), jnp.bfloat16)
    out = gmm(lhs, rhs, sizes, impl="mosaic_gpu", tiling=tiling, group_offset=1)
    grad = tgmm(lhs, jnp.ones((200, 64), jnp.bfloat16), sizes, num_groups=2, impl="mosaic_gpu",
                tiling=tiling, group_offset=1)
    out = np.asarray(out, np.float32)
    assert not out[:64].any() and not out[128:].any()
    want = np.asarray(lhs[64:128], np.float32)
    w = np.asarray(rhs, np.float32)
    np.testing.assert_allclose(out[64:94], want[:30] @ w[0], rtol=3e-2, atol=0.5)
    np.testing.assert_allclose(out[94:128], want[30:] @ w[1], rtol=3e-2, atol=0.5)
    grad = np.asarray(grad, np.float32)
    np.testing.assert_allclose(grad[0], want[:30].T @ np.ones((30, 64)), rtol=3e-2, atol=0.5)
    np.testing.assert_allclose(grad[1], want[30:].T @ np.ones((34, 64)), rtol=3e-2, atol=0.5)


def test_random_problems():
    @settings(max_examples=6, deadline=None, derandomize=True)
    @given(problems(max_m=140, max_dim=80, max_groups=5, dtypes=("bfloat16",)))
    def check(problem):
        check_problem(problem, "mosaic_gpu", TILING)

    check()


@pytest.mark.slow  # about 8 s a problem in the interpreter: three simulated warpgroups
def test_random_problems_two_warpgroups():
    @settings(max_examples=6, deadline=None, derandomize=True)
    @given(problems(max_m=300, max_dim=200, max_groups=7, dtypes=("bfloat16", "float16")))
    def check(problem):
        check_problem(problem, "mosaic_gpu", TWO_WARPGROUPS)

    check()


@pytest.mark.parametrize("tiles, knob", [
    (Tiling(block_m=32, block_k=64, block_n=64, min_block_m=1), "block_m"),
    (Tiling(block_m=64, block_k=64, block_n=512, min_block_m=1), "block_n"),
])
def test_tiles_wgmma_cannot_take_name_their_knob(tiles, knob):
    with pytest.raises(ValueError, match=f"mosaic_gpu_tiling.{knob} = "):
        gmm(jnp.zeros((64, 64), jnp.bfloat16), jnp.zeros((1, 64, 64), jnp.bfloat16),
            jnp.array([64]), impl="mosaic_gpu", tiling=tiles)


def test_tiles_past_the_gpus_shared_memory_name_their_knobs():
    """4 steps of 128 x 128 + 128 x 128 bf16 tiles: 256 KiB, an H100 block has 227 (Mosaic GPU's
    compile refuses them too: tests/parallel/test_gpu_topology.py)."""
    from moejax.kernels import platform

    big = Tiling(block_m=128, block_k=128, block_n=128, min_block_m=1, num_stages=4,
                 tgmm=Tiling(block_m=64, block_k=128, block_n=128, min_block_m=1, num_stages=3))
    args = (jax.ShapeDtypeStruct((1024, 512), jnp.bfloat16),
            jax.ShapeDtypeStruct((4, 512, 512), jnp.bfloat16),
            jax.ShapeDtypeStruct((4,), jnp.int32))
    h100 = platform.Device("gpu", "NVIDIA H100 80GB HBM3", (9, 0))
    with platform.targeting(h100), pytest.raises(
            ValueError, match=r"block_m, block_k, block_n, num_stages need 256 KiB .*227 KiB"):
        jax.eval_shape(lambda x, w, s: mosaic_gpu.gmm(x, w, s, jnp.int32(0), tiling=big,
                                                      out_dtype=jnp.bfloat16), *args)
    fits = Tiling(block_m=128, block_k=128, block_n=128, min_block_m=1, num_stages=3)
    with platform.targeting(h100):  # 3 steps: 192 KiB
        jax.eval_shape(lambda x, w, s: mosaic_gpu.gmm(x, w, s, jnp.int32(0), tiling=fits,
                                                      out_dtype=jnp.bfloat16), *args)


def test_float32_is_refused_with_the_alternative_named():
    with pytest.raises(NotImplementedError, match="pallas_gpu"):
        gmm(jnp.zeros((8, 64)), jnp.zeros((1, 64, 64)), jnp.array([8]), impl="mosaic_gpu")


def test_kernels_lower_for_cuda(monkeypatch):
    monkeypatch.setattr(mosaic_gpu, "_interpret", lambda: None)  # the real kernel
    tiling = Tiling(block_m=128, block_k=64, block_n=128, min_block_m=1, num_stages=4,
                    tgmm=Tiling(block_m=64, block_k=128, block_n=128, min_block_m=1,
                                num_stages=3))
    sizes = jax.ShapeDtypeStruct((8,), jnp.int32)
    # Whole tiles, then rows not a multiple of 8 and k and n wider than TMA's swizzle (64) and
    # not multiples of it, which the interpreter accepts and a real lowering refuses unless
    # the kernels pad them.
    for m, k, n in ((1000, 512, 384), (1001, 160, 200)):
        _lower_all(tiling, m, k, n, sizes)
    two = dataclasses.replace(tiling, block_n=256, num_warps=8, num_stages=3, tgmm=dataclasses.
                              replace(tiling.tgmm, block_n=256, num_warps=8, num_stages=3))
    _lower_all(two, 1001, 160, 200, sizes)


def _lower_all(tiling, m, k, n, sizes):
    from jax import export

    lhs = jax.ShapeDtypeStruct((m, k), jnp.bfloat16)
    rhs = jax.ShapeDtypeStruct((4, k, n), jnp.bfloat16)

    def lower(fn, *args):
        exported = export.export(jax.jit(fn), platforms=["cuda"])(*args)
        assert "mosaic_gpu" in exported.mlir_module()  # a Mosaic GPU custom call, not XLA's
        return exported

    offset = jnp.int32(2)
    out = lower(lambda x, w, s: mosaic_gpu.gmm(x, w, s, offset, tiling=tiling,
                                               out_dtype=jnp.bfloat16), lhs, rhs, sizes)
    assert out.out_avals[0].shape == (m, n)
    d_lhs = lower(lambda dy, w, s: mosaic_gpu.gmm(dy, w, s, offset, tiling=tiling,
                                                  out_dtype=jnp.bfloat16, transpose_rhs=True),
                  jax.ShapeDtypeStruct((m, n), jnp.bfloat16), rhs, sizes)
    assert d_lhs.out_avals[0].shape == (m, k)
    d_rhs = lower(lambda x, dy, s: mosaic_gpu.tgmm(x, dy, s, offset, num_groups=4, tiling=tiling,
                                                   out_dtype=jnp.bfloat16),
                  lhs, jax.ShapeDtypeStruct((m, n), jnp.bfloat16), sizes)
    assert d_rhs.out_avals[0].shape == (4, k, n)

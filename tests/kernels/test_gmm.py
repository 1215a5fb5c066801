"""gmm and tgmm ("cpu" and "xla" paths, the custom VJP, the interface) against ragged_dot.

The Pallas kernels have their own module (test_pallas.py): they run interpreted on CPU, slowly.
"""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moejax.kernels import Tiling, cpu, gmm, metadata, resolve_impl, tgmm
from tests.kernels.reference import Problem, assert_close, check_problem, problems

FAST = settings(max_examples=10, deadline=None, derandomize=True)
# Small chunks so a few dozen rows already use several chunk levels and straddle groups.
# slab=3: the weight gradient picks at run time among chunk loops only and slabs of the mean
# rows per group (rounded down to a power of two) and its halvings.
CPU_TILINGS = [Tiling(block_m=16, min_block_m=4), Tiling(block_m=8, min_block_m=2, slab=3),
               Tiling(block_m=4, min_block_m=4), Tiling(block_m=16, min_block_m=2, slab=3)]


@FAST
@given(problems())
def test_cpu_matches_ragged_dot(problem):
    # Slabs are for large experts only; let these small ones have them too.
    with mock.patch.object(cpu, "SLAB_MIN_EXPERT_ELEMENTS", 1):
        check_problem(problem, "cpu", CPU_TILINGS[problem.seed % len(CPU_TILINGS)])


@settings(max_examples=12, deadline=None, derandomize=True)
@given(problems(), st.integers(1, 40))
def test_cpu_weight_gradient_with_each_slab_length(problem, slab_rows):
    # Each slab length alone (the run-time choice picks one of them): slab rows past a group's
    # end, groups longer than the slab (their tail through the chunk loops), empty groups,
    # slabs longer than all rows, and slab lengths that are not powers of two.
    lhs, _, sizes, cot = problem.arrays()
    offset = jnp.int32(problem.offset or 0)
    tiling = Tiling(block_m=8, min_block_m=2)
    got = cpu.tgmm_with_slab(lhs, cot.astype(lhs.dtype), sizes, offset,
                             num_groups=problem.num_local, tiling=tiling, slab_rows=slab_rows,
                             out_dtype=jnp.float32)
    # Reference: a loop over local groups, each its rows' lhs.T @ cot in float64.
    lhs64, cot64 = np.asarray(lhs, np.float64), np.asarray(cot.astype(lhs.dtype), np.float64)
    ends = np.cumsum(problem.group_sizes)
    want = np.zeros((problem.num_local, problem.k, problem.n))
    for g in range(problem.num_local):
        e = g + (problem.offset or 0)
        rows = slice(ends[e] - problem.group_sizes[e], ends[e])
        want[g] = lhs64[rows].T @ cot64[rows]
    assert_close(got, want, problem.dtype, f"slab {slab_rows} {problem}")


def test_slab_choice_follows_the_group_sizes():
    tiling = Tiling(block_m=512, min_block_m=16, slab=3)
    big = 1024 * 1024  # weights per expert
    assert cpu.slab_candidates(8192, 128, big, tiling) == (0, 64, 32, 16)
    assert cpu.slab_candidates(8192, 100, big, tiling) == (0, 64, 32, 16)  # mean 81: 64, ...
    assert cpu.slab_candidates(100, 16, big, tiling) == (0,)  # mean 6 < min_block_m: no slab
    assert cpu.slab_candidates(8192, 128, big, Tiling(block_m=512, min_block_m=16)) == (0,)
    assert cpu.slab_candidates(8192, 128, 128 * 512, tiling) == (0,)  # a small expert: none
    assert cpu.slab_candidates(8192, 128, big, Tiling(min_block_m=16, slab=2)) == (0, 64, 32)

    def cost(sizes, slab_rows):
        bounds = metadata.group_bounds(jnp.asarray(sizes, jnp.int32), 0, len(sizes))
        levels = cpu.chunk_plan(bounds, int(sum(sizes)), slab_rows, tiling)
        return int(cpu.slab_cost(levels, len(sizes), slab_rows))

    # 128 groups of 64 rows: a 64-row slab covers every row with no chunk at all.
    balanced = [64] * 128
    assert cost(balanced, 64) == 128 * 64
    assert cost(balanced, 64) < min(cost(balanced, 32), cost(balanced, 0))
    # One group holds all rows: a slab would compute 127 groups of padding; chunks win.
    one = [8192] + [0] * 127
    assert cost(one, 0) < min(cost(one, 16), cost(one, 64))


@settings(max_examples=4, deadline=None, derandomize=True)
@given(problems())
def test_xla_matches_ragged_dot_on_global_problem(problem):
    # "xla" is ragged_dot itself; this checks its group_offset and zero-row handling.
    check_problem(problem, "xla")


@pytest.mark.parametrize("sizes, m, dtype", [
    ((0, 0, 0), 10, "float32"),  # every group empty: all zeros
    ((0, 23, 0), 23, "bfloat16"),  # all rows in one group
    ((5, 0, 7, 0), 20, "float32"),  # empty groups, 8 rows past the sum
    ((1, 1, 1), 3, "float32"),  # fewer rows than the smallest chunk
])
def test_cpu_edge_cases(sizes, m, dtype):
    problem = Problem(m=m, k=13, n=9, group_sizes=sizes, num_local=len(sizes), offset=None,
                      dtype=dtype, out_dtype=None, seed=m)
    check_problem(problem, "cpu", Tiling(block_m=8, min_block_m=4))


def test_cpu_chunks_down_to_single_rows():
    problem = Problem(m=45, k=7, n=5, group_sizes=(13, 0, 31), num_local=3, offset=None,
                      dtype="float32", out_dtype=None, seed=3)
    check_problem(problem, "cpu", Tiling(block_m=16, min_block_m=1))


def test_cpu_default_tiling_with_offset():
    problem = Problem(m=300, k=20, n=24, group_sizes=(40, 0, 130, 97, 20), num_local=2,
                      offset=2, dtype="float32", out_dtype=None, seed=1)
    check_problem(problem, "cpu")


def test_garbage_past_the_sum_stays_out():
    # Rows past the group-size sum may hold anything (here NaN and inf); outputs and gradients
    # must not see them.
    lhs = jax.random.normal(jax.random.PRNGKey(0), (20, 6)).at[15:].set(jnp.nan).at[19].set(jnp.inf)
    rhs = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 5))
    sizes = jnp.array([7, 8], jnp.int32)
    cot = jnp.ones((20, 5)).at[15:].set(jnp.nan)

    @jax.jit
    def run(lhs, rhs, cot):
        out, vjp = jax.vjp(lambda l, r: gmm(l, r, sizes, impl="cpu",
                                            tiling=Tiling(block_m=8, min_block_m=4)), lhs, rhs)
        return (out, *vjp(cot))

    out, d_lhs, d_rhs = run(lhs, rhs, cot)
    assert np.all(np.asarray(out[15:]) == 0) and np.all(np.isfinite(out[:15]))
    assert np.all(np.asarray(d_lhs[15:]) == 0) and np.all(np.isfinite(d_lhs))
    assert np.all(np.isfinite(d_rhs))


@pytest.mark.parametrize("impl", ["cpu", "xla"])
def test_tgmm_gives_empty_groups_zero(impl):
    lhs = jnp.ones((12, 3))
    grad = jnp.ones((12, 4))
    sizes = jnp.array([0, 5, 0, 7, 0], jnp.int32)
    out = tgmm(lhs, grad, sizes, num_groups=5, impl=impl)
    np.testing.assert_array_equal(out[jnp.array([0, 2, 4])], 0)
    np.testing.assert_allclose(out[1], 5.0)
    np.testing.assert_allclose(out[3], 7.0)


def test_group_offset_may_be_traced():
    # Under shard_map the offset is axis_index * G: a traced scalar.
    lhs = jax.random.normal(jax.random.PRNGKey(0), (30, 8))
    rhs = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 4))
    sizes = jnp.array([10, 5, 6, 9], jnp.int32)
    run = jax.jit(lambda offset: gmm(lhs, rhs, sizes, impl="cpu", group_offset=offset))
    want = jax.lax.ragged_dot(lhs, jnp.zeros((4, 8, 4)).at[2:].set(rhs), sizes)
    np.testing.assert_allclose(run(jnp.int32(2)), want, atol=1e-5)


def test_auto_picks_the_backend_path():
    assert resolve_impl("auto") == {"cpu": "cpu", "gpu": "pallas_gpu",
                                    "tpu": "pallas_tpu"}[jax.default_backend()]


def test_bad_arguments_name_the_problem():
    lhs, rhs, sizes = jnp.ones((4, 3)), jnp.ones((2, 3, 5)), jnp.array([2, 2])
    with pytest.raises(ValueError, match="impl = 'cuda'"):
        gmm(lhs, rhs, sizes, impl="cuda")
    with pytest.raises(ValueError, match="k = 3 but rhs has k = 4"):
        gmm(lhs, jnp.ones((2, 4, 5)), sizes)
    with pytest.raises(ValueError, match="power of two"):
        Tiling(block_m=48)


def test_bad_concrete_group_sizes_are_refused_before_any_kernel_runs():
    lhs, rhs = jnp.ones((4, 3)), jnp.ones((2, 3, 5))
    with pytest.raises(ValueError, match="sum to 5 rows, more than the 4 rows of lhs"):
        gmm(lhs, rhs, jnp.array([2, 3]), impl="cpu")
    with pytest.raises(ValueError, match="group 1 has -1 rows"):
        gmm(lhs, rhs, np.array([3, -1], np.int32), impl="xla")
    with pytest.raises(ValueError, match="must be integers, got float32"):
        gmm(lhs, rhs, jnp.array([2.0, 2.0]), impl="cpu")
    with pytest.raises(ValueError, match="group_offset 1 with 2 local groups reaches past the 2"):
        gmm(lhs, rhs, jnp.array([2, 2]), impl="xla", group_offset=1)
    # Traced sizes cannot be inspected; a valid batch still runs under jit.
    out = jax.jit(lambda sizes: gmm(lhs, rhs, sizes, impl="cpu"))(jnp.array([1, 2]))
    np.testing.assert_allclose(out, np.concatenate([np.full((3, 5), 3.0), np.zeros((1, 5))]))


def test_tgmm_refuses_what_gmm_refuses():
    lhs, grad = jnp.ones((4, 3)), jnp.ones((4, 5))
    with pytest.raises(ValueError, match="same rows; got \\(4, 3\\) and \\(3, 5\\)"):
        tgmm(lhs, jnp.ones((3, 5)), jnp.array([2, 2]), num_groups=2, impl="cpu")
    with pytest.raises(ValueError, match="sum to 5 rows, more than the 4 rows of lhs"):
        tgmm(lhs, grad, jnp.array([2, 3]), num_groups=2, impl="cpu")
    with pytest.raises(ValueError, match="group 0 has -2 rows"):
        tgmm(lhs, grad, jnp.array([-2, 3]), num_groups=2, impl="xla")
    with pytest.raises(ValueError, match="rhs has 3 groups, more than the 2"):
        tgmm(lhs, grad, jnp.array([2, 2]), num_groups=3, impl="cpu")
    with pytest.raises(ValueError, match="group_offset 1 with 2 local groups reaches past the 2"):
        tgmm(lhs, grad, jnp.array([2, 2]), num_groups=2, impl="cpu", group_offset=1)
    # Valid: each group's weight gradient is its rows' outer-product sum (2 rows of ones).
    out = tgmm(lhs, grad, jnp.array([2, 2]), num_groups=2, impl="cpu")
    np.testing.assert_allclose(out, np.full((2, 3, 5), 2.0))

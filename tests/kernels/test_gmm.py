"""gmm and tgmm ("cpu" and "xla" paths, the custom VJP, the interface) against ragged_dot.

The Pallas kernels have their own module (test_pallas.py): they run interpreted on CPU, slowly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from moejax.kernels import Tiling, gmm, resolve_impl, tgmm
from tests.kernels.reference import Problem, check_problem, problems

FAST = settings(max_examples=10, deadline=None, derandomize=True)
# Small chunks so a few dozen rows already use several chunk levels and straddle groups.
CPU_TILINGS = [Tiling(block_m=16, min_block_m=4), Tiling(block_m=8, min_block_m=2),
               Tiling(block_m=4, min_block_m=4)]


@FAST
@given(problems())
def test_cpu_matches_ragged_dot(problem):
    check_problem(problem, "cpu", CPU_TILINGS[problem.seed % len(CPU_TILINGS)])


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

"""Shared test helpers: random grouped-matmul problems and the ragged_dot reference.

The reference for a call that owns groups offset .. offset+G-1 is ``jax.lax.ragged_dot`` over
all E groups with the non-local experts' weights set to zero, computed in float32 from the same
(possibly bfloat16-rounded) inputs. Gradients are its VJP with respect to lhs and the local
weights. Tolerances: max |got - want| <= rtol * (1 + max |want|), rtol 2e-5 for float32 on CPU
(sums of <= 64 products in a different order) and 3e-2 for bfloat16 (outputs and gradients
rounded to 8 bits of mantissa, and the output gradient rounded to bfloat16 before the backward
matmuls), 5e-3 for float16 (11 bits). Natively on GPU and TPU, float32 matmuls run at the
backend's default precision (TF32 on GPU tensor cores, bfloat16 passes on TPU), so float32 gets
5e-3 there (3e-2 on TPU).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from moejax.kernels import Tiling, gmm

RTOL = {"float32": {"gpu": 5e-3, "tpu": 3e-2}.get(jax.default_backend(), 2e-5),
        "bfloat16": 3e-2, "float16": 5e-3}


@dataclasses.dataclass(frozen=True)
class Problem:
    m: int
    k: int
    n: int
    group_sizes: tuple[int, ...]  # all E groups
    num_local: int  # G
    offset: int | None  # None: no group_offset (G == E)
    dtype: str
    out_dtype: str | None  # preferred_element_type
    seed: int

    def arrays(self):
        rng = np.random.default_rng(self.seed)  # numpy: no compile per shape
        lhs = jnp.asarray(rng.standard_normal((self.m, self.k)), jnp.float32).astype(self.dtype)
        rhs = jnp.asarray(rng.standard_normal((self.num_local, self.k, self.n)),
                          jnp.float32).astype(self.dtype)
        cot = jnp.asarray(rng.standard_normal((self.m, self.n)), jnp.float32)
        return lhs, rhs, jnp.asarray(self.group_sizes, jnp.int32), cot


@st.composite
def problems(draw, max_m=64, max_dim=40, max_groups=6, dtypes=("float32", "bfloat16")):
    """Random problems: empty groups, all rows in one group, rows past the group-size sum,
    dimensions that are not multiples of any tile, group_offset slices, both dtypes."""
    num_groups = draw(st.integers(1, max_groups))
    m = draw(st.integers(1, max_m))
    total = draw(st.integers(0, m))  # rows past `total` belong to no group
    layout = draw(st.sampled_from(["random", "one_group"]))
    if layout == "one_group":
        sizes = [0] * num_groups
        sizes[draw(st.integers(0, num_groups - 1))] = total
    else:
        cuts = sorted(draw(st.lists(st.integers(0, total), min_size=num_groups - 1,
                                    max_size=num_groups - 1)))
        sizes = list(np.diff([0, *cuts, total]))
    if draw(st.booleans()):
        num_local = draw(st.integers(1, num_groups))
        offset = draw(st.integers(0, num_groups - num_local))
    else:
        num_local, offset = num_groups, None
    return Problem(m=m, k=draw(st.integers(1, max_dim)), n=draw(st.integers(1, max_dim)),
                   group_sizes=tuple(int(s) for s in sizes), num_local=num_local, offset=offset,
                   dtype=draw(st.sampled_from(dtypes)),
                   out_dtype=draw(st.sampled_from([None, "float32"])),
                   seed=draw(st.integers(0, 2 ** 16)))


def reference(lhs, rhs_local, group_sizes, offset, out_dtype):
    """ragged_dot over all groups, zero weights for non-local experts (float32 compute)."""
    num_groups = group_sizes.shape[0]
    rhs = jnp.zeros((num_groups, *rhs_local.shape[1:]), jnp.float32)
    rhs = jax.lax.dynamic_update_slice_in_dim(rhs, rhs_local.astype(jnp.float32), offset or 0, 0)
    return jax.lax.ragged_dot(lhs.astype(jnp.float32), rhs, group_sizes).astype(out_dtype)


def forward_and_grads(fn, lhs, rhs, cot):
    out, vjp = jax.vjp(fn, lhs, rhs)
    return (out, *vjp(cot.astype(out.dtype)))


def run_both(problem: Problem, impl: str, tiling: Tiling | None = None):
    """(got, want): each (out, d_lhs, d_rhs) for the problem, gmm vs the reference."""
    lhs, rhs, sizes, cot = problem.arrays()
    out_dtype = jnp.dtype(problem.out_dtype or problem.dtype)

    def fast(lhs, rhs):
        return gmm(lhs, rhs, sizes, impl=impl, tiling=tiling, group_offset=problem.offset,
                   preferred_element_type=problem.out_dtype)

    def slow(lhs, rhs):
        return reference(lhs, rhs, sizes, problem.offset, out_dtype)

    # One jit for both sides: compiling dominates the cost of these small problems.
    return jax.jit(lambda l, r, c: (forward_and_grads(fast, l, r, c),
                                    forward_and_grads(slow, l, r, c)))(lhs, rhs, cot)


def assert_close(got, want, dtype: str, what: str):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    scale = 1.0 + (np.abs(want).max() if want.size else 0.0)
    err = np.abs(got - want).max() if want.size else 0.0
    assert err <= RTOL[dtype] * scale, f"{what}: max error {err:.3g} > {RTOL[dtype]} * {scale:.3g}"


def check_problem(problem: Problem, impl: str, tiling: Tiling | None = None):
    got, want = run_both(problem, impl, tiling)
    for name, g, w in zip(("forward", "d_lhs", "d_rhs"), got, want):
        assert_close(g, w, problem.dtype, f"{impl} {name} {problem}")
    out_dtype = jnp.dtype(problem.out_dtype or problem.dtype)
    assert got[0].dtype == out_dtype and got[1].dtype == jnp.dtype(problem.dtype)
    assert got[2].dtype == jnp.dtype(problem.dtype)
    # Rows that no local group owns: exactly zero output and zero d_lhs.
    sizes = np.asarray(problem.group_sizes)
    offset = problem.offset or 0
    start, end = sizes[:offset].sum(), sizes[:offset + problem.num_local].sum()
    for array in got[:2]:
        array = np.asarray(array, np.float32)  # slicing in numpy: no per-shape compiles
        outside = np.concatenate([array[:start], array[end:]])
        assert not np.any(outside), f"{impl}: nonzero rows outside the local groups"

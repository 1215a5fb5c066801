"""benchmarks/rivals.py: other projects' grouped matmuls compute what ragged_dot computes.

A rival that multiplies the wrong rows would make gmm.py's comparison meaningless, so each is
checked against ``jax.lax.ragged_dot`` (forward and both gradients). Off a GPU, JAX's Hopper
kernels run in its Mosaic GPU interpreter (the forward and the input gradient; the shipped
weight-gradient kernel asks the device for its SM count, which a CPU has not); tokamax runs only
where it is installed (the GPU machine, with ``gpu_session.sh rivals``).
"""

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "rivals", os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "rivals.py"))
rivals = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(rivals)

ON_GPU = jax.default_backend() == "gpu"
SIZES = (100, 0, 60, 96)  # an empty group, boundaries inside row tiles, summing to M = 256


def inputs(k=128, n=128, dtype=jnp.bfloat16):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    m, groups = sum(SIZES), len(SIZES)
    x = jax.random.normal(keys[0], (m, k), dtype)
    w = (jax.random.normal(keys[1], (groups, k, n)) / k ** 0.5).astype(dtype)
    dy = jax.random.normal(keys[2], (m, n), dtype)
    return jnp.asarray(SIZES, jnp.int32), x, w, dy


def reference(x, w, sizes, dy):
    """ragged_dot in float32: output, d_x, d_w."""
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
    out, vjp = jax.vjp(lambda x, w: jax.lax.ragged_dot(x, w, sizes), f32(x), f32(w))
    return (out, *vjp(f32(dy)))


def close(got, want, what):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), rtol=2e-2,
                               atol=6e-2, err_msg=what)


@pytest.fixture
def mosaic_gpu_interpreted(monkeypatch):
    """Off a GPU, every plgpu.kernel built during the test runs in JAX's interpreter."""
    if ON_GPU:
        return
    from jax.experimental.pallas import mosaic_gpu as plgpu

    from moejax.kernels import mosaic_gpu_interpret
    if not mosaic_gpu_interpret.AVAILABLE:
        pytest.skip(f"JAX {jax.__version__} has no Mosaic GPU interpreter")
    monkeypatch.setattr(plgpu, "kernel", functools.partial(
        plgpu.kernel, interpret=mosaic_gpu_interpret.params()))


def test_jax_mgpu_agrees_with_ragged_dot(mosaic_gpu_interpreted):
    sizes, x, w, dy = inputs()
    fn = rivals.make("jax_mgpu:64,64,64,2,1", sizes)
    want_out, want_dx, want_dw = reference(x, w, sizes, dy)
    out, vjp = jax.vjp(fn, x, w)
    close(out, want_out, "forward")
    if ON_GPU:
        d_x, d_w = vjp(dy)
        close(d_w, want_dw, "weight gradient")
    else:  # the input gradient alone: the same kernel with rhs transposed
        d_x = rivals._jax_mgpu_forward(dy, w, sizes, (64, 64, 64, 2, 1), transpose_rhs=True)
    close(d_x, want_dx, "input gradient")
    assert not np.allclose(np.asarray(want_dx), 0)  # the check has something to compare


@pytest.mark.parametrize("name", ["maxtext", "tokamax_triton"])
def test_tokamax_agrees_with_ragged_dot(name):
    if not ON_GPU:
        pytest.skip("tokamax's Mosaic GPU and Triton kernels need a GPU")
    pytest.importorskip("tokamax")
    sizes, x, w, dy = inputs()
    want_out, want_dx, want_dw = reference(x, w, sizes, dy)
    out, vjp = jax.vjp(rivals.make(name, sizes), x, w)
    d_x, d_w = vjp(dy)
    for got, want, what in ((out, want_out, "forward"), (d_x, want_dx, "input gradient"),
                            (d_w, want_dw, "weight gradient")):
        close(got, want, what)


def test_specs_are_checked():
    assert rivals.parse("maxtext") == ("maxtext", None)
    assert rivals.parse("jax_mgpu:128,64,256,4,2") == ("jax_mgpu", (128, 64, 256, 4, 2))
    assert rivals.label("jax_mgpu:128,64,256,4,2") == "jax_mgpu[128,64,256,4,2]"
    with pytest.raises(rivals.RivalError, match="unknown rival 'megablocks'"):
        rivals.parse("megablocks")
    with pytest.raises(rivals.RivalError, match="five positive integers"):
        rivals.parse("jax_mgpu:128,64")
    with pytest.raises(rivals.RivalError, match="only jax_mgpu takes tiles"):
        rivals.parse("maxtext:128,64,128,4,1")


def test_a_missing_tokamax_is_named(monkeypatch):
    real = importlib.import_module

    def no_tokamax(name, *args):
        if name == "tokamax":
            raise ImportError("No module named 'tokamax'")
        return real(name, *args)

    monkeypatch.setattr(rivals.importlib, "import_module", no_tokamax)
    with pytest.raises(rivals.RivalError, match=r"rival 'maxtext' needs tokamax.*\.whl/rivals"):
        rivals.make("maxtext", jnp.ones((2,), jnp.int32))

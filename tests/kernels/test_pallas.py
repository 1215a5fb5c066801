"""The Pallas kernels ("pallas_tpu", "pallas_gpu", and "cudnn", whose weight gradient is the Triton
kernel) against ragged_dot, forward and backward.

Off their own backend they run in Pallas's interpreters (TPU: ``pltpu.InterpretParams``, which
fills uninitialized memory with NaN, so a block the kernel forgets to write fails loudly; GPU:
the generic interpreter), slowly, so shapes are small and examples few. On a GPU or TPU machine
the same tests run the compiled kernels. A probe kernel checks first that this JAX can interpret
the Pallas features we use; if it cannot, the tests skip with the probe's error and the other
checks still run. The lowering tests compile nothing: ``jax.export`` lowers the kernels for
TPU (Mosaic) and CUDA (Triton) from this CPU-only machine.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from moejax.kernels import Tiling
from tests.kernels.reference import Problem, check_problem, problems
from tests.lowering import export_for

TILINGS = {"pallas_tpu": Tiling(block_m=16, block_k=128, block_n=128, min_block_m=1),
           "pallas_gpu": Tiling(block_m=16, block_k=16, block_n=16, min_block_m=1)}
TILINGS["cudnn"] = TILINGS["pallas_gpu"]


@functools.cache
def _probe_error(impl: str) -> str | None:
    """None if a tiny kernel with the features ``impl`` needs runs here, else why not. Only
    JAX's part runs under the ``except``: moejax's interpreter choice is made before it, so an
    error of ours fails the tests instead of turning every Pallas test into a skip."""
    from moejax.kernels import pallas_gpu, pallas_tpu
    interpret = (pallas_tpu if impl == "pallas_tpu" else pallas_gpu)._interpret()
    try:
        from jax.experimental import pallas as pl
        if impl == "pallas_tpu":
            from jax.experimental.pallas import tpu as pltpu

            def kernel(index_ref, x_ref, out_ref):
                out_ref[...] = x_ref[...] + index_ref[0]

            call = pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
                                  grid_spec=pltpu.PrefetchScalarGridSpec(
                                      num_scalar_prefetch=1, grid=(1,),
                                      in_specs=[pl.BlockSpec((8, 128), lambda i, idx: (idx[0], 0))],
                                      out_specs=pl.BlockSpec((8, 128), lambda i, idx: (0, 0))),
                                  interpret=interpret)
            result = call(jnp.zeros((1,), jnp.int32), jnp.ones((8, 128)))
        else:
            from jax.experimental.pallas import triton as plgpu

            def kernel(x_ref, out_ref):
                rows = pl.ds(pl.program_id(0) * 16, 16)
                plgpu.store(out_ref.at[rows, :], x_ref[rows, :] + 1.0,
                            mask=jnp.ones((16, 16), bool))

            call = pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((16, 16), jnp.float32),
                                  grid=(1,), interpret=interpret,
                                  # JAX's own class: the probe tests JAX, and an error of
                                  # ours must fail the tests, not skip them
                                  compiler_params=plgpu.CompilerParams(num_warps=4,
                                                                       num_stages=1))
            result = call(jnp.ones((16, 16)))
        np.testing.assert_allclose(result, 1.0 if impl == "pallas_tpu" else 2.0)
    except Exception as error:  # noqa: BLE001 - any failure means: cannot run Pallas here
        return f"{impl}: this JAX ({jax.__version__}) cannot run the probe kernel: {error!r}"[:500]
    return None


def _require(impl):
    reason = _probe_error(impl)
    if reason:
        pytest.skip(reason)


IMPLS = ["pallas_tpu", "pallas_gpu", "cudnn"]  # cudnn: ragged_dot, then the Triton tgmm
CASES = [  # m, k, n not multiples of the tiles; empty groups; rows past the sum; offsets
    Problem(m=50, k=20, n=24, group_sizes=(12, 0, 20, 9), num_local=4, offset=None,
            dtype="float32", out_dtype=None, seed=0),
    Problem(m=40, k=9, n=17, group_sizes=(0, 15, 3, 0, 17), num_local=3, offset=1,
            dtype="bfloat16", out_dtype="float32", seed=1),
    Problem(m=33, k=5, n=6, group_sizes=(0, 33, 0), num_local=3, offset=None,
            dtype="float32", out_dtype=None, seed=2),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_ragged_dot(impl, case):
    _require(impl)
    check_problem(CASES[case], impl, TILINGS[impl])


@pytest.mark.parametrize("impl", IMPLS)
def test_random_problems(impl):
    _require(impl)

    @settings(max_examples=4, deadline=None, derandomize=True)
    @given(problems(max_m=40, max_dim=20, max_groups=4))
    def check(problem):
        check_problem(problem, impl, TILINGS[impl])

    check()


def test_gpu_weight_gradient_with_its_own_tiles():
    """The tuned GPU default gives tgmm other tiles than gmm; both must still be right."""
    _require("pallas_gpu")
    tiling = Tiling(block_m=16, block_k=32, block_n=16, min_block_m=1,
                    tgmm=Tiling(block_m=32, block_k=16, block_n=32, min_block_m=1))
    check_problem(CASES[0], "pallas_gpu", tiling)


@pytest.mark.parametrize("impl, platform", [("pallas_tpu", "tpu"), ("pallas_gpu", "cuda")])
def test_kernels_lower_for_their_hardware(impl, platform, monkeypatch):
    import importlib
    module = importlib.import_module(f"moejax.kernels.{impl}")
    monkeypatch.setattr(module, "_interpret", lambda: False)  # the real kernel, not the interpreter
    lhs = jnp.zeros((256, 256), jnp.bfloat16)
    rhs = jnp.zeros((4, 256, 256), jnp.bfloat16)
    sizes = jnp.array([64, 0, 100, 50], jnp.int32)
    tiling = Tiling(block_m=128, block_k=128, block_n=128)
    offset = jnp.int32(0)
    for transpose_rhs in (False, True):
        export_for(lambda x, w, s: module.gmm(x, w, s, offset, tiling=tiling, out_dtype=jnp.float32,
                                           transpose_rhs=transpose_rhs), platform, lhs, rhs, sizes)
    exported = export_for(lambda x, dy, s: module.tgmm(x, dy, s, offset, num_groups=4,
                                                    tiling=tiling, out_dtype=jnp.float32),
                       platform, lhs, lhs, sizes)
    assert exported.out_avals[0].shape == (4, 256, 256)


@pytest.mark.parametrize("backend, platform", [("tpu", "tpu"), ("gpu", "cuda")])
def test_every_tuning_candidate_lowers_for_its_hardware(backend, platform, monkeypatch):
    """The tiles gmm_impl='tuned' would time on a TPU or GPU (autotune.candidates) lower for
    that hardware (forward, input gradient, weight gradient) at a design-grid shape: d_model
    1,024, 8 experts of width 1,024, bfloat16. Lowering checks shapes, block specs and the
    kernel body; shared-memory and VMEM limits show only when compiled on the chip (the tuner
    then records that candidate's error and skips it)."""
    import importlib

    from moejax.kernels import autotune

    problem = autotune.Problem(rows=4096, k=1024, n=2048, local_groups=8, num_groups=8,
                               lhs_dtype="bfloat16", rhs_dtype="bfloat16", out_dtype="bfloat16")
    lhs = jnp.zeros((problem.rows, problem.k), jnp.bfloat16)
    rhs = jnp.zeros((problem.local_groups, problem.k, problem.n), jnp.bfloat16)
    grad = jnp.zeros((problem.rows, problem.n), jnp.bfloat16)
    sizes = jnp.full((problem.num_groups,), problem.rows // problem.num_groups, jnp.int32)
    offset = jnp.int32(0)
    lowered = []
    # No compute capability: no mosaic_gpu, whose own export test covers it.
    for impl, tiling in autotune.candidates(problem, backend):
        if impl == "xla":
            continue
        module = importlib.import_module(f"moejax.kernels.{impl}")
        # "cudnn": ragged_dot, then the Triton weight gradient, whose module decides.
        kernel = importlib.import_module("moejax.kernels.pallas_gpu") if impl == "cudnn" else module
        monkeypatch.setattr(kernel, "_interpret", lambda: False)
        for transpose_rhs, operand in ((False, lhs), (True, grad)):
            exported = export_for(lambda x, w, s: module.gmm(
                x, w, s, offset, tiling=tiling, out_dtype=jnp.bfloat16,
                transpose_rhs=transpose_rhs), platform, operand, rhs, sizes)
            assert exported.out_avals[0].shape == (
                problem.rows, problem.k if transpose_rhs else problem.n)
        exported = export_for(lambda x, dy, s: module.tgmm(
            x, dy, s, offset, num_groups=problem.local_groups, tiling=tiling,
            out_dtype=jnp.bfloat16), platform, lhs, grad, sizes)
        assert exported.out_avals[0].shape == rhs.shape
        lowered.append(tiling)
    # the default and two variants on either backend; on a GPU the weight gradient on 8 warps
    # and "cudnn" besides
    assert len(lowered) == {"tpu": 3, "gpu": 5}[backend]


def test_cudnn_hands_xla_a_ragged_dot_on_gpu(monkeypatch):
    """cuDNN can only take the forward and input gradient if JAX lowers them for CUDA as a
    ragged_dot op (not, as on CPU, a masked dense dot); the weight gradient is Triton's."""
    from moejax.kernels import cudnn, pallas_gpu

    monkeypatch.setattr(pallas_gpu, "_interpret", lambda: False)
    lhs, rhs = jnp.zeros((512, 256), jnp.bfloat16), jnp.zeros((4, 256, 128), jnp.bfloat16)
    sizes, offset = jnp.full((4,), 128, jnp.int32), jnp.int32(0)
    for transpose_rhs, operand, w in ((False, lhs, rhs), (True, jnp.zeros((512, 128), jnp.bfloat16),
                                                          rhs)):
        text = export_for(lambda x, w, s: cudnn.gmm(x, w, s, offset, out_dtype=jnp.bfloat16,
                                                 transpose_rhs=transpose_rhs),
                       "cuda", operand, w, sizes).mlir_module()
        assert '"chlo.ragged_dot"' in text and "__gpu$xla.gpu.triton" not in text
    text = export_for(lambda x, dy, s: cudnn.tgmm(x, dy, s, offset, num_groups=4,
                                               tiling=TILINGS["pallas_gpu"],
                                               out_dtype=jnp.bfloat16),
                   "cuda", lhs, jnp.zeros((512, 128), jnp.bfloat16), sizes).mlir_module()
    assert '"chlo.ragged_dot"' not in text and "__gpu$xla.gpu.triton" in text


def test_lowering_summary_reads_cudnn_fusions_and_custom_calls():
    from moejax.kernels import cudnn

    hlo = ('%f = f32[8,8] fusion(%a, %b), kind=kCustom, calls=%c, backend_config={"fusion_'
           'backend_config":{"kind":"__cudnn$fusion","cudnn_fusion_config":{"plan_id":"3"}}}\n'
           '%g = f32[8,8] custom-call(%a), custom_call_target="__cublas$gemm"')
    summary = cudnn.summarize("chlo.ragged_dot", hlo)
    assert summary == {"ragged_dot_op": True, "custom_calls": ["__cublas$gemm"],
                       "fusion_kinds": ["__cudnn$fusion"], "cudnn": True}
    dense = cudnn.summarize("stablehlo.dot_general", '%d = f32[8,8] dot(%a, %b)')
    assert not dense["cudnn"] and not dense["ragged_dot_op"]
    here = cudnn.xla_lowering(jnp.float32)  # this CPU: JAX expands ragged_dot itself
    assert here["backend"] == "cpu" and not here["ragged_dot_op"] and not here["cudnn"]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_the_triton_modules_jax_builds_are_valid(monkeypatch, dtype):
    """The Triton IR of each kernel must pass MLIR's verifier: an invalid module lowers and
    exports without complaint and fails only when a GPU compiles it. JAX 0.10.2 built one from
    ``jnp.where(cond, 16, 0)`` (Python ints): a select of two boolean ``false``s as a loop
    bound, so the forward kernel could not have compiled there."""
    from moejax.kernels import pallas_gpu

    try:
        from jax._src.pallas.triton import pallas_call_registration as registration
        lower_module = registration.lowering.lower_jaxpr_to_triton_module
    except (ImportError, AttributeError) as error:  # a JAX that moved its internals
        pytest.skip(f"JAX {jax.__version__} has no Triton module to inspect: {error!r}")
    modules = []

    def keep(*args, **kwargs):
        result = lower_module(*args, **kwargs)
        modules.append(result.module)
        return result

    monkeypatch.setattr(registration.lowering, "lower_jaxpr_to_triton_module", keep)
    monkeypatch.setattr(pallas_gpu, "_interpret", lambda: False)
    tiling = Tiling(block_m=64, block_k=32, block_n=64, min_block_m=1)
    lhs, grad = jnp.zeros((200, 96), dtype), jnp.zeros((200, 80), dtype)
    rhs, sizes, offset = jnp.zeros((3, 96, 80), dtype), jnp.array([50, 0, 120], jnp.int32), \
        jnp.int32(0)
    export_for(lambda x, w, s: pallas_gpu.gmm(x, w, s, offset, tiling=tiling, out_dtype=dtype),
               "cuda", lhs, rhs, sizes)
    export_for(lambda dy, w, s: pallas_gpu.gmm(dy, w, s, offset, tiling=tiling, out_dtype=dtype,
                                               transpose_rhs=True), "cuda", grad, rhs, sizes)
    export_for(lambda x, dy, s: pallas_gpu.tgmm(x, dy, s, offset, num_groups=3, tiling=tiling,
                                                out_dtype=dtype), "cuda", lhs, grad, sizes)
    assert len(modules) == 3
    for name, module in zip(("gmm", "gmm with rhs transposed", "tgmm"), modules):
        try:
            valid = module.operation.verify()
        except Exception as error:  # noqa: BLE001 - MLIR reports what is wrong by raising
            valid = str(error).splitlines()[0]
        assert valid is True, f"{name}: JAX built an invalid Triton module: {valid}"

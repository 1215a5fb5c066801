"""Which kernels a device can run: "auto" falls back on GPUs older than Ampere, explicit requests
for a kernel the device cannot compile fail at trace time naming the device.

The GPUs are faked (``platform.current`` patched); the arrays still live on this CPU, so a call
that passes the check runs for real and is compared with ``jax.lax.ragged_dot``.
"""

from __future__ import annotations

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.kernels import autotune, gmm, platform, record, resolve_impl
from moejax.kernels.tiling import Tiling

T4 = platform.Device("gpu", "Tesla T4", (7, 5))
V100 = platform.Device("gpu", "Tesla V100-SXM2-16GB", (7, 0))
A100 = platform.Device("gpu", "NVIDIA A100-SXM4-40GB", (8, 0))
H100 = platform.Device("gpu", "NVIDIA H100 80GB HBM3", (9, 0))
B200 = platform.Device("gpu", "NVIDIA B200", (10, 0))
MI300 = platform.Device("gpu", "AMD Instinct MI300X", None)


@pytest.mark.parametrize("reported, expected", [
    ("7.5", (7, 5)), ("8.6", (8, 6)), ("9.0", (9, 0)), ("10.0", (10, 0)), ("12", (12, 0)),
    ("", None), (None, None), ("gfx942", None), ("9.0a", None)])
def test_compute_capability_is_read_from_the_device(reported, expected):
    device = types.SimpleNamespace(compute_capability=reported)
    assert platform.cuda_capability(device) == expected
    assert platform.cuda_capability(types.SimpleNamespace()) is None  # a CPU or TPU device


@pytest.mark.parametrize("device, auto", [
    (T4, "xla"), (V100, "xla"), (A100, "pallas_gpu"), (H100, "pallas_gpu"), (B200, "pallas_gpu"),
    (MI300, "pallas_gpu"), (platform.Device("cpu", "cpu", None), "cpu"),
    (platform.Device("tpu", "TPU v5 lite", None), "pallas_tpu"),
    (platform.Device("METAL", "Apple M2", None), "xla")])
def test_auto_is_the_backend_kernel_where_it_compiles(monkeypatch, device, auto):
    assert platform.auto_impl(device.backend, device.capability) == auto
    monkeypatch.setattr(platform, "current", lambda: device)
    assert resolve_impl("auto") == auto


@pytest.mark.parametrize("impl, device, reason", [
    ("pallas_gpu", T4, r"Ampere or newer GPU \(compute capability >= 8.0\), this one has 7.5"),
    ("cudnn", V100, r"its weight gradient uses a Triton kernel.*this one has 7.0"),
    ("mosaic_gpu", A100, r"Hopper's wgmma.*this GPU has 8.0"),
    ("mosaic_gpu", B200, r"Hopper's wgmma.*this GPU has 10.0"),
    ("mosaic_gpu", MI300, r"NVIDIA Hopper GPUs.*no CUDA compute capability")])
def test_a_kernel_the_gpu_cannot_compile_is_refused_before_tracing_it(monkeypatch, impl, device,
                                                                      reason):
    monkeypatch.setattr(platform, "current", lambda: device)
    lhs, rhs, sizes = jnp.ones((8, 16), jnp.bfloat16), jnp.ones((2, 16, 8), jnp.bfloat16), \
        jnp.array([3, 5], jnp.int32)
    fallback = platform.auto_impl(device.backend, device.capability)
    expected = (rf"gmm impl = '{impl}' cannot run on this {device.kind}: .*{reason}.*"
                rf"'auto', which picks '{fallback}'")
    with pytest.raises(ValueError, match=expected):
        jax.jit(lambda x: gmm(x, rhs, sizes, impl=impl)).lower(lhs)


@pytest.mark.parametrize("impl, device", [
    ("pallas_gpu", A100), ("cudnn", A100), ("pallas_gpu", MI300), ("mosaic_gpu", H100),
    ("pallas_gpu", B200), ("xla", T4), ("cpu", T4)])
def test_what_a_gpu_can_compile_is_not_refused(impl, device):
    assert platform.unsupported(impl, device.backend, device.capability) is None


def test_off_gpu_nothing_is_refused():
    # Elsewhere the Pallas kernels run in their interpreters: the test suite's own case.
    for impl in ("pallas_gpu", "cudnn", "mosaic_gpu", "pallas_tpu"):
        for backend in ("cpu", "tpu"):
            assert platform.unsupported(impl, backend, None) is None


def test_on_a_t4_auto_runs_ragged_dot_and_gets_its_gradients(monkeypatch):
    monkeypatch.setattr(platform, "current", lambda: T4)
    key = jax.random.split(jax.random.PRNGKey(3), 3)
    lhs = jax.random.normal(key[0], (24, 16))
    rhs = jax.random.normal(key[1], (3, 16, 8))
    sizes = jnp.array([10, 0, 9], jnp.int32)  # an empty group; 5 rows past the sum
    cotangent = jax.random.normal(key[2], (24, 8))

    def loss(fn):
        return lambda x, w: jnp.sum(fn(x, w) * cotangent)

    ours = loss(lambda x, w: gmm(x, w, sizes, impl="auto"))
    reference = loss(lambda x, w: jax.lax.ragged_dot(x, w, sizes))
    with record.recording() as chosen:
        np.testing.assert_allclose(gmm(lhs, rhs, sizes), jax.lax.ragged_dot(lhs, rhs, sizes),
                                   atol=1e-5)
    assert [(entry["requested"], entry["impl"]) for entry in chosen] == [("auto", "xla")]
    for got, want in zip(jax.grad(ours, (0, 1))(lhs, rhs), jax.grad(reference, (0, 1))(lhs, rhs)):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_tuning_on_an_old_gpu_times_only_what_it_can_compile(monkeypatch, tmp_path):
    monkeypatch.setattr(platform, "current", lambda: T4)
    timed = []

    def measure(impl, tiling, problem):
        timed.append(impl)
        return 1.0

    problem = autotune.Problem(rows=256, k=64, n=64, local_groups=4, num_groups=4,
                               lhs_dtype="bfloat16", rhs_dtype="bfloat16", out_dtype="bfloat16")
    settings = autotune.TuningSettings(table_path=str(tmp_path / "table.json"), reps=1)
    impl, _ = autotune.tuned_choice(problem, settings, measure)
    assert impl == "xla" and timed == ["xla"]


A10G = platform.Device("gpu", "NVIDIA A10G", (8, 6))
L4 = platform.Device("gpu", "NVIDIA L4", (8, 9))


def _stages(monkeypatch, device, tiling, itemsize: int, weight_gradient: bool = False) -> tuple:
    """(pipeline stages, bytes per stage) pallas_gpu asks Triton for on this device."""
    from moejax.kernels import pallas_gpu

    monkeypatch.setattr(platform, "current", lambda: device)
    tiles = tiling.tgmm if weight_gradient else tiling
    tm, tk, tn = tiles.block_m, tiles.block_k, tiles.block_n
    stage_bytes = (tm * tk + (tm * tn if weight_gradient else tk * tn)) * itemsize
    params = pallas_gpu._compiler_params(tiles, stage_bytes, "block_m, block_k, block_n")
    return params.num_stages, stage_bytes


@pytest.mark.parametrize("device", [A10G, L4, A100, H100, B200,
                                    platform.Device("gpu", "RTX 5090", (12, 0)),
                                    platform.Device("gpu", "a future GPU", (13, 0))])
@pytest.mark.parametrize("itemsize", [2, 4])
@pytest.mark.parametrize("weight_gradient", [False, True])
def test_the_default_triton_pipeline_fits_the_gpus_shared_memory(monkeypatch, device, itemsize,
                                                                 weight_gradient):
    from moejax.kernels.tiling import default_tiling

    stages, stage_bytes = _stages(monkeypatch, device, default_tiling("pallas_gpu"), itemsize,
                                  weight_gradient)
    limit_kib = platform.SHARED_MEMORY_PER_BLOCK_KIB.get(device.capability, 99)
    buffers = platform.pipeline_buffers(stages, device.capability)
    assert 1 <= stages and buffers * stage_bytes <= (limit_kib - 3) * 1024


def test_stages_per_gpu(monkeypatch):
    from moejax.kernels.tiling import Tiling, default_tiling

    tiling = default_tiling("pallas_gpu")
    gpus = (H100, A100, A10G, L4)
    # The bf16 forward keeps its 3 stages everywhere: 144 KiB on Hopper, 96 on Ampere, where a
    # stage fewer is buffered.
    assert [_stages(monkeypatch, gpu, tiling, 2)[0] for gpu in gpus] == [3, 3, 3, 3]
    # float32 (96 KiB a stage): one on an H100 (the tested 160 KiB cap), two on Ampere (96 KiB)
    assert [_stages(monkeypatch, gpu, tiling, 4)[0] for gpu in gpus] == [1, 2, 2, 2]
    # A deeper pipeline set by hand, 5 stages of 32 KiB: a fixed 160 KiB budget gave an A10G
    # all 5, 4 x 32 = 128 KiB as Triton compiles it for 8.6, past its 99. Now 4 (96 KiB).
    deep = Tiling(block_m=128, block_k=64, block_n=128, min_block_m=1, num_stages=5)
    assert [_stages(monkeypatch, gpu, deep, 2)[0] for gpu in gpus] == [5, 5, 4, 4]
    # off a GPU (interpreted, or exported for an abstract H100) the tuned budget applies
    assert _stages(monkeypatch, platform.Device("cpu", "cpu", None), tiling, 2)[0] == 3


COMPILED = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "results",
                        "triton-compile-2026-11-23", "compile.jsonl")
DEFAULT_TILES = "pallas_gpu[128,64,256,8,3/64,128,128,4,3]"  # the gin defaults, spelled out


def test_the_stages_picked_fit_each_gpu_as_triton_compiled_them(monkeypatch):
    """Against an independent record: the shared memory Triton 3.9 compiled our kernels into,
    per GPU and stage count (benchmarks/triton_compile.py, default tiles, bf16 and f32).
    For each kernel and GPU the stage count picked now must be one whose compiled kernel fits
    the GPU's block limit, and the rule's estimate must not undercount a kernel it picks."""
    from moejax.kernels.tiling import default_tiling

    with open(COMPILED) as f:
        record = [line for line in map(json.loads, f) if line["tiling"] == DEFAULT_TILES]
    compiled = {(r["kernel"], r["dtype"], r["arch"], r["num_stages"]): r for r in record}
    checked = 0
    for kernel, dtype, arch in sorted({key[:3] for key in compiled}):
        capability = (arch // 10, arch % 10)
        gpu = platform.Device("gpu", f"sm_{arch}", capability)
        stages, stage_bytes = _stages(monkeypatch, gpu, default_tiling("pallas_gpu"),
                                      jnp.dtype(dtype).itemsize, kernel == "tgmm")
        line = compiled[(kernel, dtype, arch, stages)]
        assert line["stage_bytes"] == stage_bytes
        assert line["shared_bytes"] <= platform.shared_memory_per_block(capability), line
        if capability < (9, 0) or stages > 1:  # Hopper's 1-stage f32 epilogue is the exception
            assert line["shared_bytes"] <= platform.pipeline_buffers(stages, capability) \
                * stage_bytes, line
        checked += 1
    assert checked == 16  # 2 kernels x 2 dtypes x 4 GPUs


def test_tiles_too_big_for_one_stage_name_their_knobs(monkeypatch):
    from moejax.kernels.tiling import Tiling

    huge = Tiling(block_m=256, block_k=128, block_n=256, min_block_m=1, num_stages=3)
    with pytest.raises(ValueError, match=r"block_m, block_k, block_n = 256, 128, 256 need 256 "
                                         r"KiB .* this NVIDIA L4 allows 99 KiB per block"):
        _stages(monkeypatch, L4, huge, 4)
    assert _stages(monkeypatch, H100, huge, 2)[0] == 1  # 128 KiB: one stage on an H100


MIB = 1 << 20


@pytest.mark.parametrize("need_mib, kind, expected_mib", [
    (4, "TPU v5 lite", None),  # 4 + 4 of room fits the 16 MiB default scope
    (12, "TPU v5 lite", 18),  # 12 + 6 does not
    (20, "TPU v5 lite", 30),  # half again on top
    (20, "TPU v6 lite", None),  # v6e's default scope is 32 MiB
    (40, "TPU v5", 60),
    (50, "TPU v5", 64),  # at most the v5p core's 64 MiB
    (100, "TPU (lowering target)", None),  # generation unknown: the compiler decides
    (100, "cpu", None),
])
def test_the_tpu_vmem_limit_covers_the_blocks_with_room_up_to_the_core(need_mib, kind,
                                                                        expected_mib):
    limit = platform.tpu_vmem_limit(need_mib * MIB, kind)
    assert limit == (None if expected_mib is None else expected_mib * MIB)


def test_tiles_past_a_cores_whole_vmem_fail_before_compiling_naming_the_tiles():
    lhs = jax.ShapeDtypeStruct((4096, 1024), jnp.float32)
    rhs = jax.ShapeDtypeStruct((4, 1024, 1024), jnp.float32)
    sizes = jax.ShapeDtypeStruct((4,), jnp.int32)
    big = Tiling(block_m=1024, block_k=1024, block_n=1024, min_block_m=1)
    # blocks: 2 x (4 + 4 + 4) MiB + a 4 MiB accumulator = 28 MiB; a v4 core has 16, a v5p 64
    with platform.targeting(platform.Device("tpu", "TPU v4", None)):
        with pytest.raises(ValueError, match=r"1024x1024 float32.*28\.0 MiB.*TPU v4 core has "
                                             r"16 MiB.*pallas_tpu_tiling"):
            jax.eval_shape(lambda x, w, s: gmm(x, w, s, impl="pallas_tpu", tiling=big),
                           lhs, rhs, sizes)
    with platform.targeting(platform.Device("tpu", "TPU v5", None)):
        out = jax.eval_shape(lambda x, w, s: gmm(x, w, s, impl="pallas_tpu", tiling=big),
                             lhs, rhs, sizes)
    assert out.shape == (4096, 1024)


L4 = platform.Device("gpu", "NVIDIA L4", (8, 9))


@pytest.mark.parametrize("device, kind", [(L4, "NVIDIA L4"), (H100, "NVIDIA H100"),
                                          (A100, "NVIDIA A100"), (B200, "NVIDIA B200")])
def test_a_triton_kernel_traced_for_a_gpu_from_here_is_told_its_architecture(device, kind):
    """JAX >= 0.11's Triton lowering reads the GPU from the abstract mesh in force when the
    kernel was traced: off a GPU, naming_the_gpu names one of the target's compute capability
    by a name Triton knows, in a mesh without axes (so no operand's mesh is checked against
    it); it changes nothing after."""
    before = jax.sharding.get_abstract_mesh()
    with platform.naming_the_gpu(device):
        mesh = jax.sharding.get_abstract_mesh()
        assert mesh.empty and mesh.abstract_device.platform == "cuda"
        assert mesh.abstract_device.device_kind == kind
    assert jax.sharding.get_abstract_mesh() == before


def test_naming_the_gpu_leaves_other_targets_and_a_mesh_naming_a_gpu_alone():
    before = jax.sharding.get_abstract_mesh()
    here = platform.device_of(jax.devices()[0])  # this CPU
    for device in (platform.Device("tpu", "TPU v5 lite", None), here):
        with platform.naming_the_gpu(device):
            assert jax.sharding.get_abstract_mesh() == before
    h200 = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="cuda")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh(
            (1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), abstract_device=h200)):
        with platform.naming_the_gpu(L4):  # on a GPU (or compile-only ones): theirs stands
            assert jax.sharding.get_abstract_mesh().abstract_device.device_kind == "NVIDIA H200"

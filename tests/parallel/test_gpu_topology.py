"""Compile-only NVIDIA GPUs (JAX's CUDA plugin): XLA:GPU and jaxlib's Triton compile the kernels
and the training step here, no GPU or CUDA libraries.

Independent checks: the compiler's own refusal of a kernel whose shared memory passes the GPU's
per-block limit (and its acceptance of the same kernel on a GPU that allows more), the
requested bytes it names against the tiles' own size, the parameters' bytes among the compiled
step's arguments (12 per parameter, from the accounting module), and the exchanges an
expert-parallel mesh must hold. Without the plugin (not Linux x86_64) those are skipped, saying
why; names, the target description and the missing-plugin message are checked everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from moejax.cli import main
from moejax.errors import ConfigError
from moejax.kernels import platform
from moejax.kernels.tiling import default_tiling
from moejax.parallel import gpu_topology, topology
from tests.lowering import check_compiled_summary, expected_moe_calls

needs_plugin = pytest.mark.skipif(
    not os.path.isfile(os.path.join(gpu_topology.plugin_dir(), "jax_plugins", "xla_cuda12",
                                    "__init__.py")),
    reason="JAX's CUDA plugin not installed (launch/setup.sh dev installs it on Linux x86_64)")
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
SMOKE = f"--gin_file={os.path.join(CONFIGS, 'smoke.gin')}"


@pytest.mark.parametrize("name, gpu, hosts, per_host", [
    ("h100", "h100", 1, 1), (" H100:8 ", "h100", 1, 8), ("a100-80gb:2x8", "a100-80gb", 2, 8),
    ("l4:4", "l4", 1, 4), ("h200", "h200", 1, 1)])
def test_gpu_names_parse(name, gpu, hosts, per_host):
    assert gpu_topology.is_gpu_name(name)
    assert gpu_topology.parse_name(name) == (gpu_topology.GPUS[gpu], hosts, per_host)


@pytest.mark.parametrize("name", ["h100:0", "h100:0x8", "h100:8x", "x100", "h100:a"])
def test_a_malformed_gpu_name_is_refused_with_the_form(name):
    with pytest.raises(ConfigError, match="<gpu>|at least one GPU"):
        gpu_topology.parse_name(name)


def test_tpu_and_gpu_names_go_their_own_ways():
    assert not gpu_topology.is_gpu_name("v5e:4x4")
    with pytest.raises(ConfigError, match="h100, h100:8"):
        topology.parse_name("b300")  # neither: the error lists both forms


def test_the_gpu_table_agrees_with_the_kernels_shared_memory_table():
    """pallas_gpu fits its pipeline to platform's per-capability limit; the compile-only GPU
    must allow the same, or the offline compile checks another GPU than the kernel planned."""
    for spec in gpu_topology.GPUS.values():
        assert (platform.shared_memory_per_block(spec.capability)
                == spec.shared_per_block_kib * 1024), spec.kind


def test_the_target_description_carries_the_gpus_figures():
    text = gpu_topology.target_config(gpu_topology.GPUS["l4"])
    assert "cuda_compute_capability { major: 8 minor: 9 }" in text
    assert f"device_memory_size: {23034 << 20}" in text
    assert "shared_memory_per_block_optin: 101376" in text  # 99 KiB
    assert 'device_description_str: "NVIDIA L4"' in text


def test_usable_memory_follows_the_allocators_fraction(monkeypatch):
    for key in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                "XLA_PYTHON_CLIENT_ALLOCATOR"):
        monkeypatch.delenv(key, raising=False)
    total = 81559 << 20
    assert gpu_topology.usable_bytes("NVIDIA H100 80GB HBM3") == int(total * 0.75)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", ".9")
    assert gpu_topology.usable_bytes("NVIDIA H100 80GB HBM3") == int(total * 0.9)
    monkeypatch.setenv("XLA_CLIENT_MEM_FRACTION", ".5")  # the new name wins
    assert gpu_topology.usable_bytes("NVIDIA H100 80GB HBM3") == int(total * 0.5)
    assert gpu_topology.usable_bytes("Tesla T4") is None
    assert topology.hbm_bytes("NVIDIA H100 80GB HBM3") == int(total * 0.5)


def test_without_the_plugin_the_error_gives_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_topology, "_cuda_topologies_known", lambda: False)  # none loaded yet
    monkeypatch.setattr(gpu_topology, "plugin_dir", lambda: str(tmp_path))
    with pytest.raises(ConfigError, match=r"needs this JAX's CUDA plugin.*pip install --no-deps "
                                          r"--target .*'jax-cuda12-plugin==.*' "
                                          r"'jax-cuda12-pjrt=="):
        topology.compile_only_devices("h100")


def test_gpu_topology_and_another_target_are_refused_together(capsys):
    assert main(["lower", SMOKE, "--target=tpu", "--topology=h100"]) == 2
    assert "--topology=h100 compiles for cuda" in capsys.readouterr().err


@needs_plugin
def test_devices_of_several_gpus_and_counts():
    for name, count, kind in [("h100", 1, "NVIDIA H100 80GB HBM3"), ("h100:8", 8, None),
                              ("a100-40gb:2x4", 8, "NVIDIA A100-SXM4-40GB"),
                              ("l4", 1, "NVIDIA L4")]:
        devices = topology.compile_only_devices(name)
        assert len(devices) == count
        assert kind is None or devices[0].device_kind == kind
    assert jax.default_backend() == "cpu"  # the plugin added topologies, not a backend


def _square_dot(rows: int, inner: int, device):
    """A one-block Triton kernel whose two operand tiles take (rows*inner + inner*rows) bf16."""
    def kernel(x_ref, y_ref, o_ref):
        o_ref[...] = jnp.dot(x_ref[...], y_ref[...], preferred_element_type=jnp.float32)

    def f(x, y):
        return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((rows, rows), jnp.float32),
                              compiler_params=plgpu.CompilerParams(num_warps=8, num_stages=1)
                              )(x, y)

    where = jax.sharding.SingleDeviceSharding(device)
    x = jax.ShapeDtypeStruct((rows, inner), jnp.bfloat16, sharding=where)
    y = jax.ShapeDtypeStruct((inner, rows), jnp.bfloat16, sharding=where)
    gpu = platform.device_of(device)  # Triton is told which GPU (JAX >= 0.11 asks)
    with platform.targeting(gpu), platform.naming_the_gpu(gpu):
        return jax.jit(f).lower(x, y).compile()


@needs_plugin
def test_jaxlibs_triton_refuses_a_tile_too_big_for_the_gpus_shared_memory():
    """128 KiB of operand tiles: an H100 block may use 227 KiB, an L4 block 99; the compiler
    says so itself, with the bytes requested, which are the tiles' own."""
    _square_dot(256, 128, topology.compile_only_devices("h100")[0])
    with pytest.raises(Exception, match=r"Shared memory size limit exceeded: requested "
                                        r"(\d+), available: 101376") as refused:
        _square_dot(256, 128, topology.compile_only_devices("l4")[0])
    requested = int(re.search(r"requested (\d+)", str(refused.value)).group(1))
    assert requested >= 2 * 256 * 128 * 2  # both operand tiles in bf16


@needs_plugin
@pytest.mark.parametrize("name", ["a100-80gb", "l4", "h100"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_the_default_triton_tiles_compile_on_each_gpu_at_the_stages_picked(name, dtype):
    """pallas_gpu lowers its pipeline depth to fit each GPU's shared memory by counting tiles;
    jaxlib's Triton, told that GPU's limit, must accept all three kernels as picked."""
    from moejax.kernels import pallas_gpu

    device = topology.compile_only_devices(name)[0]
    spec = gpu_topology.GPUS[name]
    where = jax.sharding.SingleDeviceSharding(device)
    m, k, n, groups = 1024, 512, 512, 4
    arg = lambda *shape, dt=dtype: jax.ShapeDtypeStruct(shape, dt, sharding=where)  # noqa
    tiling = default_tiling("pallas_gpu")
    sizes, offset = arg(groups, dt=jnp.int32), arg(dt=jnp.int32)

    def kernels(x, w, w_t, dy, s, o):
        return (pallas_gpu.gmm(x, w, s, o, tiling=tiling, out_dtype=dtype),
                pallas_gpu.gmm(dy, w_t, s, o, tiling=tiling, out_dtype=dtype,
                               transpose_rhs=True),
                pallas_gpu.tgmm(x, dy, s, o, num_groups=groups, tiling=tiling, out_dtype=dtype))

    with platform.targeting(platform.Device("gpu", spec.kind, spec.capability)):
        compiled = jax.jit(kernels).lower(arg(m, k), arg(groups, k, n), arg(groups, k, n),
                                          arg(m, n), sizes, offset).compile()
    assert compiled.as_text().count('custom_call_target="__gpu$xla.gpu.triton"') == 3


@needs_plugin
def test_the_smoke_step_compiles_for_an_h100_and_its_state_matches_the_accounting():
    from moejax.model.accounting import parameter_counts
    from moejax.train.cli import load_configs
    from moejax.train.loop import validate_all
    from moejax.train.lower import compile_train_step

    batch, seq = 8, 128
    model, data, train = load_configs(
        [os.path.join(CONFIGS, "smoke.gin")],
        [f"DataConfig.batch_size = {batch}", f"DataConfig.seq_len = {seq}"])
    _, summary = compile_train_step(model, data, train, None, "h100")
    memory = summary.compiled
    assert summary.target == "cuda" and summary.device == "NVIDIA H100 80GB HBM3"
    assert memory["fits"] is True and memory["hbm_bytes"] == gpu_topology.usable_bytes(
        "NVIDIA H100 80GB HBM3")
    assert memory["total_bytes"] == (memory["argument_bytes"] + memory["output_bytes"]
                                     - memory["alias_bytes"] + memory["temp_bytes"]
                                     + memory["code_bytes"])
    # float32 parameters and AdamW's two moments (12 bytes each), the batch (3 arrays of 4-byte
    # elements) and a few KiB: step counters, the key, buffer alignment (8,212 bytes here)
    resolved = validate_all(model, data, train)
    expected = 12 * parameter_counts(resolved).total + 3 * 4 * batch * seq
    assert 0 <= memory["argument_bytes"] - expected < 64 * 1024
    assert {k["impl"] for k in summary.kernels} == {"pallas_gpu"}
    kernel_calls, _ = expected_moe_calls([os.path.join(CONFIGS, "smoke.gin")])
    assert summary.custom_calls["__gpu$xla.gpu.triton"] == kernel_calls == 24


@needs_plugin
@pytest.mark.slow
def test_the_expert_parallel_smoke_step_compiles_for_eight_h100s(capsys, tmp_path):
    status = main(["lower", SMOKE, "--gin_file=mesh/cpu8_expert.gin",
                   "--gin_bindings=MoEConfig.num_experts = 8", "--topology=h100:8", "--json",
                   f"--out={tmp_path}"])
    out = capsys.readouterr()
    assert status == 0, out.err
    summary = json.loads(out.out)
    assert summary["devices"] == 8 and summary["mesh"]["expert"] == 4
    kernel_calls, exchanges = expected_moe_calls(
        [os.path.join(CONFIGS, "smoke.gin"), os.path.join(CONFIGS, "mesh", "cpu8_expert.gin")],
        ["MoEConfig.num_experts = 8"])
    assert summary["custom_calls"]["ragged_all_to_all"] == exchanges == 16
    assert summary["custom_calls"]["__gpu$xla.gpu.triton"] == kernel_calls == 24
    check_compiled_summary(summary, tmp_path / "train_step.hlo", "__gpu$xla.gpu.triton",
                           "pallas_gpu")


@pytest.mark.slow  # 14 s; the TPU preflight's too-big case and the H100 smoke compile stay fast
@needs_plugin
def test_a_step_too_big_for_the_gpu_exits_3(capsys):
    status = main(["lower", SMOKE, "--gin_bindings=DataConfig.batch_size = 4096",
                   "--topology=l4"])
    out = capsys.readouterr()
    assert status == 3, out.err
    assert "DOES NOT FIT" in out.out and "usable by JAX" in out.out
    assert "to fit, try: ModelConfig.remat = 'block'" in out.out
    assert "TrainConfig.grad_accum_steps = 2" in out.out
    total = float(re.search(r"memory per device: ([\d.]+) GiB", out.out).group(1))
    assert total > np.float64(23034 * 0.75 / 1024)


def _mosaic_forward_backward(tiling, rows=2048):
    from moejax.kernels import gmm

    device = topology.compile_only_devices("h100")[0]
    where = jax.sharding.SingleDeviceSharding(device)
    arg = lambda *shape, dt=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dt, sharding=where)  # noqa

    def loss(x, w, sizes):
        return gmm(x, w, sizes, impl="mosaic_gpu", tiling=tiling).astype(jnp.float32).sum()

    with platform.targeting(platform.Device("gpu", device.device_kind, (9, 0))):
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(
            arg(rows, 512), arg(4, 512, 512), arg(4, dt=jnp.int32)).compile()


def _check_hopper_build(compiled, report: str, spill_bytes: int = 0):
    """Three kernels (forward, input and weight gradients) built for sm_90a, none spilling
    more than ``spill_bytes`` (stores and loads), none whose wgmmas ptxas had to wait for or
    serialize (module docstring of moejax/kernels/mosaic_gpu.py)."""
    assert compiled.as_text().count('custom_call_target="mosaic_gpu_v2"') == 3
    assert report.count("for 'sm_90a'") == 3, report[-2000:]
    registers = [int(r) for r in re.findall(r"Used (\d+) registers", report)]
    assert len(registers) == 3 and max(registers) <= 255
    spills = [int(a) + int(b) for a, b in re.findall(  # not ptxas's warning, which repeats it
        r"stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", report)]
    assert len(spills) == 3 and max(spills) <= spill_bytes, spills
    assert not re.findall(r"\((C7514|C7517)\).*", report), re.findall(r"\(C75\d\d\).*", report)


@needs_plugin
def test_the_hopper_kernels_compile_to_machine_code_without_spilling(capfd, monkeypatch):
    """XLA:GPU compiles Mosaic GPU kernels to sm_90a code with the plugin's ptxas, whose report
    (MOSAIC_GPU_DUMP_PTXAS) names each kernel's registers and spills: three kernels (forward,
    input and weight gradients), none spilling at the default tiles.

    And none whose matrix multiplies ptxas serializes. Each k step issues its wgmmas and then
    waits until only they are in flight (``wgmma.wait_group 1`` in the PTX, MOSAIC_GPU_DUMP_PTX):
    the previous step's tiles are then free for the pipeline's next copy. ptxas says when it has
    to add waits of its own ("C7517 ... warpgroup.wait is injected") or make every wgmma wait
    for the one before ("C7514 ... wgmma.mma_async instructions are serialized"). The forward
    kernel did both, before its output column stopped sharing a register with its loads."""
    monkeypatch.setenv("MOSAIC_GPU_DUMP_PTXAS", "1")
    monkeypatch.setenv("MOSAIC_GPU_DUMP_PTX", "1")
    compiled = _mosaic_forward_backward(default_tiling("mosaic_gpu"))
    report = capfd.readouterr().out
    _check_hopper_build(compiled, report)
    assert len(re.findall(r"wgmma\.wait_group\.sync\.aligned\s+1;", report)) == 3


@needs_plugin
def test_the_warp_specialized_kernels_compile_with_registers_to_spare(capfd, monkeypatch):
    """``num_warps = 8``: each kernel gets a producer warpgroup that gives up registers
    (``setmaxnreg`` down to 40) and two consumers that take them (up to 232), each with a
    128 x 128 accumulator of a 128 x 256 tile. Other rows than the test above, so no kernel
    comes from a cache. The forward and input gradient spill 24 bytes (12 stored, 12 loaded):
    read in their SASS (nvdisasm), two scalars of the loop over work items, stored before it
    and reloaded once per item, outside the k loop; more than 64 would be something else."""
    base = default_tiling("mosaic_gpu")
    two = dataclasses.replace(base, block_n=256, num_warps=8, num_stages=3, tgmm=dataclasses.
                              replace(base.tgmm, block_n=256, num_warps=8, num_stages=3))
    monkeypatch.setenv("MOSAIC_GPU_DUMP_PTXAS", "1")
    monkeypatch.setenv("MOSAIC_GPU_DUMP_PTX", "1")
    compiled = _mosaic_forward_backward(two, rows=3072)
    report = capfd.readouterr().out
    _check_hopper_build(compiled, report, spill_bytes=64)
    assert len(re.findall(r"setmaxnreg\.dec\.sync\.aligned\.u32\s+40;", report)) == 3
    assert len(re.findall(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+232;", report)) == 3


@needs_plugin
def test_mosaic_gpus_compile_refuses_the_tiles_our_check_refuses(monkeypatch):
    """Without moejax's shared-memory check, 4 steps of 128 x 128 + 128 x 128 bf16 tiles reach
    Mosaic GPU's compile, which refuses them with the bytes the check counts (+32 barriers)."""
    from moejax.kernels import mosaic_gpu
    from moejax.kernels.tiling import Tiling

    big = Tiling(block_m=128, block_k=128, block_n=128, min_block_m=1, num_stages=4,
                 tgmm=Tiling(block_m=64, block_k=128, block_n=128, min_block_m=1, num_stages=3))
    with pytest.raises(ValueError, match="256 KiB"):
        _mosaic_forward_backward(big)
    monkeypatch.setattr(mosaic_gpu, "_check_shared_memory", lambda *args: None)
    with pytest.raises(Exception, match=r"exceeds available shared memory: "
                                        r"smem_bytes=262176 > max_smem_bytes=232448"):
        _mosaic_forward_backward(big)

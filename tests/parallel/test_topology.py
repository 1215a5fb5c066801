"""Compile-only TPU devices (libtpu): XLA:TPU itself compiles the kernels and the training step.

Independent checks: the compiler's own verdicts (a VMEM overflow without the raised limit, an
HBM refusal for a batch too big), the memory parts adding up to the total and the parameters'
bytes found among the arguments, and the kernel and exchange counts from the model's MoE
layers. Without libtpu (not Linux x86_64) these are skipped, saying why; the name parsing and
the missing-libtpu message are checked everywhere.
"""

from __future__ import annotations

import json
import math
import os
import re
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.cli import main
from moejax.errors import ConfigError
from moejax.kernels import gmm, platform
from moejax.kernels.tiling import Tiling
from moejax.parallel import topology
from tests.lowering import check_compiled_summary, expected_moe_calls

needs_libtpu = pytest.mark.skipif(
    topology.libtpu_path() is None,
    reason="libtpu not installed (launch/setup.sh dev installs it on Linux x86_64)")
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
SMOKE = f"--gin_file={os.path.join(CONFIGS, 'smoke.gin')}"


@pytest.mark.parametrize("name, expected", [
    ("v5e:2x2", ("v5e", (2, 2))), ("v5p:2x2x1", ("v5p", (2, 2, 1))),
    (" v6e:4x8 ", ("v6e", (4, 8))), ("v4:2x2x2", ("v4", (2, 2, 2)))])
def test_topology_names_parse(name, expected):
    assert topology.parse_name(name) == expected


@pytest.mark.parametrize("name", ["v5e", "v5e:2", "tpu:2x2", "v5e:2x2x2x2", "v5e:0x2", "2x2"])
def test_a_malformed_topology_name_is_refused_with_the_form(name):
    with pytest.raises(ConfigError, match="<generation>:<chips per axis>.*<gpu>|at least one "
                                          "chip"):
        topology.parse_name(name)


def test_without_libtpu_the_error_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(topology, "libtpu_path", lambda: None)
    with pytest.raises(ConfigError, match=r"needs libtpu.*pip install --target .*libtpu-aot "
                                          r"'libtpu"):
        topology.compile_only_devices("v5e:2x2")


def test_the_libtpu_requirement_is_jaxs_own_pin():
    assert topology.libtpu_requirement().startswith("libtpu")


@needs_libtpu
def test_devices_of_several_generations_and_sizes():
    for name, count, kind in [("v5e:2x2", 4, "TPU v5 lite"), ("v5e:1x1", 1, "TPU v5 lite"),
                              ("v6e:2x4", 8, "TPU v6 lite"), ("v5p:2x2x1", 4, "TPU v5")]:
        devices = topology.compile_only_devices(name)
        assert len(devices) == count and devices[0].device_kind == kind
    assert "TPU_LIBRARY_PATH" not in os.environ or os.environ["TPU_LIBRARY_PATH"] != \
        topology.libtpu_path()  # not left for child processes
    with pytest.raises(ConfigError, match="libtpu refused it.*v5e:3x3"):
        topology.compile_only_devices("v5e:3x3")


@needs_libtpu
def test_large_float32_tiles_compile_on_v5e_only_with_the_raised_vmem_limit():
    device = topology.compile_only_devices("v5e:2x2")[0]
    sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array([device]), ("x",)),
                                          jax.sharding.PartitionSpec())
    args = (jax.ShapeDtypeStruct((2048, 1024), jnp.float32, sharding=sharding),
            jax.ShapeDtypeStruct((4, 1024, 1024), jnp.float32, sharding=sharding),
            jax.ShapeDtypeStruct((4,), jnp.int32, sharding=sharding))
    tiles = Tiling(block_m=512, block_k=1024, block_n=1024, min_block_m=1)

    def compile_forward_backward():  # a new function each time: nothing cached between them
        def forward_backward(x, w, sizes):
            out, vjp = jax.vjp(lambda a, b: gmm(a, b, sizes, impl="pallas_tpu", tiling=tiles),
                               x, w)
            return vjp(out)
        return jax.jit(forward_backward).lower(*args).compile()

    with platform.targeting(platform.Device("tpu", device.device_kind, None)):
        compiled = compile_forward_backward()
        assert compiled.as_text().count("tpu_custom_call") >= 3  # gmm, its transpose, tgmm
        with mock.patch.dict(platform.TPU_VMEM_MIB, clear=True):  # the compiler's 16 MiB scope
            with pytest.raises(Exception, match="(?i)vmem"):
                compile_forward_backward()


@pytest.mark.slow  # 9 s; tests/train/test_lowering.py lowers expert-parallel steps for TPU fast
@needs_libtpu
def test_the_expert_parallel_smoke_step_compiles_for_a_v5e_slice(capsys, tmp_path):
    status = main(["lower", SMOKE, "--gin_bindings=MeshConfig.expert = 4",
                   "--topology=v5e:2x2", "--json", f"--out={tmp_path}"])
    out = capsys.readouterr()
    assert status == 0, out.err
    summary = json.loads(out.out)
    assert summary["device"] == "TPU v5 lite" and summary["devices"] == 4
    assert summary["mesh"]["expert"] == 4
    memory = summary["compiled"]
    assert memory["topology"] == "v5e:2x2" and memory["fits"] is True
    assert memory["hbm_bytes"] == 16 << 30
    kernel_calls, exchanges = expected_moe_calls([SMOKE.split("=", 1)[1]],
                                                 ["MeshConfig.expert = 4"])
    assert summary["custom_calls"]["ragged_all_to_all"] == exchanges == 16
    assert summary["custom_calls"]["tpu_custom_call"] == kernel_calls == 24
    check_compiled_summary(summary, tmp_path / "train_step.hlo", "tpu_custom_call", "pallas_tpu")


@needs_libtpu
def test_a_step_too_big_for_hbm_exits_3_with_the_compilers_figures(capsys):
    status = main(["lower", SMOKE, "--gin_bindings=DataConfig.batch_size = 16384",
                   "--topology=v5e:1x1"])
    err = capsys.readouterr().err
    assert status == 3, err
    assert "does not fit on v5e:1x1" in err and "HBM" in err
    assert "to fit, try: ModelConfig.remat = 'block'" in err


def test_topology_and_another_target_are_refused_together(capsys):
    assert main(["lower", SMOKE, "--target=cuda", "--topology=v5e:2x2"]) == 2
    assert "--topology=v5e:2x2 compiles for tpu" in capsys.readouterr().err
    assert main(["lower", SMOKE]) == 2
    assert "give --target" in capsys.readouterr().err


@needs_libtpu
def test_more_devices_than_the_slice_has_is_a_config_error(capsys):
    assert main(["lower", SMOKE, "--topology=v5e:2x2", "--devices=8"]) == 2
    assert "needs 8 devices; topology 'v5e:2x2' has 4" in capsys.readouterr().err
    assert main(["lower", SMOKE, "--topology=v5e:2x2", "--devices=0"]) == 2
    assert "--devices 0: must be >= 1" in capsys.readouterr().err


MODEL_CONFIGS = sorted(name for name in os.listdir(os.path.join(CONFIGS, "models"))
                       if "tiny" in name)


_ENTRY_PARAMETER = re.compile(
    r"[a-z]+(\d+)\[([\d,]*)\]\{([\d,]*):T\(([\d,]+)\)\} parameter\(\d+\)")


def _entry_parameter_bytes(hlo_text: str) -> tuple[int, int]:
    """(padded, unpadded) bytes of a compiled TPU module's entry parameters. Each layout lists
    the dimensions minor-first and a tile T(a, b) (or T(b)): the minor-most dimension is padded
    to a multiple of b, the next to a multiple of a; a scalar takes one tile."""
    entry = hlo_text[hlo_text.index("\nENTRY"):]
    entry = entry[:entry.index("\n}")]
    padded = unpadded = 0
    for bits, dims, layout, tile in _ENTRY_PARAMETER.findall(entry):
        shape = [int(d) for d in dims.split(",")] if dims else []
        minor_first = [shape[int(i)] for i in layout.split(",")] if layout else []
        tile_minor_first = [int(t) for t in tile.split(",")][::-1]
        for i, t in enumerate(tile_minor_first[:len(minor_first)]):
            minor_first[i] = -(-minor_first[i] // t) * t
        size = math.prod(minor_first) if minor_first else tile_minor_first[0]
        padded += size * int(bits) // 8
        unpadded += math.prod(shape) * int(bits) // 8
    return padded, unpadded


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("model_gin", MODEL_CONFIGS)
def test_every_tiny_model_variant_compiles_for_v5e_and_its_state_matches_the_accounting(
        model_gin):
    """XLA:TPU compiles each variant (dense, dropless, capacity, fine-grained, shared,
    heterogeneous experts, latent attention), and its argument buffers agree with moejax's
    parameter count."""
    from moejax.model.accounting import parameter_counts
    from moejax.model.config import moe_layer_indices
    from moejax.train.cli import load_configs
    from moejax.train.loop import validate_all
    from moejax.train.lower import compile_train_step

    batch, seq = 8, 128
    model, data, train = load_configs(
        [os.path.join(CONFIGS, "base.gin"), os.path.join(CONFIGS, "models", model_gin)],
        [f"DataConfig.batch_size = {batch}", f"DataConfig.seq_len = {seq}"])
    compiled, summary = compile_train_step(model, data, train, None, "v5e:2x2")
    memory = summary.compiled
    assert memory["fits"] is True and summary.device == "TPU v5 lite"
    # XLA's argument bytes are its entry parameters laid out in TPU tiles: the tile model below
    # (from the layouts printed in the HLO) must give the same figure to the byte.
    padded, unpadded = _entry_parameter_bytes(compiled.as_text())
    assert padded == memory["argument_bytes"]
    # Unpadded, the arguments are the state (float32 parameters and AdamW's two moments: 12
    # bytes per parameter, counted from the config by the accounting module), the router-bias
    # buffers of loss-free balancing (one float32 per expert and MoE block), the batch (inputs,
    # targets, loss weights, segment ids, positions: 5 arrays of 4-byte numbers) and three int32
    # step counters with the uint32[2] random key.
    resolved = validate_all(model, data, train)
    bias = (resolved.moe is not None and resolved.moe.bias_update_rate > 0)
    buffers = 4 * resolved.moe.num_experts * len(moe_layer_indices(resolved)) if bias else 0
    expected = 12 * parameter_counts(resolved).total + buffers + 5 * 4 * batch * seq + 3 * 4 + 8
    assert unpadded == expected
    # Tiles pad small dimensions: under 10 KiB for most variants; 1.09 MB (2.9%) for the latent
    # one, whose 64-wide latent lies minor-most in its up-projections and is padded to 128 (a
    # toy-scale cost: DeepSeek's latents are 512 and 1536 wide).
    assert padded - unpadded < unpadded // 32
    if resolved.moe is not None and resolved.moe.capacity_factor is None:  # dropless: gmm
        assert {k["impl"] for k in summary.kernels} == {"pallas_tpu"}
        kernel_calls, _ = expected_moe_calls(
            [os.path.join(CONFIGS, "base.gin"), os.path.join(CONFIGS, "models", model_gin)])
        assert summary.custom_calls["tpu_custom_call"] == kernel_calls


@pytest.mark.slow  # 17 s: a second process starts JAX and libtpu
@needs_libtpu
def test_a_second_process_can_compile_while_this_one_holds_libtpu():
    """libtpu locks a file for the process that loads it; compile-only devices hold no TPU, so
    a test run beside a sweep's preflight must both work (ALLOW_MULTIPLE_LIBTPU_LOAD)."""
    import subprocess
    import sys

    topology.compile_only_devices("v5e:2x2")  # this process holds libtpu now
    done = subprocess.run([sys.executable, "-m", "moejax.cli", "lower", SMOKE,
                           "--topology=v5e:1x1", "--json"], capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in os.environ.items()
                                            if k != "XLA_FLAGS"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["compiled"]["fits"] is True


@needs_libtpu
@pytest.mark.slow  # 8 s; the expert-parallel v5e compile stays fast
def test_fsdp_gathers_appear_only_after_xla_partitions_the_step(capsys):
    fsdp = f"--gin_file={os.path.join(CONFIGS, 'mesh', 'fsdp_all.gin')}"
    assert main(["lower", SMOKE, fsdp, "--topology=v5e:2x4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mesh"]["fsdp"] == 8
    # the program as written has no gathers (sharding annotations only); the partitioner adds
    # one per use of a sharded parameter
    assert "all_gather" not in summary["collectives"]
    assert summary["compiled"]["collectives"]["all-gather"] > 0


MESHES = {"cpu8_data.gin": "v5e:2x4", "cpu8_expert.gin": "v5e:2x4",
          "cpu8_fsdp_expert_tensor.gin": "v5e:2x4", "fsdp_all.gin": "v5e:2x4",
          "all_data.gin": "v5e:2x4", "tpu_v5e_16.gin": "v5e:4x4"}


def test_every_shipped_mesh_has_a_slice_here():
    assert set(MESHES) == set(os.listdir(os.path.join(CONFIGS, "mesh")))


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("mesh_gin", sorted(MESHES))
def test_every_shipped_mesh_compiles_the_smoke_step_for_a_v5e_slice(mesh_gin, capsys):
    mesh = f"--gin_file={os.path.join(CONFIGS, 'mesh', mesh_gin)}"
    status = main(["lower", SMOKE, mesh, "--gin_bindings=MoEConfig.num_experts = 8",
                   f"--topology={MESHES[mesh_gin]}", "--json"])
    out = capsys.readouterr()
    assert status == 0, out.err
    summary = json.loads(out.out)
    assert summary["compiled"]["fits"] is True
    assert summary["devices"] == int(np.prod(list(summary["mesh"].values())))
    # an expert axis exchanges tokens with the ragged all-to-all, once per use, compiled
    exchanges = summary["custom_calls"].get("ragged_all_to_all", 0)
    assert (exchanges > 0) == (summary["mesh"]["expert"] > 1)
    assert summary["compiled"]["collectives"].get("ragged-all-to-all", 0) == exchanges

"""``moejax lower``: a run's gin config lowered for TPU or CUDA on the fake 8-device CPU platform.

Independent checks: the kernel and all-to-all counts follow from the model's MoE layers (each
has 2 expert matmuls x forward and both gradients, and 2 exchanges x forward and backward), the
per-device state from the shardings against the unsharded total, and the choices per GPU from
what each GPU can compile.
"""

from __future__ import annotations

import json
import os

import pytest

from moejax.cli import main
from tests.lowering import expected_moe_calls

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
SMOKE = f"--gin_file={os.path.join(CONFIGS, 'smoke.gin')}"
EP_MESH = f"--gin_file={os.path.join(CONFIGS, 'mesh', 'cpu8_expert.gin')}"


def _lower(capsys, *args):
    status = main(["lower", SMOKE, *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_the_smoke_run_on_an_expert_parallel_mesh_lowers_for_tpu(capsys, tmp_path):
    status, out, err = _lower(capsys, EP_MESH, "--target=tpu", "--json", f"--out={tmp_path}")
    assert status == 0, err
    summary = json.loads(out)
    assert summary["devices"] == 8 and summary["mesh"]["expert"] == 4
    kernel_calls, exchanges = expected_moe_calls([SMOKE.split("=", 1)[1],
                                                  EP_MESH.split("=", 1)[1]])
    assert (kernel_calls, exchanges) == (24, 16)  # smoke.gin: 4 MoE blocks of one expert group
    assert summary["custom_calls"]["ragged_all_to_all"] == exchanges
    assert summary["custom_calls"]["tpu_custom_call"] == kernel_calls
    assert {(k["requested"], k["impl"]) for k in summary["kernels"]} == {("auto", "pallas_tpu")}
    # expert weights split 4 ways, the rest replicated over data: each device holds less than
    # the whole state and more than an even eighth of it
    assert summary["state_bytes"] / 8 < summary["state_bytes_per_device"] < summary["state_bytes"]
    with open(tmp_path / "lowering.json") as f:
        assert json.load(f) == summary
    with open(tmp_path / "train_step.mlir") as f:
        assert f.read().count("tpu_custom_call") >= kernel_calls


def test_a_gpu_target_gets_the_kernels_it_can_compile(capsys):
    status, out, err = _lower(capsys, "--target=cuda", "--gpu=8.6", "--json")
    assert status == 0, err
    summary = json.loads(out)
    assert summary["devices"] == 1 and "ragged_all_to_all" not in summary["custom_calls"]
    assert {k["impl"] for k in summary["kernels"]} == {"pallas_gpu"}
    assert summary["custom_calls"]["__gpu$xla.gpu.triton"] % 6 == 0
    status, out, err = _lower(capsys, "--target=cuda", "--gpu=7.5", "--json")  # a T4: no Triton
    assert status == 0, err
    summary = json.loads(out)
    assert {k["impl"] for k in summary["kernels"]} == {"xla"} and not summary["custom_calls"]


def test_a_kernel_the_target_cannot_compile_fails_the_lowering_by_name(capsys):
    status, _, err = _lower(capsys, "--target=cuda", "--gpu=8.0",
                            "--gin_bindings=ModelConfig.compute_dtype = 'bfloat16'",
                            "--gin_bindings=MoEConfig.gmm_impl = 'mosaic_gpu'")
    assert status == 1
    assert "does not lower for cuda" in err and "mosaic_gpu' cannot run" in err
    assert "this GPU has 8.0" in err


@pytest.mark.parametrize("args, message", [
    (["--target=cuda", "--gpu=h100"], "--gpu 'h100': a compute capability"),
    (["--target=tpu", "--gin_bindings=MeshConfig.fsdp = -1"],
     "leaves an axis at -1 .* --devices N"),
    ([EP_MESH, "--target=tpu", "--devices=16"],
     "lowering for 16 devices needs as many here; this process has 8"),
    (["--target=tpu", "--gin_bindings=MoEConfig.num_experts = 3", EP_MESH],
     "num_experts = 3"),
])
def test_bad_requests_name_the_problem(capsys, args, message):
    import re

    status, _, err = _lower(capsys, *args)
    assert status == 2
    assert re.search(message, err), err

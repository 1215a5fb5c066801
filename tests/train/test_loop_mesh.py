"""The training loop on a device mesh: a run resumed on a different mesh continues with the
losses of the run that never left its mesh (fake 8-device CPU platform)."""

import os

import numpy as np
import pytest

from moejax.parallel.mesh import configured_mesh
from moejax.train.cli import load_configs
from moejax.train.loop import run_training
from moejax.train.metrics import load_jsonl

TINY = [
    "ModelConfig.d_model = 32", "ModelConfig.n_layers = 2", "ModelConfig.n_heads = 2",
    "ModelConfig.d_ff = 64", "MoEConfig.d_expert = 32", "DataConfig.vocabulary = 'byte'",
    "DataConfig.seq_len = 32", "DataConfig.batch_size = 8", "TrainConfig.warmup_steps = 2",
    "TrainConfig.learning_rate = 1e-3", "TrainConfig.eval_every = 0",
    "TrainConfig.checkpoint_every = 2", "TrainConfig.steps = 4",
]


def configs(mesh_file, *extra):
    model, data, train = load_configs(["smoke.gin", mesh_file], TINY + list(extra))
    return model, data, train, configured_mesh()


def losses(workdir):
    return {r["step"]: r["loss"] for r in load_jsonl(os.path.join(workdir, "metrics.jsonl"))}


@pytest.mark.slow
@pytest.mark.multidevice
def test_resume_on_another_mesh_continues_with_the_same_losses(tmp_path):
    model, data, train, expert_mesh = configs("mesh/cpu8_expert.gin")
    assert expert_mesh is not None and expert_mesh.expert == 4
    messages = []
    run_training(str(tmp_path / "straight"), model, data, train, mesh_config=expert_mesh,
                 log=messages.append)
    assert any("mesh {'data': 2, 'fsdp': 1, 'expert': 4, 'tensor': 1}" in m for m in messages)

    short = configs("mesh/cpu8_expert.gin", "TrainConfig.steps = 2")
    run_training(str(tmp_path / "moved"), *short[:3], mesh_config=short[3])
    model, data, train, other_mesh = configs("mesh/cpu8_fsdp_expert_tensor.gin")
    run_training(str(tmp_path / "moved"), model, data, train, mesh_config=other_mesh)

    straight, moved = losses(tmp_path / "straight"), losses(tmp_path / "moved")
    assert sorted(moved) == [1, 2, 3, 4]
    np.testing.assert_allclose([moved[s] for s in (3, 4)], [straight[s] for s in (3, 4)],
                               rtol=1e-5)


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.parametrize("extra", ["ModelConfig.qk_norm = 'across_heads'",
                                   "MoEConfig.routing = 'hash'"])
def test_variants_train_on_a_mesh_as_on_one_device(tmp_path, extra):
    """Query/key norms across heads: their (N, H) scales are split over `tensor`, so the mean over
    all heads spans devices. Hash routing: token ids travel with the tokens to the expert-parallel
    exchange. The losses must be those of one device."""
    model, data, train, mesh = configs("mesh/cpu8_fsdp_expert_tensor.gin", extra)
    assert mesh.tensor == 2 and mesh.expert == 2
    run_training(str(tmp_path / "mesh"), model, data, train, mesh_config=mesh)
    model, data, train = load_configs(["smoke.gin"], TINY + [extra])
    run_training(str(tmp_path / "one"), model, data, train)
    on_mesh, alone = losses(tmp_path / "mesh"), losses(tmp_path / "one")
    assert sorted(on_mesh) == [1, 2, 3, 4]
    np.testing.assert_allclose([on_mesh[s] for s in on_mesh], [alone[s] for s in on_mesh],
                               rtol=1e-5)

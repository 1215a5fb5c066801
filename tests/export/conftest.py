"""Tiny trained runs for the export tests (byte vocabulary; checkpoints at steps 2 and 4; ~10 s
each on 2 CPU cores): an MoE with 4 experts, top-2 renormalized (so it fits Mixtral), and the
dense model of the same size."""

import pytest

TINY = [
    "ModelConfig.d_model = 32", "ModelConfig.n_layers = 2", "ModelConfig.n_heads = 2",
    "ModelConfig.d_ff = 64", "MoEConfig.d_expert = 32", "MoEConfig.renormalize = True",
    "DataConfig.vocabulary = 'byte'", "DataConfig.seq_len = 32", "DataConfig.batch_size = 4",
    "TrainConfig.steps = 4", "TrainConfig.warmup_steps = 1", "TrainConfig.learning_rate = 3e-3",
    "TrainConfig.checkpoint_every = 2", "TrainConfig.eval_every = 0",
]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A finished MoE run; tests copy it before changing it."""
    return _train(tmp_path_factory.mktemp("export_runs") / "run", ["smoke.gin"])


@pytest.fixture(scope="session")
def trained_dense_run(tmp_path_factory):
    """The dense model of the same size (ModelConfig.moe = None)."""
    return _train(tmp_path_factory.mktemp("export_runs") / "dense_run",
                  ["base.gin", "models/dense_tiny.gin"])


def _train(workdir, gin_files) -> str:
    from moejax.train.cli import load_configs
    from moejax.train.loop import run_training

    model, data, train = load_configs(gin_files, TINY)
    run_training(str(workdir), model, data, train, log=lambda line: None)
    return str(workdir)

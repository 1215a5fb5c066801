"""One tiny trained MoE run for the generate tests (the committed SentencePiece vocabulary, so
that decoded text has spaces to lose; checkpoints at steps 2 and 4; ~10 s on 2 CPU cores)."""

import pytest

TINY = [
    "ModelConfig.d_model = 32", "ModelConfig.n_layers = 2", "ModelConfig.n_heads = 2",
    "ModelConfig.d_ff = 64", "MoEConfig.d_expert = 32", "DataConfig.seq_len = 32",
    "DataConfig.batch_size = 4", "TrainConfig.steps = 4", "TrainConfig.warmup_steps = 1",
    "TrainConfig.learning_rate = 3e-3", "TrainConfig.checkpoint_every = 2",
    "TrainConfig.eval_every = 0",
]


@pytest.fixture(scope="session")
def generate_run(tmp_path_factory):
    """Path of a finished run directory; tests must copy it before changing anything in it."""
    from moejax.train.cli import load_configs
    from moejax.train.loop import run_training

    workdir = tmp_path_factory.mktemp("generate_runs") / "run"
    model, data, train = load_configs(["smoke.gin"], TINY)
    run_training(str(workdir), model, data, train, log=lambda line: None)
    return str(workdir)

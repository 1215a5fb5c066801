"""One tiny capacity-trained MoE run shared by the eval tests (trains in ~20 s on 2 CPU cores).

4 experts, top-2, capacity factor 0.5 in training (so tokens were dropped), byte vocabulary,
checkpoints at steps 2 and 4, two validation batches per task.
"""

import pytest

TINY = [
    "ModelConfig.d_model = 32", "ModelConfig.n_layers = 2", "ModelConfig.n_heads = 2",
    "ModelConfig.d_ff = 64", "MoEConfig.d_expert = 32", "MoEConfig.capacity_factor = 0.5",
    "DataConfig.vocabulary = 'byte'", "DataConfig.seq_len = 32", "DataConfig.batch_size = 4",
    "TrainConfig.steps = 4", "TrainConfig.warmup_steps = 1", "TrainConfig.learning_rate = 3e-3",
    "TrainConfig.checkpoint_every = 2", "TrainConfig.eval_every = 0",
    "TrainConfig.eval_batches = 2",
]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """Path of a finished run directory; tests must copy it before changing anything in it."""
    from moejax.train.cli import load_configs
    from moejax.train.loop import run_training

    workdir = tmp_path_factory.mktemp("eval_runs") / "capacity_run"
    model, data, train = load_configs(["smoke.gin"], TINY)
    run_training(str(workdir), model, data, train, log=lambda line: None)
    return str(workdir)

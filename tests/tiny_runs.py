"""Tiny trained runs for the tests that read a run directory (eval, export, generate): the smoke
model at d_model 32, 2 blocks, sequences of 32, 4 steps with checkpoints at steps 2 and 4
(~10 s on 2 CPU cores). Each suite adds its own bindings (vocabulary, capacity, ...)."""

TINY = [
    "ModelConfig.d_model = 32", "ModelConfig.n_layers = 2", "ModelConfig.n_heads = 2",
    "ModelConfig.d_ff = 64", "MoEConfig.d_expert = 32", "DataConfig.seq_len = 32",
    "DataConfig.batch_size = 4", "TrainConfig.steps = 4", "TrainConfig.warmup_steps = 1",
    "TrainConfig.learning_rate = 3e-3", "TrainConfig.checkpoint_every = 2",
    "TrainConfig.eval_every = 0",
]


def train_tiny_run(workdir, gin_files=("smoke.gin",), bindings=()) -> str:
    """Train TINY plus ``bindings`` over ``gin_files`` into ``workdir``; returns its path."""
    from moejax.train.cli import load_configs
    from moejax.train.loop import run_training

    model, data, train = load_configs(list(gin_files), TINY + list(bindings))
    run_training(str(workdir), model, data, train, log=lambda line: None)
    return str(workdir)

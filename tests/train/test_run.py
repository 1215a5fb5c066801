
import jax
import numpy as np
import pytest

from moejax.train.checkpoint import CheckpointError
from moejax.train.cli import load_configs
from moejax.train.loop import run_training, validate_all
from moejax.train.run import checkpoint_steps, load_run_configs, restore_params, restore_run

BINDINGS = ["ModelConfig.d_model = 32", "ModelConfig.n_layers = 2", "ModelConfig.n_heads = 2",
            "ModelConfig.d_ff = 64", "DataConfig.vocabulary = 'byte'", "DataConfig.seq_len = 32",
            "DataConfig.batch_size = 4", "TrainConfig.steps = 4", "TrainConfig.warmup_steps = 1",
            "TrainConfig.checkpoint_every = 2", "TrainConfig.eval_every = 0"]


@pytest.mark.slow  # 13 s; the config round-trip below and test_loop's resume tests stay fast
def test_reopen_a_heterogeneous_run(tmp_path):
    model, data, train = load_configs(["smoke.gin", "models/moe_tiny_heterogeneous.gin"],
                                      BINDINGS + ["MoEConfig.bias_update_rate = 0.01"])
    run_training(str(tmp_path), model, data, train)
    m, d, t = load_run_configs(str(tmp_path))
    assert m == validate_all(model, data, train) and d == data and t == train
    assert m.moe.groups[1].num_experts == 32
    assert checkpoint_steps(str(tmp_path)) == [2, 4]
    fmodel, state, meta = restore_run(str(tmp_path), 4)
    assert int(state.step) == 4 and meta["step"] == 4
    assert any(np.abs(b).sum() > 0 for b in jax.tree.leaves(state.buffers))  # biases moved
    _, params, buffers, params_meta = restore_params(str(tmp_path), 4)
    assert params_meta == meta
    for restored, full in ((params, state.params), (buffers, state.buffers)):
        assert jax.tree.structure(restored) == jax.tree.structure(full)
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(full)):
            np.testing.assert_array_equal(a, b)


def test_missing_run_and_step_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_run_configs(str(tmp_path))
    model, data, train = load_configs(["smoke.gin"], BINDINGS + ["TrainConfig.steps = 2"])
    run_training(str(tmp_path), model, data, train)
    with pytest.raises(CheckpointError, match="never finalized"):
        restore_run(str(tmp_path), 7)
    with pytest.raises(CheckpointError, match="never finalized"):
        restore_params(str(tmp_path), 7)


@pytest.mark.parametrize("model_file", ["moe_tiny_heterogeneous", "moe_tiny_latent"])
def test_config_json_gives_back_the_nested_configs(model_file):
    # eval, export and generate rebuild a run's model from its config.json alone
    import json

    from moejax.train.checkpoint import config_fingerprint
    from moejax.train.run import configs_from_json

    model, data, train = load_configs(["smoke.gin", f"models/{model_file}.gin"], BINDINGS)
    model = validate_all(model, data, train)
    written = json.dumps(config_fingerprint(model, data, train))
    assert configs_from_json(written) == (model, data, train)

"""The ``moejax`` command itself: what no subcommand reports on its own."""

import types

import pytest

from moejax import cli
from moejax.errors import ConfigError, check_field_types


def _command_raising(error):
    return types.SimpleNamespace(add_arguments=lambda parser: None,
                                 run=lambda args: (_ for _ in ()).throw(error))


def test_a_refused_file_is_one_line_not_a_traceback(monkeypatch, capsys):
    module = _command_raising(PermissionError(13, "Permission denied", "/data/points.jsonl"))
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: module)
    assert cli.main(["eval"]) == 1
    assert capsys.readouterr().err == (
        "moejax eval: error: Permission denied: /data/points.jsonl\n")


def test_ctrl_c_is_reported_with_its_exit_status(monkeypatch, capsys):
    monkeypatch.setattr(cli.importlib, "import_module",
                        lambda name: _command_raising(KeyboardInterrupt()))
    assert cli.main(["fit"]) == 130
    assert capsys.readouterr().err == "moejax fit: interrupted\n"


def test_train_on_ctrl_c_names_the_newest_complete_checkpoint(tmp_path, monkeypatch, capsys):
    from moejax.train import loop

    for step in (2, 4):
        (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
        (tmp_path / "checkpoints" / str(step) / "_CHECKPOINT_METADATA").write_text("{}")
    (tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1").mkdir()  # a save cut short
    (tmp_path / "checkpoints" / "6").mkdir()  # never finalized

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "run_training", interrupted)
    assert cli.main(["train", "--gin_file=smoke.gin", f"--workdir={tmp_path}"]) == 130
    assert capsys.readouterr().err == (
        "moejax train: interrupted; newest complete checkpoint: step 4; the same command "
        "resumes from it\n")


def _configs():
    from moejax.model.config import ModelConfig, MoEConfig
    from moejax.train.config import TrainConfig

    return [
        (TrainConfig(steps=4.5), "TrainConfig.steps = 4.5 is not allowed: an integer (got float)"),
        (TrainConfig(learning_rate="fast"),
         "TrainConfig.learning_rate = 'fast' is not allowed: a number (got str)"),
        (ModelConfig(d_model="128"), "ModelConfig.d_model = '128' is not allowed: an integer"),
        (ModelConfig(n_kv_heads=2.0),
         "ModelConfig.n_kv_heads = 2.0 is not allowed: an integer or None"),
        (ModelConfig(tie_embeddings=1),
         "ModelConfig.tie_embeddings = 1 is not allowed: True or False"),
        (MoEConfig(router_jitter="x"), "MoEConfig.router_jitter = 'x' is not allowed: a number"),
        (MoEConfig(top_k=True), "MoEConfig.top_k = True is not allowed: an integer"),
    ]


def test_a_value_of_the_wrong_type_is_named():
    for config, message in _configs():
        with pytest.raises(ConfigError) as error:
            check_field_types(config)
        assert str(error.value).startswith(message), (config, str(error.value))


def test_values_of_the_right_types_pass():
    from moejax.model.config import ModelConfig, MoEConfig
    from moejax.train.config import TrainConfig

    for config in (TrainConfig(learning_rate=1, steps=3), ModelConfig(n_kv_heads=None),
                   MoEConfig(capacity_factor=2, ep_buffer_factor=None), MoEConfig()):
        check_field_types(config)  # an int where a float is declared is fine; None where allowed


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_every_subcommand_has_its_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([name, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: moejax {name}")

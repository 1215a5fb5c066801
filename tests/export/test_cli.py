"""``moejax export`` on a trained run: what it writes, that the weights are the checkpoint's (the
transformers forward pass of tests/export/hf_reference.py against moejax's), and that a bad run,
step, output or an interrupted write leaves nothing behind."""

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from moejax.export import cli as export_cli
from moejax.export import safetensors as safetensors_lib
from tests.export import hf_reference


def _export(capsys, *args):
    code = export_cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_export_writes_a_model_directory_whose_logits_are_the_checkpoint_s(trained_run, tmp_path,
                                                                           capsys):
    from moejax.train.run import restore_run

    out = tmp_path / "hf"
    code, stdout, _ = _export(capsys, "--workdir", trained_run, "--out", str(out))
    assert code == 0, stdout
    assert "step 4 as mixtral" in stdout and str(out) in stdout
    assert sorted(os.listdir(out)) == sorted([
        "config.json", "generation_config.json", "model.safetensors", "moejax_export.json",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"])
    assert os.stat(out).st_mode & 0o055  # readable by others, not mkdtemp's 0700
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"] and config["num_local_experts"] == 4
    assert config["max_position_embeddings"] == 32
    provenance = json.loads((out / "moejax_export.json").read_text())
    assert provenance["step"] == 4 and provenance["workdir"] == trained_run
    assert provenance["config"]["ModelConfig"]["d_model"] == 32

    model, state, _ = restore_run(trained_run, 4)
    tokens = np.array([10, 72, 101, 32, 107, 105, 110, 103, 1, 200, 3, 50], np.int32)
    ours, _ = model.apply(state.params, tokens[None], buffers=state.buffers)
    reference = hf_reference.logits(load_file(str(out / "model.safetensors")), config, tokens)
    np.testing.assert_allclose(np.asarray(ours[0]), reference, rtol=1e-4, atol=1e-4)


def test_a_dense_run_is_written_as_llama(trained_dense_run, tmp_path, capsys):
    from moejax.train.run import restore_run

    out = tmp_path / "hf"
    code, stdout, stderr = _export(capsys, "--workdir", trained_dense_run, "--out", str(out))
    assert code == 0, stderr
    assert "as llama" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["intermediate_size"] == 64
    model, state, _ = restore_run(trained_dense_run, 4)
    tokens = np.array([10, 72, 101, 32, 107, 105, 110, 103, 1, 200], np.int32)
    ours, _ = model.apply(state.params, tokens[None])
    reference = hf_reference.logits(load_file(str(out / "model.safetensors")), config, tokens)
    np.testing.assert_allclose(np.asarray(ours[0]), reference, rtol=1e-4, atol=1e-4)


def test_default_directory_step_format_and_shards(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    code, stdout, stderr = _export(capsys, "--workdir", str(run), "--step", "2", "--format",
                                   "qwen2_moe", "--dtype", "bfloat16", "--max_shard_size", "20KB")
    assert code == 0, stderr
    out = run / "exports" / "qwen2_moe-step2"
    assert str(out) in stdout
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == shards
    assert "wrote model-00001-of-" in stderr  # progress, one line per file
    header_len = int.from_bytes((out / shards[0]).read_bytes()[:8], "little")
    header = json.loads((out / shards[0]).read_bytes()[8:8 + header_len])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}


def test_an_existing_output_is_never_overwritten(trained_run, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, stderr = _export(capsys, "--workdir", trained_run, "--out", str(out))
    assert code == 1 and "exists" in stderr and "nothing is overwritten" in stderr
    assert os.listdir(out) == ["keep.txt"]


def test_an_empty_out_or_one_inside_the_checkpoints_is_refused(trained_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _export(capsys, "--workdir", trained_run, "--out", "")
    assert exit_info.value.code == 2 and "--out: is empty" in capsys.readouterr().err
    inside = os.path.join(trained_run, "checkpoints", "hf")
    code, _, stderr = _export(capsys, "--workdir", trained_run, "--out", inside)
    assert code == 1 and "inside the run's checkpoints directory" in stderr
    assert not os.path.exists(inside)


def test_a_missing_step_names_the_steps_there_are(trained_run, tmp_path, capsys):
    code, _, stderr = _export(capsys, "--workdir", trained_run, "--step", "3", "--out",
                              str(tmp_path / "x"))
    assert code == 1 and "no finalized checkpoint at step 3" in stderr and "2, 4" in stderr
    assert not (tmp_path / "x").exists()


def test_not_a_run_and_a_run_without_checkpoints(tmp_path, trained_run, capsys):
    code, _, stderr = _export(capsys, "--workdir", str(tmp_path / "nowhere"))
    assert code == 2 and "is not a directory" in stderr
    code, _, stderr = _export(capsys, "--workdir", str(tmp_path))
    assert code == 1 and "not a moejax run directory" in stderr
    empty = tmp_path / "empty_run"
    empty.mkdir()
    shutil.copy(os.path.join(trained_run, "config.json"), empty / "config.json")
    code, _, stderr = _export(capsys, "--workdir", str(empty))
    assert code == 1 and "has no finalized checkpoint" in stderr
    assert not (empty / "exports").exists()


def test_a_model_no_format_holds_is_refused_before_reading_the_checkpoint(trained_run, tmp_path,
                                                                          capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["ModelConfig"]["moe"]["router_scores"] = "sigmoid"
    (run / "config.json").write_text(json.dumps(config))
    code, _, stderr = _export(capsys, "--workdir", str(run))
    assert code == 1 and "router_scores = 'sigmoid'" in stderr
    assert not (run / "exports").exists()


def test_a_corrupt_checkpoint_is_named_and_nothing_is_written(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for root, _, names in os.walk(run / "checkpoints" / "4" / "state"):
        for name in names:
            path = os.path.join(root, name)
            if os.path.getsize(path) > 1000:
                with open(path, "r+b") as f:
                    f.truncate(100)
    code, _, stderr = _export(capsys, "--workdir", str(run), "--out", str(tmp_path / "x"))
    assert code == 1 and "checkpoints/4" in stderr and "could not be restored" in stderr
    assert not (tmp_path / "x").exists()
    assert [p for p in os.listdir(tmp_path) if "partial" in p] == []


def _on_second_file(monkeypatch, action) -> list:
    """Make the export's second weight file call ``action(path)`` first; returns the paths."""
    calls = []
    real_write = safetensors_lib.write_file

    def write(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            action(path)
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(safetensors_lib, "write_file", write)
    return calls


def test_a_write_that_fails_midway_leaves_nothing(trained_run, tmp_path, capsys, monkeypatch):
    def disk_full(path):
        raise OSError(28, "No space left on device", path)

    calls = _on_second_file(monkeypatch, disk_full)
    code, _, stderr = _export(capsys, "--workdir", trained_run, "--out",
                              str(tmp_path / "new" / "parents" / "x"), "--max_shard_size", "20KB")
    assert code == 1 and "No space left on device" in stderr
    assert len(calls) == 2
    # neither the directory, nor its partial twin, nor the parents the export made for it
    assert os.listdir(tmp_path) == []


def test_a_write_error_that_names_no_file_is_given_the_output_s_name(trained_run, tmp_path,
                                                                    capsys, monkeypatch):
    def disk_full(path):  # as a write() on a full disk raises it: no file name
        raise OSError(28, "No space left on device")

    _on_second_file(monkeypatch, disk_full)
    out = str(tmp_path / "x")
    code, _, stderr = _export(capsys, "--workdir", trained_run, "--out", out,
                              "--max_shard_size", "20KB")
    assert code == 1 and f"No space left on device: {out}\n" in stderr
    assert os.listdir(tmp_path) == []


def test_sigterm_while_writing_leaves_nothing(trained_run, tmp_path, capsys, monkeypatch):
    import signal

    # as a batch scheduler's kill would
    _on_second_file(monkeypatch, lambda path: os.kill(os.getpid(), signal.SIGTERM))
    code, _, stderr = _export(capsys, "--workdir", trained_run, "--out", str(tmp_path / "x"),
                              "--max_shard_size", "20KB")
    assert code == 128 + signal.SIGTERM and "SIGTERM while writing; nothing was written" in stderr
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_non_finite_weights_are_refused_with_a_tensor_named(trained_run, tmp_path, capsys,
                                                            monkeypatch):
    import moejax.train.run as run_lib

    real_restore = run_lib.restore_params

    def restore_with_nan(workdir, step):
        model, params, buffers, meta = real_restore(workdir, step)
        params["final_norm"]["scale"] = params["final_norm"]["scale"].at[0].set(np.nan)
        return model, params, buffers, meta

    monkeypatch.setattr(run_lib, "restore_params", restore_with_nan)
    code, _, stderr = _export(capsys, "--workdir", trained_run, "--out", str(tmp_path / "x"))
    assert code == 1 and "non-finite weights in 1 tensor(s), e.g. model.norm.weight" in stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("damage, named", [
    (lambda text: b"\x9c\xff" + os.urandom(64), "config.json is unreadable"),
    (lambda text: text.replace(b'"d_model": 32', b'"d_model": "abc"'), "ModelConfig.d_model"),
])
def test_a_damaged_config_json_is_one_line(trained_run, tmp_path, capsys, damage, named):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    path = run / "config.json"
    damaged = damage(path.read_bytes())
    assert damaged != path.read_bytes()
    path.write_bytes(damaged)
    code, _, stderr = _export(capsys, "--workdir", str(run))
    assert code == 1 and named in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (run / "exports").exists()


@pytest.mark.parametrize("text, size", [("5GB", 5 * 10**9), ("500MB", 5 * 10**8),
                                        ("2GiB", 2 * 2**30), ("1024", 1024), ("1.5kb", 1500)])
def test_shard_sizes(text, size):
    assert export_cli.shard_size(text) == size


@pytest.mark.parametrize("text", ["five", "0", "5TB", "-1GB"])
def test_bad_shard_sizes_are_refused(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        export_cli.shard_size(text)

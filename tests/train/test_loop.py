"""The training loop end to end on the embedded corpus: resume, preemption, divergence, errors.

Runs use a tiny model and the byte vocabulary so each step takes milliseconds; the killed run is a
real subprocess receiving SIGKILL.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from moejax.model.config import ConfigError
from moejax.train.cli import load_configs
from moejax.train.loop import TrainingDiverged, run_training
from moejax.train.metrics import load_jsonl
from tests.processes import private_tmpdir

TINY = [
    "ModelConfig.d_model = 32", "ModelConfig.n_layers = 2", "ModelConfig.n_heads = 2",
    "ModelConfig.d_ff = 64", "MoEConfig.d_expert = 32", "DataConfig.vocabulary = 'byte'",
    "DataConfig.seq_len = 32", "DataConfig.batch_size = 4", "TrainConfig.warmup_steps = 2",
    "TrainConfig.learning_rate = 1e-3",
]


def tiny(*extra):
    return load_configs(["smoke.gin"], TINY + list(extra))


def cli(workdir, *extra):
    args = [sys.executable, "-m", "moejax.cli", "train", "--gin_file=smoke.gin", f"--workdir={workdir}"]
    return args + [f"--gin_bindings={b}" for b in TINY + list(extra)]


def losses(workdir):
    return {r["step"]: r["loss"] for r in load_jsonl(os.path.join(workdir, "metrics.jsonl"))}


def _wait_for_step(workdir, step, proc, timeout=300):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.stdout.read()}")
        if os.path.exists(path):
            with open(path) as f:
                steps = [json.loads(line)["step"] for line in f if line.endswith("\n")]
            if steps and steps[-1] >= step:
                return steps[-1]
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def _start(workdir, tmp_path, *bindings) -> subprocess.Popen:
    """``moejax train`` in a subprocess (stdout and stderr together), to be signalled."""
    return subprocess.Popen(cli(workdir, *bindings), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=private_tmpdir(tmp_path))


def test_resume_in_process_equals_uninterrupted(tmp_path):
    bindings = ["TrainConfig.checkpoint_every = 3", "TrainConfig.eval_every = 0"]
    m, d, t = tiny("TrainConfig.steps = 6", *bindings)
    run_training(str(tmp_path / "straight"), m, d, t)
    m, d, t3 = tiny("TrainConfig.steps = 3", *bindings)
    run_training(str(tmp_path / "resumed"), m, d, t3)
    summary = run_training(str(tmp_path / "resumed"), m, d, t)
    assert summary["start_step"] == 3
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    messages = []
    again = run_training(str(tmp_path / "resumed"), m, d, t, log=messages.append)
    assert again["final_step"] == 6 and any("already trained to step 6" in x for x in messages)
    # kernels.json: one segment per process start that trained; the no-op third start adds none
    segments = json.loads((tmp_path / "resumed" / "kernels.json").read_text())["segments"]
    assert [s["start_step"] for s in segments] == [0, 3]
    assert segments[0]["gmm"] == segments[1]["gmm"] != []


@pytest.mark.slow  # a 300-step run in a subprocess, killed and restarted: about a minute
def test_sigkill_then_restart_continues_with_identical_losses(tmp_path):
    bindings = ["TrainConfig.steps = 300", "TrainConfig.checkpoint_every = 10",
                "TrainConfig.eval_every = 0"]
    killed = str(tmp_path / "killed")
    proc = _start(killed, tmp_path, *bindings)
    reached = _wait_for_step(killed, 35, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reached < 300, "the run finished before it could be killed"
    steps_at_kill = max(losses(killed))
    finalized = [s for s in os.listdir(os.path.join(killed, "checkpoints")) if s.isdigit()]
    assert finalized, "no checkpoint was finalized before the kill"

    restart = subprocess.run(cli(killed, *bindings), capture_output=True, text=True, timeout=600)
    assert restart.returncode == 0, restart.stderr
    assert "resumed from" in restart.stdout
    straight = str(tmp_path / "straight")
    run = subprocess.run(cli(straight, *bindings), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    resumed, uninterrupted = losses(killed), losses(straight)
    assert sorted(resumed) == list(range(1, 301)) and steps_at_kill < 300
    assert resumed == uninterrupted  # exact equality, not a tolerance


@pytest.mark.slow  # two short runs in subprocesses: about half a minute
def test_ctrl_c_while_saving_every_step_leaves_a_run_that_resumes_exactly(tmp_path):
    """With a checkpoint after every step, Ctrl-C (SIGINT) lands during a save or right next to
    one. The run must say which checkpoint is complete, exit 130, and resume from it to the
    losses the interrupted process had already logged, bit for bit."""
    bindings = ["TrainConfig.steps = 60", "TrainConfig.checkpoint_every = 1",
                "TrainConfig.eval_every = 0"]
    workdir = str(tmp_path / "run")
    proc = _start(workdir, tmp_path, *bindings)
    reached = _wait_for_step(workdir, 20, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert reached < 60, "the run finished before it could be interrupted"
    assert proc.returncode == 130, out
    newest = int(re.search(r"interrupted; newest complete checkpoint: step (\d+)", out).group(1))
    before = losses(workdir)
    assert newest >= 19 and max(before) >= newest

    restart = subprocess.run(cli(workdir, *bindings), capture_output=True, text=True,
                             timeout=600, env=private_tmpdir(tmp_path))
    assert restart.returncode == 0, restart.stderr
    assert "resumed from" in restart.stdout
    after = losses(workdir)
    assert sorted(after) == list(range(1, 61))
    assert {s: after[s] for s in before} == before  # the same losses, not within a tolerance


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    workdir = str(tmp_path / "run")
    proc = subprocess.Popen(cli(workdir, "TrainConfig.steps = 100000", "TrainConfig.eval_every = 0",
                                "TrainConfig.checkpoint_every = 100000"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_step(workdir, 5, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "SIGTERM" in out
    last_logged = max(losses(workdir))
    saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert saved == [last_logged]


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    m, d, t = tiny("TrainConfig.steps = 50", "TrainConfig.learning_rate = 1e12",
                   "TrainConfig.grad_clip_norm = 0.0", "TrainConfig.warmup_steps = 0",
                   "TrainConfig.checkpoint_every = 1", "TrainConfig.eval_every = 0")
    with pytest.raises(TrainingDiverged, match=r"at step (\d+)") as info:
        run_training(str(tmp_path), m, d, t)
    bad_step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert saved and max(saved) == bad_step - 1  # nothing written at or after the bad step
    assert f"Last good checkpoint: {bad_step - 1}" in str(info.value)


def test_impossible_setting_fails_before_compiling(tmp_path):
    m, d, t = tiny("MoEConfig.top_k = 8", "TrainConfig.steps = 5")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"MoEConfig\.top_k = 8"):
        run_training(str(tmp_path), m, d, t)
    assert time.perf_counter() - start < 1.0
    assert not os.path.exists(tmp_path / "checkpoints")


def test_cli_unknown_binding_names_the_knob(tmp_path):
    out = subprocess.run(cli(tmp_path, "MoEConfig.num_expert = 8"), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2
    assert "num_expert" in out.stderr and "Did you mean MoEConfig.num_experts" in out.stderr


@pytest.mark.parametrize("change, named", [
    ("MoEConfig.top_k = 1", "top_k"),              # same parameter shapes
    pytest.param("MoEConfig.num_experts = 8", "num_experts",  # expert weights of another shape
                 marks=pytest.mark.slow),
])
def test_changed_model_config_refuses_to_resume_and_keeps_the_run(tmp_path, change, named):
    """A checkpoint of another model is refused by its metadata before any array is read: it
    is not taken for a corrupt one and moved aside (a run thrown away and retrained from step
    0), and the run's config.json, config.gin and metrics stay those of the run that wrote it."""
    m, d, t = tiny("TrainConfig.steps = 2", "TrainConfig.eval_every = 0",
                   "TrainConfig.checkpoint_every = 1")
    run_training(str(tmp_path), m, d, t, gin_config="# the first run\n")
    before = {name: (tmp_path / name).read_bytes()
              for name in ("config.json", "config.gin", "metrics.jsonl")}
    steps = sorted(os.listdir(tmp_path / "checkpoints"))
    m2, d, t = tiny("TrainConfig.steps = 4", "TrainConfig.eval_every = 0", change)
    from moejax.train.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=f"different model/data config.*{named}"):
        run_training(str(tmp_path), m2, d, t, gin_config="# the second run\n")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == steps  # nothing moved aside
    for name, content in before.items():
        assert (tmp_path / name).read_bytes() == content, name


@pytest.mark.slow  # three short trainings (18 s); config_mismatch's own test is fast
def test_a_run_written_before_a_knob_existed_resumes(tmp_path):
    """Checkpoints of an older moejax lack the newer fields (here ModelConfig.qk_norm) in their
    metadata: the run resumes when the config leaves the knob at its default."""
    m, d, t = tiny("TrainConfig.steps = 2", "TrainConfig.eval_every = 0",
                   "TrainConfig.checkpoint_every = 1")
    run_training(str(tmp_path), m, d, t)
    for step in os.listdir(tmp_path / "checkpoints"):
        meta_path = tmp_path / "checkpoints" / step / "meta" / "metadata"
        meta = json.loads(meta_path.read_text())
        del meta["config"]["ModelConfig"]["qk_norm"]
        meta_path.write_text(json.dumps(meta))
    m, d, t = tiny("TrainConfig.steps = 3", "TrainConfig.eval_every = 0")
    assert run_training(str(tmp_path), m, d, t)["start_step"] == 2
    m, d, t = tiny("TrainConfig.steps = 4", "TrainConfig.eval_every = 0",
                   "ModelConfig.qk_norm = 'per_head'")
    from moejax.train.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="ModelConfig.qk_norm: checkpoint 'none' vs "
                       "config 'per_head'"):
        run_training(str(tmp_path), m, d, t)


def test_a_vocabulary_file_that_changed_since_the_checkpoint_is_refused(tmp_path):
    from moejax.train.checkpoint import CheckpointError
    from tests.spm_models import train_spm

    vocabulary = train_spm(tmp_path / "vocab.model")
    bindings = [f"DataConfig.vocabulary = '{vocabulary}'", "TrainConfig.eval_every = 0"]
    m, d, t = tiny("TrainConfig.steps = 2", *bindings)
    run_training(str(tmp_path / "run"), m, d, t)
    train_spm(tmp_path / "vocab.model", vocab_size=640)  # another model at the same path
    m, d, t = tiny("TrainConfig.steps = 3", *bindings)
    with pytest.raises(CheckpointError, match=r"the vocabulary file's content: checkpoint "
                       r"spm_\w+ vs now spm_\w+ \(the file changed since\)"):
        run_training(str(tmp_path / "run"), m, d, t)


def test_run_directory_contents(tmp_path):
    m, d, t = tiny("TrainConfig.steps = 4", "TrainConfig.eval_every = 2")
    import gin

    run_training(str(tmp_path), m, d, t, gin_config=gin.operative_config_str())
    for name in ("config.gin", "config.json", "metrics.jsonl", "eval.jsonl", "tensorboard",
                 "loss_curve.png"):
        assert os.path.exists(tmp_path / name), name
    assert "MoEConfig.num_experts = 4" in (tmp_path / "config.gin").read_text()
    record = load_jsonl(tmp_path / "metrics.jsonl")[-1]
    for key in ("loss", "aux_loss", "z_loss", "learning_rate", "grad_norm", "tokens_per_second"):
        assert np.isfinite(record[key]), key
    layers = record["moe"]
    assert [layer["block"] for layer in layers] == [0, 1]
    for layer in layers:
        assert len(layer["tokens_per_expert"]) == 4
        assert sum(layer["tokens_per_expert"]) == 4 * 32 * 2  # every real token, top-2, dropless
        loads = np.asarray(layer["tokens_per_expert"], float)
        assert layer["dropped_fraction"] == 0.0
        assert layer["load_imbalance"] == pytest.approx(loads.max() / loads.mean(), rel=1e-5)
        assert 0.0 < layer["router_entropy"] <= np.log(4) + 1e-6
        for key in ("aux_loss", "z_loss", "bias_norm"):
            assert np.isfinite(layer[key]), key
    evals = load_jsonl(tmp_path / "eval.jsonl")
    assert {r["step"] for r in evals} == {0, 2, 4}
    # Which kernel each expert matmul ran with. 4 sequences x 32 tokens x top-2 = 256 routed
    # rows; gate/up fused: d_model 32 -> 2 x d_expert 32; down: 32 -> 32. "auto" on CPU = "cpu".
    kernels = json.loads((tmp_path / "kernels.json").read_text())
    assert kernels["format"] == "moejax-kernels/1"
    (segment,) = kernels["segments"]
    assert segment["start_step"] == 0 and segment["backend"] == "cpu"
    assert {(e["problem"]["rows"], e["problem"]["k"], e["problem"]["n"])
            for e in segment["gmm"]} == {(256, 32, 64), (256, 32, 32)}
    assert {(e["requested"], e["impl"]) for e in segment["gmm"]} == {("auto", "cpu")}
    assert {r["task"] for r in evals} >= {"moejax_embedded", "moejax_wiki"}


def test_the_divergence_message_names_what_was_not_finite():
    from moejax.train.loop import _non_finite

    assert _non_finite({"loss": 9.0, "grad_norm": float("nan")}) == (
        "the gradient norm became non-finite (loss 9.0, gradient norm nan)")
    assert _non_finite({"loss": float("inf"), "grad_norm": float("nan")}).startswith(
        "the loss and the gradient norm became non-finite")
    assert _non_finite({"loss": 3.0, "grad_norm": 1.0}).startswith("the step became non-finite")


@pytest.mark.parametrize("where", ["workdir", "points", "out"])
def test_an_output_path_through_a_file_stops_before_the_work(tmp_path, capsys, where):
    from moejax.cli import main

    blocker = tmp_path / "config.json"
    blocker.write_text("{}")
    if where == "workdir":
        argv = ["train", "--gin_file=smoke.gin", f"--workdir={blocker}/run"]
    elif where == "points":
        run = tmp_path / "run"
        run.mkdir()
        (run / "config.json").write_text("{}")
        argv = ["eval", f"--workdir={run}", f"--points={blocker}/p.jsonl"]
    else:
        argv = ["lower", "--gin_file=smoke.gin", "--target=tpu", f"--out={blocker}/lowered"]
    start = time.perf_counter()
    assert main(argv) == 2
    assert f"{blocker} is a file, not a directory" in capsys.readouterr().err
    assert time.perf_counter() - start < 30
    assert sorted(os.listdir(tmp_path)) == sorted(["config.json"] + (["run"] if where == "points"
                                                                      else []))

"""The TPU VM launcher against a fake gcloud on PATH that records its calls."""

import json
import os
import stat

from moejax.cli import main
from moejax.sweep.tpu_vm import TpuVm, create_commands, queued_state_command, train_commands

GRID = """
Grid.name = 'tpu'
Grid.base_gin_files = ['smoke.gin']
Grid.axes = {'MoEConfig.num_experts': [2, 4]}
"""

FAKE_GCLOUD = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if "describe" in sys.argv:
    print("ACTIVE")
fail = os.environ.get("FAKE_GCLOUD_FAIL")
sys.exit(1 if fail and any(fail in a for a in sys.argv) and "ssh" in sys.argv else 0)
"""


def _fake_gcloud(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "gcloud.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_LOG", str(log))
    return log


def _calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_command_builders():
    vm = TpuVm(name="t1", zone="us-central2-b", project="p", accelerator_type="v4-16",
               runtime_version="tpu-ubuntu2204-base", queued=True)
    assert create_commands(vm) == [[
        "gcloud", "compute", "tpus", "queued-resources", "create", "t1", "--node-id=t1",
        "--accelerator-type=v4-16", "--runtime-version=tpu-ubuntu2204-base",
        "--zone=us-central2-b", "--project=p"]]
    assert create_commands(TpuVm(name="t1", zone="z"))[0][:6] == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "t1"]
    assert queued_state_command(vm)[-1] == "--format=value(state.state)"
    train, logs, results, curve = train_commands(vm, "/local/sweep",
                                                 {"run_id": "r0", "dir": "/local/sweep/r0"})
    assert train[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t1"]
    assert "--worker=all" in train
    command = train[-1]
    assert command.startswith("--command=cd moejax && .venv/bin/moejax train "
                              "--gin_file=$HOME/moejax/sweep/r0/run.gin --workdir=$HOME/moejax/sweep/r0 ")
    assert "train.worker$(curl" in command  # one log per worker
    assert logs[4:7] == ["scp", "t1:moejax/sweep/r0/train.worker*.log", "/local/sweep/r0/"]
    # the run's metrics, validation losses and curve (written by worker 0) for the local report
    assert results[4:7] == ["scp", "t1:moejax/sweep/r0/*.jsonl", "/local/sweep/r0/"]
    assert curve[5] == "t1:moejax/sweep/r0/loss_curve.png" and "--worker=0" in curve


def test_tpu_vm_launcher_issues_the_expected_gcloud_calls(tmp_path, monkeypatch, capsys):
    log = _fake_gcloud(tmp_path, monkeypatch)
    grid = tmp_path / "tpu.gin"
    grid.write_text(GRID)
    root = tmp_path / "sweep"
    common = [f"--grid={grid}", f"--root={root}", "--launcher=tpu_vm", "--tpu=t1",
              "--zone=us-central2-b", "--project=p"]

    # --dry_run prints the exact commands and calls nothing
    assert main(["sweep", *common, "--create", "--queued", "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "gcloud compute tpus queued-resources create t1 --node-id=t1" in printed
    assert printed.count("gcloud compute tpus tpu-vm ssh t1") == 5  # unpack, install, 2 runs, eval
    assert not _calls(log)

    # the second run fails on the workers: reported, the first still done, evaluation still runs
    monkeypatch.setenv("FAKE_GCLOUD_FAIL", "tpu-001")
    assert main(["sweep", *common, "--create", "--queued"]) == 1
    calls = _calls(log)
    verbs = [" ".join(c[:4]) for c in calls]
    assert verbs == ["compute tpus queued-resources create", "compute tpus queued-resources describe",
                     "compute tpus tpu-vm scp", "compute tpus tpu-vm scp",  # code, run configs
                     "compute tpus tpu-vm ssh", "compute tpus tpu-vm ssh",  # unpack, install
                     "compute tpus tpu-vm ssh", *["compute tpus tpu-vm scp"] * 3,  # run 0, logs,
                     "compute tpus tpu-vm ssh", *["compute tpus tpu-vm scp"] * 3,  # results, curve
                     "compute tpus tpu-vm ssh", "compute tpus tpu-vm scp"]  # eval + points
    assert all("--zone=us-central2-b" in c and "--project=p" in c for c in calls)
    assert calls[2][4].endswith("moejax-code.tgz") and calls[2][5] == "t1:moejax-code.tgz"
    assert "--worker=all" in calls[2] and "--worker=all" in calls[6]
    assert "bash launch/setup.sh" in calls[5][-1]
    assert "--gin_file=$HOME/moejax/sweep/tpu-000-num_experts2/run.gin" in calls[6][-1]
    assert "--worker=0" in calls[14] and "launch/eval_sweep.sh" in calls[14][-1]
    # the checkpoints the grid names (Grid.eval_steps, 'all' by default), not eval's 'latest'
    assert calls[14][-1].endswith("/points.jsonl --steps=all")
    manifest = json.loads((root / "manifest.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["done", "failed"]

    # rerun on the existing VM: no create, the finished run skipped, the failed one retried
    monkeypatch.delenv("FAKE_GCLOUD_FAIL")
    log.unlink()
    assert main(["sweep", *common]) == 0
    trains = [c[-1] for c in _calls(log) if "ssh" in c and "moejax train" in c[-1]]
    assert len(trains) == 1 and "tpu-001-num_experts4" in trains[0]
    assert "queued-resources" not in " ".join(" ".join(c) for c in _calls(log))
    manifest = json.loads((root / "manifest.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["done", "done"]


def test_tpu_vm_launcher_needs_a_name_and_zone(tmp_path, capsys):
    grid = tmp_path / "tpu.gin"
    grid.write_text(GRID)
    assert main(["sweep", f"--grid={grid}", f"--root={tmp_path}/s", "--launcher=tpu_vm"]) == 2
    assert "--tpu is required with --launcher=tpu_vm" in capsys.readouterr().err
    assert main(["sweep", f"--grid={grid}", f"--root={tmp_path}/s", "--launcher=tpu_vm",
                 "--tpu=my-tpu"]) == 2
    assert "--zone is required with --launcher=tpu_vm" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before anything was written

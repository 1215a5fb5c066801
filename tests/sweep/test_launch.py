"""A reduced grid end to end: runs trained in their own processes, points, report, resumability."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from moejax.cli import main
from moejax.eval import load_points
from moejax.sweep.grid import load_grid
from moejax.sweep.launch import prepare, save_manifest
from moejax.train.metrics import load_jsonl
from tests.processes import private_tmpdir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GRID = """
Grid.name = 'tiny'
Grid.base_gin_files = ['smoke.gin']
Grid.bindings = [
    'ModelConfig.d_model = 32', 'ModelConfig.n_layers = 1', 'ModelConfig.n_heads = 2',
    'ModelConfig.d_ff = 64', 'MoEConfig.d_expert = 32', "DataConfig.vocabulary = 'byte'",
    'DataConfig.seq_len = 32', 'DataConfig.batch_size = 4', 'TrainConfig.steps = 3',
    'TrainConfig.warmup_steps = 1', 'TrainConfig.checkpoint_every = 3', 'TrainConfig.eval_every = 3',
    'TrainConfig.eval_batches = 1',
]
Grid.axes = {'MoEConfig.num_experts': [2], 'MoEConfig.top_k': [1, 2, 4]}
Grid.constraints = [@top_k_at_most_experts]
Grid.eval_steps = 'latest'
"""


def test_a_narrowed_sweep_keeps_the_whole_grid_in_its_manifest(tmp_path):
    """--only picks the runs to train; the manifest still lists every run of the grid, with the
    status and minutes earlier sweeps recorded, and only the picked runs get directories."""
    grid = tmp_path / "tiny.gin"
    grid.write_text(GRID)
    root = str(tmp_path / "sweep")
    manifest, selected = prepare(load_grid(str(grid)), root)
    assert [r["status"] for r in manifest["runs"]] == ["pending", "pending"]
    manifest["runs"][0].update(status="done", seconds=83.0)
    manifest["runs"][1].update(status="failed", seconds=4.5)
    save_manifest(root, manifest)
    manifest, selected = prepare(load_grid(str(grid)), root, only={"MoEConfig.top_k": "2"})
    assert [r["run_id"] for r in selected] == [manifest["runs"][1]["run_id"]]
    assert selected[0] is manifest["runs"][1]  # what a launcher records lands in the manifest
    recorded = [("done", 83.0), ("failed", 4.5)]
    assert [(r["status"], r["seconds"]) for r in manifest["runs"]] == recorded
    saved = json.loads(open(os.path.join(root, "manifest.json")).read())
    assert [(r["status"], r["seconds"]) for r in saved["runs"]] == recorded
    fresh = str(tmp_path / "fresh")
    prepare(load_grid(str(grid)), fresh, only={"MoEConfig.top_k": "2"})
    assert sorted(os.listdir(fresh)) == ["manifest.json", "tiny-001-num_experts2_top_k2"]


def _mtimes(run_dir):
    ckpt = os.path.join(run_dir, "checkpoints")
    return {name: os.path.getmtime(os.path.join(ckpt, name)) for name in os.listdir(ckpt)}


@pytest.mark.slow  # two sweeps of tiny runs in subprocesses, about a minute
def test_sweep_trains_scores_reports_and_never_retrains(tmp_path, capsys):
    grid = tmp_path / "tiny.gin"
    grid.write_text(GRID)
    root = tmp_path / "sweep"
    # A sweep stopped after its first run (here: asked for one point only) ...
    assert main(["sweep", f"--grid={grid}", f"--root={root}", "--only=MoEConfig.top_k=1"]) == 0
    manifest = json.loads((root / "manifest.json").read_text())
    first = manifest["runs"][0]
    # the manifest and the report list the whole grid; the other run waits
    assert [r["status"] for r in manifest["runs"]] == ["done", "pending"]
    minutes = f"| {first['run_id']} | 2 | 1 | done | {first['seconds'] / 60:.1f} |"
    assert minutes in (root / "report.md").read_text()
    before = _mtimes(first["dir"])
    # ... then the whole grid: the finished run is skipped, the others trained.
    assert main(["sweep", f"--grid={grid}", f"--root={root}"]) == 0
    out = capsys.readouterr().out
    assert f"{first['run_id']}: finished earlier, skipped" in out
    assert _mtimes(first["dir"]) == before
    manifest = json.loads((root / "manifest.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["done", "done"]  # top-k 1 and 2
    assert len(manifest["dropped"]) == 1 and "top_k" in manifest["dropped"][0]["reason"]
    points = load_points(str(root / "points.jsonl"))
    assert sorted(points["top_k"]) == [1, 2] and set(points["step"]) == {3}
    report = (root / "report.md").read_text()
    assert "done" in report and (root / "loss_curves.png").exists()
    assert minutes in report  # the skipped run keeps the minutes it trained for
    # each run's kernels.json reached the report: "auto" on CPU runs the "cpu" loops
    assert report.count("| cpu rows 512..16 slab 2 |") == 2


def _finalized_steps(run_dir):
    ckpt = os.path.join(run_dir, "checkpoints")
    return sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if os.path.isdir(ckpt) else []


@pytest.mark.slow
def test_sweep_killed_mid_run_resumes_without_retraining(tmp_path):
    """SIGKILL the sweep (and its trainer) once the first run is done and the second has a
    checkpoint; the rerun skips the first and resumes the second from its checkpoint."""
    grid = tmp_path / "tiny.gin"
    grid.write_text(GRID.replace("'TrainConfig.steps = 3'", "'TrainConfig.steps = 40'")
                    .replace("'TrainConfig.checkpoint_every = 3'", "'TrainConfig.checkpoint_every = 2'")
                    .replace("'TrainConfig.eval_every = 3'", "'TrainConfig.eval_every = 0'"))
    root = tmp_path / "sweep"
    command = [sys.executable, "-m", "moejax.cli", "sweep", f"--grid={grid}", f"--root={root}"]
    env = {**private_tmpdir(tmp_path), "PYTHONPATH": REPO}
    sweep = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    first, second = (root / "tiny-000-num_experts2_top_k1"), (root / "tiny-001-num_experts2_top_k2")
    deadline = time.time() + 300
    while not _finalized_steps(second) and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.05)
    os.killpg(sweep.pid, signal.SIGKILL)  # the sweep and the moejax train it started
    sweep.wait()
    partial = _finalized_steps(second)
    assert _finalized_steps(first)[-1] == 40 and partial and partial[-1] < 40, partial
    before = _mtimes(str(first))

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tiny-000-num_experts2_top_k1: finished earlier, skipped" in result.stdout
    assert _mtimes(str(first)) == before  # not retrained
    log = (second / "train.log").read_text()
    assert f"resumed from {second}/checkpoints/{partial[-1]}" in log
    steps = [r["step"] for r in load_jsonl(str(second / "metrics.jsonl"))]
    assert steps == list(range(1, 41))  # every step once, none trained twice in the record
    manifest = json.loads((root / "manifest.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["done", "done"]


@pytest.mark.slow
def test_cpu_paper_grid_end_to_end(tmp_path):
    """joint_moe_cpu (the cheapest paper grid), reduced with --only to its three 2-step runs at
    one depth and token budget: a dense run and two MoEs trained, scored and reported."""
    root = tmp_path / "jm"
    assert main(["sweep", "--grid=grids/joint_moe_cpu.gin", f"--root={root}", "--only=tokens=256",
                 "--only=ModelConfig.n_layers=1"]) == 0
    manifest = json.loads((root / "manifest.json").read_text())
    done = [r for r in manifest["runs"] if r["status"] == "done"]
    assert [r["values"]["MoEConfig.num_experts"] for r in done] == [1, 2, 4]
    assert len(manifest["runs"]) == 6
    assert {r["status"] for r in manifest["runs"]} == {"done", "pending"}
    points = load_points(str(root / "points.jsonl"))
    assert sorted(points["num_experts"]) == [1, 2, 4] and set(points["step"]) == {2}

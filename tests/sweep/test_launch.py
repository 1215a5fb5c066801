"""A reduced grid end to end: runs trained in their own processes, points, report, resumability."""

import json
import os

from moejax.cli import main
from moejax.eval import load_points

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


def _mtimes(run_dir):
    ckpt = os.path.join(run_dir, "checkpoints")
    return {name: os.path.getmtime(os.path.join(ckpt, name)) for name in os.listdir(ckpt)}


def test_sweep_trains_scores_reports_and_never_retrains(tmp_path, capsys):
    grid = tmp_path / "tiny.gin"
    grid.write_text(GRID)
    root = tmp_path / "sweep"
    # A sweep stopped after its first run (here: asked for one point only) ...
    assert main(["sweep", f"--grid={grid}", f"--root={root}", "--only=MoEConfig.top_k=1"]) == 0
    manifest = json.loads((root / "manifest.json").read_text())
    first = manifest["runs"][0]
    assert [r["status"] for r in manifest["runs"]] == ["done"]
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

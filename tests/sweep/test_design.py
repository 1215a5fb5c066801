"""``moejax sweep --dry_run``'s design table: each run's counts worked by hand from the grid's
axes, and a run whose configs fail shown with its error."""

from moejax.cli import main
from moejax.sweep.design import design_rows
from moejax.sweep.grid import load_grid
from moejax.sweep.launch import prepare

GRID = """
Grid.name = 'design'
Grid.base_gin_files = ['smoke.gin']
Grid.bindings = ['ModelConfig.d_model = 32', 'ModelConfig.n_layers = 2',
                 'ModelConfig.n_heads = 2', 'ModelConfig.d_ff = 64', 'MoEConfig.d_expert = 48',
                 "DataConfig.vocabulary = 'byte'",
                 'DataConfig.seq_len = 32', 'DataConfig.batch_size = 4', 'TrainConfig.steps = 10',
                 'TrainConfig.warmup_steps = 1']
Grid.axes = {'MoEConfig.num_experts': [2, 4], 'MoEConfig.top_k': [1]}
"""


def test_each_runs_counts_follow_its_axis_values(tmp_path):
    path = tmp_path / "grid.gin"
    path.write_text(GRID)
    manifest, _ = prepare(load_grid(str(path)), str(tmp_path / "root"))
    two, four = design_rows(manifest["runs"])
    assert (two["values"], four["values"]) == (
        {"MoEConfig.num_experts": 2, "MoEConfig.top_k": 1},
        {"MoEConfig.num_experts": 4, "MoEConfig.top_k": 1})
    # two more experts in each of 2 blocks: a SwiGLU of 3 x 32 x 48 and a router column of 32
    assert four["n_total"] - two["n_total"] == 2 * 2 * (3 * 32 * 48 + 32)
    # top-1 either way: only the router columns are active on top
    assert four["n_active"] - two["n_active"] == 2 * 2 * 32
    assert two["tokens"] == four["tokens"] == 4 * 32 * 10
    # a run whose run.gin no longer parses shows the error, the others still count
    (tmp_path / "root" / manifest["runs"][1]["run_id"] / "run.gin").write_text("Nope.x = 1\n")
    two, four = design_rows(manifest["runs"])
    assert "n_total" in two and "Nope" in four["error"]


def test_dry_run_prints_the_table(tmp_path, capsys):
    path = tmp_path / "grid.gin"
    path.write_text(GRID)
    assert main(["sweep", f"--grid={path}", f"--root={tmp_path / 'root'}", "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["run", "values", "N_total", "N_active", "tokens", "FLOPs"]
    assert lines[2].split()[1:3] == ["num_experts=2", "top_k=1"] and len(lines) == 4

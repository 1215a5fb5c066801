"""A reduced grid end to end: runs trained in their own processes, points, report, resumability."""

import json
import os
import shutil
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


def _tree(root):
    """{relative path: bytes} of every file under root: what a refused command must not change."""
    tree = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            tree[os.path.relpath(path, root)] = open(path, "rb").read()
    return tree


def _sweep(grid, root, *flags):
    return main(["sweep", f"--grid={grid}", f"--root={root}", *flags])


def _used_root(tmp_path):
    """A root holding the tiny grid's sweep: one run done, with a checkpoint, and a report."""
    grid = tmp_path / "tiny.gin"
    grid.write_text(GRID)
    root = tmp_path / "sweep"
    manifest, _ = prepare(load_grid(str(grid)), str(root))
    manifest["runs"][0].update(status="done", seconds=83.0)
    save_manifest(str(root), manifest)
    (root / manifest["runs"][0]["run_id"] / "checkpoints" / "3").mkdir(parents=True)
    (root / "report.md").write_text("the report\n")
    (root / "points.jsonl").write_text("{}\n")
    return grid, root


def test_another_grid_is_refused_in_a_used_root(tmp_path, capsys):
    """D25: a different grid run into a used root (even --dry_run) would rewrite its manifest
    without the earlier grid's runs and merge both grids' points: refused, nothing changed."""
    grid, root = _used_root(tmp_path)
    other = tmp_path / "other.gin"
    other.write_text(GRID.replace("'tiny'", "'other'"))
    before = _tree(root)
    for flags in (["--dry_run"], ["--launcher=print"], []):
        assert _sweep(other, root, *flags) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"moejax sweep: error: --root={root} holds the sweep of grid "
                              "'tiny' (2 run(s) in"), err
        assert "not of grid 'other': use another --root" in err
        assert _tree(root) == before
    # the same grid again is fine, and keeps what was recorded
    assert _sweep(grid, root, "--dry_run") == 0
    manifest = json.loads((root / "manifest.json").read_text())
    assert [(r["status"], r.get("seconds")) for r in manifest["runs"]] == [("done", 83.0),
                                                                          ("pending", None)]


def test_an_edited_grid_keeps_earlier_runs_and_refuses_changed_configs(tmp_path, capsys):
    """The same grid name with an axis value added still works: runs whose id changed stay in
    the manifest (earlier_runs) with their status. A run that has outputs and whose config the
    grid now changes is refused; one that only has its run.gin takes the new config."""
    grid, root = _used_root(tmp_path)
    # num_experts 1 first: every index shifts, so both old ids leave the grid
    grid.write_text(GRID.replace("'MoEConfig.num_experts': [2]", "'MoEConfig.num_experts': [1, 2]"))
    assert _sweep(grid, root, "--dry_run") == 0
    assert "2 run(s) of an earlier version of the grid kept" in capsys.readouterr().out
    manifest = json.loads((root / "manifest.json").read_text())
    assert len(manifest["runs"]) == 3 and {r["status"] for r in manifest["runs"]} == {"pending"}
    assert [(r["run_id"], r["status"]) for r in manifest["earlier_runs"]] == [
        ("tiny-000-num_experts2_top_k1", "done"), ("tiny-001-num_experts2_top_k2", "pending")]
    # back to the original grid: the earlier runs are the grid's runs again, status and all
    grid.write_text(GRID)
    assert _sweep(grid, root, "--dry_run") == 0
    manifest = json.loads((root / "manifest.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["done", "pending"]
    assert len(manifest["earlier_runs"]) == 3  # the edited grid's, never trained, kept too
    # more steps for the same run ids: the trained run's checkpoints come from 3 steps
    before = _tree(root)
    grid.write_text(GRID.replace("'TrainConfig.steps = 3'", "'TrainConfig.steps = 5'"))
    assert _sweep(grid, root, "--dry_run") == 2
    err = capsys.readouterr().err
    assert ("grid 'tiny' now gives run tiny-000-num_experts2_top_k1 another config than its "
            f"{root}/tiny-000-num_experts2_top_k1/run.gin ('TrainConfig.steps = 3' there, "
            "'TrainConfig.steps = 5' now)") in err and "use another --root" in err
    assert _tree(root) == before
    # ... while a run not started yet (narrowed to it) takes the new config
    assert _sweep(grid, root, "--dry_run", "--only=MoEConfig.top_k=2") == 2  # the other one
    shutil.rmtree(root / "tiny-000-num_experts2_top_k1" / "checkpoints")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["runs"][0]["status"] = "pending"
    save_manifest(str(root), manifest)
    assert _sweep(grid, root, "--dry_run") == 0
    run_gin = root / "tiny-000-num_experts2_top_k1" / "run.gin"
    assert "TrainConfig.steps = 5" in run_gin.read_text()


@pytest.mark.parametrize("only, message", [
    ("MoEConfig.top_k=3", "--only=MoEConfig.top_k=3: grid 'tiny' has no run with "
                          "MoEConfig.top_k = 3 (its values: 1, 2)"),
    ("MoEConfig.top_k=4", "--only=MoEConfig.top_k=4: grid 'tiny' has no run with "
                          "MoEConfig.top_k = 4 (its values: 1, 2); a constraint dropped "
                          "{'MoEConfig.num_experts': 2, 'MoEConfig.top_k': 4}: "
                          "MoEConfig.top_k = 4 > MoEConfig.num_experts = 2"),
    ("MoEConfig.topk=1", "--only=MoEConfig.topk=1: 'MoEConfig.topk' is not an axis of grid "
                         "'tiny' (axes: MoEConfig.num_experts, MoEConfig.top_k)"),
    ("MoEConfig.top_k", "--only='MoEConfig.top_k' is not KEY=VALUE"),
    ("=2", "--only='=2' is not KEY=VALUE"),
    ("MoEConfig.top_k=", "--only='MoEConfig.top_k=' is not KEY=VALUE"),
])
def test_only_that_selects_nothing_or_is_no_item_is_refused(tmp_path, capsys, only, message):
    """D23, D24: an --only that is not KEY=VALUE, names no axis or matches no value fails naming
    it, before anything is written: a fresh root is not even created, a used one not touched."""
    grid, root = _used_root(tmp_path)
    before = _tree(root)
    fresh = tmp_path / "fresh"
    for where in (root, fresh):
        assert _sweep(grid, where, "--dry_run", f"--only={only}") == 2
        assert capsys.readouterr().err.startswith(f"moejax sweep: error: {message}")
    assert _tree(root) == before and not fresh.exists()
    # items that each match a value but no run together, and one key given twice
    assert _sweep(grid, fresh, "--only=MoEConfig.top_k=1", "--only=MoEConfig.top_k=2") == 2
    assert "--only names MoEConfig.top_k twice (1 and 2)" in capsys.readouterr().err
    assert not fresh.exists()


def test_items_that_match_no_run_together_are_refused(tmp_path, capsys):
    grid = tmp_path / "g.gin"
    grid.write_text(GRID.replace("'MoEConfig.num_experts': [2]", "'MoEConfig.num_experts': [1, 2]"))
    assert _sweep(grid, tmp_path / "r", "--only=MoEConfig.num_experts=1",
                  "--only=MoEConfig.top_k=2", "--dry_run") == 2
    assert ("--only=MoEConfig.num_experts=1 --only=MoEConfig.top_k=2: no run of grid 'tiny' has "
            "these values together; a constraint dropped") in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text, problem", [
    ('{\n  "grid": "tiny",\n', "cannot be read as a sweep manifest (Expecting"),
    ('{"grid": "tiny"}', "is not a sweep manifest: it has no 'runs' list"),
    ('{"runs": []}', "is not a sweep manifest: it has no 'grid'"),
    ('[1, 2]', "is not a sweep manifest: it holds a JSON list, not an object"),
    ('{"grid": "tiny", "runs": [{"dir": "x"}]}',
     "is not a sweep manifest: it has a run without a 'run_id'"),
])
def test_a_broken_manifest_is_named_and_left_alone(tmp_path, capsys, text, problem):
    """D26: the file named with what is wrong and what to do; neither it nor the runs change."""
    grid, root = _used_root(tmp_path)
    (root / "manifest.json").write_text(text)
    before = _tree(root)
    assert _sweep(grid, root, "--dry_run") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moejax sweep: error: {root}/manifest.json {problem}"), err
    assert "move it aside (the run directories stay) or use another --root" in err
    assert _tree(root) == before


def test_a_root_that_is_a_file_is_refused(tmp_path, capsys):
    """D9: a file as --root (or under it) is named, not a FileExistsError traceback."""
    grid = tmp_path / "tiny.gin"
    grid.write_text(GRID)
    assert _sweep(grid, grid, "--dry_run") == 2
    assert capsys.readouterr().err == (f"moejax sweep: error: --root={grid}: {grid} is a file, "
                                       "not a directory: use another --root\n")
    assert _sweep(grid, grid / "sub", "--dry_run") == 2
    assert capsys.readouterr().err == (f"moejax sweep: error: --root={grid / 'sub'}: {grid} is a "
                                       "file, not a directory: use another --root\n")
    assert grid.read_text() == GRID


def test_a_grid_whose_constraints_drop_every_point_is_refused(tmp_path, capsys):
    grid = tmp_path / "empty.gin"
    # top-k 4 of 2 experts: top_k_at_most_experts drops the only combination
    grid.write_text(GRID.replace("'MoEConfig.top_k': [1, 2, 4]", "'MoEConfig.top_k': [4]"))
    assert _sweep(grid, tmp_path / "root", "--dry_run") == 2
    err = capsys.readouterr().err
    assert "keeps no run: its constraints dropped all 1 combination(s)" in err, err
    assert not (tmp_path / "root").exists()


def test_a_failed_fit_fails_the_sweep_with_its_message(tmp_path, capsys, monkeypatch):
    """D27: trained runs whose points do not fit the law (too few here) exit 1 with the fit's
    own message in report.md and on stderr; points that fit (the main job's) exit 0."""
    from moejax.sweep import launch

    def train(root, manifest, **kwargs):
        for run in manifest["runs"]:
            run["status"] = "done"

    points = tmp_path / "points.csv"
    monkeypatch.setattr(launch, "run_local", train)
    monkeypatch.setattr(launch, "evaluate_and_fit", lambda grid, root, manifest, runs: (
        launch.fit_and_report(grid, root, manifest, str(points))))
    grid = tmp_path / "tiny.gin"
    grid.write_text(GRID + "Grid.fit_law = 'chinchilla'\n"
                           "Grid.fit_columns = 'N=n_active,D=tokens_seen,loss=loss'\n")
    rows = open(os.path.join(REPO, "tests/laws/data/smoke_cpu_points.csv")).readlines()
    points.write_text("".join(rows[:3]))  # two points for five parameters
    assert _sweep(grid, tmp_path / "few") == 1
    message = "law 'chinchilla' has 5 parameters but only 2 training points; need more than 5"
    assert (f"moejax sweep: the fit of chinchilla failed: {message}\n"
            in capsys.readouterr().err)
    assert f"Fit failed: {message}." in (tmp_path / "few" / "report.md").read_text()
    points.write_text("".join(rows))
    assert _sweep(grid, tmp_path / "all") == 0
    report = (tmp_path / "all" / "report.md").read_text()
    assert "## Fitted law: `chinchilla` (converged)" in report and "Fit failed" not in report


def test_eval_steps_reach_the_scorer_as_steps(tmp_path, monkeypatch):
    """Grid.eval_steps = '20,40' is parsed into steps, not scored character by character."""
    import moejax.eval
    from moejax.sweep import launch

    asked = []
    monkeypatch.setattr(moejax.eval, "score_runs", lambda dirs, steps, **kwargs: (
        asked.append(steps) or type("Summary", (), {"failures": []})()))
    grid = tmp_path / "tiny.gin"
    grid.write_text(GRID.replace("'latest'", "'40,20'"))
    manifest = {"grid": "tiny", "runs": [{"run_id": "r", "dir": str(tmp_path), "status": "done"}]}
    launch.evaluate_and_fit(load_grid(str(grid)), str(tmp_path), manifest)
    assert asked == [[20, 40]]

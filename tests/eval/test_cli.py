"""``moejax eval`` end to end: three runs under a root, one with a corrupt checkpoint."""

import glob
import os
import shutil

from moejax.eval import load_points
from moejax.eval.cli import main


def _corrupt(workdir, step):
    """Overwrite every array file of a checkpoint with garbage (the metadata stays, so the
    checkpoint still looks finalized)."""
    state = os.path.join(workdir, "checkpoints", str(step), "state")
    files = [p for p in glob.glob(os.path.join(state, "**", "*"), recursive=True)
             if os.path.isfile(p) and ("ocdbt.process" in p or os.sep + "d" + os.sep in p)]
    assert files, "no array files found to corrupt"
    for path in files:
        with open(path, "wb") as f:
            f.write(b"\x00garbage" * 64)


def test_a_corrupt_run_is_reported_and_the_others_are_scored(trained_run, tmp_path, capsys):
    root = tmp_path / "sweep"
    for name in ("a", "b", "c"):
        shutil.copytree(trained_run, root / name)
    _corrupt(str(root / "b"), 4)
    points = str(tmp_path / "points.csv")

    code = main([f"--root={root}", f"--points={points}", "--steps=latest"])
    captured = capsys.readouterr()
    assert code == 1
    assert "scored 2 checkpoint(s) of 2 of 3 run(s)" in captured.out
    assert f"{root / 'b'} step 4: checkpoint" in captured.err and "could not be restored" in captured.err
    frame = load_points(points)
    assert sorted(frame["run_name"]) == ["a", "c"] and set(frame["step"]) == {4}
    assert frame["loss"].nunique() == 1  # copies of one run score the same

    # Re-running after removing the bad run: exit 0, the file still has one record per run.
    shutil.rmtree(root / "b")
    assert main([f"--root={root}", f"--points={points}", "--quiet"]) == 0
    assert len(load_points(points)) == 2


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main([]) == 2
    assert main([f"--root={tmp_path}"]) == 2
    assert main([f"--workdir={tmp_path}", "--steps=soon"]) == 2
    assert main([f"--workdir={tmp_path}", "--points=p.csv", "--format=parquet"]) == 2
    err = capsys.readouterr().err
    assert "give --workdir" in err and "no run directories" in err and "--steps='soon'" in err
    assert "suffix says csv" in err


def test_nothing_scored_says_nothing_was_written(trained_run, tmp_path, capsys):
    root = tmp_path / "sweep"
    shutil.copytree(trained_run, root / "b")
    _corrupt(str(root / "b"), 4)
    points = tmp_path / "points.csv"
    assert main([f"--root={root}", f"--points={points}", "--steps=latest"]) == 1
    assert (f"scored 0 checkpoint(s) of 0 of 1 run(s) (nothing written to {points})"
            in capsys.readouterr().out)
    assert not points.exists()

"""``moejax fit`` end to end on small inputs: files written, errors reported."""

import argparse
import json

import pytest

from moejax.laws import FitResult, cli

from .synthetic import synthetic_points


def _run(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_fit_points_file_writes_json_report_and_plots(tmp_path):
    points = synthetic_points("krajewski", n_points=80).rename(columns={"N": "n_params", "loss": "val_loss"})
    path = tmp_path / "points.csv"
    points.to_csv(path, index=False)
    out = tmp_path / "out"
    code = _run([f"--points={path}", "--law=krajewski", "--columns=N=n_params,loss=val_loss", "--bootstrap=8",
                 f"--out={out}", "--no-progress"])
    assert code == 0
    result = FitResult.from_json((out / "fit.json").read_text())
    assert result.law == "krajewski" and len(result.bootstrap_parameters) == 8
    report = (out / "report.md").read_text()
    assert "| alpha |" in report and "95 % CI" in report and "converged | True" in report
    for name in ("fitted_vs_observed.png", "residuals.png", "loss_vs_compute.png", "iso_loss.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_fit_clark_dataset_dense(tmp_path):
    assert _run(["--dataset=clark2022", "--router=dense", f"--out={tmp_path}", "--no-progress"]) == 0
    assert json.loads((tmp_path / "fit.json").read_text())["law"] == "clark_dense"


def test_bad_input_is_reported_not_raised(tmp_path, capsys):
    path = tmp_path / "points.csv"
    synthetic_points("chinchilla", n_points=20).drop(columns="D").to_csv(path, index=False)
    assert _run([f"--points={path}", f"--out={tmp_path / 'o'}", "--no-progress"]) == 2
    assert "D (column 'D')" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _run(["--law=chinchilla", f"--out={tmp_path}"])  # neither --points nor --dataset

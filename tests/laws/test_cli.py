"""``moejax fit`` end to end on small inputs: files written, errors reported."""

import argparse
import json

import pathlib

import pytest

from moejax import cli as moejax_cli
from moejax.laws import FitResult, cli

from .synthetic import synthetic_points

DATA = pathlib.Path(__file__).parent / "data"


def _run(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def _fit_command(argv) -> int:
    """``moejax fit ARGV``'s exit code, whether argparse or the command refused it."""
    try:
        return moejax_cli.main(["fit", *argv])
    except SystemExit as exit_:
        return exit_.code


def _must_not_fit(*args, **kwargs):
    raise AssertionError("a bad input must be refused before fitting")


def _refused(capsys, argv, *expected) -> str:
    """Run ``moejax fit ARGV``; assert exit 2, every ``expected`` piece in the stderr error,
    nothing on stdout, no traceback. Returns stderr."""
    code = _fit_command(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.out == ""
    assert "moejax fit: error: " in captured.err and "Traceback" not in captured.err
    for piece in expected:
        assert piece in captured.err, captured.err
    return captured.err


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
    assert "Caution" not in report


def test_points_that_cannot_pin_the_law_down_still_fit_plot_and_say_so(tmp_path):
    """The 18 points of `launch/main.sh`'s smoke grid (6 runs of 60 steps, losses 6.3-6.7):
    far too little to pin Chinchilla's law down. Bootstrap refits run off (with JAX 0.10.2, one
    reached A = 0.0 and alpha = -585), which once stopped the command with a math domain error
    before its plots; now every file is written and the report says the intervals mean little."""
    out = tmp_path / "out"
    code = _run([f"--points={DATA / 'smoke_cpu_points.csv'}", "--law=chinchilla", "--bootstrap=100",
                 f"--out={out}", "--columns=N=n_active,D=tokens_seen,loss=loss", "--no-progress"])
    assert code in (0, 1)  # 1: fitted and reported, the optimiser did not converge
    result = FitResult.from_json((out / "fit.json").read_text())
    assert result.bootstrap_converged_fraction < 0.5 and result.bootstrap_unit == "run_id"
    report = (out / "report.md").read_text()
    assert "**Caution:** only" in report and "resampling whole runs (`run_id`)" in report
    for name in ("fitted_vs_observed.png", "residuals.png", "loss_vs_compute.png", "iso_loss.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_fit_clark_dataset_dense(tmp_path):
    assert _run(["--dataset=clark2022", "--router=dense", f"--out={tmp_path}", "--no-progress"]) == 0
    assert json.loads((tmp_path / "fit.json").read_text())["law"] == "clark_dense"


def test_bad_input_is_reported_not_raised(tmp_path, capsys):
    path = tmp_path / "points.csv"
    synthetic_points("chinchilla", n_points=20).drop(columns="D").to_csv(path, index=False)
    assert _run([f"--points={path}", f"--out={tmp_path / 'o'}", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "moejax fit: error: " in captured.err and "D (column 'D')" in captured.err
    assert captured.out == "" and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exit_:
        _run(["--law=chinchilla", f"--out={tmp_path}"])  # neither --points nor --dataset
    assert exit_.value.code == 2
    assert "one of the arguments --points --dataset is required" in capsys.readouterr().err


def test_points_that_are_a_directory_are_refused_by_name(tmp_path, capsys):
    out = tmp_path / "out"
    _refused(capsys, [f"--points={tmp_path}", f"--out={out}"],
             f"points file {tmp_path} is a directory")
    assert not out.exists()


@pytest.mark.parametrize("option, message", [
    ("--bootstrap=-3", "argument --bootstrap: -3 is below 0; give 0 or more"),
    ("--bootstrap=two", "argument --bootstrap: 'two' is not an integer"),
    ("--seed=-1", "argument --seed: -1 is below 0"),
    ("--confidence=2", "argument --confidence: 2 is not between 0 and 1"),
    ("--confidence=0", "argument --confidence: 0 is not between 0 and 1"),
    ("--confidence=nan", "argument --confidence: nan is not between 0 and 1"),
    ("--holdout=1.5", "argument --holdout: '1.5': give 'paper'"),
    ("--holdout=inf", "argument --holdout: 'inf'"),
    ("--holdout=-1", "argument --holdout: '-1'"),
    ("--holdout=lowest:x", "argument --holdout: 'lowest:x'"),
])
def test_options_out_of_range_are_refused_before_fitting(tmp_path, capsys, monkeypatch, option,
                                                          message):
    monkeypatch.setattr(cli, "fit", _must_not_fit)
    out = tmp_path / "out"
    _refused(capsys, ["--dataset=clark2022", "--router=dense", "--bootstrap=4", option,
                      f"--out={out}", "--no-progress"], message)
    assert not out.exists()


def test_holdout_option_values():
    assert [cli._holdout(text) for text in ("paper", "none", "lowest:3", "3", "0", "0.25")] == \
        ["paper", "none", 3, 3, 0, 0.25]


def test_unknown_law_and_loss_column_are_named(tmp_path, capsys):
    out = tmp_path / "out"
    err = _refused(capsys, ["--dataset=clark2022", "--law=nope", f"--out={out}", "--no-progress"],
                   "error: unknown law 'nope'; known laws: ")
    assert not err.startswith('moejax fit: error: "')  # not a KeyError's quoted str()
    _refused(capsys, ["--dataset=clark2022", "--loss-column=nope", f"--out={out}", "--no-progress"],
             "loss column 'nope' is not in the data", "loss_validation", "loss_pile")
    assert not out.exists()


def test_points_without_rows_are_refused_as_empty(tmp_path, capsys):
    out = tmp_path / "out"
    header_only = tmp_path / "header_only.csv"
    header_only.write_text("N,D,loss\n")
    err = _refused(capsys, [f"--points={header_only}", f"--out={out}"],
                   f"{header_only} holds no points")
    assert "available: ." not in err
    for name, text in (("empty.csv", ""), ("blank.csv", "\n\n"), ("empty.jsonl", "")):
        (tmp_path / name).write_text(text)
        _refused(capsys, [f"--points={tmp_path / name}", f"--out={out}"],
                 f"points file {tmp_path / name} is empty")
    _refused(capsys, [f"--points={tmp_path / 'missing.csv'}", f"--out={out}"],
             f"points file {tmp_path / 'missing.csv'} does not exist")
    assert not out.exists()


def test_out_that_is_a_file_is_refused_before_fitting(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "fit", _must_not_fit)
    a_file = tmp_path / "a_file"
    a_file.write_text("kept")
    _refused(capsys, ["--dataset=clark2022", f"--out={a_file}"],
             f"--out {a_file}: {a_file} is a file, not a directory")
    _refused(capsys, ["--dataset=clark2022", f"--out={a_file / 'sub'}"],
             f"{a_file} is a file, not a directory")
    assert a_file.read_text() == "kept"


def test_a_failed_write_leaves_no_results_and_no_new_directory(tmp_path, capsys, monkeypatch):
    written = []

    def write_then_fail(path, payload):
        if written:
            raise OSError(28, "No space left on device")
        written.append(path)
        pathlib.Path(path).write_bytes(payload)

    monkeypatch.setattr(cli.files, "write_atomic", write_then_fail)
    out = tmp_path / "new" / "out"
    _refused(capsys, ["--dataset=clark2022", "--router=dense", f"--out={out}", "--no-progress"],
             f"cannot write the results to --out {out}", "No space left on device")
    assert written and not (tmp_path / "new").exists()


def test_hand_written_jsonl_is_refused_saying_what_to_do(tmp_path, capsys):
    out = tmp_path / "out"
    hand = tmp_path / "hand.jsonl"
    hand.write_text('{"N": 1e8, "D": 1e10, "loss": 3.0}\n')
    _refused(capsys, [f"--points={hand}", f"--out={out}"],
             f"{hand} is not a moejax eval points file", "no schema_version",
             "run_id and step", "as CSV")
    # Files that claim to be moejax eval's keep the schema check, CSV included.
    newer = tmp_path / "newer.jsonl"
    newer.write_text('{"schema_version": 99, "run_id": "a", "step": 1, "N": 1e8}\n')
    _refused(capsys, [f"--points={newer}", f"--out={out}"], "points schema version 99")
    newer_csv = tmp_path / "newer.csv"
    newer_csv.write_text("schema_version,run_id,step,N,D,loss\n99,a,1,1e8,1e10,3.0\n")
    _refused(capsys, [f"--points={newer_csv}", f"--out={out}"], "points schema version 99")
    assert not out.exists()


def test_points_that_are_not_text_are_refused_by_name(tmp_path, capsys):
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"N,D,loss\n\xff\xfe\x00\x01,2,3\n")
    _refused(capsys, [f"--points={binary}", f"--out={tmp_path / 'out'}"],
             f"{binary} is not a points file: not UTF-8 text")
    assert not (tmp_path / "out").exists()

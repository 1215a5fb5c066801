"""The sweep report (moejax/sweep/report.py): run table with axis values, the fitted law."""

import json

from moejax.sweep.report import write_report


def test_report_has_axis_columns_and_the_fitted_law_with_its_plots(tmp_path):
    run_dir = tmp_path / "g-000"
    run_dir.mkdir()
    manifest = {"grid": "g", "dropped": [],
                "runs": [{"run_id": "g-000", "dir": str(run_dir), "status": "failed",
                          "values": {"MoEConfig.num_experts": 4}, "seconds": 90.0}]}
    fit_dir = tmp_path / "fit"
    fit_dir.mkdir()
    (fit_dir / "fit.json").write_text(json.dumps({
        "law": "chinchilla", "converged": False, "n_train": 6, "train_rmse": 0.0123,
        "parameters": {"E": 1.5, "alpha": 0.34}}))
    (fit_dir / "loss_vs_compute.png").write_bytes(b"\x89PNG")
    text = open(write_report(str(tmp_path), manifest, {"fit": str(fit_dir)})).read()
    assert "| run | num_experts | status | minutes | validation loss (mixture) |" in text
    assert "| g-000 | 4 | failed | 1.5 | — |" in text  # no eval.jsonl: no loss
    assert "## Fitted law: `chinchilla` (did **not** converge)" in text
    assert "| alpha | 0.34 |" in text
    assert "](fit/loss_vs_compute.png)" in text and "fitted_vs_observed" not in text


def test_failed_fit_is_named(tmp_path):
    manifest = {"grid": "g", "runs": []}
    text = open(write_report(str(tmp_path), manifest, {"fit_error": "moejax fit exited 2"})).read()
    assert "Fit failed: moejax fit exited 2." in text

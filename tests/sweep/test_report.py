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
    assert ("| run | num_experts | status | minutes | validation loss (mixture) | "
            "expert matmuls |") in text
    assert "| g-000 | 4 | failed | 1.5 | — | — |" in text  # no eval.jsonl, no kernels.json
    assert "## Fitted law: `chinchilla` (did **not** converge)" in text
    assert "| alpha | 0.34 |" in text
    assert "](fit/loss_vs_compute.png)" in text and "fitted_vs_observed" not in text


def test_failed_fit_is_named(tmp_path):
    manifest = {"grid": "g", "runs": []}
    text = open(write_report(str(tmp_path), manifest, {"fit_error": "moejax fit exited 2"})).read()
    assert "Fit failed: moejax fit exited 2." in text


def test_report_names_the_kernels_a_run_used(tmp_path):
    # kernels.json as a resumed run leaves it: the latest segment (here on a GPU) is reported,
    # each distinct choice once; a dense run (no grouped matmul) says "none"
    moe, dense = tmp_path / "g-000", tmp_path / "g-001"
    for run_dir, segments in (
            (moe, [{"start_step": 0, "gmm": [{"choice": "cpu rows 512..16 slab 2"}]},
                   {"start_step": 50, "gmm": [{"choice": "pallas_gpu 128x64x256 w8 s3"},
                                              {"choice": "pallas_gpu 128x64x256 w8 s3"}]}]),
            (dense, [{"start_step": 0, "gmm": []}])):
        run_dir.mkdir()
        (run_dir / "kernels.json").write_text(json.dumps(
            {"format": "moejax-kernels/1", "segments": segments}))
    manifest = {"grid": "g", "runs": [
        {"run_id": name, "dir": str(tmp_path / name), "status": "done", "values": {}}
        for name in ("g-000", "g-001")]}
    text = open(write_report(str(tmp_path), manifest, {})).read()
    assert "| g-000 | done | — | — | pallas_gpu 128x64x256 w8 s3 |" in text
    assert "| g-001 | done | — | — | none |" in text

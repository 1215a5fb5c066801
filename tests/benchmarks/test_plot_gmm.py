"""benchmarks/plot_gmm.py: reading gmm.py's lines, naming bad ones, labelling and plotting."""

import importlib.util
import json
import os

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "plot_gmm", os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "plot_gmm.py"))
plot_gmm = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(plot_gmm)


def line(case="m8192_d512_f512_e8_k2_balanced", impl="cpu", **fields):
    record = {"case": case, "impl": impl, "tiling": None, "ratio_vs_dense_fwd": 0.9,
              "ratio_vs_dense": 0.85, "ratio_vs_ragged_dot": None, "errors": None,
              "backend": "cpu", "device": "cpu", "dtype": "float32", "jax": "0.10.2",
              "date": "2026-11-23"}
    record.update(fields)
    return json.dumps(record)


def write(path, *lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_reads_grid_lines_skips_parts_and_names_bad_lines(tmp_path):
    parts = json.dumps({"case": "x", "impl": "cpu", "fwd_ratio": 0.9, "drhs_ratio": 0.8})
    good = write(tmp_path / "a.jsonl", line(), parts, "", line(impl="tuned"))
    assert [r["impl"] for r in plot_gmm.read_lines([good])] == ["cpu", "tuned"]
    with pytest.raises(plot_gmm.PlotInputError, match=r"b\.jsonl:2: not JSON"):
        plot_gmm.read_lines([good, write(tmp_path / "b.jsonl", line(), "{torn")])
    with pytest.raises(plot_gmm.PlotInputError, match=r"c\.jsonl:1: .*no ratio_vs_dense"):
        plot_gmm.read_lines([write(tmp_path / "c.jsonl", json.dumps(
            {"case": "x", "impl": "cpu", "ratio_vs_dense_fwd": 1.0}))])
    with pytest.raises(plot_gmm.PlotInputError, match="no gmm.py grid lines"):
        plot_gmm.read_lines([write(tmp_path / "d.jsonl", parts)])


def test_failures_are_told_apart():
    oom = "JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 34.02GiB"
    ragged_oom = json.loads(line(impl="pallas_gpu", errors={"xla_fwdbwd": oom}))
    assert plot_gmm.failure(ragged_oom, "ratio_vs_ragged_dot") == "ragged_dot failed (out of memory)"
    assert plot_gmm.failure(ragged_oom, "ratio_vs_dense") is None  # the contender itself ran
    compile_error = json.loads(line(impl="pallas_gpu", errors={"pallas_gpu_fwd": "ValueError: x"}))
    assert plot_gmm.failure(compile_error, "ratio_vs_dense_fwd") == "failed"
    assert plot_gmm.failure(compile_error, "ratio_vs_ragged_dot") is None
    # with ragged_dot as the contender, its own errors are the contender's
    itself = json.loads(line(impl="xla", errors={"xla_fwd": oom}))
    assert plot_gmm.failure(itself, "ratio_vs_dense_fwd") == "failed (out of memory)"


def test_labels_distinguish_devices_and_files_only_when_needed(tmp_path):
    one = plot_gmm.read_lines([write(tmp_path / "before.jsonl", line(), line(impl="tuned"))])
    assert [plot_gmm.labeller(one)(r) for r in one] == ["cpu", "tuned"]
    two = one + plot_gmm.read_lines([write(tmp_path / "after.jsonl", line())])
    assert [plot_gmm.labeller(two)(r) for r in two] == [
        "cpu (before)", "tuned (before)", "cpu (after)"]
    gpu = json.loads(line(impl="pallas_gpu", tiling=[128, 64, 256, 8, 3], device="H100"))
    mixed = one[:1] + [dict(gpu, source="h100")]
    assert [plot_gmm.labeller(mixed)(r) for r in mixed] == [
        "cpu @ cpu", "pallas_gpu [128, 64, 256, 8, 3] @ H100"]


def test_the_command_writes_a_png_and_reports_bad_input(tmp_path, capsys):
    results = write(tmp_path / "grid.jsonl", line(), line(impl="tuned", ratio_vs_dense=None,
                                                          errors={"tuned_fwdbwd": "boom"}),
                    line(case="m8192_d1024_f512_e128_k8_zipf", ratio_vs_ragged_dot=12.5))
    out = tmp_path / "grid.png"
    assert plot_gmm.main([results, "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    assert plot_gmm.main([str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "missing.jsonl" in capsys.readouterr().err

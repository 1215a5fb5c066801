import argparse
import json

import pytest

from moejax.plan import cli


def _run(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_plan_memory_bound_worked_example(tmp_path, capsys):
    out = tmp_path / "plan"
    assert _run(["--flops=6e19", "--memory-bytes=2e9", "--experts=1,4,16", f"--out={out}"]) == 0
    plans = json.loads((out / "plan.json").read_text())["plans"]
    e16 = next(p for p in plans if p["E"] == 16)
    assert abs(e16["n_active"] / 155e6 - 1) < 0.02
    assert "Recommended" in capsys.readouterr().out


def test_plan_compute_and_inference_modes(tmp_path):
    from moejax.plan import compute_optimal

    assert _run(["--flops=1e21", "--experts=8", f"--out={tmp_path / 'train'}"]) == 0
    trained = json.loads((tmp_path / "train" / "plan.json").read_text())["plans"]
    assert _run(["--flops=1e21", "--inference-tokens=1e12", "--experts=8",
                 f"--out={tmp_path / 'serve'}"]) == 0
    served = json.loads((tmp_path / "serve" / "plan.json").read_text())["plans"]
    (train,), (serve,) = trained, served
    # training alone spends 6 N D; with 1e12 tokens to serve, 2 N per served token comes out of
    # the same budget, so the model shrinks below the training-only optimum
    assert 6 * train["n_active"] * train["tokens"] == pytest.approx(1e21, rel=1e-6)
    assert train["n_active"] == pytest.approx(compute_optimal(1e21, 8)[0], rel=1e-6)
    assert 6 * serve["n_active"] * serve["tokens"] + 2 * serve["n_active"] * 1e12 == \
        pytest.approx(1e21, rel=1e-6)
    assert serve["n_active"] < 0.9 * train["n_active"]

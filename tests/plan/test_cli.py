import argparse
import json

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


def test_plan_compute_and_inference_modes():
    assert _run(["--flops=1e21"]) == 0
    assert _run(["--flops=1e21", "--inference-tokens=1e12", "--experts=8"]) == 0

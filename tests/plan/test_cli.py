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


def _main(argv):
    """`moejax plan ARGV` as the command runs it: its exit status, argparse's refusals included."""
    from moejax.cli import main

    try:
        return main(["plan", *argv])
    except SystemExit as exit_:
        return exit_.code


def _refused(argv, tmp_path, capsys, *names):
    """The command exits 2, says `moejax plan: error:` and `names` on stderr, no traceback, no
    report on stdout, and leaves no --out directory behind."""
    out = tmp_path / "refused"
    assert _main([*argv, f"--out={out}"]) == 2
    captured = capsys.readouterr()
    assert "moejax plan: error:" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "# moejax plan" not in captured.out
    for name in names:
        assert name in captured.err, (name, captured.err)
    assert not out.exists()
    return captured.err


JOINT_MOE_BAD_ARGUMENTS = [
    (["--flops=-1e21"], ["--flops", "> 0", "-1e21"]),  # D16: was a TypeError about complex numbers
    (["--flops=0"], ["--flops", "> 0"]),  # D16: was a ZeroDivisionError
    (["--flops=nan"], ["--flops", "not a number"]),
    (["--flops=inf"], ["--flops", "finite"]),
    (["--flops=1e21", "--memory-bytes=-4e9"], ["--memory-bytes", "> 0"]),  # D17
    (["--flops=1e21", "--memory-bytes=0"], ["--memory-bytes", "> 0"]),
    (["--flops=1e21", "--inference-tokens=-5"], ["--inference-tokens", ">= 0"]),  # D18
    (["--flops=1e21", "--context-tokens=-1e6", "--memory-bytes=4e9"], ["--context-tokens"]),
    (["--flops=1e21", "--serving-context=-5"], ["--serving-context", ">= 0"]),
    (["--flops=1e21", "--experts=a,b"], ["--experts", "'a' is not a number"]),  # D19
    (["--flops=1e21", "--experts=0,-4"], ["--experts", "'0' is not a whole number >= 1"]),
    (["--flops=1e21", "--experts=1.5"], ["--experts", "'1.5' is not a whole number"]),
    (["--flops=1e21", "--experts=,"], ["--experts", "lists no number"]),
    (["--flops=1e21", "--top=0"], ["--top", "'0' is not a whole number >= 1"]),  # D21
    (["--memory-bytes=4e9"], ["--flops", "required without --liew"]),
    (["--flops=1e21", "--memory-params=1e9"], ["--memory-params", "ignored"]),
    (["--flops=1e21", "--inference-tokens=1e30"], ["serving 1e+30 tokens", "1e+21 FLOP budget"]),
    (["--flops=1e21", "--attention=gqa"], ["--attention", "'gqa'", "gqa:GROUP"]),
    (["--flops=1e21", "--attention=gqa:0"], ["--attention", "group >= 1", "0"]),
    (["--flops=1e21", "--attention=mla:256:33"], ["--attention", "even rope_dim", "33"]),
    (["--flops=1e21", "--attention=mla:x"], ["--attention", "'x' is not whole numbers"]),
    (["--flops=1e21", "--attention=mqa"], ["--attention", "'mqa' is not one of", "mha"]),
    (["--flops=1e21", "--attention=mha,gqa:3:1"], ["--attention", "'gqa:3:1' is not one of"]),
    (["--flops=1e21", "--attention=,"], ["--attention", "names none"]),
    (["--flops=1e21", "--memory-bytes=1e6", "--attention=mha,gqa:8"],
     ["no attention fits a model", "mha: ", "gqa:8: "]),
]


@pytest.mark.parametrize("argv, names", JOINT_MOE_BAD_ARGUMENTS,
                         ids=[" ".join(argv) for argv, _ in JOINT_MOE_BAD_ARGUMENTS])
def test_joint_moe_bad_arguments_exit_2_naming_the_problem(argv, names, tmp_path, capsys):
    _refused(argv, tmp_path, capsys, *names)


LIEW_BAD_ARGUMENTS = [
    (["--memory-params=-1"], ["--memory-params", "> 0"]),
    (["--memory-params=0"], ["--memory-params", "> 0"]),
    (["--memory-params=1e9", "--active-params=0"], ["--active-params", "> 0"]),
    (["--memory-params=1e9", "--active-params=nan"], ["--active-params", "not a number"]),
    (["--memory-params=1e9", "--flops=-1"], ["--flops", "> 0"]),  # was negative token counts
    (["--memory-params=1e9", "--experts=a"], ["--experts", "'a' is not a number"]),
    (["--memory-params=1e9", "--experts=0"], ["--experts", "'0' is not a whole number"]),
    (["--memory-params=1e9", "--depths=0"], ["--depths", "'0'"]),
    (["--memory-params=1e9", "--widths=-64"], ["--widths", "'-64'"]),
    (["--memory-params=1e9", "--widths=129"], ["--widths", "129", "n_heads"]),
    (["--memory-params=1e9", "--top-ks=0"], ["--top-ks", "'0'"]),
    (["--memory-params=1e9", "--granularities=0"], ["--granularities", "'0'"]),
    (["--memory-params=1e9", "--vocab-size=0"], ["--vocab-size", "'0'"]),
    (["--memory-params=1e9", "--top=0"], ["--top", "'0'"]),
    (["--memory-params=1e9", "--experts=1,2", "--top-ks=4"], ["give no candidate", "top-k <= E"]),
    (["--memory-params=1e5"], ["no candidate fits", "1e+05", "smallest N_total is 6.26e+06"]),
    ([], ["--liew needs --memory-params"]),
    (["--memory-params=1e9", "--memory-bytes=4e9"], ["--memory-bytes", "ignored by --liew"]),
    (["--memory-params=1e9", "--inference-tokens=1e11"], ["--inference-tokens", "ignored"]),
    (["--memory-params=1e9", "--attention=mha,gqa:8"], ["one attention at a time", "mha, gqa:8"]),
]


@pytest.mark.parametrize("argv, names", LIEW_BAD_ARGUMENTS,
                         ids=[" ".join(argv) or "no budget" for argv, _ in LIEW_BAD_ARGUMENTS])
def test_liew_bad_arguments_exit_2_naming_the_problem(argv, names, tmp_path, capsys):
    _refused(["--liew", *argv], tmp_path, capsys, *names)


def test_memory_budget_too_small_for_every_expert_count(tmp_path, capsys):
    # D17: was a ValueError traceback from memory_optimal; the CLI's own message was dead code
    from moejax.plan import joint_moe_counts

    smallest = 2 * joint_moe_counts(64, 1).n_total
    _refused(["--flops=1e21", "--memory-bytes=10"], tmp_path, capsys,
             "memory budget of 10 bytes", f"needs {smallest:.3g} bytes")


def test_expert_count_that_fits_no_model_is_skipped_with_its_reason(tmp_path, capsys):
    out = tmp_path / "plan"
    assert _main(["--flops=1e21", "--memory-bytes=1.5e7", "--experts=1,64", f"--out={out}"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert [row["E"] for row in plan["plans"]] == [1]
    (skipped,) = plan["skipped"]
    assert skipped["E"] == 64 and "1.5e+07 bytes" in skipped["reason"]
    assert "E = 64: the smallest model" in (out / "report.md").read_text()


def _write(path, payload):
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def test_fit_file_problems_are_named(tmp_path, capsys):
    # D20: missing file, garbled JSON and missing parameters were tracebacks
    from moejax.plan import JOINT_MOE_TABLE3

    missing = tmp_path / "missing.json"
    _refused(["--flops=1e21", f"--fit={missing}"], tmp_path, capsys, str(missing),
             "No such file")
    garbled = _write(tmp_path / "garbled.json", "{garb")
    _refused(["--flops=1e21", f"--fit={garbled}"], tmp_path, capsys, str(garbled), "not JSON")
    listed = _write(tmp_path / "list.json", [1, 2])
    _refused(["--flops=1e21", f"--fit={listed}"], tmp_path, capsys, str(listed), "holds no fit")
    partial = {k: v for k, v in JOINT_MOE_TABLE3.items() if k not in ("E_start", "E_max")}
    partial = _write(tmp_path / "partial.json", {"law": "joint_moe", "parameters": partial})
    _refused(["--flops=1e21", f"--fit={partial}"], tmp_path, capsys, str(partial),
             "lacks the joint_moe parameter(s) E_start, E_max")
    other = _write(tmp_path / "other.json", {"law": "chinchilla", "parameters": {}})
    _refused(["--flops=1e21", f"--fit={other}"], tmp_path, capsys,
             "holds a 'chinchilla' fit; plan needs joint_moe")
    texty = _write(tmp_path / "texty.json",
                   {"law": "joint_moe", "parameters": {**JOINT_MOE_TABLE3, "c": "x"}})
    _refused(["--flops=1e21", f"--fit={texty}"], tmp_path, capsys, "c are not finite numbers")
    rising = _write(tmp_path / "rising.json",
                    {"law": "joint_moe", "parameters": {**JOINT_MOE_TABLE3, "alpha": 0.3}})
    _refused(["--flops=1e21", "--experts=8", f"--fit={rising}"], tmp_path, capsys,
             "at E = 8", "mu, nu < 0")
    good = _write(tmp_path / "good.json", {"law": "joint_moe", "parameters": JOINT_MOE_TABLE3})
    assert _main(["--flops=1e21", "--experts=8", f"--fit={good}"]) == 0


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    # D9: an existing regular file as --out was a FileExistsError after the report was printed
    existing = _write(tmp_path / "plan.txt", "keep me")
    for out in (existing, existing / "sub"):
        assert _main(["--flops=1e21", f"--out={out}"]) == 2
        captured = capsys.readouterr()
        assert f"--out={out}" in captured.err and "not a directory" in captured.err
        assert captured.out == ""
        assert existing.read_text() == "keep me"
    assert _main(["--liew", "--memory-params=1e9", f"--out={existing}"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_errors_go_to_stderr_not_stdout(capsys):
    # D15: plan printed its errors on stdout
    for argv in (["--memory-bytes=4e9"], ["--liew"], ["--liew", "--memory-params=1e5"],
                 ["--flops=1e21", "--memory-bytes=10"]):
        assert _main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("moejax plan: error:")


def test_memory_and_inference_budgets_together(tmp_path):
    # D22: with --memory-bytes the inference tokens were dropped: the README's example planned
    # exactly as if nothing were served
    def plans(*extra):
        out = tmp_path / "_".join(extra or ("none",)).replace("=", "").replace("-", "")
        assert _main(["--flops=1e21", "--memory-bytes=4e9", *extra, f"--out={out}"]) == 0
        return json.loads((out / "plan.json").read_text())["plans"]

    served, trained = plans("--inference-tokens=1e11"), plans()
    assert [row["E"] for row in served] == [row["E"] for row in trained]
    for serve, train in zip(served, trained):
        assert 6 * serve["n_active"] * serve["tokens"] + 2 * serve["n_active"] * 1e11 == \
            pytest.approx(1e21, rel=1e-9)
        assert 2 * serve["n_total"] <= 4e9 * (1 + 1e-12)
        assert serve["memory_bytes"] <= 4e9 * (1 + 1e-12)
        assert serve["n_active"] <= train["n_active"] * (1 + 1e-9)
        assert serve["tokens"] < train["tokens"] and serve["loss"] > train["loss"]
    # E = 1: the inference-aware optimum is smaller than the memory limit, so it is the plan
    assert served[0]["size_set_by"] == "budget" and trained[0]["size_set_by"] == "memory"


def test_serving_cost_of_a_model_too_big_to_serve_is_reported_not_a_crash(capsys):
    # 1e26 FLOPs plans trillion-parameter models that fit on no 64 H100s
    assert _main(["--flops=1e26", "--experts=1,64"]) == 0
    assert "| over 64 devices |" in capsys.readouterr().out

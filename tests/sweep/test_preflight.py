"""``moejax sweep --preflight``: every run of a grid compiled by XLA:TPU for a TPU slice.

Independent checks: the compiler's own verdicts (a run with a batch too big for a v5e chip is
refused for HBM, the others fit), the records' order and values against the grid's axes, the
file on disk after every run, and the exit status from the verdicts.
"""

from __future__ import annotations

import json

import pytest

from moejax.cli import main
from moejax.parallel import topology
from moejax.sweep import preflight as preflight_module

GRID = """
Grid.name = 'pre'
Grid.base_gin_files = ['smoke.gin']
Grid.bindings = ['DataConfig.seq_len = 128', 'MoEConfig.num_experts = 4']
Grid.axes = {'DataConfig.batch_size': [8, 16384], 'MoEConfig.top_k': [1, 8]}
Grid.constraints = [@top_k_at_most_experts]
"""


@pytest.mark.skipif(topology.libtpu_path() is None,
                    reason="libtpu not installed (launch/setup.sh dev installs it on Linux x86_64)")
def test_preflight_compiles_each_run_and_finds_the_one_too_big(tmp_path, capsys):
    grid = tmp_path / "pre.gin"
    grid.write_text(GRID)
    root = tmp_path / "sweep"
    status = main(["sweep", f"--grid={grid}", f"--root={root}", "--preflight=v5e:1x1"])
    out = capsys.readouterr().out
    assert status == 3, out  # one run does not fit
    records = json.loads((root / "preflight.json").read_text())
    # top-k 8 of 4 experts is dropped by the constraint: two runs, in the grid's order
    assert [r["values"]["DataConfig.batch_size"] for r in records] == [8, 16384]
    small, big = records
    assert small["status"] == "fits" and small["devices"] == 1
    assert 0 < small["total_bytes"] < small["hbm_bytes"] == 16 << 30
    assert big["status"] == "too big" and "HBM" in big["error"]
    assert "[1/2]" in out and "[2/2]" in out and "too big" in out
    # nothing was trained
    assert not any(p.name == "checkpoints" for p in root.rglob("checkpoints"))


def test_preflight_without_libtpu_stops_before_the_first_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(topology, "libtpu_path", lambda: None)
    grid = tmp_path / "pre.gin"
    grid.write_text(GRID)
    status = main(["sweep", f"--grid={grid}", f"--root={tmp_path / 's'}",
                   "--preflight=v5e:2x2"])
    assert status == 2
    assert "needs libtpu" in capsys.readouterr().err
    assert not (tmp_path / "s" / "preflight.json").exists()


@pytest.mark.parametrize("statuses, expected", [
    (["fits", "fits"], 0), (["fits", "compiled"], 0), (["fits", "too big"], 3),
    (["too big", "failed"], 1), (["config error"], 1), ([], 0)])
def test_exit_status_follows_the_verdicts(statuses, expected):
    assert preflight_module.exit_status([{"status": s} for s in statuses]) == expected

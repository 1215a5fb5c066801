"""``moejax sweep --preflight``: every run of a grid compiled for a TPU slice or NVIDIA GPUs.

Independent checks: the compiler's own verdicts (a run with a batch too big for a v5e chip is
refused for HBM, the others fit), the records' order and values against the grid's axes, the
file on disk after every run, and the exit status from the verdicts.
"""

from __future__ import annotations

import json
import os

import pytest

from moejax.cli import main
from moejax.parallel import gpu_topology, topology
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


def _configs(*bindings):
    import gin

    from moejax.parallel.mesh import configured_mesh
    from moejax.train.cli import load_configs

    gin.clear_config()
    try:
        model, data, train = load_configs(["configs/smoke.gin"], list(bindings))
        return model, data, train, configured_mesh()
    finally:
        gin.clear_config()


def test_runs_differing_only_in_steps_or_learning_rate_share_a_program():
    key = preflight_module.program_key
    base = key(*_configs())
    assert key(*_configs("TrainConfig.steps = 12345", "TrainConfig.learning_rate = 1e-2",
                         "TrainConfig.warmup_steps = 7", "TrainConfig.seed = 3")) == base
    for changed in ("DataConfig.batch_size = 32", "TrainConfig.grad_accum_steps = 2",
                    "MoEConfig.num_experts = 8", "ModelConfig.d_model = 256",
                    "MeshConfig.data = 1", "TrainConfig.grad_clip_norm = 0.0"):
        assert key(*_configs(changed)) != base, changed


needs_plugin = pytest.mark.skipif(
    not os.path.isdir(os.path.join(gpu_topology.plugin_dir(), "jax_plugins")),
    reason="JAX's CUDA plugin not installed (launch/setup.sh dev installs it on Linux x86_64)")


@pytest.mark.slow  # 25 s: GPU targets and one compile per distinct program (TPU preflight: fast)
@needs_plugin
def test_preflight_for_gpus_compiles_each_distinct_program_once(tmp_path, capsys, monkeypatch):
    grid = tmp_path / "lr.gin"
    grid.write_text("""
Grid.name = 'lr'
Grid.base_gin_files = ['smoke.gin']
Grid.bindings = ['DataConfig.seq_len = 128']
Grid.axes = {'DataConfig.batch_size': [8, 4096], 'TrainConfig.learning_rate': [1e-3, 3e-3]}
""")
    compiles = []
    real = preflight_module._compile_run
    monkeypatch.setattr(preflight_module, "_compile_run",
                        lambda *args: compiles.append(1) or real(*args))
    root = tmp_path / "sweep"
    status = main(["sweep", f"--grid={grid}", f"--root={root}", "--preflight=l4"])
    out = capsys.readouterr().out
    assert status == 3, out  # 4,096 sequences a step do not fit an L4
    records = json.loads((root / "preflight.json").read_text())
    assert len(records) == 4 and len(compiles) == 2
    by_values = {(r["values"]["DataConfig.batch_size"], r["values"]["TrainConfig.learning_rate"]):
                 r for r in records}
    small, small_again = by_values[(8, 1e-3)], by_values[(8, 3e-3)]
    assert small["status"] == small_again["status"] == "fits"
    assert small_again["same_program_as"] == small["run_id"]
    assert small_again["total_bytes"] == small["total_bytes"] > 0
    assert {by_values[(4096, lr)]["status"] for lr in (1e-3, 3e-3)} == {"too big"}
    assert small["device"] == "NVIDIA L4" and "(same program as" in out

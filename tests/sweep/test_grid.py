"""Grid expansion: counts, order, constraints, run ids, complete run configs."""

import re

import pytest

from moejax.errors import ConfigError
from moejax.ginconf import GinConfigError
from moejax.sweep.constraints import steps_from_tokens
from moejax.sweep.grid import (Grid, check_after_training, combinations, expand, load_grid,
                               top_k_at_most_experts)
from moejax.sweep.launch import prepare
from moejax.train.cli import load_configs


def test_cartesian_product_in_axis_order():
    combos = combinations({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(combos) == 6
    assert combos[:3] == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"}]
    with pytest.raises(ConfigError, match="non-empty list"):
        combinations({"a": []})


def test_constraints_drop_and_derive():
    def double_steps_for_top1(point):
        return {**point, "TrainConfig.steps": 20} if point["MoEConfig.top_k"] == 1 else point

    grid = Grid(name="g", base_gin_files=["smoke.gin"], bindings=["TrainConfig.steps = 10"],
                axes={"MoEConfig.num_experts": [1, 2, 4], "MoEConfig.top_k": [1, 2, 4]},
                constraints=[top_k_at_most_experts, double_steps_for_top1])
    kept, dropped = expand(grid)
    assert len(kept) == 6 and len(dropped) == 3  # (1,2), (1,4), (2,4) dropped
    assert all("top_k" in reason for _, reason in dropped)
    assert [p.run_id for p in kept][:2] == ["g-000-num_experts1_top_k1",
                                            "g-001-num_experts2_top_k1"]  # axis values only
    assert kept[0].values["TrainConfig.steps"] == 20
    # later bindings win in gin: the derived steps override the fixed ones
    model, data, train = load_configs(["smoke.gin"], list(kept[0].bindings))
    assert train.steps == 20 and model.moe.num_experts == 1 and model.moe.top_k == 1


def test_shipped_smoke_grid_expands_to_valid_runs(tmp_path):
    grid = load_grid("grids/smoke_cpu.gin")
    kept, dropped = expand(grid)
    assert len(kept) >= 6 and not dropped
    for point in kept:
        path = tmp_path / f"{point.run_id}.gin"
        path.write_text(point.gin_text(grid))
        model, data, train = load_configs([str(path)], [])
        assert (model.moe.num_experts, model.moe.top_k) == (point.values["MoEConfig.num_experts"],
                                                            point.values["MoEConfig.top_k"])


def test_zipped_axes_vary_together_and_derived_inputs_stay_out_of_gin():
    grid = Grid(name="z", base_gin_files=["smoke.gin"],
                bindings=["DataConfig.batch_size = 4", "DataConfig.seq_len = 32"],
                axes={"ModelConfig.n_layers, ModelConfig.d_model": [(1, 32), (2, 64)],
                      "tokens": [1280, 2560]},
                constraints=[steps_from_tokens])
    kept, dropped = expand(grid)
    assert not dropped and len(kept) == 4  # 2 zipped rows x 2 token budgets, not 2 x 2 x 2
    assert [(p.values["ModelConfig.d_model"], p.values["TrainConfig.steps"]) for p in kept] == [
        (32, 10), (32, 20), (64, 10), (64, 20)]
    assert kept[0].run_id == "z-000-n_layers1_d_model32_tokens1280"
    assert "tokens" not in " ".join(kept[0].bindings)  # not a gin knob ...
    assert "# tokens = 1280 (derived input)" in kept[0].gin_text(grid)  # ... but recorded
    # constraints read the fixed bindings; unchanged fixed values are not repeated per point
    assert "DataConfig.batch_size" not in kept[0].values


def test_bad_grids_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="zipped axis of 2 names needs tuples of 2"):
        combinations({"a, b": [(1, 2), (3,)]})
    with pytest.raises(ConfigError, match="names a binding twice"):
        combinations({"a, b": [(1, 2)], "b": [3]})
    with pytest.raises(ConfigError, match="steps_from_tokens needs tokens"):
        expand(Grid(name="t", bindings=["DataConfig.batch_size = 4", "DataConfig.seq_len = 8"],
                    axes={"tokns": [100]}, constraints=[steps_from_tokens]))
    with pytest.raises(ConfigError, match=r"\['tokns'\] are neither gin bindings"):
        expand(Grid(name="t", axes={"tokns": [100]}, constraints=[top_k_at_most_experts]))
    grid = Grid(name="k", base_gin_files=["smoke.gin"], axes={"MoEConfig.num_expert": [2, 4]})
    with pytest.raises(GinConfigError, match="(?s)run k-000-num_expert2.*Did you mean MoEConfig.num_experts"):
        prepare(grid, str(tmp_path))


@pytest.mark.parametrize("binding, message", [
    ("Grid.fit_law = 'chinchila'",
     r"Grid.fit_law = 'chinchila': unknown law 'chinchila'; known laws: .*chinchilla"),
    ("Grid.fit_columns = 'N n_active'", r"'N n_active' is not law_variable=column"),
    ("Grid.fit_columns = 'Q=n_active'", r"'Q' is not a variable of law 'chinchilla' "
                                        r"\(variables: N, D, loss\)"),
    ("Grid.eval_steps = 'lastest'", r"Grid.eval_steps = 'lastest': .*'latest', 'all'"),
])
def test_what_runs_after_training_is_checked_when_the_grid_loads(tmp_path, capsys, binding,
                                                                 message):
    """A misspelt law, column mapping or eval_steps fails in a second, before any run trains,
    naming the Grid knob; nothing is written (not even the root)."""
    from moejax.cli import main

    grid = tmp_path / "g.gin"
    grid.write_text(open("configs/grids/smoke_cpu.gin").read() + binding + "\n")
    with pytest.raises(ConfigError, match=message):
        load_grid(str(grid))
    root = tmp_path / "sweep"
    assert main(["sweep", f"--grid={grid}", f"--root={root}", "--dry_run"]) == 2
    assert re.search(message, capsys.readouterr().err.removeprefix("moejax sweep: error: "))
    assert not root.exists()


def test_fit_columns_without_a_law_is_an_error():
    with pytest.raises(ConfigError, match="Grid.fit_columns = 'N=n' but Grid.fit_law is None"):
        check_after_training(Grid(fit_columns="N=n"))
    check_after_training(Grid(eval_steps="20,40", fit_law="joint_moe",
                              fit_columns="N=paper.joint_moe.N_act,E=e, loss = loss_c4"))

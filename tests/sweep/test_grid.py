"""Grid expansion: counts, order, constraints, run ids, complete run configs."""

import pytest

from moejax.errors import ConfigError
from moejax.sweep.grid import Grid, combinations, expand, load_grid, top_k_at_most_experts
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
    assert [p.run_id for p in kept][:2] == ["g-000-num_experts1_top_k1_steps20",
                                            "g-001-num_experts2_top_k1_steps20"]
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

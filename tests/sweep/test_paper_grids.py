"""The shipped paper grids: expansion counts, constraint effects, and joint_moe.gin == the CSV."""

import dataclasses
import os

import pandas as pd
import pytest

from moejax.model.accounting import parameter_counts
from moejax.sweep.constraints import model_from_point
from moejax.sweep.grid import expand, fixed_values, load_grid

CSV = os.path.join(os.path.dirname(__file__), "..", "..", "moejax", "laws", "data",
                   "jointmoe_appendixE_runs.csv")


def _models(grid, points, vocab_size=None):
    fixed = fixed_values(grid.bindings)
    return [model_from_point({**fixed, **p.values}, vocab_size) for p in points]


def test_joint_moe_grid_is_the_appendix_e_table():
    grid = load_grid("grids/joint_moe.gin")
    kept, dropped = expand(grid)
    table = pd.read_csv(CSV)
    assert len(kept) == len(table) == 270 and not dropped
    got = [(p.values["ModelConfig.n_layers"], p.values["ModelConfig.d_model"],
            p.values["ModelConfig.n_heads"], p.values["MoEConfig.num_experts"], p.values["tokens"])
           for p in kept]
    want = list(zip(table.n_blocks, table.d_model, table.n_heads, table.E, table.D_tokens))
    assert got == want  # same rows, same order
    models = _models(grid, kept)
    counts = [parameter_counts(m) for m in models]
    total = pd.Series([c.total for c in counts]) / table.N_total_eq9 - 1
    active = pd.Series([c.active for c in counts]) / table.N_act_eq10 - 1
    reported = pd.Series([c.total for c in counts]) / table.N_total_reported - 1
    # ours adds RMSNorm scales and routers to the paper's Eq. 9/10 (the grid's header says so)
    assert total.abs().max() < 3e-4 and active.abs().max() < 2e-3
    assert reported.abs().max() < 0.04  # the data README allows 6 %
    assert all(m.moe is None for m, e in zip(models, table.E) if e == 1)
    assert all(m.d_ff == 3 * m.d_model for m in models)
    steps = [p.values["TrainConfig.steps"] for p in kept]
    assert steps == [round(t / (1024 * 256)) for t in table.D_tokens]


@pytest.mark.parametrize("name, runs, dropped", [
    ("joint_moe_cpu", 6, 0), ("inference_optimal", 60, 0), ("inference_optimal_cpu", 12, 0),
    ("principled_design", 48, 0), ("principled_design_cpu", 8, 0),
    ("slicing_dicing", 528, 48), ("slicing_dicing_cpu", 28, 4)])
def test_paper_grid_counts(name, runs, dropped):
    kept, gone = expand(load_grid(f"grids/{name}.gin"))
    assert (len(kept), len(gone)) == (runs, dropped)


def test_inference_optimal_grid_dense_bases_and_every_other_block():
    for name in ("inference_optimal", "inference_optimal_cpu"):
        grid = load_grid(f"grids/{name}.gin")
        kept, _ = expand(grid)
        for point, model in zip(kept, _models(grid, kept)):
            if point.values["MoEConfig.num_experts"] == 1:
                assert model.moe is None
            else:
                assert model.moe_every == 2 and model.moe.top_k == 2
                assert model.moe.d_expert == model.d_ff
            per_step = 1024 * 256 if name == "inference_optimal" else 128
            assert point.values["TrainConfig.steps"] == round(point.values["tokens"] / per_step)


@pytest.mark.parametrize("name, vocab, tolerance", [("principled_design", 8064, 0.05),
                                                    ("principled_design_cpu", 384, 0.2)])
def test_principled_design_fills_each_memory_budget(name, vocab, tolerance):
    grid = load_grid(f"grids/{name}.gin")
    kept, _ = expand(grid)
    for point, model in zip(kept, _models(grid, kept, vocab)):
        memory = 2 * parameter_counts(model).total  # bfloat16 bytes
        assert (1 - tolerance) * point.values["memory_bytes"] <= memory <= point.values["memory_bytes"]
        assert model.moe.d_expert * 2 == model.d_model
    # at the same budget, more experts leave a smaller core (Liew et al.'s point)
    first = {p.values["MoEConfig.num_experts"]: m for p, m in zip(kept, _models(grid, kept, vocab))
             if p.values["memory_bytes"] == kept[0].values["memory_bytes"]}
    fewest, most = first[min(first)], first[max(first)]
    assert most.n_layers * most.d_model ** 2 < fewest.n_layers * fewest.d_model ** 2


def test_slicing_dicing_keeps_the_active_expert_width():
    for name in ("slicing_dicing", "slicing_dicing_cpu"):
        grid = load_grid(f"grids/{name}.gin")
        kept, dropped = expand(grid)
        assert all("heterogeneous" in reason for _, reason in dropped)
        kinds = set()
        for model in _models(grid, kept):
            routed = sum(g.top_k * g.d_expert for g in model.moe.groups)
            assert routed + model.moe.shared_width == model.d_model  # top_k x d_expert = d_model
            kinds.add((len(model.moe.groups), model.moe.num_shared_experts,
                       model.moe.capacity_factor, model.moe.bias_update_rate > 0))
        assert len(kinds) == 16  # every combination of the four switches is present


@pytest.mark.parametrize("name", ["joint_moe", "slicing_dicing", "principled_design",
                                  "inference_optimal", "joint_moe_cpu", "slicing_dicing_cpu",
                                  "principled_design_cpu", "inference_optimal_cpu"])
def test_run_configs_parse_and_validate(name, tmp_path):
    """Each distinct set of knobs, as the run's own gin file, gives a model that validates and
    equals the one the constraints counted."""
    from moejax.model.config import validate_model_config
    from moejax.train.cli import load_configs

    grid = load_grid(f"grids/{name}.gin")
    kept, _ = expand(grid)
    seen = {}
    for point in kept:
        seen.setdefault(tuple(sorted(point.values)), point)
    for point in seen.values():
        path = tmp_path / f"{point.run_id}.gin"
        path.write_text(point.gin_text(grid))
        model, data, train = load_configs([str(path)], [])
        vocab = model.vocab_size or (8064 if data.vocabulary == "sentencepiece" else 384)
        model = validate_model_config(dataclasses.replace(model, vocab_size=vocab))
        counted = model_from_point({**fixed_values(grid.bindings), **point.values}, vocab)
        assert parameter_counts(model) == parameter_counts(counted)
        assert train.steps == point.values["TrainConfig.steps"]
        if "cpu" not in name:
            assert model.compute_dtype == "bfloat16" and data.mixture == "moejax_c4"
            assert model.moe is None or model.moe.gmm_impl == "auto"

"""Planner output a researcher can train: concrete architectures, Liew's rule, gin files."""

import json
import math

from moejax.cli import main
from moejax.model import accounting
from moejax.plan.joint_moe import joint_moe_counts
from moejax.plan.recommend import (candidate_config, candidate_grid, gin_text,
                                   joint_moe_architecture, rank_by_liew)
from moejax.train.cli import load_configs
from moejax.train.loop import validate_all


def test_joint_moe_architecture_matches_the_papers_counting():
    config = joint_moe_architecture(1000.0, 8, vocab_size=50257)
    assert config.d_model == 1024 and config.n_layers == 16 and config.n_heads == 16
    ours = accounting.parameter_counts(config)
    paper = joint_moe_counts(1024, 8)
    assert abs(ours.total / paper.n_total - 1) < 0.01 and abs(ours.active / paper.n_active - 1) < 0.01


def test_gin_file_round_trips_into_the_same_model(tmp_path):
    config = joint_moe_architecture(640.0, 4)
    path = tmp_path / "plan.gin"
    path.write_text(gin_text(config, tokens=1e9, learning_rate=1e-3, batch_size=64, seq_len=512))
    model, data, train = load_configs([str(path)], [])
    assert model == config  # vocab_size left to the data
    assert train.steps == math.ceil(1e9 / (64 * 512)) and train.learning_rate == 1e-3
    validate_all(model, data, train)


def test_liew_rule_with_exact_counts():
    grid = candidate_grid([2, 4], [256, 512], [1, 4, 8], [1, 2, 4])
    budget = 40e6
    ranked = rank_by_liew(grid, vocab_size=8064, memory_budget_params=budget,
                          inference_budget_params=20e6)
    assert ranked and all(r.n_total <= budget and r.n_active <= 20e6 for r in ranked)
    best = ranked[0]
    feasible_totals = [r.n_total for r in ranked]
    assert best.n_total == max(feasible_totals)  # maximise N_total first
    same_total = [r for r in ranked if r.n_total == best.n_total]
    assert best.candidate.sparsity == min(r.candidate.sparsity for r in same_total)
    exact = accounting.parameter_counts(candidate_config(best.candidate, vocab_size=8064))
    assert (best.n_total, best.n_active) == (exact.total, exact.active)


def test_plan_command_writes_report_plot_and_trainable_gin_files(tmp_path):
    assert main(["plan", "--flops=1e20", "--experts=1,4,16", f"--out={tmp_path}"]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert len(plan["gin_files"]) == 3 and (tmp_path / "plan.png").stat().st_size > 0
    assert "Recommended" in (tmp_path / "report.md").read_text()
    for name in plan["gin_files"]:
        model, data, train = load_configs([str(tmp_path / name)], [])
        validate_all(model, data, train)
    assert main(["plan", "--liew", "--memory-params=5e7", "--depths=2,4", "--widths=256,512",
                 "--experts=1,8", "--top-ks=1,2", f"--out={tmp_path / 'liew'}"]) == 0
    assert (tmp_path / "liew" / "report.md").exists()
    assert (tmp_path / "liew" / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plan", "--liew"]) == 2  # no memory budget: a clear error, not a traceback

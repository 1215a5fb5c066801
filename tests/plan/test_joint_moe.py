"""Joint MoE planning reproduces the paper's Tables 1 and 4 and worked examples."""

import math
import re

import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

from moejax.laws import get_law
from moejax.plan import (JOINT_MOE_TABLE3, InfeasiblePlan, budget_plan, budget_plans,
                         compute_optimal, inference_aware_optimal, joint_moe_counts, joint_moe_loss,
                         kv_cache_bytes, memory_optimal, peak_learning_rate, per_expert_law)

TABLE4 = {1: (30.3640, -0.1817, 53.9838, -0.1965), 2: (27.7982, -0.1780, 66.8401, -0.2065),
          4: (24.8462, -0.1731, 87.7022, -0.2192), 8: (21.8330, -0.1676, 119.9126, -0.2338),
          16: (19.0159, -0.1617, 167.5073, -0.2494), 32: (16.5424, -0.1557, 234.6726, -0.2652)}

# Table 1: F -> {E: (N_act, D)}
TABLE1 = {
    1e20: {1: (1.7e9, 9.7e9), 2: (1.5e9, 11.4e9), 4: (1.2e9, 13.9e9), 8: (990e6, 17e9), 16: (810e6, 20.7e9),
           32: (669e6, 24.9e9)},
    1e21: {1: (5.7e9, 29.3e9), 2: (5e9, 33e9), 4: (4.4e9, 38e9), 8: (3.8e9, 44.3e9), 16: (3.3e9, 51.2e9),
           32: (2.85e9, 58.4e9)},
    1e22: {1: (18.8e9, 88.6e9), 2: (17.4e9, 96e9), 4: (15.8e9, 105.4e9), 8: (14.4e9, 115.8e9),
           16: (13.2e9, 126.5e9), 32: (12.2e9, 136.9e9)},
}


@pytest.mark.parametrize("experts", sorted(TABLE4))
def test_table4_from_table3(experts):
    m, mu, n, nu = TABLE4[experts]
    q = per_expert_law(experts)
    assert q["m"] == pytest.approx(m, rel=5e-3)
    assert q["n"] == pytest.approx(n, rel=5e-3)
    assert q["mu"] == pytest.approx(mu, abs=2e-4)
    assert q["nu"] == pytest.approx(nu, abs=2e-4)


@pytest.mark.parametrize("flops", sorted(TABLE1))
def test_table1_compute_optimal_within_3_percent(flops):
    for experts, (n_act, tokens) in TABLE1[flops].items():
        got_n, got_d = compute_optimal(flops, experts)
        assert got_n == pytest.approx(n_act, rel=0.03), (flops, experts)
        assert got_d == pytest.approx(tokens, rel=0.03), (flops, experts)
        assert 6 * got_n * got_d == pytest.approx(flops, rel=1e-12)


def test_compute_optimal_is_the_minimum():
    n_opt, _ = compute_optimal(1e21, 8)
    loss = lambda n: joint_moe_loss(n, 1e21 / 6 / n, 8)
    assert loss(n_opt) < loss(n_opt * 1.05) and loss(n_opt) < loss(n_opt / 1.05)


def test_counting_matches_appendix_a():
    counts = joint_moe_counts(1024, 32)
    assert counts.n_blocks == 16
    assert counts.n_total == 2 * 1024 * 50257 + (4 + 9 * 32) * 16 * 1024**2
    assert counts.n_active == 2 * 1024 * 50257 + 13 * 16 * 1024**2
    assert kv_cache_bytes(1024, 2048) == 2 * 2048 * 16 * 1024 * 2


def test_worked_example_e16_matched_to_dense_1b_on_10b_tokens():
    flops = 6 * 1e9 * 10e9
    best, plans = memory_optimal(flops, memory_bytes=2 * 1e9, expert_counts=[16])
    assert best.memory_bound
    assert best.n_active == pytest.approx(155e6, rel=0.02)
    assert best.tokens == pytest.approx(64e9, rel=0.02)
    assert best.tokens / best.n_active == pytest.approx(414, rel=0.02)


def test_worked_example_loss_ordering_at_1_1b_total():
    losses = []
    for experts, tokens in [(1, 8e9), (2, 16e9), (4, 32e9)]:
        d_model = scipy.optimize.brentq(lambda d: joint_moe_counts(d, experts).n_total - 1.1e9, 1, 1e5)
        losses.append(joint_moe_loss(joint_moe_counts(d_model, experts).n_active, tokens, experts))
    assert losses == pytest.approx([2.666, 2.626, 2.594], abs=1.5e-3)
    assert losses[0] > losses[1] > losses[2]


def test_memory_optimal_never_exceeds_compute_optimal_and_respects_kv_budget():
    flops = 1e20
    best, plans = memory_optimal(flops, memory_bytes=1e12)  # memory is no constraint
    for plan in plans:
        assert not plan.memory_bound
        assert plan.n_active == pytest.approx(compute_optimal(flops, plan.num_experts)[0], rel=1e-8)
    tight, plans = memory_optimal(flops, memory_bytes=4e9, context_tokens=1e6)
    for plan in plans:
        assert plan.memory_bytes <= 4e9 * (1 + 1e-9)
    assert tight.loss >= best.loss


def test_inference_aware_shrinks_the_model():
    n_train_only, _ = compute_optimal(1e21, 8)
    n_act, tokens, loss = inference_aware_optimal(1e21, inference_tokens=1e12, num_experts=8)
    assert n_act < n_train_only
    assert 6 * n_act * tokens + 2 * n_act * 1e12 == pytest.approx(1e21, rel=1e-9)
    assert loss > joint_moe_loss(n_train_only, 1e21 / 6 / n_train_only, 8)
    same = inference_aware_optimal(1e21, 0, 8)
    assert same[0] == pytest.approx(n_train_only)


def test_learning_rate_rule():
    assert peak_learning_rate(1e8, 1) == pytest.approx(1.458e-3, rel=1e-3)
    assert peak_learning_rate(1e8, 8) == pytest.approx(8.67e-4, rel=1e-3)
    assert math.isclose(peak_learning_rate(1e8, 16) / peak_learning_rate(1e8, 1), 16**-0.25)


@given(n_active=st.floats(1e7, 1e11), tokens=st.floats(1e8, 1e13), experts=st.sampled_from([1, 2, 3, 8, 64, 512]))
@settings(max_examples=40, deadline=None)
def test_plan_formula_agrees_with_the_law_object(n_active, tokens, experts):
    # Two paths compute the Joint MoE loss: the planner's per-E NumPy form and the law's JAX form.
    law = get_law("joint_moe")
    expected = law.predict(JOINT_MOE_TABLE3, {"N": [n_active], "D": [tokens], "E": [float(experts)]})[0]
    assert joint_moe_loss(n_active, tokens, experts) == pytest.approx(expected, rel=1e-12)


# --- budget_plan: compute, memory and inference budgets together ---------------------------------

def _brute_force(flops, memory_bytes, inference_tokens, experts, context_tokens=0.0):
    """The best feasible model on a fine grid of widths (d_model >= 64), by direct evaluation."""
    d_model = np.geomspace(64.0, 1e5, 400_001)
    counts = joint_moe_counts(d_model, experts)
    footprint = 2.0 * counts.n_total + 2.0 * 2.0 * context_tokens * (d_model / 64) * d_model
    tokens = (flops - 2.0 * counts.n_active * inference_tokens) / (6.0 * counts.n_active)
    feasible = (footprint <= memory_bytes) & (tokens > 0)
    loss = np.where(feasible, joint_moe_loss(counts.n_active, np.where(feasible, tokens, 1.0),
                                             experts), np.inf)
    best = int(np.argmin(loss))
    return counts.n_active[best], float(loss[best])


@pytest.mark.parametrize("flops, memory_bytes, inference_tokens, context_tokens", [
    (1e21, 4e9, 1e11, 0.0),  # the README's example: memory binds for E >= 2, not for E = 1
    (1e21, 4e9, 1e12, 0.0),  # heavy serving: the inference-aware optimum fits for small E
    (1e20, 1e9, 3e10, 2e5),  # with a KV cache in the memory budget
])
@pytest.mark.parametrize("experts", [1, 8, 64])
def test_budget_plan_is_the_brute_force_optimum(flops, memory_bytes, inference_tokens,
                                                context_tokens, experts):
    plan = budget_plan(flops, experts, memory_bytes=memory_bytes, context_tokens=context_tokens,
                       inference_tokens=inference_tokens)
    n_brute, loss_brute = _brute_force(flops, memory_bytes, inference_tokens, experts,
                                       context_tokens)
    # the grid steps 2e-5 in ln d_model: the scan lands within a step of the planned model, and
    # no grid point beats it
    assert plan.n_active == pytest.approx(n_brute, rel=1e-4)
    assert plan.loss <= loss_brute + 1e-12
    assert plan.loss == pytest.approx(loss_brute, abs=1e-5)
    # the budget identity: training plus serving spend exactly the FLOPs
    assert 6 * plan.n_active * plan.tokens + 2 * plan.n_active * inference_tokens == \
        pytest.approx(flops, rel=1e-9)
    footprint = 2 * plan.n_total + kv_cache_bytes(plan.d_model, context_tokens)
    assert plan.memory_bytes == pytest.approx(footprint, rel=1e-12)
    assert footprint <= memory_bytes * (1 + 1e-12)
    # never larger than the inference-aware optimum without a memory budget
    n_unbounded, _, _ = inference_aware_optimal(flops, inference_tokens, experts)
    assert plan.n_active <= n_unbounded * (1 + 1e-9)


def test_inference_tokens_change_the_memory_bound_plan():
    # D22: the memory budget used to drop the inference tokens and plan as if nothing was served
    served = budget_plan(1e21, 8, memory_bytes=4e9, inference_tokens=1e11)
    trained = budget_plan(1e21, 8, memory_bytes=4e9)
    assert served.memory_bound and trained.memory_bound
    assert served.n_active == pytest.approx(trained.n_active, rel=1e-9)  # the same size limit
    assert served.tokens == pytest.approx(trained.tokens - 1e11 / 3, rel=1e-9)  # less to train
    assert served.loss > trained.loss
    best, _ = memory_optimal(1e21, 4e9, [8], inference_tokens=1e11)
    assert best.tokens == pytest.approx(served.tokens, rel=1e-12)


def test_budget_plan_without_inference_keeps_the_memory_optimal_plan():
    for experts in (1, 16):
        plan = budget_plan(6e19, experts, memory_bytes=2e9)
        (old,) = memory_optimal(6e19, 2e9, [experts])[1]
        assert plan == old
        n_compute, _ = compute_optimal(6e19, experts)
        assert plan.n_active <= n_compute * (1 + 1e-9)
        assert 6 * plan.n_active * plan.tokens == pytest.approx(6e19, rel=1e-12)


def test_serving_alone_over_the_budget_is_infeasible():
    smallest = joint_moe_counts(64, 1).n_active
    with pytest.raises(InfeasiblePlan, match="serving 1e\\+15 tokens"):
        budget_plan(1e21, 8, inference_tokens=1e15)  # 2 * 6.5e6 * 1e15 > 1e21
    with pytest.raises(InfeasiblePlan, match="serving"):
        budget_plans(1e21, [1, 8], memory_bytes=4e9, inference_tokens=1e15)
    # just under the line, the smallest model trains on what is left
    flops = 2.0 * smallest * 1e12 * 1.5
    plan = budget_plan(flops, 1, inference_tokens=1e12)
    assert plan.tokens > 0
    assert 6 * plan.n_active * plan.tokens + 2 * plan.n_active * 1e12 == pytest.approx(flops)


def test_memory_budget_that_fits_no_model_names_the_smallest_footprint():
    smallest = 2 * joint_moe_counts(64, 1).n_total
    with pytest.raises(ValueError, match=re.escape("10 bytes") + ".*" +
                       re.escape(f"needs {smallest:.3g} bytes")):
        memory_optimal(1e21, 10, [1, 8])
    plans, skipped = budget_plans(1e21, [1, 64], memory_bytes=1.5e7)
    assert [p.num_experts for p in plans] == [1]
    ((experts, reason),) = skipped
    assert experts == 64 and "E = 64" in reason and "1.5e+07 bytes" in reason


def test_tiny_budget_plans_the_smallest_model_of_the_family():
    plan = budget_plan(1e12, 64)
    assert plan.d_model == 64 and plan.size_set_by == "smallest model"
    assert 6 * plan.n_active * plan.tokens == pytest.approx(1e12)
    n_brute, _ = _brute_force(1e12, math.inf, 0.0, 64)
    assert plan.n_active == pytest.approx(n_brute, rel=1e-9)


def test_law_functions_reject_inputs_outside_their_domain():
    with pytest.raises(ValueError, match="FLOPs > 0"):
        compute_optimal(-1e21, 8)
    with pytest.raises(ValueError, match="FLOPs > 0"):
        compute_optimal(0.0, 8)
    with pytest.raises(ValueError, match="E >= 1"):
        per_expert_law(0)
    with pytest.raises(ValueError, match="inference tokens"):
        inference_aware_optimal(1e21, -5, 8)

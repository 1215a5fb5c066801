"""Joint MoE planning reproduces the paper's Tables 1 and 4 and worked examples."""

import math

import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

from moejax.laws import get_law
from moejax.plan import (JOINT_MOE_TABLE3, compute_optimal, inference_aware_optimal, joint_moe_counts, joint_moe_loss, kv_cache_bytes,
                         memory_optimal, peak_learning_rate, per_expert_law)

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

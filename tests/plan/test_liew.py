import pytest

from moejax.plan import Candidate, rank_architectures


def total(c):  # a toy accounting: attention 4 d^2 + experts 3 d d_e each, per layer
    return c.depth * (4 * c.width**2 + c.n_exp * 3 * c.width * (c.d_expert or 4 * c.width))


def active(c):
    return c.depth * (4 * c.width**2 + c.n_topk * 3 * c.width * (c.d_expert or 4 * c.width))


CANDIDATES = [Candidate(12, 768, 8, 1), Candidate(12, 768, 8, 2), Candidate(12, 768, 16, 2),
              Candidate(12, 768, 16, 4), Candidate(24, 1024, 64, 8), Candidate(8, 512, 4, 1)]


def test_rule_maximises_total_then_minimises_sparsity_then_experts():
    budget = total(Candidate(12, 768, 16, 2))
    ranked = rank_architectures(CANDIDATES, total, active, memory_budget_params=budget)
    assert all(r.n_total <= budget for r in ranked)
    best = ranked[0].candidate
    assert (best.n_exp, best.n_topk) == (16, 4)  # ties on N_total with 16/2: lower sparsity wins
    assert ranked[1].candidate == Candidate(12, 768, 16, 2)


def test_inference_budget_excludes_and_loss_ranks():
    ranked = rank_architectures(CANDIDATES, total, active, memory_budget_params=1e12,
                                inference_budget_params=active(Candidate(12, 768, 8, 2)))
    assert all(r.n_active <= active(Candidate(12, 768, 8, 2)) for r in ranked)
    by_loss = rank_architectures(CANDIDATES, total, active, 1e12, predicted_loss=lambda c, nt, na: c.n_exp)
    assert by_loss[0].candidate.n_exp == 4
    with pytest.raises(ValueError, match="n_topk"):
        rank_architectures([Candidate(1, 8, 2, 3)], total, active, 1e12)

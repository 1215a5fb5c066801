"""Liew et al. 2026's design principle as a constraint solver over concrete architectures.

In: candidate architectures (depth, width, n_exp, n_topk, d_expert), callables giving each one's
total and active parameter counts (the model package's exact accounting, or any other), a memory
budget on total parameters and an inference budget on active parameters, and optionally a
predicted-loss callable (e.g. from a fitted law). Out: the feasible candidates, best first.

The rule: among architectures with N_total <= memory budget and N_active <= inference budget,
maximise N_total, then minimise sparsity s = n_exp / n_topk (i.e. maximise n_topk), then minimise
n_exp. With a predicted loss, candidates are ranked by it and the rule breaks ties. No
coefficients were published, so nothing here is fitted.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A concrete architecture. granularity = d_model / d_expert (1 when d_expert is None)."""

    depth: int
    width: int
    n_exp: int
    n_topk: int
    d_expert: int | None = None
    name: str = ""

    @property
    def sparsity(self) -> float:
        return self.n_exp / self.n_topk

    @property
    def granularity(self) -> float:
        return self.width / self.d_expert if self.d_expert else 1.0


@dataclasses.dataclass(frozen=True)
class RankedArchitecture:
    candidate: Candidate
    n_total: float
    n_active: float
    predicted_loss: float | None


def rank_architectures(candidates: Iterable[Candidate], total_params: Callable[[Candidate], float],
                       active_params: Callable[[Candidate], float], memory_budget_params: float,
                       inference_budget_params: float = float("inf"),
                       predicted_loss: Callable[[Candidate, float, float], float] | None = None,
                       ) -> list[RankedArchitecture]:
    """Feasible candidates ranked by Liew et al.'s rule (or by predicted_loss(c, N_total, N_active))."""
    ranked = []
    for candidate in candidates:
        if candidate.n_topk < 1 or candidate.n_topk > candidate.n_exp:
            raise ValueError(f"candidate {candidate}: need 1 <= n_topk <= n_exp")
        n_total, n_active = float(total_params(candidate)), float(active_params(candidate))
        if n_total > memory_budget_params or n_active > inference_budget_params:
            continue
        loss = None if predicted_loss is None else float(predicted_loss(candidate, n_total, n_active))
        ranked.append(RankedArchitecture(candidate, n_total, n_active, loss))

    def rule(item: RankedArchitecture):
        return (-item.n_total, item.candidate.sparsity, item.candidate.n_exp)

    if predicted_loss is None:
        return sorted(ranked, key=rule)
    return sorted(ranked, key=lambda item: (item.predicted_loss, *rule(item)))

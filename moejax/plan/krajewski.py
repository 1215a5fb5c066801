"""Krajewski et al. 2024 (fine-grained MoE) FLOPs accounting.

In: model width d (= 64 n_blocks), blocks, expansion rate E, granularity G, tokens D.
Out: training FLOPs by their Eq. 10, F = (12 d^2 c_f + d E G c_r) D n_blocks with c_f = 6 (forward +
backward per parameter) and c_r = 14 (router cost per expert-granule), and the total non-embedding
parameter count N = d^2 (8E + 4) n_blocks.
"""

from __future__ import annotations

from moejax.model.accounting import krajewski_training_flops  # noqa: F401  (one formula, one place)

WIDTH_PER_BLOCK = 64.0  # d_model = 64 n_blocks in their model family


def krajewski_total_params(d_model: float, n_blocks: float, num_experts: float) -> float:
    """Total non-embedding parameters d^2 (8E + 4) n_blocks."""
    return float(d_model**2 * (8.0 * num_experts + 4.0) * n_blocks)


def krajewski_dense_shape(dense_params: float) -> tuple[float, float]:
    """(d_model, n_blocks), continuous, of the dense model with 12 d^2 n_blocks = dense_params and
    d = 64 n_blocks; Table 2's "64 x 100M" is E = 64 experts on this 100M dense shape."""
    d_model = (dense_params * WIDTH_PER_BLOCK / 12.0) ** (1.0 / 3.0)
    return float(d_model), float(d_model / WIDTH_PER_BLOCK)

"""Ê, the saturating expert count of Clark et al. 2022 (reused by Joint MoE and Yun et al.).

In: an expert count E (>= 1, scalar or array, NumPy or JAX) and the two saturation constants
E_start (> 1) and E_max (> E_start). Out: Ê, an "effective" expert count with Ê(1) = E_start and
Ê -> E_max as E -> infinity:

    1/Ê = 1 / (E - 1 + (1/E_start - 1/E_max)^(-1)) + 1/E_max
"""

from __future__ import annotations


def saturating_expert_count(num_experts, e_start, e_max):
    """Ê(E); dimensionless. Works elementwise on floats, NumPy arrays and JAX arrays."""
    offset = 1.0 / (1.0 / e_start - 1.0 / e_max)
    return 1.0 / (1.0 / (num_experts - 1.0 + offset) + 1.0 / e_max)

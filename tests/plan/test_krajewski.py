import pytest

from moejax.plan import krajewski_dense_shape, krajewski_training_flops
from moejax.plan.krajewski import krajewski_total_params

# Table 2 for E = 64: (dense size, tokens, granularity, FLOPs)
TABLE2 = [(100e6, 4.37e9, 8, 2.95e18), (1e9, 28.94e9, 16, 1.93e20), (3e9, 72.90e9, 16, 1.41e21),
          (7e9, 137.60e9, 32, 6.46e21), (70e9, 941.07e9, 32, 4.16e23), (300e9, 2.96e12, 64, 5.69e24),
          (1e12, 7.94e12, 64, 4.97e25)]


@pytest.mark.parametrize("dense, tokens, granularity, flops", TABLE2)
def test_table2_flops_within_1_percent(dense, tokens, granularity, flops):
    d_model, n_blocks = krajewski_dense_shape(dense)
    assert krajewski_training_flops(d_model, n_blocks, 64, granularity, tokens) == pytest.approx(flops, rel=0.01)


def test_total_params_is_about_e_times_dense():
    d_model, n_blocks = krajewski_dense_shape(1e9)
    assert krajewski_total_params(d_model, n_blocks, 64) == pytest.approx(1e9 * (8 * 64 + 4) / 12, rel=1e-9)

import pytest

from moejax.plan import HARDWARE_PRESETS, serving_cost_per_token
from moejax.plan.joint_moe import joint_moe_counts, kv_cache_bytes


def test_presets_exist_with_sane_numbers():
    assert set(HARDWARE_PRESETS) == {"h100", "h200", "tpu_v4", "tpu_v5e", "tpu_v5p", "tpu_v6e"}
    for hw in HARDWARE_PRESETS.values():
        assert 1e10 < hw.hbm_bytes < 2e11 and 5e11 < hw.hbm_bandwidth < 1e13 and 1e14 < hw.peak_flops < 2e15


def test_more_experts_at_equal_active_cost_more_to_serve():
    kv_per_token = kv_cache_bytes(2048, 1)
    costs = []
    for experts in (1, 8, 64):
        counts = joint_moe_counts(2048, experts)
        costs.append(serving_cost_per_token(counts.n_total, counts.n_active, kv_per_token, 4096, "h100").cost_per_token)
    assert costs[0] < costs[1] < costs[2]


def test_model_too_big_raises():
    with pytest.raises(ValueError, match="do not fit"):
        serving_cost_per_token(1e14, 1e10, 1e5, 1000, "tpu_v5e", device_counts=(1, 2))


def test_more_devices_are_used_when_weights_do_not_fit_one():
    cost = serving_cost_per_token(70e9, 70e9, kv_cache_bytes(8192, 1), 4096, "h100")
    assert cost.devices >= 2 and cost.batch_size >= 1

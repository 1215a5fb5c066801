import pytest

from moejax.plan import HARDWARE_PRESETS, serving_cost_per_token
from moejax.plan.joint_moe import joint_moe_counts, kv_cache_bytes


# Spec sheets (dense bf16, no 2:4 sparsity): HBM bytes, HBM bytes/s, FLOP/s
DATASHEETS = {
    "h100": (80e9, 3.35e12, 989e12),      # H100 SXM5
    "h200": (141e9, 4.8e12, 989e12),      # H200 SXM
    "tpu_v4": (32 * 2**30, 1.2e12, 275e12),
    "tpu_v5e": (16e9, 819e9, 197e12),
    "tpu_v5p": (95e9, 2765e9, 459e12),
    "tpu_v6e": (32e9, 1640e9, 918e12),
}


def test_presets_are_the_datasheets():
    assert set(HARDWARE_PRESETS) == set(DATASHEETS)
    for name, (hbm, bandwidth, flops) in DATASHEETS.items():
        hw = HARDWARE_PRESETS[name]
        assert (hw.hbm_bytes, hw.hbm_bandwidth, hw.peak_flops) == pytest.approx(
            (hbm, bandwidth, flops), rel=1e-12), name


def test_a_memory_bound_decode_worked_by_hand():
    # 8e9 parameters (1e9 active) in bf16 on one H100, 1e5 KV bytes per token, 1,000-token
    # context: 80e9 - 16e9 bytes left hold 640 sequences of 1e8 bytes; a step reads all 16e9
    # weight bytes (640 x 1e9 active > 8e9) and 640 x 1e8 KV bytes at 3.35e12 B/s = 0.023881 s,
    # against 2 x 1e9 x 640 FLOPs at 989e12 FLOP/s = 0.0012943 s.
    cost = serving_cost_per_token(8e9, 1e9, 1e5, 1000, "h100", device_counts=(1,))
    step = (16e9 + 640 * 1000 * 1e5) / 3.35e12
    assert (cost.devices, cost.batch_size, cost.bound) == (1, 640, "memory")
    assert cost.tokens_per_second == pytest.approx(640 / step, rel=1e-12)
    assert cost.tokens_per_second == pytest.approx(26_800.0, rel=1e-4)
    assert cost.cost_per_token == pytest.approx(1 / 3600 / (640 / step), rel=1e-12)


def test_a_compute_bound_decode_worked_by_hand():
    # a dense 1e9 model with a 1-byte KV cache: the batch is capped at 4,096, where 2 x 1e9 x
    # 4,096 FLOPs (8.28 ms at 989e12) outlast reading 2e9 + 4,096 bytes (0.60 ms at 3.35e12)
    cost = serving_cost_per_token(1e9, 1e9, 1.0, 1, "h100", device_counts=(1,))
    assert (cost.batch_size, cost.bound) == (4096, "compute")
    assert cost.tokens_per_second == pytest.approx(989e12 / 2e9, rel=1e-12)


def test_the_cheapest_device_count_is_taken():
    # 70e9 bf16 parameters need two H100s (140e9 bytes); on 2 the KV room is 20e9 bytes, on 4 it
    # is 180e9: each count's cost is G x C0 / 3600 / throughput, and the minimum is returned
    from moejax.plan.hardware import decode_throughput

    kv, context = 1e6, 1000
    by_count = {}
    for g in (2, 4, 8):
        batch = min(4096, int((g * 80e9 - 140e9) // (context * kv)))
        throughput, _ = decode_throughput(70e9, 70e9, kv, context, HARDWARE_PRESETS["h100"], g,
                                          batch)
        by_count[g] = g / 3600 / throughput
    cost = serving_cost_per_token(70e9, 70e9, kv, context, "h100", device_counts=(1, 2, 4, 8))
    best = min(by_count, key=by_count.get)
    assert cost.devices == best and cost.cost_per_token == pytest.approx(by_count[best], rel=1e-12)


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

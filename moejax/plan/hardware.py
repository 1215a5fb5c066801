"""Accelerator models and Yun et al.'s serving cost per token.

In: a model's total and active parameter counts, its KV-cache bytes per cached token, a serving
context length and a ``Hardware`` (HBM bytes, HBM bandwidth bytes/s, peak dense bf16 FLOP/s, cost
per device-hour C0). Out: the cheapest ``ServingCost`` over device counts G: cost per token
= G C0 / T(G), with T(G) the decode throughput (tokens/s) of a roofline model whose batch is
limited by the HBM left for KV cache after the weights (Yun et al. 2024, arXiv 2404.02852, Sec. 5).

Decode step for batch B on G devices: it reads the weights it touches, bytes_per_param x
min(N_total, B N_active) (an MoE batch touches more experts as B grows), plus B x context x
kv_bytes_per_token of KV cache, at G x bandwidth; and it does 2 N_active B FLOPs at G x peak. The
step takes the slower of the two; throughput B / step time rises with B, so B is the largest batch
whose KV cache fits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

GB = 1e9
GIB = 2**30
TERA = 1e12


@dataclasses.dataclass(frozen=True)
class Hardware:
    """One accelerator. Units: bytes, bytes/s, FLOP/s (dense bf16), cost units per device-hour."""

    name: str
    hbm_bytes: float
    hbm_bandwidth: float
    peak_flops: float
    cost_per_hour: float = 1.0


# Public spec-sheet numbers (dense bf16, i.e. without 2:4 sparsity):
#  H100 SXM5: 80 GB HBM3, 3.35 TB/s, 989 TFLOP/s  (NVIDIA H100 Tensor Core GPU datasheet)
#  H200 SXM: 141 GB HBM3e, 4.8 TB/s, 989 TFLOP/s  (NVIDIA H200 Tensor Core GPU datasheet)
#  TPU v4: 32 GiB HBM2, 1,200 GB/s, 275 TFLOP/s   (cloud.google.com/tpu/docs/v4)
#  TPU v5e: 16 GB HBM2, 819 GB/s, 197 TFLOP/s     (cloud.google.com/tpu/docs/v5e)
#  TPU v5p: 95 GB HBM2e, 2,765 GB/s, 459 TFLOP/s  (cloud.google.com/tpu/docs/v5p)
#  TPU v6e (Trillium): 32 GB HBM, 1,640 GB/s, 918 TFLOP/s (cloud.google.com/tpu/docs/v6e)
HARDWARE_PRESETS: dict[str, Hardware] = {
    "h100": Hardware("h100", 80 * GB, 3.35 * TERA, 989 * TERA),
    "h200": Hardware("h200", 141 * GB, 4.8 * TERA, 989 * TERA),
    "tpu_v4": Hardware("tpu_v4", 32 * GIB, 1.2 * TERA, 275 * TERA),
    "tpu_v5e": Hardware("tpu_v5e", 16 * GB, 0.819 * TERA, 197 * TERA),
    "tpu_v5p": Hardware("tpu_v5p", 95 * GB, 2.765 * TERA, 459 * TERA),
    "tpu_v6e": Hardware("tpu_v6e", 32 * GB, 1.64 * TERA, 918 * TERA),
}


@dataclasses.dataclass(frozen=True)
class ServingCost:
    devices: int
    batch_size: int
    tokens_per_second: float
    cost_per_token: float  # cost units (C0 per device-hour) per generated token
    bound: str  # "memory" (bandwidth) or "compute"


def decode_throughput(n_total: float, n_active: float, kv_bytes_per_token: float, context_tokens: float,
                      hardware: Hardware, devices: int, batch_size: int, bytes_per_param: float = 2.0
                      ) -> tuple[float, str]:
    """(tokens/s, bound) of one decode step at `batch_size` sequences on `devices` devices."""
    weight_bytes = bytes_per_param * min(n_total, batch_size * n_active)
    kv_bytes = batch_size * context_tokens * kv_bytes_per_token
    memory_seconds = (weight_bytes + kv_bytes) / (devices * hardware.hbm_bandwidth)
    compute_seconds = 2.0 * n_active * batch_size / (devices * hardware.peak_flops)
    step = max(memory_seconds, compute_seconds)
    return batch_size / step, ("memory" if memory_seconds >= compute_seconds else "compute")


def serving_cost_per_token(n_total: float, n_active: float, kv_bytes_per_token: float, context_tokens: float,
                           hardware: Hardware | str, device_counts: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
                           bytes_per_param: float = 2.0, max_batch: int = 4096) -> ServingCost:
    """min over G of G C0 / T(G); raises if the weights fit on none of the device counts."""
    if isinstance(hardware, str):
        hardware = HARDWARE_PRESETS[hardware]
    best = None
    for devices in device_counts:
        free_bytes = devices * hardware.hbm_bytes - bytes_per_param * n_total
        per_sequence = max(context_tokens * kv_bytes_per_token, 1e-30)
        batch = min(max_batch, math.floor(free_bytes / per_sequence)) if free_bytes > 0 else 0
        if batch < 1:
            continue
        throughput, bound = decode_throughput(n_total, n_active, kv_bytes_per_token, context_tokens, hardware,
                                              devices, batch, bytes_per_param)
        cost = devices * hardware.cost_per_hour / 3600.0 / throughput
        if best is None or cost < best.cost_per_token:
            best = ServingCost(devices, batch, throughput, cost, bound)
    if best is None:
        raise ValueError(f"{n_total:.3g} parameters do not fit on up to {max(device_counts)} x {hardware.name}")
    return best

"""A full MoE training step next to the step of the FLOP-matched dense model.

The MoE model has E experts of hidden width F, top-K routing, in every block; the dense model
is the same transformer with one SwiGLU of width d_ff = K * F, so both do the same matmul FLOPs
per token (the MoE adds the router, the sort-based dispatch and the combine). The MoE step is
timed with each grouped-matmul implementation in turn (``MoEConfig.gmm_impl``).
Repetitions are interleaved across contenders and the median is kept. Prints one JSON line
per MoE implementation with step seconds and the ratio to the dense step.

  python benchmarks/moe_step.py                 # d_model 512, E=8, K=2, 2 x 1024 tokens
  python benchmarks/moe_step.py --impl cpu --reps 5 --experts 16 --top-k 2
  python benchmarks/moe_step.py --dtype bfloat16 --d-model 2048 --layers 8 --batch 16 --seq 2048

Besides the ratio, each line gives tokens/s and the model FLOP utilisation (MFU) of both steps:
training FLOPs from ``moejax.model.accounting.training_flops_per_token`` (3 x the exact forward
matmul FLOPs, attention over the full context as the kernel computes it) over the step time and
the device's datasheet peak (``--peak-tflops``; known accelerators have a default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import run_environment  # noqa: E402
import moejax.kernels  # noqa: E402
from moejax.model import ModelConfig, MoEConfig, build_model  # noqa: E402
from moejax.model.accounting import training_flops_per_token  # noqa: E402
from moejax.train.config import TrainConfig  # noqa: E402
from moejax.train.optim import make_optimizer, make_schedule  # noqa: E402
from moejax.train.step import init_train_state, make_train_step  # noqa: E402


# Dense bf16 datasheet peaks (TFLOP/s, without sparsity) by device_kind prefix.
PEAK_TFLOPS = {"NVIDIA H100": 989.0, "NVIDIA H200": 989.0, "NVIDIA A100": 312.0,
               "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0,
               "TPU v6 lite": 918.0}


def peak_tflops(device_kind: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if device_kind.startswith(k)), None)


def make_step(config: ModelConfig):
    """A jitted train step and its initial state."""
    model = build_model(config)
    train = TrainConfig(steps=100, warmup_steps=10)
    tx = make_optimizer(train)
    state = init_train_state(model, tx, seed=0)
    return jax.jit(make_train_step(model, tx, make_schedule(train))), state


def _batch(config: ModelConfig, batch: int, seq: int, seed: int):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (batch, seq + 1), dtype=np.int32)
    return {
        "inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]),
        "loss_weights": jnp.ones((batch, seq), jnp.float32),
        "segment_ids": jnp.ones((batch, seq), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", action="append",
                        help="gmm implementations for the MoE step (default: cpu and xla)")
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--d-expert", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="ModelConfig.compute_dtype (parameters stay float32)")
    parser.add_argument("--peak-tflops", type=float,
                        help="device peak for MFU (default: datasheet bf16 peak if known)")
    args = parser.parse_args(argv)
    impls = args.impl or ([moejax.kernels.resolve_impl("auto"), "xla"]
                          if jax.default_backend() != "cpu" else ["cpu", "xla"])
    device_kind = jax.devices()[0].device_kind
    peak = args.peak_tflops or peak_tflops(device_kind)

    common = dict(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers,
                  n_heads=max(args.d_model // 128, 1) if args.d_model >= 1024 else
                  max(args.d_model // 64, 1), compute_dtype=args.dtype)
    dense_config = ModelConfig(**common, d_ff=args.top_k * args.d_expert, moe=None)
    batch = _batch(dense_config, args.batch, args.seq, seed=1)

    contenders = {"dense": dense_config}
    for impl in impls:
        moe = MoEConfig(num_experts=args.experts, top_k=args.top_k, d_expert=args.d_expert,
                        gmm_impl=impl)
        contenders[f"moe_{impl}"] = ModelConfig(**common, d_ff=args.top_k * args.d_expert,
                                                moe=moe, moe_every=1)
    steps, errors = {}, {}
    for name, config in contenders.items():
        try:
            step, state = make_step(config)
            compiled = step.lower(state, batch).compile()
            jax.block_until_ready(compiled(state, batch))  # warm up
            steps[name] = (compiled, state)
        except Exception as error:  # noqa: BLE001 - e.g. out of memory: report, go on
            errors[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    if "dense" not in steps:
        raise SystemExit(f"the dense step failed: {errors}")

    seconds = {name: [] for name in steps}
    for _ in range(args.reps):
        for name, (compiled, state) in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(compiled(state, batch))
            seconds[name].append(time.perf_counter() - start)
    dense = statistics.median(seconds["dense"])
    tokens = args.batch * args.seq
    flops = {name: training_flops_per_token(config, args.seq) * tokens
             for name, config in contenders.items()}

    def mfu(name, step_seconds):
        return round(flops[name] / step_seconds / 1e12 / peak, 4) if peak else None

    for impl in impls:
        if f"moe_{impl}" not in steps:
            print(json.dumps({"benchmark": "moe_step", "impl": impl, "d_model": args.d_model,
                              "E": args.experts, "K": args.top_k, "F": args.d_expert,
                              "tokens": tokens, "error": errors[f"moe_{impl}"],
                              "device": device_kind}), flush=True)
            continue
        moe_seconds = statistics.median(seconds[f"moe_{impl}"])
        print(json.dumps({
            "benchmark": "moe_step", "impl": impl, "d_model": args.d_model,
            "layers": args.layers, "E": args.experts, "K": args.top_k, "F": args.d_expert,
            "dense_d_ff": args.top_k * args.d_expert, "tokens": tokens, "dtype": args.dtype,
            "moe_step_s": round(moe_seconds, 4), "dense_step_s": round(dense, 4),
            "ratio_vs_dense": round(moe_seconds / dense, 3),
            "moe_tokens_per_s": round(tokens / moe_seconds), "dense_tokens_per_s":
            round(tokens / dense), "moe_train_tflop": round(flops[f"moe_{impl}"] / 1e12, 3),
            "dense_train_tflop": round(flops["dense"] / 1e12, 3), "peak_tflops": peak,
            "moe_mfu": mfu(f"moe_{impl}", moe_seconds), "dense_mfu": mfu("dense", dense),
            "moe_step_s_all": [round(s, 3) for s in seconds[f"moe_{impl}"]],
            "dense_step_s_all": [round(s, 3) for s in seconds["dense"]],
            "reps": args.reps, **run_environment(),
        }), flush=True)


if __name__ == "__main__":
    main()

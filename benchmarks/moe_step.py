"""A full MoE training step next to the step of the FLOP-matched dense model.

The MoE model has E experts of hidden width F, top-K routing, in every block; the dense model
is the same transformer with one SwiGLU of width d_ff = K * F, so both do the same matmul FLOPs
per token (the MoE adds the router, the sort-based dispatch and the combine). The MoE step is
timed with each grouped-matmul implementation in turn (``moejax.model.experts`` calls
``moejax.kernels.gmm`` without ``impl``; this script rebinds the name it calls to pin one).
Repetitions are interleaved across contenders and the median is kept. Prints one JSON line
per MoE implementation with step seconds and the ratio to the dense step.

  python benchmarks/moe_step.py                 # d_model 512, E=8, K=2, 2 x 1024 tokens
  python benchmarks/moe_step.py --impl cpu --reps 5 --experts 16 --top-k 2
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import moejax.kernels  # noqa: E402
import moejax.model.experts  # noqa: E402
from moejax.model import ModelConfig, MoEConfig, build_model  # noqa: E402
from moejax.train.config import TrainConfig  # noqa: E402
from moejax.train.optim import make_optimizer, make_schedule  # noqa: E402
from moejax.train.step import init_train_state, make_train_step  # noqa: E402


def make_step(config: ModelConfig, impl: str | None):
    """A jitted train step and its initial state; impl pins the experts' gmm implementation."""
    moejax.model.experts.gmm = (functools.partial(moejax.kernels.gmm, impl=impl) if impl
                                else moejax.kernels.gmm)
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
    args = parser.parse_args(argv)
    impls = args.impl or ["cpu", "xla"]

    common = dict(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers,
                  n_heads=max(args.d_model // 64, 1))
    moe = MoEConfig(num_experts=args.experts, top_k=args.top_k, d_expert=args.d_expert)
    dense_config = ModelConfig(**common, d_ff=args.top_k * args.d_expert, moe=None)
    moe_config = ModelConfig(**common, d_ff=args.top_k * args.d_expert, moe=moe, moe_every=1)
    batch = _batch(dense_config, args.batch, args.seq, seed=1)

    contenders = {"dense": (dense_config, None)}
    contenders.update({f"moe_{impl}": (moe_config, impl) for impl in impls})
    steps = {}
    for name, (config, impl) in contenders.items():
        step, state = make_step(config, impl)
        compiled = step.lower(state, batch).compile()  # traced now, while impl is bound
        jax.block_until_ready(compiled(state, batch))  # warm up
        steps[name] = (compiled, state)
    moejax.model.experts.gmm = moejax.kernels.gmm

    seconds = {name: [] for name in steps}
    for _ in range(args.reps):
        for name, (compiled, state) in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(compiled(state, batch))
            seconds[name].append(time.perf_counter() - start)
    dense = statistics.median(seconds["dense"])
    for impl in impls:
        moe_seconds = statistics.median(seconds[f"moe_{impl}"])
        print(json.dumps({
            "benchmark": "moe_step", "impl": impl, "d_model": args.d_model,
            "layers": args.layers, "E": args.experts, "K": args.top_k, "F": args.d_expert,
            "dense_d_ff": args.top_k * args.d_expert, "tokens": args.batch * args.seq,
            "moe_step_s": round(moe_seconds, 4), "dense_step_s": round(dense, 4),
            "ratio_vs_dense": round(moe_seconds / dense, 3),
            "moe_step_s_all": [round(s, 3) for s in seconds[f"moe_{impl}"]],
            "dense_step_s_all": [round(s, 3) for s in seconds["dense"]],
            "reps": args.reps, "device": jax.devices()[0].device_kind,
            "backend": jax.default_backend(), "jax": jax.__version__,
            "date": datetime.date.today().isoformat(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }), flush=True)


if __name__ == "__main__":
    main()

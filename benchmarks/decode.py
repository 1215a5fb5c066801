"""One decoding step of an MoE next to the steps of its FLOP-matched and parameter-matched dense
models, at several batch sizes: what inference costs, measured, against what the accounting says.

The MoE has E experts of width F, top-K, in every block. The FLOP-matched dense model has one
SwiGLU of width K*F (the same matmul FLOPs per token); the parameter-matched one has width E*F
(the same weights). A step is ``FunctionalModel.extend`` on one new token per row over a cache
already holding ``--context`` tokens: the step ``moejax generate`` runs, its cache donated and
updated in place. Repetitions are interleaved across the three models and the median is kept.
Prints one JSON line per (model, batch): step seconds, tokens/s, the ratio to the FLOP-matched
dense step, the accounting's forward FLOPs per generated token
(``accounting.inference_flops_per_token``) and the parameter counts.

At batch 1 a decoding step reads its weights once per token, so it is bound by memory traffic: the
MoE reads only its K chosen experts' weights. As the batch grows, more distinct experts are
chosen and the MoE's step moves from the FLOP-matched dense model's cost towards the
parameter-matched one's (memory) until FLOPs dominate again. The planner's inference budget
(``moejax plan``) counts FLOPs; these lines say where that holds on a device.

``--latent`` adds the same MoE with multi-head latent attention (``moe_latent``; DeepSeek's
proportions: a key/value latent of 4 head widths, rotary features half a head, heads of 64
position-free query/key and value features). Its cache holds 4.5 head widths per token and layer
instead of 2 * heads of them; its step attends in latent space, more FLOPs per cached token for
fewer bytes (``moejax.model.latent_attention``). Longer ``--context`` is where that shows.

  python benchmarks/decode.py                              # CPU defaults
  python benchmarks/decode.py --dtype bfloat16 --d-model 2048 --batch 1 --batch 64 --batch 512
  python benchmarks/decode.py --latent --context 2048 --batch 1 --batch 16
"""

from __future__ import annotations

import argparse
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
from common import run_environment  # noqa: E402
from moejax.model import ModelConfig, MoEConfig, build_model  # noqa: E402
from moejax.model.accounting import (  # noqa: E402
    inference_flops_per_token, kv_cache_bytes_per_token, parameter_counts)
from moejax.model.config import LatentAttentionConfig  # noqa: E402
from moejax.model.decoding import init_cache  # noqa: E402


def prefilled(config: ModelConfig, batch: int, context: int, steps: int, seed: int = 0):
    """(jitted one-token step, params, buffers, cache holding ``context`` random tokens with room
    for ``steps`` more). The step donates its cache, as ``moejax generate``'s does, so the
    cache is updated in place rather than copied each step."""
    model = build_model(config)
    params = model.init(jax.random.key(seed))
    buffers = model.init_buffers()
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(2, config.vocab_size, (batch, context)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(context, dtype=jnp.int32), (batch, context))
    segments = jnp.ones((batch, context), jnp.int32)
    cache = init_cache(config, batch, context + steps)
    _, cache = jax.jit(model.extend)(params, cache, tokens, positions, segments, buffers=buffers)

    @functools.partial(jax.jit, donate_argnames=("cache",))
    def step(params, buffers, cache, token_B1):
        position_B1 = jnp.broadcast_to(cache.length, token_B1.shape)
        logits, cache = model.extend(params, cache, token_B1, position_B1,
                                     jnp.ones_like(token_B1), buffers=buffers)
        return jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32), cache

    return step, params, buffers, cache, tokens[:, -1:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--d-expert", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--context", type=int, default=256, help="tokens already in the cache")
    parser.add_argument("--batch", type=int, action="append",
                        help="rows decoded together; repeatable (default 1, 8, 64)")
    parser.add_argument("--gmm-impl", default="auto", help="MoEConfig.gmm_impl (default auto)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="ModelConfig.compute_dtype (parameters stay float32)")
    parser.add_argument("--latent", action="store_true",
                        help="also time the MoE with multi-head latent attention (moe_latent)")
    args = parser.parse_args(argv)
    batches = args.batch or [1, 8, 64]
    common = dict(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers,
                  n_heads=max(args.d_model // 64, 1), compute_dtype=args.dtype)
    moe = MoEConfig(num_experts=args.experts, top_k=args.top_k, d_expert=args.d_expert,
                    gmm_impl=args.gmm_impl)
    configs = {
        "dense_flop_matched": ModelConfig(**common, d_ff=args.top_k * args.d_expert, moe=None),
        "moe": ModelConfig(**common, d_ff=args.top_k * args.d_expert, moe=moe, moe_every=1),
        "dense_param_matched": ModelConfig(**common, d_ff=args.experts * args.d_expert,
                                           moe=None),
    }
    if args.latent:
        head = 64
        configs["moe_latent"] = ModelConfig(
            **common, d_ff=args.top_k * args.d_expert, moe=moe, moe_every=1,
            latent_attention=LatentAttentionConfig(kv_lora_rank=4 * head,
                                                   qk_rope_head_dim=head // 2,
                                                   qk_nope_head_dim=head, v_head_dim=head))
    device_kind = jax.devices()[0].device_kind
    for batch in batches:
        state = {name: prefilled(config, batch, args.context, args.reps + 1)
                 for name, config in configs.items()}

        def run(name):
            step, params, buffers, cache, token = state[name]
            token, cache = step(params, buffers, cache, token)
            jax.block_until_ready((token, cache))
            state[name] = (step, params, buffers, cache, token)

        for name in state:
            run(name)  # compile and warm up
        seconds = {name: [] for name in state}
        for _ in range(args.reps):
            for name in state:
                start = time.perf_counter()
                run(name)
                seconds[name].append(time.perf_counter() - start)
        baseline = statistics.median(seconds["dense_flop_matched"])
        for name, config in configs.items():
            median = statistics.median(seconds[name])
            counts = parameter_counts(config)
            flops = inference_flops_per_token(config, args.context)
            print(json.dumps({
                "benchmark": "decode", "model": name, "batch": batch, "context": args.context,
                "d_model": args.d_model, "layers": args.layers, "E": args.experts,
                "K": args.top_k, "F": args.d_expert, "dtype": args.dtype,
                "gmm_impl": args.gmm_impl if name.startswith("moe") else None,
                "step_s": round(median, 6), "tokens_per_s": round(batch / median, 1),
                "ratio_vs_flop_matched_dense": round(median / baseline, 3),
                "forward_flops_per_token": flops,
                "achieved_gflops": round(flops * batch / median / 1e9, 2),
                "params_total": counts.total, "params_active": counts.active,
                "kv_cache_bytes_per_token": kv_cache_bytes_per_token(config, args.dtype),
                "step_s_all": [round(s, 6) for s in seconds[name]], "reps": args.reps,
                "device": device_kind, **run_environment()}), flush=True)


if __name__ == "__main__":
    main()

"""The expert-parallel MoE layer on fake CPU devices, next to the single-device layer.

For each mesh (data = 8/EP, expert = EP, over 8 fake CPU devices of this host), times the MoE
layer's forward + backward (gradients of all parameters and of x) and reports its ratio to the
same layer on one device, then the dropped fraction of (token, choice) assignments at a few
``ep_buffer_factor`` values (forward only; None = worst-case buffer, never drops). EP = 1 has no
expert axis > 1, so it is the plain data-parallel layer. The fake devices share the host's cores:
the times show the cost of the extra data movement and bookkeeping, not a speed-up. Repetitions
are interleaved across meshes and the median is kept. Prints one JSON line per mesh.

  python benchmarks/expert_parallel.py                       # d_model 256, E=8, K=2, 8 x 256 tokens
  python benchmarks/expert_parallel.py --experts 16 --top-k 4 --reps 5 --exchange dense
"""

from __future__ import annotations

import os

# The fake devices must exist before JAX starts.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import run_environment  # noqa: E402
from moejax.model.config import MoEConfig  # noqa: E402
from moejax.model.moe import MoEFeedForward  # noqa: E402
from moejax.parallel import expert_parallel  # noqa: E402

BUFFER_FACTORS = (None, 2.0, 1.25, 1.0, 0.5)


def _loss(graphdef, state, x_BTD, cotangent_BTD):
    y, stats = nnx.merge(graphdef, state)(x_BTD, jnp.ones(x_BTD.shape[:2]), train=False)
    return jnp.sum(y * cotangent_BTD), stats.dropped_fraction


def _build(d_model: int, moe: MoEConfig):
    return nnx.split(MoEFeedForward(d_model, moe, n_layers=2, init_std=0.02, rngs=nnx.Rngs(0)))


def _mesh(ep: int):
    return jax.make_mesh((8 // ep, ep), ("data", "expert"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _place(mesh, state, x, cot):
    """Expert weights split over 'expert' on E, other parameters replicated, tokens split."""
    def place(path, leaf):
        expert = any(getattr(k, "key", None) in ("w_in_EDF2", "w_out_EFD") for k in path)
        return jax.device_put(leaf, NamedSharding(mesh, PartitionSpec("expert" if expert else None)))

    tokens = NamedSharding(mesh, PartitionSpec(expert_parallel.token_axes(mesh)))
    return (jax.tree_util.tree_map_with_path(place, state), jax.device_put(x, tokens),
            jax.device_put(cot, tokens))


def _time(fn, args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ep", type=int, action="append", help="EP sizes (default 1 2 4 8)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--d-expert", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--exchange", default="auto", choices=("auto", "ragged", "dense"))
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = args.ep or [1, 2, 4, 8]

    moe = MoEConfig(num_experts=args.experts, top_k=args.top_k, d_expert=args.d_expert,
                    ep_exchange=args.exchange)
    graphdef, state = _build(args.d_model, moe)
    keys = jax.random.split(jax.random.key(1), 2)
    x = jax.random.normal(keys[0], (args.batch, args.seq, args.d_model))
    cot = jax.random.normal(keys[1], (args.batch, args.seq, args.d_model))

    def fwd_bwd(graphdef):
        return jax.jit(jax.value_and_grad(functools.partial(_loss, graphdef), argnums=(0, 1),
                                          has_aux=True))

    # contenders: name -> (mesh or None, compiled fwd+bwd, its arguments)
    contenders = {"single": (None, fwd_bwd(graphdef), (state, x, cot))}
    for ep in sizes:
        mesh = _mesh(ep)
        with jax.set_mesh(mesh):
            placed = _place(mesh, state, x, cot)
            contenders[f"ep{ep}"] = (mesh, fwd_bwd(graphdef).lower(*placed).compile(), placed)
    for mesh, fn, fn_args in contenders.values():  # warm up
        if mesh is None:
            _time(fn, fn_args)
        else:
            with jax.set_mesh(mesh):
                _time(fn, fn_args)
    seconds = {name: [] for name in contenders}
    for _ in range(args.reps):
        for name, (mesh, fn, fn_args) in contenders.items():
            if mesh is None:
                seconds[name].append(_time(fn, fn_args))
            else:
                with jax.set_mesh(mesh):
                    seconds[name].append(_time(fn, fn_args))
    single = statistics.median(seconds["single"])

    for ep in sizes:
        mesh, _, placed = contenders[f"ep{ep}"]
        dropped = {}
        for factor in BUFFER_FACTORS:
            # the same parameters (same seed), built with this buffer factor
            layer_graphdef, _ = _build(args.d_model, dataclasses.replace(moe, ep_buffer_factor=factor))
            with jax.set_mesh(mesh):
                _, fraction = jax.jit(functools.partial(_loss, layer_graphdef))(*placed)
            dropped[str(factor)] = round(float(fraction), 4)
        ep_seconds = statistics.median(seconds[f"ep{ep}"])
        print(json.dumps({
            "benchmark": "expert_parallel", "mesh": {"data": 8 // ep, "expert": ep},
            "exchange": expert_parallel.resolve_exchange(args.exchange) if ep > 1 else None,
            "d_model": args.d_model, "E": args.experts, "K": args.top_k, "F": args.d_expert,
            "tokens": args.batch * args.seq,
            "fwd_bwd_s": round(ep_seconds, 4), "single_device_fwd_bwd_s": round(single, 4),
            "ratio_vs_single_device": round(ep_seconds / single, 3),
            "dropped_fraction_by_buffer_factor": dropped,
            "fwd_bwd_s_all": [round(s, 3) for s in seconds[f"ep{ep}"]],
            "reps": args.reps, "devices": "8 fake CPU devices on one host",
            **run_environment(),
        }), flush=True)


if __name__ == "__main__":
    main()

"""The MoE train step on meshes of the fake 8-device CPU platform, next to the one-device step.

Sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (and CPU) before importing JAX.
For one device and each mesh: the step time (median of ``--reps`` after a warm-up step), its
ratio to the one-device step, and the bytes one device holds according to the compiled memory
analysis (arguments = train state + batch shard, temporaries, and the state alone). Prints one
JSON line per mesh.

The 8 "devices" share this machine's CPU cores, so a mesh step measures partitioning overhead
(collectives, less fusion), not a speed-up; the bytes per device are what carries over to real
accelerators.

  python benchmarks/mesh_step.py
  python benchmarks/mesh_step.py --reps 5 --capacity-factor 1.25 --meshes data=8 data=2,expert=4
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from moejax.model import ModelConfig, MoEConfig, build_model  # noqa: E402
from moejax.parallel import sharding as sh  # noqa: E402
from moejax.parallel.mesh import MeshConfig, make_mesh, mesh_shape  # noqa: E402
from moejax.parallel.rules import sharding_rules  # noqa: E402
from moejax.train.config import TrainConfig  # noqa: E402
from moejax.train.optim import make_optimizer, make_schedule  # noqa: E402

DEFAULT_MESHES = ["data=8", "data=2,expert=4", "fsdp=2,expert=2,tensor=2", "fsdp=8"]


def parse_mesh(text: str) -> MeshConfig:
    sizes = {"data": 1, "fsdp": 1, "expert": 1, "tensor": 1}
    for part in text.split(","):
        axis, size = part.split("=")
        sizes[axis.strip()] = int(size)
    return MeshConfig(**sizes)


def batch(vocab: int, rows: int, seq: int, seed: int) -> dict:
    tokens = np.random.default_rng(seed).integers(0, vocab, (rows, seq + 1), dtype=np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "loss_weights": np.ones((rows, seq), np.float32),
            "segment_ids": np.ones((rows, seq), np.int32),
            "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (rows, seq)).copy()}


def measure(model, tx, schedule, mesh, args) -> dict:
    rules = sharding_rules()
    setup = sh.setup_sharded_training(model, tx, mesh, rules, batch_size=args.batch)
    step = sh.make_sharded_train_step(model, tx, schedule, mesh, rules, setup.state_shardings)
    abstract_state = sh.abstract_sharded_state(model, tx, setup.state_shardings)
    example = batch(model.config.vocab_size, args.batch, args.seq, 0)
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=setup.batch_sharding)
                      for k, v in example.items()}
    memory = step.lower(abstract_state, abstract_batch).compile().memory_analysis()
    state_bytes = sum(
        int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
        for a, s in zip(jax.tree.leaves(abstract_state),
                        jax.tree.leaves(setup.state_shardings)))
    state = sh.init_sharded_train_state(model, tx, 0, setup.state_shardings)
    times = []
    for rep in range(args.reps + 1):
        placed = sh.put_batch(batch(model.config.vocab_size, args.batch, args.seq, rep),
                              setup.batch_sharding)
        start = time.perf_counter()
        state, metrics = step(state, placed)
        jax.block_until_ready(metrics["loss"])
        if rep:  # the first call compiles
            times.append(time.perf_counter() - start)
    return {"step_seconds": statistics.median(times), "all_seconds": [round(t, 4) for t in times],
            "argument_bytes_per_device": memory.argument_size_in_bytes,
            "temp_bytes_per_device": memory.temp_size_in_bytes,
            "state_bytes_per_device": state_bytes, "loss": float(metrics["loss"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meshes", nargs="*", default=DEFAULT_MESHES,
                        help="axis=size,... per mesh (product 8)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--d-expert", type=int, default=256)
    parser.add_argument("--capacity-factor", type=float, default=None,
                        help="capacity routing (the static-shape all-to-all path); default dropless")
    parser.add_argument("--gmm-impl", default="xla")
    args = parser.parse_args()

    config = ModelConfig(vocab_size=2048, d_model=args.d_model, n_layers=args.layers, n_heads=4,
                         d_ff=4 * args.d_model,
                         moe=MoEConfig(num_experts=args.experts, top_k=args.top_k,
                                       d_expert=args.d_expert, gmm_impl=args.gmm_impl,
                                       capacity_factor=args.capacity_factor))
    model = build_model(config)
    train = TrainConfig(steps=100, warmup_steps=10)
    tx, schedule = make_optimizer(train), make_schedule(train)
    common = {"benchmark": "mesh_step", "device": jax.devices()[0].device_kind,
              "devices": len(jax.devices()), "d_model": args.d_model, "layers": args.layers,
              "experts": args.experts, "top_k": args.top_k, "d_expert": args.d_expert,
              "tokens": args.batch * args.seq, "capacity_factor": args.capacity_factor,
              "gmm_impl": args.gmm_impl, "date": datetime.date.today().isoformat()}
    single = measure(model, tx, schedule, make_mesh(MeshConfig(), devices=jax.devices()[:1]), args)
    print(json.dumps({**common, "mesh": "single", **single, "relative_step_time": 1.0,
                      "load_1m": os.getloadavg()[0]}), flush=True)
    for text in args.meshes:
        mesh = make_mesh(parse_mesh(text))
        result = measure(model, tx, schedule, mesh, args)
        print(json.dumps({**common, "mesh": text, "mesh_shape": mesh_shape(mesh), **result,
                          "relative_step_time": round(result["step_seconds"] /
                                                      single["step_seconds"], 3),
                          "load_1m": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    main()

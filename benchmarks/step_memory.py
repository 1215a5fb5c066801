"""The memory of a training step: what the compile-only GPU predicts here, what a GPU uses.

``moejax lower --topology=h100`` and ``sweep --preflight=h100:8`` judge whether a run fits a GPU
from XLA's memory analysis of a deviceless compile (``moejax.parallel.gpu_topology``). This
script checks that figure against the GPU itself, one JSON line per case:
- here (``--topology h100``): the deviceless compile's ``total_bytes`` per device;
- on a GPU (no ``--topology``): the same analysis of the step compiled on the GPU, and the peak
  bytes the allocator held (``memory_stats()["peak_bytes_in_use"]``) over three real steps on
  random tokens, from a fresh process (start the script once per case, ``--case N``, so that
  earlier cases' buffers are not in the peak).
The two lines of a case are compared by ``case`` and ``config``; the record of the deviceless
figures is ``results/gpu-compile-2026-11-24/step_memory_predicted.jsonl``.

  python benchmarks/step_memory.py --topology h100              # every case, predicted
  python benchmarks/step_memory.py --case 1                     # on a GPU: measured
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import run_environment  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# (gin files under configs/, bindings): a small model, moe_base at two batch sizes, its dense
# twin; bf16 compute as on an accelerator (accelerator.gin)
CASES = [
    (["smoke.gin"], ["DataConfig.batch_size = 16", "DataConfig.seq_len = 256"]),
    (["base.gin", "accelerator.gin", "models/moe_base.gin"], ["DataConfig.batch_size = 8"]),
    (["base.gin", "accelerator.gin", "models/moe_base.gin"], ["DataConfig.batch_size = 32"]),
    (["base.gin", "accelerator.gin", "models/dense_base.gin"], ["DataConfig.batch_size = 32"]),
]


def load(case: int):
    import gin

    from moejax.train.cli import load_configs

    files, bindings = CASES[case]
    gin.clear_config()
    model, data, train = load_configs([os.path.join(CONFIGS, f) for f in files], bindings)
    return model, data, train


def predicted(case: int, topology_name: str) -> dict:
    from moejax.train.lower import compile_train_step

    model, data, train = load(case)
    _, summary = compile_train_step(model, data, train, None, topology_name)
    return {"where": f"deviceless {topology_name}", "parameters": summary.parameters,
            **{k: summary.compiled[k] for k in ("total_bytes", "temp_bytes", "argument_bytes",
                                                 "seconds")}}


def measured(case: int) -> dict:
    from moejax.model.functional import build_model
    from moejax.parallel import sharding
    from moejax.train.lower import _training_program, memory_of
    from moejax.train.loop import validate_all
    from moejax.train.optim import make_optimizer

    model, data, train = load(case)
    resolved = validate_all(model, data, train)
    step, abstract, batch_spec, _ = _training_program(resolved, data, train, None,
                                                      jax.devices()[:1], None)
    compiled = step.lower(abstract, batch_spec).compile()
    analysis = memory_of(compiled, jax.devices()[0].device_kind)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    state = sharding.init_sharded_train_state(build_model(resolved), make_optimizer(train), 0,
                                              shardings)
    rng = np.random.default_rng(0)
    batch = {key: jax.device_put(
        rng.integers(1, resolved.vocab_size, spec.shape).astype(spec.dtype)
        if spec.dtype == jnp.int32 else np.ones(spec.shape, spec.dtype), spec.sharding)
        for key, spec in batch_spec.items()}
    for _ in range(3):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    stats = jax.devices()[0].memory_stats() or {}
    return {"where": jax.devices()[0].device_kind, "total_bytes": analysis["total_bytes"],
            "temp_bytes": analysis["temp_bytes"], "argument_bytes": analysis["argument_bytes"],
            "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
            "bytes_limit": stats.get("bytes_limit"),
            "loss": float(np.asarray(metrics["loss"]))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", default=None,
                        help="predict with the deviceless compile for these GPUs (h100); "
                             "without it, measure on this process's GPU")
    parser.add_argument("--case", type=int, action="append", default=None,
                        help=f"case index, 0..{len(CASES) - 1} (default: all)")
    args = parser.parse_args(argv)
    env = run_environment()
    for case in args.case or range(len(CASES)):
        files, bindings = CASES[case]
        try:
            figures = predicted(case, args.topology) if args.topology else measured(case)
        except Exception as error:  # noqa: BLE001 - a case that fails is recorded, others go on
            figures = {"error": f"{type(error).__name__}: {error}"[:500]}
        print(json.dumps({"benchmark": "step_memory", "case": case,
                          "config": files + bindings, **figures, **env}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Grouped-matmul throughput next to a dense matmul of the same useful FLOPs.

Prints one JSON line per (case, impl): useful TFLOP/s of gmm forward and forward+backward
(d_lhs and d_rhs), of a dense (M, D) x (D, N) matmul doing the same useful FLOPs, and of
``jax.lax.ragged_dot``, all measured in this process with repetitions interleaved (so a load
spike on a shared machine hits every contender alike); the median repetition is reported.

A case is M routed rows (tokens x K), d_model D, expert hidden F and E experts; the matmul timed
is the fused gate/up projection (M, D) x (E, D, 2F). Routing: "balanced" (M/E rows per expert)
or "zipf" (each token draws K distinct experts with probability ~ 1/rank).

  python benchmarks/gmm.py            # --quick grid, a few minutes on 2 CPU cores
  python benchmarks/gmm.py --full     # the design-grid shapes (long on CPU)
  python benchmarks/gmm.py --impl cpu --impl xla --reps 5
  python benchmarks/gmm.py --full --dtype bfloat16 --tiling pallas_gpu:128,64,128,8,3
      # extra contenders with explicit tiles: impl:block_m,block_k,block_n[,num_warps,num_stages]
  python benchmarks/gmm.py --full --dtype bfloat16 --impl auto --rival maxtext --rival jax_mgpu
      # other projects' grouped matmuls beside ours (benchmarks/rivals.py; GPU)
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
import rivals  # noqa: E402
from moejax.kernels import Tiling, autotune, choose, gmm, resolve_impl  # noqa: E402
from moejax.kernels.tiling import default_tiling as moejax_default_tiling  # noqa: E402

# (M routed rows, D d_model, F expert hidden, E experts, K top-k, routing)
QUICK = [
    (8192, 512, 512, 8, 2, "balanced"),
    (8192, 512, 512, 16, 2, "balanced"),
    (8192, 512, 512, 16, 2, "zipf"),
    (8192, 512, 256, 64, 8, "balanced"),
    (8192, 1024, 512, 16, 2, "zipf"),
]
FULL = [(m, d, d // 2 if e >= 64 else d, e, k, r)
        for m in (8192, 65536) for d in (512, 1024, 4096) for e, k in ((8, 1), (16, 2), (128, 8))
        for r in ("balanced", "zipf")]


def group_sizes(num_rows: int, num_experts: int, top_k: int, routing: str, seed: int = 0):
    """Rows per expert for num_rows / top_k tokens, each choosing top_k distinct experts."""
    rng = np.random.default_rng(seed)
    tokens = num_rows // top_k
    if routing == "balanced":
        sizes = np.full(num_experts, num_rows // num_experts)
        sizes[: num_rows - sizes.sum()] += 1
        return sizes.astype(np.int32)
    log_p = -np.log(np.arange(1, num_experts + 1))  # Zipf, exponent 1
    gumbel = rng.gumbel(size=(tokens, num_experts))
    choices = np.argsort(-(log_p + gumbel), axis=1)[:, :top_k]  # K distinct, by Gumbel top-k
    return np.bincount(choices.ravel(), minlength=num_experts).astype(np.int32)


def timed(fns: dict, args: dict, reps: int, errors: dict | None = None) -> dict:
    """Median seconds of each function, repetitions interleaved across functions.

    A function that fails to compile or run (e.g. too little GPU memory) is left out and its
    error recorded in ``errors`` rather than stopping the whole case.
    """
    for name, fn in list(fns.items()):
        try:
            jax.block_until_ready(fn(*args[name]))  # compile and warm up
        except Exception as error:  # noqa: BLE001 - report and carry on with the others
            if errors is None:
                raise
            first_line = (str(error).splitlines() or [""])[0]  # some errors have no message
            errors[name] = f"{type(error).__name__}: {first_line[:200]}"
            del fns[name]
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args[name]))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def forward_backward(matmul):
    """(x, w, dy) -> (out, d_x, d_w): one forward and both gradients."""
    def run(x, w, dy):
        out, vjp = jax.vjp(matmul, x, w)
        return (out, *vjp(dy))
    return jax.jit(run)


def parse_tiling(spec: str) -> tuple[str, str, Tiling]:
    """'pallas_gpu:128,64,128,8,3' -> (label, impl, Tiling(block_m, block_k, block_n, ...)).

    A '/' and a second tile list give the weight-gradient kernel its own tiles:
    'pallas_gpu:64,64,256,8,3/64,128,128,4,3'.
    """
    impl, _, numbers = spec.partition(":")
    names = ("block_m", "block_k", "block_n", "num_warps", "num_stages")
    tilings = []
    for part in numbers.split("/"):
        values = [int(v) for v in part.split(",")]
        if len(values) not in (3, 5):
            raise SystemExit(f"--tiling {spec!r}: want impl:block_m,block_k,block_n[,warps,stages]"
                             "[/tgmm tiles]")
        tilings.append(dict(zip(names, values)))
    tgmm = Tiling(min_block_m=1, **tilings[1]) if len(tilings) > 1 else None
    return f"{impl}[{numbers}]", impl, Tiling(min_block_m=1, tgmm=tgmm, **tilings[0])


def case_inputs(case, dtype):
    """Group sizes, random rows x (M, D), fused gate/up weights w (E, D, 2F), cotangent dy."""
    num_rows, d_model, d_expert, num_experts, top_k, routing = case
    n = 2 * d_expert
    sizes = jnp.asarray(group_sizes(num_rows, num_experts, top_k, routing))
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (num_rows, d_model), dtype)
    w = (jax.random.normal(keys[1], (num_experts, d_model, n)) / d_model ** 0.5).astype(dtype)
    dy = jax.random.normal(keys[2], (num_rows, n), dtype)
    return sizes, x, w, dy


def bench_case(case, contenders, reps, ragged_reps, dtype):
    """contenders: [(label, impl, tiling or None)]; one JSON line per contender."""
    num_rows, d_model, d_expert, num_experts, top_k, routing = case
    sizes, x, w, dy = case_inputs(case, dtype)
    n = w.shape[2]
    useful_flops = 2 * num_rows * d_model * n

    def grouped(impl, tiling=None):
        if impl.startswith("rival:"):  # another project's kernel (benchmarks/rivals.py)
            return rivals.make(impl.partition(":")[2], sizes)
        return lambda x, w: gmm(x, w, sizes, impl=impl, tiling=tiling)

    dense = lambda x, w: x @ w  # noqa: E731
    fns = {"dense_fwd": jax.jit(dense), "dense_fwdbwd": forward_backward(dense)}
    args = {"dense_fwd": (x, w[0]), "dense_fwdbwd": (x, w[0], dy)}
    errors: dict = {}
    for label, impl, tiling in contenders:
        try:
            matmul = grouped(impl, tiling)
        except rivals.RivalError as error:  # e.g. tokamax not installed: the others still run
            errors[f"{label}_fwd"] = errors[f"{label}_fwdbwd"] = f"RivalError: {error}"
            continue
        fns[f"{label}_fwd"] = jax.jit(matmul)
        fns[f"{label}_fwdbwd"] = forward_backward(matmul)
        args[f"{label}_fwd"], args[f"{label}_fwdbwd"] = (x, w), (x, w, dy)
    seconds = timed(fns, args, reps, errors)
    # ragged_dot is slow: fewer repetitions, timed apart
    if ragged_reps and "xla" not in [impl for _, impl, _ in contenders]:
        ragged = {"xla_fwd": jax.jit(grouped("xla")),
                  "xla_fwdbwd": forward_backward(grouped("xla"))}
        seconds.update(timed(ragged, {"xla_fwd": (x, w), "xla_fwdbwd": (x, w, dy)}, ragged_reps,
                             errors))
    tflops = {name: round(mult * useful_flops / s / 1e12, 4) for name, s in seconds.items()
              for mult in [3 if name.endswith("fwdbwd") else 1]}
    if "dense_fwd" not in tflops or "dense_fwdbwd" not in tflops:
        raise RuntimeError(f"the dense yardstick failed: {errors}")

    def ratio(a, b, digits=3):
        return round(tflops[a] / tflops[b], digits) if a in tflops and b in tflops else None

    name = f"m{num_rows}_d{d_model}_f{d_expert}_e{num_experts}_k{top_k}_{routing}"
    for label, impl, tiling in contenders:
        picked = None
        if impl == "tuned":  # what the tuning table chose (measured while compiling above)
            picked = autotune.describe_choice(*choose(
                "tuned", None, autotune.Problem.of(x, w, sizes, x.dtype)))
        line = {
            "case": name, "m": num_rows, "k": d_model, "n": n, "E": num_experts, "K": top_k,
            "routing": routing, "max_group": int(sizes.max()), "impl": impl,
            "tiling": None if tiling is None else [tiling.block_m, tiling.block_k,
                                                   tiling.block_n, tiling.num_warps,
                                                   tiling.num_stages],
            "tuned_choice": picked, "dtype": jnp.dtype(dtype).name,
            "rival_version": (rivals.version(impl.partition(":")[2])
                              if impl.startswith("rival:") else None),
            "fwd_tflops": tflops.get(f"{label}_fwd"),
            "fwdbwd_tflops": tflops.get(f"{label}_fwdbwd"),
            "dense_fwd_tflops": tflops["dense_fwd"],
            "dense_fwdbwd_tflops": tflops["dense_fwdbwd"],
            "ragged_dot_fwd_tflops": tflops.get("xla_fwd"),
            "ragged_dot_fwdbwd_tflops": tflops.get("xla_fwdbwd"),
            "ratio_vs_dense_fwd": ratio(f"{label}_fwd", "dense_fwd"),
            "ratio_vs_dense": ratio(f"{label}_fwdbwd", "dense_fwdbwd"),
            "ratio_vs_ragged_dot": ratio(f"{label}_fwdbwd", "xla_fwdbwd", 2),
            "errors": {k: v for k, v in errors.items()
                       if k.startswith((f"{label}_", "xla_"))} or None,
            "reps": reps, **run_environment(),
        }
        print(json.dumps(line), flush=True)


def bench_parts(case, contenders, reps, dtype):
    """Each of the three grouped matmuls of a training step timed alone, next to its dense twin:
    forward x·w, input gradient dy·wᵀ (gmm with rhs transposed) and weight gradient xᵀ·dy (tgmm).
    One JSON line per contender with the three ratios, to show which kernel holds the step back."""
    from moejax.kernels import _module

    num_rows, d_model, d_expert, num_experts, top_k, routing = case
    sizes, x, w, dy = case_inputs(case, dtype)
    n = w.shape[2]
    offset = jnp.zeros((), jnp.int32)
    fns = {"dense_fwd": jax.jit(lambda x, w: x @ w[0]),
           "dense_dlhs": jax.jit(lambda dy, w: dy @ w[0].T),
           "dense_drhs": jax.jit(lambda x, dy: x.T @ dy)}
    args = {"dense_fwd": (x, w), "dense_dlhs": (dy, w), "dense_drhs": (x, dy)}
    for label, impl, tiling in contenders:
        kernels, tiling = _module(impl), tiling or moejax_default_tiling(impl)
        fns[f"{label}_fwd"] = jax.jit(lambda x, w, k=kernels, t=tiling: k.gmm(
            x, w, sizes, offset, tiling=t, out_dtype=x.dtype))
        fns[f"{label}_dlhs"] = jax.jit(lambda dy, w, k=kernels, t=tiling: k.gmm(
            dy, w, sizes, offset, tiling=t, out_dtype=dy.dtype, transpose_rhs=True))
        fns[f"{label}_drhs"] = jax.jit(lambda x, dy, k=kernels, t=tiling: k.tgmm(
            x, dy, sizes, offset, num_groups=num_experts, tiling=t, out_dtype=x.dtype))
        args[f"{label}_fwd"], args[f"{label}_dlhs"], args[f"{label}_drhs"] = (x, w), (dy, w), (x, dy)
    errors: dict = {}
    seconds = timed(fns, args, reps, errors)
    useful = 2 * num_rows * d_model * n
    for label, impl, tiling in contenders:
        line = {"benchmark": "gmm_parts", "case": f"m{num_rows}_d{d_model}_f{d_expert}_e"
                f"{num_experts}_k{top_k}_{routing}", "impl": impl,
                "tiling": None if tiling is None else [tiling.block_m, tiling.block_k,
                                                       tiling.block_n, tiling.num_warps,
                                                       tiling.num_stages],
                "dtype": jnp.dtype(dtype).name, "errors": errors or None}
        for part in ("fwd", "dlhs", "drhs"):
            if f"{label}_{part}" in seconds:
                line[f"{part}_tflops"] = round(useful / seconds[f"{label}_{part}"] / 1e12, 3)
                line[f"dense_{part}_tflops"] = round(useful / seconds[f"dense_{part}"] / 1e12, 3)
                line[f"{part}_ratio"] = round(seconds[f"dense_{part}"] /
                                              seconds[f"{label}_{part}"], 3)
        line.update(run_environment())
        print(json.dumps(line), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument("--quick", action="store_true", help="small grid (default)")
    grid.add_argument("--full", action="store_true", help="design-grid shapes")
    parser.add_argument("--impl", action="append",
                        help="implementations to time (default: auto's choice); 'xla' is "
                             "ragged_dot itself; 'tuned' measures the candidates first "
                             "(gmm_tuning table: $XDG_CACHE_HOME/moejax/gmm_tuning.json)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (median kept)")
    parser.add_argument("--ragged-reps", type=int, default=1,
                        help="repetitions of ragged_dot (0 = skip it; it is slow on CPU/GPU)")
    parser.add_argument("--ragged-max-experts", type=int, default=16,
                        help="skip ragged_dot for cases with more experts (its cost grows with E)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--case", type=int, action="append", help="only these case indices")
    parser.add_argument("--shape", action="append", default=[],
                        help="extra case M,D,F,E,K,routing (e.g. 65536,1024,1024,1,1,balanced)")
    parser.add_argument("--parts", action="store_true",
                        help="time forward, input-gradient and weight-gradient kernels apart")
    parser.add_argument("--tiling", action="append", default=[],
                        help="extra contender impl:block_m,block_k,block_n[,warps,stages]")
    parser.add_argument("--rival", action="append", default=[],
                        help=f"another project's grouped matmul as a contender, one of "
                             f"{rivals.NAMES} (jax_mgpu:block_m,block_k,block_n,stages,"
                             "grid_block_n sets its tiles); its lines read impl 'rival:NAME'")
    args = parser.parse_args(argv)
    if args.rival and args.parts:
        parser.error("--parts times our kernels' three matmuls apart; rivals run whole")
    try:
        rival_contenders = [(rivals.label(spec), f"rival:{spec}", None) for spec in args.rival]
    except rivals.RivalError as error:
        parser.error(str(error))
    cases = FULL if args.full else QUICK
    if args.shape:
        cases = [(*map(int, spec.split(",")[:5]), spec.split(",")[5]) for spec in args.shape]
    impls = args.impl or ([] if args.tiling or args.rival else [resolve_impl("auto")])
    contenders = ([(impl, impl, None) for impl in impls] + [parse_tiling(t) for t in args.tiling]
                  + rival_contenders)
    for index, case in enumerate(cases):
        if args.case and index not in args.case:
            continue
        if args.parts:
            bench_parts(case, contenders, args.reps, jnp.dtype(args.dtype))
            continue
        ragged_reps = args.ragged_reps if case[3] <= args.ragged_max_experts else 0
        bench_case(case, contenders, args.reps, ragged_reps, jnp.dtype(args.dtype))


if __name__ == "__main__":
    main()

"""Measure which grouped-matmul implementation and tiles are fastest for one problem, here.

In: a gmm problem (M rows, contraction k, n columns, G local of E groups, dtypes) and the device
JAX runs on. Out: the (impl, Tiling) whose forward plus both gradients ran fastest on random rows
spread evenly over the local groups, kept in a JSON table (the "tuning table") so that each
problem is measured once per device kind and JAX version.

Why: tile size is the main speed lever of a grouped matmul (fine-grained MoE lost half its MFU to
untuned tiles in MaxText), and which kernel wins depends on the chip: Triton or Mosaic GPU on an
H100, our CPU loops or ragged_dot, 128- or 512-row tiles on a TPU. tokamax keeps tuned tables per
chip; moejax measures on the researcher's own machine instead of shipping numbers from ours.

``gmm(..., impl="tuned")`` calls ``tuned_choice`` while its caller is being traced: shapes are
static then, so each candidate is compiled and timed on concrete arrays outside the trace
(``jax.ensure_compile_time_eval``) and tracing continues with the winner. A multi-process job
must run one program on every process, so there the table must already hold the problem:
prime it on one host with ``python -m moejax.kernels.autotune`` (or a one-process run) and copy
the file to the others.

Table format (``TABLE_FORMAT``): {"format": ..., "entries": {key: entry}}, where key names the
device, JAX version and problem (``problem_key``) and entry holds the chosen "impl" and "tiling",
its "seconds", every candidate's time or error, and the date. Entries are only ever added; a
table that does not parse raises ``TuningTableError`` naming the file and the entry.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import statistics
import sys
import time
import warnings
from typing import Callable

import gin
import jax
import jax.numpy as jnp
import numpy as np

from moejax import files
from moejax.kernels import cpu, platform
from moejax.kernels.tiling import Tiling, default_tiling

TABLE_FORMAT = "moejax-gmm-tuning/1"
TUNABLE = ("cpu", "pallas_tpu", "pallas_gpu", "mosaic_gpu", "cudnn", "xla")

Choice = tuple[str, Tiling]  # (impl name, its tiles)


class TuningTableError(ValueError):
    """The tuning table is unreadable or an entry is malformed; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One grouped matmul, as gmm sees it: lhs (rows, k), rhs (local_groups, k, n) of
    num_groups groups in group_sizes, output in out_dtype."""

    rows: int
    k: int
    n: int
    local_groups: int
    num_groups: int
    lhs_dtype: str
    rhs_dtype: str
    out_dtype: str

    @classmethod
    def of(cls, lhs, rhs, group_sizes, out_dtype) -> "Problem":
        return cls(rows=lhs.shape[0], k=lhs.shape[1], n=rhs.shape[2], local_groups=rhs.shape[0],
                   num_groups=group_sizes.shape[0], lhs_dtype=jnp.dtype(lhs.dtype).name,
                   rhs_dtype=jnp.dtype(rhs.dtype).name, out_dtype=jnp.dtype(out_dtype).name)

    def describe(self) -> str:
        return (f"M={self.rows} k={self.k} n={self.n} G={self.local_groups}/{self.num_groups} "
                f"{self.lhs_dtype}x{self.rhs_dtype}->{self.out_dtype}")


@dataclasses.dataclass(frozen=True)
class TuningSettings:
    table_path: str
    reps: int


@gin.configurable
def gmm_tuning(table_path: str | None = None, reps: int = 5) -> TuningSettings:
    """Where impl="tuned" keeps its measurements, and how long it measures.

    Args:
      table_path: the tuning table (JSON); None = ``$XDG_CACHE_HOME/moejax/gmm_tuning.json``
        (``~/.cache/moejax/gmm_tuning.json`` without XDG_CACHE_HOME). One table serves every
        device kind and JAX version: entries are keyed by both.
      reps: timed repetitions per candidate after one warm-up call; the median is kept.
    """
    if reps < 1:
        raise ValueError(f"gmm_tuning.reps = {reps}: must be >= 1")
    if table_path is None:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        table_path = os.path.join(cache, "moejax", "gmm_tuning.json")
    return TuningSettings(table_path=os.fspath(table_path), reps=reps)


def device_key() -> str:
    """What a timing depends on besides the problem: backend, chip and JAX version."""
    device = jax.devices()[0]
    return f"{jax.default_backend()}|{device.device_kind}|jax {jax.__version__}"


def problem_key(problem: Problem, device: str) -> str:
    return f"{device}|{problem.describe()}"


def candidates(problem: Problem, backend: str,
               capability: tuple[int, int] | None = None) -> list[Choice]:
    """The (impl, Tiling) pairs worth timing on a backend, the static "auto" choice first (so the
    tuned pick is never slower than "auto" but for timing noise), without duplicates or kernels
    the device cannot compile (``capability``: an NVIDIA GPU's compute capability, None on
    other backends and other GPUs)."""
    static = platform.auto_impl(backend, capability)
    found = [(static, default_tiling(static))]
    if backend == "cpu":
        base = default_tiling("cpu")
        found += [("cpu", dataclasses.replace(base, block_m=block_m,
                                              min_block_m=min(base.min_block_m, block_m)))
                  for block_m in (256, 1024)]
        if base.slab and problem.k * problem.n >= cpu.SLAB_MIN_EXPERT_ELEMENTS:
            found.append(("cpu", dataclasses.replace(base, slab=0)))
    elif backend == "gpu":
        base = default_tiling("pallas_gpu")
        found += [("pallas_gpu", dataclasses.replace(base, block_m=64)),
                  ("pallas_gpu", dataclasses.replace(base, block_n=128))]
        if base.tgmm is not None and base.tgmm.num_warps < 8:
            # The weight gradient's 128 x 128 float32 accumulator spills registers on 4 warps
            # and not on 8, as Triton compiles it for sm_80-90 (benchmarks/triton_compile.py);
            # never timed on a GPU, so a candidate, not the default.
            found.append(("pallas_gpu", dataclasses.replace(
                base, tgmm=dataclasses.replace(base.tgmm, num_warps=8))))
        sixteen_bit = {problem.lhs_dtype, problem.rhs_dtype} <= {"bfloat16", "float16"}
        if sixteen_bit:
            mosaic = default_tiling("mosaic_gpu")
            found.append(("mosaic_gpu", mosaic))
            # Warp-specialized: two consumer warpgroups on a 128 x 256 tile (JAX's Hopper
            # matmul's shape), 3 stages to leave shared memory for the output tiles; the
            # weight gradient likewise on 128 x 256.
            warp_specialized = dataclasses.replace(
                mosaic, block_n=256, num_warps=8, num_stages=3, tgmm=dataclasses.replace(
                    mosaic.tgmm, block_n=256, num_warps=8, num_stages=3))
            found.append(("mosaic_gpu", warp_specialized))
            if problem.rows < 256 * problem.local_groups:
                # Small groups (fine-grained experts): a row tile is visited once per group
                # in it, so 64-row tiles halve the rows multiplied for nothing; 4 stages fit.
                found.append(("mosaic_gpu", dataclasses.replace(
                    warp_specialized, block_m=64, num_stages=4)))
        found.append(("cudnn", default_tiling("cudnn")))
        found.append(("xla", default_tiling("xla")))
    elif backend == "tpu":
        found += [("pallas_tpu", Tiling(block_m=m, block_k=k, block_n=n, min_block_m=1))
                  for m, k, n in ((256, 512, 512), (512, 1024, 1024))]
        found.append(("xla", default_tiling("xla")))
    unique = []
    for choice in found:
        if choice not in unique and platform.unsupported(choice[0], backend, capability) is None:
            unique.append(choice)
    return unique


def balanced_group_sizes(problem: Problem) -> np.ndarray:
    """All rows spread evenly over the local groups (offset 0); the other groups get none."""
    sizes = np.zeros(problem.num_groups, np.int32)
    sizes[: problem.local_groups] = problem.rows // problem.local_groups
    sizes[: problem.rows % problem.local_groups] += 1
    return sizes


def measure_seconds(impl: str, tiling: Tiling, problem: Problem, reps: int = 5) -> float:
    """Median seconds of one forward plus both gradients of gmm on random data.

    Runs outside any trace in progress, so it may be called while a model is being jitted.
    """
    from moejax.kernels import gmm

    rng = np.random.default_rng(0)
    lhs = rng.standard_normal((problem.rows, problem.k), np.float32)
    rhs = rng.standard_normal((problem.local_groups, problem.k, problem.n), np.float32)
    grad = rng.standard_normal((problem.rows, problem.n), np.float32)
    lhs, grad = lhs.astype(jnp.dtype(problem.lhs_dtype)), grad.astype(jnp.dtype(problem.out_dtype))
    rhs = (rhs / math.sqrt(problem.k)).astype(jnp.dtype(problem.rhs_dtype))
    sizes = balanced_group_sizes(problem)

    def forward_backward(lhs, rhs, sizes, grad):
        out, vjp = jax.vjp(lambda lhs, rhs: gmm(lhs, rhs, sizes, impl=impl, tiling=tiling,
                                                 preferred_element_type=problem.out_dtype),
                           lhs, rhs)
        return (out, *vjp(grad))

    with jax.ensure_compile_time_eval():
        compiled = jax.jit(forward_backward).lower(lhs, rhs, sizes, grad).compile()
        jax.block_until_ready(compiled(lhs, rhs, sizes, grad))  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            jax.block_until_ready(compiled(lhs, rhs, sizes, grad))
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _progress(message: str) -> None:
    print(f"moejax gmm tuning: {message}", file=sys.stderr, flush=True)


def tune(problem: Problem, choices: list[Choice],
         measure: Callable[[str, Tiling, Problem], float],
         progress: Callable[[str], None] = _progress, margin: float = 0.03) -> dict:
    """Time every choice; returns the table entry of the fastest, or of the first choice (the
    default) if it is within ``margin`` of the fastest. A candidate that fails to compile or run
    (a Triton tile too big for shared memory, say) is recorded with its error and skipped; if
    none runs, RuntimeError lists every error."""
    measured = []
    for number, (impl, tiling) in enumerate(choices, 1):
        label = f"[{number}/{len(choices)}] {describe_choice(impl, tiling)}"
        try:
            seconds = float(measure(impl, tiling, problem))
            if not (math.isfinite(seconds) and seconds > 0):
                raise RuntimeError(f"measured {seconds!r} s")
        except Exception as error:  # noqa: BLE001 - a failed candidate is data, not the end
            text = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
            measured.append({"impl": impl, "tiling": dataclasses.asdict(tiling), "error": text})
            progress(f"{problem.describe()} {label}: failed ({text})")
            continue
        measured.append({"impl": impl, "tiling": dataclasses.asdict(tiling), "seconds": seconds})
        progress(f"{problem.describe()} {label}: {seconds * 1e3:.3f} ms")
    timed = [m for m in measured if "seconds" in m]
    if not timed:
        raise RuntimeError(f"gmm tuning: no implementation ran for {problem.describe()}: "
                           + "; ".join(f"{m['impl']}: {m['error']}" for m in measured))
    best = min(timed, key=lambda m: m["seconds"])
    if measured[0] in timed and measured[0]["seconds"] <= (1 + margin) * best["seconds"]:
        best = measured[0]  # the default wins near-ties: timing noise should not flip kernels
    progress(f"{problem.describe()}: chose "
             f"{describe_choice(best['impl'], tiling_from_dict(best['tiling']))}")
    return {"impl": best["impl"], "tiling": best["tiling"], "seconds": best["seconds"],
            "problem": dataclasses.asdict(problem), "candidates": measured,
            "date": datetime.date.today().isoformat()}


def describe_choice(impl: str, tiling: Tiling) -> str:
    """'pallas_gpu 128x64x256 w8 s3 (tgmm 64x128x128 w4 s3)', 'cpu rows 512..16 slab 2', 'xla'."""
    if impl == "xla":
        return "xla"
    if impl == "cpu":
        return f"cpu rows {tiling.block_m}..{tiling.min_block_m} slab {tiling.slab}"

    def tiles(t: Tiling) -> str:
        return f"{t.block_m}x{t.block_k}x{t.block_n} w{t.num_warps} s{t.num_stages}"

    if impl == "cudnn":  # ragged_dot (no tiles of ours), then the Triton weight gradient
        return f"cudnn (tgmm {tiles(tiling.tgmm or tiling)})"
    text = f"{impl} {tiles(tiling)}"
    return text if tiling.tgmm is None else f"{text} (tgmm {tiles(tiling.tgmm)})"


def tiling_from_dict(fields: dict) -> Tiling:
    """A Tiling from its ``dataclasses.asdict`` form (ValueError/TypeError if malformed)."""
    if not isinstance(fields, dict):
        raise TypeError(f"a tiling must be an object, got {fields!r}")
    fields = dict(fields)
    nested = fields.pop("tgmm", None)
    return Tiling(**fields, tgmm=None if nested is None else tiling_from_dict(nested))


def _load(path: str) -> dict:
    """The table as stored, its format and every entry checked; an empty table if the file
    does not exist."""
    if not os.path.exists(path):
        return {"format": TABLE_FORMAT, "entries": {}}
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TuningTableError(f"gmm tuning table {path} is unreadable ({error}); fix it or move "
                               "it away (gmm_tuning.table_path) to measure again") from None
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT:
        found = table.get("format") if isinstance(table, dict) else type(table).__name__
        raise TuningTableError(f"gmm tuning table {path}: format {found!r}, expected "
                               f"{TABLE_FORMAT!r}")
    if not isinstance(table.get("entries"), dict):
        raise TuningTableError(f"gmm tuning table {path}: 'entries' must be an object")
    _choices(path, table)
    return table


def _choices(path: str, table: dict) -> dict[str, Choice]:
    choices = {}
    for key, entry in table["entries"].items():
        try:
            impl = entry["impl"]
            if impl not in TUNABLE:
                raise ValueError(f"impl {impl!r} is not one of {TUNABLE}")
            choices[key] = (impl, tiling_from_dict(entry["tiling"]))
        except (KeyError, TypeError, ValueError) as error:
            raise TuningTableError(f"gmm tuning table {path}, entry {key!r}: {error!r}") from None
    return choices


def read_table(path: str) -> dict[str, Choice]:
    """Every entry of the tuning table as key -> (impl, Tiling); {} if the file does not exist."""
    return _choices(path, _load(path))


def add_entry(path: str, key: str, entry: dict) -> None:
    """Add one entry: under a lock, reread the table (another process may have added some;
    one that does not parse is refused, not overwritten), insert, replace the file atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with files.locked(path):
        table = _load(path)
        table["entries"][key] = entry
        files.write_atomic(path, json.dumps(table, indent=1, sort_keys=True) + "\n")


def tuned_choice(problem: Problem, settings: TuningSettings | None = None,
                 measure: Callable | None = None) -> Choice:
    """The table's (impl, Tiling) for this problem on this device; measured and added if absent
    (one process only: see the module docstring)."""
    settings = settings or gmm_tuning()
    key = problem_key(problem, device_key())
    known = read_table(settings.table_path)
    if key in known:
        return known[key]
    if jax.process_count() > 1:
        raise RuntimeError(
            f"gmm impl='tuned': {settings.table_path} has no entry for {key!r}, and a "
            f"{jax.process_count()}-process job cannot measure one (each process could pick a "
            "different kernel). Prime the table on one host (python -m moejax.kernels.autotune "
            "with these shapes) and copy it to every host, or set gmm_impl explicitly.")
    if measure is None:
        def measure(impl, tiling, problem):
            return measure_seconds(impl, tiling, problem, reps=settings.reps)
    device = platform.current()
    entry = tune(problem, candidates(problem, device.backend, device.capability), measure)
    try:
        add_entry(settings.table_path, key, entry)
    except OSError as error:  # the choice still holds for this run; only remembering it failed
        warnings.warn(f"gmm tuning: could not write the tuning table {settings.table_path} "
                      f"({error}); this run uses its measurement, the next will measure again. "
                      "Set gmm_tuning.table_path to a writable file.", stacklevel=2)
    return entry["impl"], tiling_from_dict(entry["tiling"])


def main(argv: list[str] | None = None) -> int:
    """Prime the tuning table for explicit shapes; prints the chosen entry as one JSON line."""
    import argparse

    from moejax import ginconf

    parser = argparse.ArgumentParser(
        prog="python -m moejax.kernels.autotune",
        description="Time every grouped-matmul implementation and tiling for one problem on this "
                    "device and record the fastest in the tuning table used by "
                    "gmm_impl = 'tuned'. One problem per call; a MoE layer has two (gate/up: "
                    "k = d_model, n = 2 x d_expert; down: k = d_expert, n = d_model).")
    parser.add_argument("--rows", type=int, required=True,
                        help="routed rows per device (tokens x top-k)")
    parser.add_argument("--k", type=int, required=True, help="contraction size")
    parser.add_argument("--n", type=int, required=True, help="output columns")
    parser.add_argument("--groups", type=int, required=True, help="experts on this device (G)")
    parser.add_argument("--num-groups", type=int, help="experts in all (E; default G)")
    parser.add_argument("--dtype", default="float32", help="lhs and rhs dtype (default float32)")
    parser.add_argument("--out-dtype", help="output dtype (default --dtype)")
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin file(s) for gmm_tuning (table_path, reps)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="gin binding(s)")
    args = parser.parse_args(argv)
    try:
        ginconf.parse_gin(args.gin_file, args.gin_bindings)
        dtype = jnp.dtype(args.dtype).name
        problem = Problem(rows=args.rows, k=args.k, n=args.n, local_groups=args.groups,
                          num_groups=args.num_groups or args.groups, lhs_dtype=dtype,
                          rhs_dtype=dtype, out_dtype=jnp.dtype(args.out_dtype or dtype).name)
        for name in ("rows", "k", "n", "local_groups", "num_groups"):
            if getattr(problem, name) < 1:
                raise ValueError(f"{name} = {getattr(problem, name)}: must be >= 1")
        if problem.num_groups < problem.local_groups:
            raise ValueError(f"--num-groups {problem.num_groups} < --groups "
                             f"{problem.local_groups}")
        settings = gmm_tuning()
        impl, tiling = tuned_choice(problem, settings)
    except (ValueError, TypeError, RuntimeError) as error:
        print(f"moejax gmm tuning: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"key": problem_key(problem, device_key()), "impl": impl,
                      "tiling": dataclasses.asdict(tiling), "table": settings.table_path}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

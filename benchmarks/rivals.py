"""Other projects' grouped matmuls, timed by ``benchmarks/gmm.py --rival NAME`` next to ours.

In: a rival's name (and, for "jax_mgpu", optional tiles). Out: ``make(spec, group_sizes)`` ->
(x (M, k), w (E, k, n)) -> (M, n), differentiable, so gmm.py times its forward and forward +
backward beside the dense yardstick and our kernels, in the same process.

- ``maxtext``: what MaxText's MoE layer runs on GPU or TPU with ``use_tokamax_gmm``:
  ``tokamax.ragged_dot(..., implementation="mosaic")`` (Mosaic GPU on NVIDIA, Mosaic TPU on
  TPU), differentiated by tokamax's own VJP. The brief's "faster than MaxText's MoE path on the
  same hardware" is this line against ours.
- ``tokamax_triton``: ``tokamax.ragged_dot(..., implementation="triton")``.
- ``jax_mgpu``: the Hopper kernels JAX ships beside Pallas
  (``jax.experimental.pallas.ops.gpu.ragged_dot_mgpu`` and ``transposed_ragged_dot_mgpu``), which
  have no VJP of their own; here the forward and the input gradient (rhs transposed) run
  ``ragged_dot``, the weight gradient ``transposed_ragged_dot``. Tiles
  ``jax_mgpu:block_m,block_k,block_n,stages,grid_block_n`` (default 128,64,128,4,1; the weight
  gradient uses the same numbers with block_m over k and block_k over rows).

Limits, which gmm.py's cases respect: 16-bit operands for the Mosaic GPU kernels; group sizes
summing to M (the shipped kernels leave rows past the sum unwritten; tokamax takes no
group_offset); for jax_mgpu k a multiple of block_k, and k, n multiples of block_m, block_n for
the weight gradient. tokamax is not a moejax dependency: on the GPU machine its wheels travel
in ``.whl/rivals/`` (``bash benchmarks/gpu_session.sh rivals``).
"""

from __future__ import annotations

import functools
import importlib

import jax

NAMES = ("maxtext", "tokamax_triton", "jax_mgpu")
JAX_MGPU_TILES = (128, 64, 128, 4, 1)  # block_m, block_k, block_n, stages, grid_block_n


class RivalError(ValueError):
    """A rival that does not exist, bad tiles, or a rival that is not installed."""


def parse(spec: str) -> tuple[str, tuple[int, ...] | None]:
    """'jax_mgpu:128,64,256,4,2' -> ('jax_mgpu', (128, 64, 256, 4, 2)); 'maxtext' -> (.., None)."""
    name, _, numbers = spec.partition(":")
    if name not in NAMES:
        raise RivalError(f"--rival {spec!r}: unknown rival {name!r}; choose one of {NAMES}")
    if not numbers:
        return name, None
    if name != "jax_mgpu":
        raise RivalError(f"--rival {spec!r}: only jax_mgpu takes tiles (tokamax tunes its own)")
    try:
        tiles = tuple(int(v) for v in numbers.split(","))
    except ValueError:
        tiles = ()
    if len(tiles) != 5 or min(tiles) < 1:
        raise RivalError(f"--rival {spec!r}: want jax_mgpu:block_m,block_k,block_n,stages,"
                         "grid_block_n (five positive integers)")
    return name, tiles


def label(spec: str) -> str:
    name, tiles = parse(spec)
    return name if tiles is None else f"{name}[{','.join(map(str, tiles))}]"


def version(spec: str) -> str | None:
    """The rival's package and version, for the benchmark line (None if it is not installed)."""
    module = "jax" if parse(spec)[0] == "jax_mgpu" else "tokamax"
    try:
        return f"{module} {importlib.import_module(module).__version__}"
    except ImportError:
        return None


def make(spec: str, group_sizes: jax.Array):
    """The rival ``spec`` as a differentiable (x, w) -> x @ w[group of each row]."""
    name, tiles = parse(spec)
    if name == "jax_mgpu":
        return functools.partial(jax_mgpu, group_sizes=group_sizes,
                                 tiles=tiles or JAX_MGPU_TILES)
    tokamax = _import("tokamax", name)
    implementation = "mosaic" if name == "maxtext" else "triton"
    return lambda x, w: tokamax.ragged_dot(x, w, group_sizes,
                                           preferred_element_type=x.dtype,
                                           implementation=implementation)


def _import(module: str, rival: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise RivalError(f"rival {rival!r} needs {module} ({error}); pip install {module}, or "
                         "on the GPU machine put its wheels in .whl/rivals/") from error


def _jax_mgpu_kernels():
    return (importlib.import_module("jax.experimental.pallas.ops.gpu.ragged_dot_mgpu"),
            importlib.import_module("jax.experimental.pallas.ops.gpu.transposed_ragged_dot_mgpu"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def jax_mgpu(x, w, group_sizes, tiles):
    """JAX's Hopper ragged_dot kernel; its transposed kernel gives the weight gradient."""
    return _jax_mgpu_forward(x, w, group_sizes, tiles, transpose_rhs=False)


def _jax_mgpu_forward(x, w, group_sizes, tiles, transpose_rhs):
    forward, _ = _jax_mgpu_kernels()
    block_m, block_k, block_n, stages, grid_block_n = tiles
    return forward.ragged_dot(x, w, group_sizes=group_sizes, block_m=block_m, block_n=block_n,
                              block_k=block_k, max_concurrent_steps=stages,
                              grid_block_n=grid_block_n, transpose_rhs=transpose_rhs)


def _jax_mgpu_fwd(x, w, group_sizes, tiles):
    return jax_mgpu(x, w, group_sizes, tiles), (x, w, group_sizes)


def _jax_mgpu_bwd(tiles, residuals, dy):
    x, w, group_sizes = residuals
    _, transposed = _jax_mgpu_kernels()
    block_m, block_k, block_n, stages, grid_block_n = tiles
    d_x = _jax_mgpu_forward(dy, w, group_sizes, tiles, transpose_rhs=True)
    # (rows, k)^T (rows, n) per group: rows are its contraction (block_k), k its block_m.
    d_w = transposed.transposed_ragged_dot(x, dy, group_sizes=group_sizes, block_m=block_m,
                                           block_n=block_n, block_k=block_k,
                                           max_concurrent_steps=stages, grid_block_n=grid_block_n)
    return d_x, d_w.astype(w.dtype), None


jax_mgpu.defvjp(_jax_mgpu_fwd, _jax_mgpu_bwd)

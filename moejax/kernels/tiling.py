"""Tile sizes of the grouped-matmul kernels, one gin-configurable default per implementation.

In: an implementation name and, optionally, gin bindings such as ``cpu_tiling.block_m = 256``.
Out: a ``Tiling`` (rows, contraction and output-column tile sizes). Tile size is the main speed
lever of a grouped matmul (fine-grained MoE with many small experts wants smaller row tiles), so
each backend has its own knob and ``gmm(..., tiling=Tiling(...))`` overrides it per call.
"""

from __future__ import annotations

import dataclasses

import gin


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Tile sizes in elements.

    Attributes:
      block_m: rows per tile (Pallas), or the largest row chunk of the "cpu" path.
      block_k: contraction (k) elements per tile; Pallas only.
      block_n: output columns per tile; Pallas only.
      min_block_m: smallest row chunk of the "cpu" path: a group wastes < this many rows.
      num_warps: warps per program: "pallas_gpu" (Triton); "mosaic_gpu" 8 = two consumer
        warpgroups (and a producer) instead of one.
      num_stages: software-pipelining depth of the k loop; "pallas_gpu" (Triton) and
        "mosaic_gpu" (steps in flight) only.
      slab: "cpu" only: how many slab lengths (the mean rows per group, rounded down to a power
        of two, and its halvings) the weight gradient may choose from at run time, besides
        none; 0 = chunk loops only (see ``cpu.tgmm``).
      tgmm: tiles of the weight-gradient kernel when they should differ from the forward's
        ("pallas_gpu": there block_m is the contraction over a group's rows and block_k x
        block_n the output tile); None = the same tiles.
    """

    block_m: int = 128
    block_k: int = 128
    block_n: int = 128
    min_block_m: int = 16
    num_warps: int = 4
    num_stages: int = 2
    slab: int = 0
    tgmm: "Tiling | None" = None

    def __post_init__(self):
        for name in ("block_m", "block_k", "block_n", "min_block_m", "num_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"Tiling.{name} = {value}: must be a power of two >= 1")
        if self.tgmm is not None and not isinstance(self.tgmm, Tiling):
            raise ValueError(f"Tiling.tgmm = {self.tgmm!r}: must be a Tiling or None")
        if self.slab < 0:
            raise ValueError(f"Tiling.slab = {self.slab}: must be >= 0")
        if self.num_stages < 1:
            raise ValueError(f"Tiling.num_stages = {self.num_stages}: must be >= 1")
        if self.min_block_m > self.block_m:
            raise ValueError(f"Tiling.min_block_m = {self.min_block_m} must be <= block_m = "
                             f"{self.block_m}")


@gin.configurable
def cpu_tiling(block_m: int = 512, min_block_m: int = 16, slab: int = 2) -> Tiling:
    """"cpu" path: row chunks of block_m, block_m/2, ..., min_block_m rows (k and n untiled).

    Args:
      block_m: largest row chunk; 256-512 keeps each chunk's matmul near dense speed on CPU.
      min_block_m: smallest chunk; each group computes < min_block_m rows of padding.
      slab: slab lengths the weight gradient chooses from at run time (0 = none); experts of
        fewer than 2**18 weights never use one (``cpu.SLAB_MIN_EXPERT_ELEMENTS``).
    """
    return Tiling(block_m=block_m, block_k=1, block_n=1, min_block_m=min_block_m, slab=slab)


@gin.configurable
def pallas_tpu_tiling(block_m: int = 128, block_k: int = 128, block_n: int = 128) -> Tiling:
    """Mosaic TPU tiles (megablox default 128^3; MaxText uses 512/1024/1024 on recent chips).

    Args:
      block_m: rows per tile (a multiple of 8, or of 16 for bfloat16).
      block_k: contraction per tile (a multiple of 128).
      block_n: output columns per tile (a multiple of 128).
    """
    return Tiling(block_m=block_m, block_k=block_k, block_n=block_n, min_block_m=1)


@gin.configurable
def pallas_gpu_tiling(block_m: int = 128, block_k: int = 64, block_n: int = 256,
                      num_warps: int = 8, num_stages: int = 3, tgmm_block_m: int = 64,
                      tgmm_block_k: int = 128, tgmm_block_n: int = 128, tgmm_num_warps: int = 4,
                      tgmm_num_stages: int = 3) -> Tiling:
    """Triton tiles (each >= 16 for tensor-core dots); defaults tuned on an H100 in bfloat16
    (benchmarks/RESULTS.md): the forward and input-gradient kernels want wide output tiles,
    the weight gradient, whose contraction runs over a group's rows, wants a short one.

    Args:
      block_m: rows per tile (gmm).
      block_k: contraction per inner-loop step (gmm).
      block_n: output columns per program (gmm).
      num_warps: warps per Triton program (gmm).
      num_stages: pipelining depth of the k loop (gmm; lowered to fit shared memory).
      tgmm_block_m: rows per step of the weight gradient's loop over a group.
      tgmm_block_k: rows of the weight-gradient output tile (d_model side).
      tgmm_block_n: columns of the weight-gradient output tile.
      tgmm_num_warps, tgmm_num_stages: as above, for the weight gradient.
    """
    return Tiling(block_m=block_m, block_k=block_k, block_n=block_n, min_block_m=1,
                  num_warps=num_warps, num_stages=num_stages,
                  tgmm=Tiling(block_m=tgmm_block_m, block_k=tgmm_block_k,
                              block_n=tgmm_block_n, min_block_m=1, num_warps=tgmm_num_warps,
                              num_stages=tgmm_num_stages))


@gin.configurable
def mosaic_gpu_tiling(block_m: int = 128, block_k: int = 64, block_n: int = 128,
                      num_warps: int = 4, num_stages: int = 4, tgmm_block_m: int = 64,
                      tgmm_block_k: int = 128, tgmm_block_n: int = 128,
                      tgmm_num_warps: int = 4, tgmm_num_stages: int = 3) -> Tiling:
    """Hopper (Mosaic GPU) tiles: wgmma accumulators of block_m x block_n in float32
    registers, block_k x 2 bytes = one 128-byte swizzle row. Not yet timed on a GPU; the
    warp-specialized kernels (``num_warps = 8``, ``block_n = 256``, ``num_stages = 3``, the
    same for the weight gradient) are the contender ``gmm_impl = "tuned"`` and
    ``gpu_session.sh mosaic`` time next to this default.

    Args:
      block_m: rows per tile (gmm), a multiple of 64 (wgmma's row count).
      block_k: contraction per pipeline step (gmm), 64 for 16-bit operands.
      block_n: output columns per tile (gmm), a multiple of 8, <= 256.
      num_warps: 4: one warpgroup copies and multiplies (gmm); 8: two consumer warpgroups,
        each with half of block_n (128 or 256), and a producer warpgroup for the copies.
      num_stages: k steps in flight (TMA copies ahead of the wgmma), >= 2.
      tgmm_block_m: rows of a group per step of the weight gradient (its contraction).
      tgmm_block_k: rows of the weight-gradient output tile (d_model side), a multiple of 64.
      tgmm_block_n: columns of the weight-gradient output tile.
      tgmm_num_warps: as num_warps, for the weight gradient (8: each consumer with half of
        tgmm_block_n, which is then 128 or 256, and tgmm_block_k a multiple of 128).
      tgmm_num_stages: steps in flight of the weight gradient.
    """
    return Tiling(block_m=block_m, block_k=block_k, block_n=block_n, min_block_m=1,
                  num_warps=num_warps, num_stages=num_stages,
                  tgmm=Tiling(block_m=tgmm_block_m, block_k=tgmm_block_k,
                              block_n=tgmm_block_n, min_block_m=1, num_warps=tgmm_num_warps,
                              num_stages=tgmm_num_stages))


_DEFAULTS = {"cpu": cpu_tiling, "pallas_tpu": pallas_tpu_tiling,
             "pallas_gpu": pallas_gpu_tiling, "mosaic_gpu": mosaic_gpu_tiling,
             "cudnn": pallas_gpu_tiling}  # cudnn: tiles of its Triton weight gradient


def default_tiling(impl: str) -> Tiling:
    """The gin-configured default tiles of one implementation ("xla" ignores tiling)."""
    return _DEFAULTS[impl]() if impl in _DEFAULTS else Tiling()


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= value."""
    return -(-value // multiple) * multiple


def fit_tile(tile: int, dim: int, minimum: int = 1) -> int:
    """Shrink a power-of-two tile for a small dimension: never above next_pow2(dim)."""
    return max(minimum, min(tile, 1 << max(dim - 1, 0).bit_length()))

"""Safetensors weight files, written by hand (the format is a JSON header and raw bytes).

In: named numpy arrays in the order to write them, and the dtype to store them in (each is
converted only as it is written, so an export holds one converted tensor at a time). Out:
``model.safetensors``, or, past a shard size, ``model-0000i-of-0000n.safetensors`` files with the
``model.safetensors.index.json`` that maps each tensor to its file, as Hugging Face checkpoints
are laid out.

A file: 8 bytes little-endian header length N; N bytes of JSON header (padded with spaces to a
multiple of 8 so the data is aligned) mapping each name to its dtype, shape and [begin, end)
byte offsets in the data; then the data, tensors back to back, row-major, little-endian.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import Callable, Sequence

import numpy as np

# numpy dtype name -> safetensors dtype tag (bfloat16 is ml_dtypes', as JAX uses)
DTYPE_TAGS = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
              "int32": "I32", "int64": "I64"}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def stored_bytes(array: np.ndarray, dtype) -> int:
    return array.size * np.dtype(dtype).itemsize


def header_bytes(tensors: Sequence[tuple[str, np.ndarray]], dtype,
                 metadata: dict[str, str]) -> bytes:
    """The length prefix and JSON header of a file holding ``tensors`` in this order, stored as
    ``dtype``."""
    tag = DTYPE_TAGS.get(np.dtype(dtype).name)
    if tag is None:
        raise ValueError(f"dtype {dtype} has no safetensors tag (supported: {sorted(DTYPE_TAGS)})")
    header: dict = {"__metadata__": dict(metadata)}
    offset = 0
    for name, array in tensors:
        size = stored_bytes(array, dtype)
        header[name] = {"dtype": tag, "shape": list(array.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_file(path: str, tensors: Sequence[tuple[str, np.ndarray]], dtype,
               metadata: dict[str, str]) -> None:
    """Write one safetensors file (the caller makes the directory it is in atomic)."""
    with open(path, "wb") as f:
        f.write(header_bytes(tensors, dtype, metadata))
        for _, array in tensors:
            data = np.ascontiguousarray(array, dtype=dtype)
            f.write((data.byteswap() if sys.byteorder == "big" else data).tobytes())


def plan_shards(sizes: Sequence[int], max_bytes: int) -> list[list[int]]:
    """Indices of the tensors in each file: in order, a new file whenever the next tensor would
    take the current one past ``max_bytes`` (a tensor larger than that gets a file of its own)."""
    shards: list[list[int]] = [[]]
    used = 0
    for i, size in enumerate(sizes):
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(i)
        used += size
    return shards


def write_checkpoint(directory: str, tensors: Sequence[tuple[str, np.ndarray]], *, dtype,
                     max_shard_bytes: int, metadata: dict[str, str],
                     progress: Callable[[str], None] = lambda line: None) -> list[str]:
    """Write ``tensors`` into ``directory`` as one file or as shards with their index; returns
    the names of the files written."""
    sizes = [stored_bytes(a, dtype) for _, a in tensors]
    shards = plan_shards(sizes, max_shard_bytes)
    if len(shards) == 1:
        names = [SINGLE_FILE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, indices in zip(names, shards):
        chosen = [tensors[i] for i in indices]
        write_file(os.path.join(directory, name), chosen, dtype, metadata)
        weight_map.update({tensor_name: name for tensor_name, _ in chosen})
        progress(f"wrote {name}: {len(chosen)} tensor{'s' if len(chosen) > 1 else ''}, "
                 f"{sum(sizes[i] for i in indices) / 2**20:.1f} MiB")
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes)},
                 "weight_map": weight_map}
        with open(os.path.join(directory, INDEX_FILE), "w") as f:
            json.dump(index, f, indent=2)
        names.append(INDEX_FILE)
    return names

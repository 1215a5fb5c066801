"""Run the "mosaic_gpu" kernels in JAX's Mosaic GPU interpreter, transposed wgmma operands too.

In: whether to detect races. Out: the interpreter's parameters (``params()``, called when a
kernel is built off a GPU). The interpreter (jax._src.pallas.mosaic_gpu.interpret, a private API)
simulates shared memory, TMA and barriers. In JAX 0.10 its wgmma reads an operand only through
index transforms: a ``plgpu.transpose_ref`` operand (the input-gradient's rhs, the
weight-gradient's lhs) fails with "'TransposeTransform' object has no attribute 'indices'".
There ``params()`` swaps in a wgmma callback that reads the operand through its index transforms
and then applies its transposes -- what the hardware does with a transposed shared-memory
descriptor -- and accumulates acc += a @ b in the accumulator's dtype, as the interpreter's own
does. JAX 0.11 reads transposed operands itself (``interpret_utils.to_access``, with a different
callback signature), so there nothing is swapped. The interpreter runs wgmma synchronously:
hazards of the asynchronous hardware wgmma are not modelled (its race detector covers shared
memory, TMA and barriers).
"""

from __future__ import annotations

import jax
import numpy as np

try:
    from jax._src.pallas.mosaic.interpret import utils as interpret_utils
    from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks, interpret_pallas_call
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    from jax._src.state.types import TransposeTransform
    AVAILABLE = True
    # JAX >= 0.11: the interpreter's own wgmma applies an operand's transposes.
    NATIVE_TRANSPOSES = hasattr(interpret_utils, "to_access")
except ImportError:  # pragma: no cover - another JAX version
    AVAILABLE = NATIVE_TRANSPOSES = False


def _read(memory, thread, info, key_array, transforms):
    """(key, range, value) of a wgmma operand: index transforms first, then transposes."""
    transforms = gpu_callbacks._remove_noop_transforms(transforms)
    indexers = [t for t in transforms if not isinstance(t, TransposeTransform)]
    transposes = [t for t in transforms if isinstance(t, TransposeTransform)]
    if transposes and transforms.index(transposes[0]) < len(indexers):
        raise NotImplementedError(f"an index after a transpose: {transforms}")
    key = gpu_callbacks.HostAllocationKey.from_array(key_array)
    rows_cols = interpret_utils.to_range(jax.tree.map(int, tuple(indexers)))
    value, _, _ = memory.get_buffer_content(key, rows_cols, thread, logging_info=info)
    for transpose in transposes:
        value = np.transpose(value, transpose.permutation)
    return key, rows_cols, value


def _wgmma(*, token, device_id, grid_point_coords, thread_id, acc_allocation_key_as_array,
           acc_transforms, acc_dtype, a_allocation_key_as_array, a_transforms,
           b_allocation_key_as_array, b_transforms, source_info=None):
    memory = gpu_callbacks._get_shared_memory()
    thread = memory.get_global_thread_id(int(device_id), int(thread_id))
    info = interpret_utils.GPULoggingInfo(
        device_id=int(device_id), grid_point_coords=tuple(int(x) for x in grid_point_coords),
        thread_id=int(thread_id), source_info=source_info)
    _, _, a = _read(memory, thread, info, a_allocation_key_as_array, a_transforms)
    _, _, b = _read(memory, thread, info, b_allocation_key_as_array, b_transforms)
    acc_key, acc_range, acc = _read(memory, thread, info, acc_allocation_key_as_array,
                                    acc_transforms)
    memory.store_buffer_content(acc_key, acc_range, acc + np.matmul(a, b, dtype=acc_dtype),
                                thread, logging_info=info)
    return token


def params(detect_races: bool = False):
    """The interpreter's parameters, with the transposing wgmma installed. TMA zero-fills reads
    past an array's edge; the interpreter fills them with NaN instead (and fresh buffers too),
    so a kernel passes the tests only if no such value reaches a result."""
    if not AVAILABLE:
        raise NotImplementedError(
            f"gmm impl 'mosaic_gpu' needs a GPU, or a JAX with the Mosaic GPU interpreter "
            f"(jax._src.pallas.mosaic_gpu.interpret; this is JAX {jax.__version__})")
    if not NATIVE_TRANSPOSES:
        gpu_callbacks.wgmma = _wgmma
    return InterpretGPUParams(out_of_bounds_reads="uninitialized", uninitialized_memory="nan",
                              detect_races=detect_races)


def races_found() -> bool:
    """Whether the race detector (``params(detect_races=True)``) saw a race so far."""
    return bool(interpret_pallas_call.get_races().races_found)

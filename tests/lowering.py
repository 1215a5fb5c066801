"""Lowering for an accelerator from this CPU-only machine: ``jax.export`` compiles nothing, but it
runs every lowering rule of the target (Mosaic TPU, Triton, Mosaic GPU), so an op, kernel or
shape the target cannot take fails here."""

from __future__ import annotations

import jax

from moejax.kernels import platform as kernel_platform
from moejax.kernels.platform import EXPORT_UNGUARANTEED_CALLS as UNGUARANTEED_CALLS

TRITON_CALL = UNGUARANTEED_CALLS[0]  # "__gpu$xla.gpu.triton"


def export_for(fn, platform: str, *args):
    """``jax.export`` of ``jax.jit(fn)`` (or of an already jitted fn) for "tpu" or "cuda"."""
    from jax import export

    checks = [export.DisabledSafetyCheck.custom_call(name) for name in UNGUARANTEED_CALLS]
    # Triton asks which GPU it lowers for (JAX >= 0.11): the kernels name it under
    # platform.targeting, which these tests skip by forcing the kernels out of their interpreters
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    with kernel_platform.naming_the_gpu(kernel_platform.target_device(platform)):
        return export.export(jitted, platforms=[platform], disabled_checks=checks)(*args)


def check_compiled_summary(summary: dict, hlo_path, kernel_call: str, impl: str) -> None:
    """What the summary of any step compiled on compile-only devices (``moejax lower --topology
    --json --out=DIR``) must hold: memory parts that add up to the total, this device's state
    shard among the arguments and donated, every ragged exchange of the program compiled one for
    one, the expert matmuls on ``impl`` and its kernels' custom call in the compiled HLO."""
    memory = summary["compiled"]
    assert memory["total_bytes"] == (memory["argument_bytes"] + memory["output_bytes"]
                                     - memory["alias_bytes"] + memory["temp_bytes"]
                                     + memory["code_bytes"])
    assert memory["argument_bytes"] >= summary["state_bytes_per_device"]
    assert memory["alias_bytes"] > 0  # the state is donated and written over
    exchanges = summary["custom_calls"].get("ragged_all_to_all", 0)
    assert memory["collectives"].get("ragged-all-to-all", 0) == exchanges
    assert {k["impl"] for k in summary["kernels"]} == {impl}
    with open(hlo_path) as f:
        assert kernel_call in f.read()


def expected_moe_calls(gin_files, bindings=()) -> tuple[int, int]:
    """(expert-matmul kernel calls, ragged exchanges) a training step of this config must lower
    to, counted from the config rather than read back from the program: each MoE layer runs
    2 expert matmuls per expert group (gate/up fused, then down), each as a forward and both
    gradients, and an expert-parallel layer 2 exchanges (to the experts and back) forward and
    their 2 transposes backward."""
    from moejax.model.config import moe_layer_indices
    from moejax.train.cli import load_configs

    model, _, _ = load_configs(list(gin_files), list(bindings))
    layers = len(moe_layer_indices(model))
    return 6 * len(model.moe.groups) * layers if layers else 0, 4 * layers

"""Checkpoints round-trip, and half-written or corrupt ones are never taken as the latest."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from moejax.train.checkpoint import Checkpointer


def _state(value):
    params = {"blocks": {0: {"w": jnp.full((3, 3), value)}}, "norm": jnp.ones(3)}
    return {"params": params, "opt_state": optax.adamw(1e-3).init(params),
            "step": jnp.int32(value)}


def test_round_trip_restores_identical_arrays(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2)
    state = _state(3.0)
    ckpt.save(3, state, {"step": 3})
    ckpt.wait()
    restored, meta = ckpt.restore_latest(_state(0.0))
    assert meta["step"] == 3
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)
    ckpt.close()


def test_restoring_only_the_parameters_reads_nothing_else(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2, async_save=False)
    ckpt.save(3, _state(3.0), {"step": 3})
    wanted = {"params": _state(0.0)["params"]}
    parts, meta = ckpt.restore_parts(3, wanted)
    assert meta["step"] == 3 and sorted(parts) == ["params"]
    np.testing.assert_array_equal(parts["params"]["blocks"][0]["w"], np.full((3, 3), 3.0))
    np.testing.assert_array_equal(parts["params"]["norm"], np.ones(3))
    ckpt.close()


def test_restoring_parts_of_a_missing_or_truncated_step_is_one_checkpoint_error(tmp_path):
    import pytest

    from moejax.train.checkpoint import CheckpointError

    ckpt = Checkpointer(str(tmp_path), keep=2, async_save=False)
    ckpt.save(2, _state(2.0), {"step": 2})
    wanted = {"params": _state(0.0)["params"]}
    with pytest.raises(CheckpointError, match="/5 is missing or was never finalized"):
        ckpt.restore_parts(5, wanted)
    for root, _, names in os.walk(tmp_path / "2" / "state"):
        if os.path.basename(root) == "d":
            for name in names:
                os.truncate(os.path.join(root, name), 10)
    with pytest.raises(CheckpointError, match="/2 could not be restored"):
        ckpt.restore_parts(2, wanted)
    ckpt.close()


def test_keeps_only_last_k(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2, async_save=False)
    for step in (1, 2, 3):
        ckpt.save(step, _state(float(step)), {"step": step})
    ckpt.wait()
    assert ckpt.steps() == [2, 3]
    ckpt.close()


def test_half_written_and_corrupt_checkpoints_are_skipped(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=5, async_save=False)
    ckpt.save(2, _state(2.0), {"step": 2})
    ckpt.save(4, _state(4.0), {"step": 4})
    ckpt.close()
    # A save killed mid-way: orbax's temporary directory, never finalized.
    os.makedirs(tmp_path / "6.orbax-checkpoint-tmp-1234" / "state")
    # A step directory with no orbax metadata (e.g. copied by hand, interrupted).
    os.makedirs(tmp_path / "5" / "state")
    # The newest finalized checkpoint has its array data destroyed.
    for root, _, files in os.walk(tmp_path / "4" / "state"):
        for name in files:
            if name not in ("_CHECKPOINT_METADATA",):
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    messages = []
    ckpt = Checkpointer(str(tmp_path), keep=5)
    assert ckpt.steps() == [2, 4]
    restored, meta = ckpt.restore_latest(_state(0.0), log=messages.append)
    assert meta["step"] == 2 and float(restored["params"]["blocks"][0]["w"][0, 0]) == 2.0
    assert any("4" in m and "corrupt" in m for m in messages)
    assert any(name.startswith("4.corrupt-") for name in os.listdir(tmp_path))  # kept, not deleted
    ckpt.close()


def test_a_truncated_checkpoint_is_reported_in_one_line(tmp_path, capfd):
    """orbax reads arrays concurrently: when their files are truncated, every read fails and,
    unfiltered, each failure printed its own traceback (hundreds of lines, the asyncio ones
    after the restore returned). One warning names the checkpoint and an array instead."""
    import gc
    import time

    ckpt = Checkpointer(str(tmp_path), keep=5, async_save=False)
    ckpt.save(2, _state(2.0), {"step": 2})
    ckpt.save(4, _state(4.0), {"step": 4})
    ckpt.close()
    truncated = 0
    for root, _, names in os.walk(tmp_path / "4" / "state"):
        if os.path.basename(root) == "d":  # the array chunks
            for name in names:
                os.truncate(os.path.join(root, name), 10)
                truncated += 1
    assert truncated
    messages = []
    ckpt = Checkpointer(str(tmp_path), keep=5)
    restored, meta = ckpt.restore_latest(_state(0.0), log=messages.append)
    ckpt.close()
    gc.collect()
    time.sleep(0.5)  # reads still in flight on TensorStore's threads finish
    gc.collect()
    assert meta["step"] == 2
    (message,) = messages
    assert "checkpoint" in message and "/4 could not be restored" in message
    assert "\n" not in message and len(message) < 700
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "Event loop is closed" not in captured.err


def test_the_late_read_filter_passes_other_errors_through():
    from moejax.train.checkpoint import _late_read_filter

    seen = []
    hook = _late_read_filter(seen.append)
    assert _late_read_filter(hook) is hook  # installed once

    class Unraisable:
        def __init__(self, value):
            self.exc_value = value

    hook(Unraisable(RuntimeError("Event loop is closed")))
    other = Unraisable(RuntimeError("something else"))
    hook(other)
    hook(Unraisable(ValueError("Event loop is closed")))
    assert [u.exc_value for u in seen][0] is other.exc_value and len(seen) == 2


def test_a_field_the_checkpoint_predates_counts_as_its_default():
    """A run written before ModelConfig.qk_norm existed has no such key in its metadata: it
    matches the default ('none') and nothing else; nested MoE fields are named one by one."""
    from moejax.train.checkpoint import config_mismatch

    old = {"ModelConfig": {"d_model": 32, "moe": {"top_k": 2, "num_experts": 4}}}
    now = {"ModelConfig": {"d_model": 32, "qk_norm": "none",
                           "moe": {"top_k": 2, "num_experts": 4, "routing": "token_choice"}}}
    assert config_mismatch(old, now) == []
    moved = {"ModelConfig": {**now["ModelConfig"], "qk_norm": "per_head",
                             "moe": {**now["ModelConfig"]["moe"], "routing": "hash",
                                     "top_k": 1}}}
    assert config_mismatch(old, moved) == [
        "ModelConfig.moe.routing: checkpoint 'token_choice' vs config 'hash'",
        "ModelConfig.moe.top_k: checkpoint 2 vs config 1",
        "ModelConfig.qk_norm: checkpoint 'none' vs config 'per_head'"]
    dense = {"ModelConfig": {"d_model": 32, "moe": None}}
    assert config_mismatch(dense, now) == [
        "ModelConfig.moe: checkpoint None vs config {'top_k': 2, 'num_experts': 4, "
        "'routing': 'token_choice'}"]
    assert config_mismatch({"UnknownConfig": {"a": 1}}, {"UnknownConfig": {}}) == [
        "UnknownConfig.a: checkpoint 1 vs config None"]

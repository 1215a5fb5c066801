"""Orbax checkpoints of the train state: save every N steps, keep the last K, resume the latest.

In: a run's checkpoint directory and ``TrainState`` pytrees. Out: saved steps
``<dir>/<step>/{state,meta}`` and restored states.

Only finalized checkpoints count. Orbax writes into a temporary directory and renames it when the
save is complete, so a run killed mid-save leaves a ``*.orbax-checkpoint-tmp-*`` directory that is
never listed. A step directory that lacks orbax's metadata file, or that fails to restore, is
reported by name and moved aside to ``<step>.corrupt-<time>`` (never deleted), and the previous
good step is used instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import re
import sys
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from moejax import files

METADATA_FILE = "_CHECKPOINT_METADATA"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not match the run's configuration."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint of another configuration: refused, never moved aside."""


def _gist(error: Exception) -> str:
    """The first line of an orbax/TensorStore error, without the store spec it appends but with
    the array it names there."""
    text = str(error)
    lines = text.strip().splitlines() or [""]
    gist = lines[0].split(" See full TensorStore details")[0][:300]
    array = re.search(r"'path': '([^'/][^']*?)/?'", text)
    return f"{gist} (array {array[1]})" if array else gist


@contextlib.contextmanager
def _quiet_failed_reads():
    """orbax reads a checkpoint's arrays in concurrent tasks. When one read fails, the others'
    errors surface later as asyncio's "Task exception was never retrieved" log records and
    Python's "Exception ignored in <coroutine>" messages: hundreds of lines for one corrupt
    checkpoint, burying the one warning that names it. Inside this block they are dropped (the
    caller collects the failed tasks before it ends, and reports the failure itself)."""
    logger = logging.getLogger("asyncio")
    level, hook = logger.level, sys.unraisablehook
    logger.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        logger.setLevel(level)
        sys.unraisablehook = _late_read_filter(hook)


def _late_read_filter(hook):
    """``hook``, minus what a failed restore's last reads raise after it: TensorStore finishes
    them on its own threads and hands each result to orbax's event loop, which is closed by
    then ("Event loop is closed", one traceback per read). Nothing else is dropped."""
    if getattr(hook, "drops_late_reads", False):
        return hook

    def filtered(unraisable):
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            hook(unraisable)

    filtered.drops_late_reads = True
    return filtered


def _is_finalized(step_dir: str) -> bool:
    return os.path.exists(os.path.join(step_dir, METADATA_FILE))


def finalized_steps(directory: str) -> list[int]:
    """The complete checkpoints' steps under a run's checkpoint directory, ascending, read from
    the directory alone (no orbax manager); [] when there is none."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory)
                  if name.isdigit() and _is_finalized(os.path.join(directory, name)))


class Checkpointer:
    """A thin wrapper over ``ocp.CheckpointManager`` for one run's train state."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save))

    def steps(self) -> list[int]:
        """Finalized steps, ascending."""
        return sorted(s for s in self._manager.all_steps()
                      if _is_finalized(os.path.join(self.directory, str(s))))

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Save (asynchronously when enabled); ``wait()`` makes it durable."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def read_meta(self, step: int) -> dict:
        path = os.path.join(self.directory, str(step), "meta", "metadata")
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"checkpoint {self.directory}/{step}: unreadable meta ({e})") from e

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restore one step onto the structure, shapes and dtypes of ``abstract_state``.

        Leaves that carry a sharding (``jax.ShapeDtypeStruct(..., sharding=...)``) are restored
        in that layout, whatever mesh wrote the checkpoint; leaves without one go to the default
        device, so a checkpoint written on a mesh also restores on one device.
        """
        step_dir = self._finalized_dir(step)
        target = _restore_target(abstract_state)
        restored = _reading(step_dir, lambda: self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())))
        return restored.state, dict(restored.meta)

    def restore_parts(self, step: int, abstract_parts: dict) -> tuple[dict, dict]:
        """Restore only some top-level fields of the saved state, e.g. ``{"params": ...,
        "buffers": ...}`` without the optimizer state (a third of an Adam state's bytes), onto
        the shapes in ``abstract_parts``; returns (the parts as a dict, meta)."""
        step_dir = self._finalized_dir(step)
        target = _restore_target(abstract_parts)
        args = ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)

        def read():
            with ocp.PyTreeCheckpointer() as reader:
                return reader.restore(os.path.join(step_dir, "state"), args=args)

        return _reading(step_dir, read), self.read_meta(step)

    def _finalized_dir(self, step: int) -> str:
        step_dir = os.path.join(self.directory, str(step))
        if not _is_finalized(step_dir):
            raise CheckpointError(f"checkpoint {step_dir} is missing or was never finalized")
        return step_dir

    def restore_latest(self, abstract_state: Any, *, log=print,
                       accept: Callable[[dict], None] | None = None) -> tuple[Any, dict] | None:
        """Restore the newest checkpoint that restores cleanly; None when there is none.

        Unreadable newer checkpoints are moved aside (and logged), never silently used.
        ``accept(meta)`` sees each candidate's metadata before any array is read and raises
        ``CheckpointMismatch`` to refuse it (a checkpoint of another model, whose arrays would
        not fit this one's shapes): that stops the search and leaves every checkpoint in place.
        """
        for step in reversed(self.steps()):
            try:
                if accept is not None:
                    accept(self.read_meta(step))
                return self.restore(step, abstract_state)
            except CheckpointMismatch:
                raise
            except CheckpointError as e:
                aside = files.move_aside(os.path.join(self.directory, str(step)), "corrupt")
                log(f"WARNING: {e}; moved it to {aside} and trying the previous checkpoint")
                self._manager.reload()
        return None

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _restore_target(abstract: Any) -> Any:
    """``abstract`` with every leaf a ShapeDtypeStruct carrying where to put it: its own sharding
    when it has one (restored in that layout whatever mesh wrote it), else the default device."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target_leaf(leaf):
        if not hasattr(leaf, "shape"):  # a Python scalar
            return ocp.utils.to_shape_dtype_struct(leaf)
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                    sharding=getattr(leaf, "sharding", None) or device)

    return jax.tree.map(target_leaf, abstract)


def _reading(step_dir: str, read: Callable[[], Any]) -> Any:
    """``read()``, with whatever orbax raises for truncated or mismatched files turned into one
    CheckpointError naming the step directory (and the failed reads' noise kept quiet)."""
    failure = None
    with _quiet_failed_reads():
        try:
            return read()
        except Exception as e:  # orbax raises many types for truncated or mismatched files
            failure = f"{type(e).__name__}: {_gist(e)}"  # not e: its tasks must be freed
        gc.collect()  # the failed reads' tasks, while their messages are dropped
    raise CheckpointError(f"checkpoint {step_dir} could not be restored: {failure}")


def config_fingerprint(*configs) -> dict:
    """JSON-able description of the configs a checkpoint was written with."""
    out = {}
    for c in configs:
        out[type(c).__name__] = json.loads(json.dumps(dataclasses.asdict(c), default=str))
    return out


def same_model_and_data(fingerprint: dict, directory: str,
                        vocabulary_tag: str | None = None) -> Callable[[dict], None]:
    """``restore_latest``'s ``accept`` for a run of the configs ``fingerprint`` describes: a
    checkpoint of another model or data config raises CheckpointMismatch listing the differences
    (training knobs may change between resumes). ``vocabulary_tag`` (a user's SentencePiece
    file by content, ``vocabularies.vocabulary_tag``) must match the one the checkpoint records:
    the same path holding another model would tokenize the data differently."""
    current = {k: v for k, v in fingerprint.items() if k != "TrainConfig"}

    def accept(meta: dict) -> None:
        saved = {k: v for k, v in meta.get("config", {}).items() if k != "TrainConfig"}
        diffs = config_mismatch(saved, current)
        saved_tag = meta.get("vocabulary_tag")
        if saved_tag is not None and vocabulary_tag is not None and saved_tag != vocabulary_tag:
            diffs.append(f"the vocabulary file's content: checkpoint {saved_tag} vs now "
                         f"{vocabulary_tag} (the file changed since)")
        if diffs:
            raise CheckpointMismatch(
                f"{directory} holds checkpoints of a different model/data config; use a new "
                f"--workdir or restore the config. Differences: " + "; ".join(diffs))

    return accept


def _field_defaults(class_name: str) -> dict:
    """The JSON form of the defaults of the config class a fingerprint names ({} if unknown)."""
    from moejax.data.pipeline import DataConfig
    from moejax.model.config import ModelConfig, MoEConfig
    from moejax.train.config import TrainConfig

    classes = {c.__name__: c for c in (ModelConfig, MoEConfig, DataConfig, TrainConfig)}
    if class_name not in classes:
        return {}
    return {f.name: json.loads(json.dumps(f.default, default=str))
            for f in dataclasses.fields(classes[class_name])
            if f.default is not dataclasses.MISSING}


# fields of a fingerprint that hold another config class: ModelConfig.moe is an MoEConfig
_NESTED = {("ModelConfig", "moe"): "MoEConfig"}


def _diffs(name: str, class_name: str, saved: dict, current: dict) -> list[str]:
    defaults = _field_defaults(class_name)
    diffs = []
    for key in sorted(set(saved) | set(current)):
        # a field one side lacks was added to moejax after that side was written: its default
        a = saved[key] if key in saved else defaults.get(key)
        b = current[key] if key in current else defaults.get(key)
        nested = _NESTED.get((class_name, key))
        if nested and isinstance(a, dict) and isinstance(b, dict):
            diffs += _diffs(f"{name}.{key}", nested, a, b)
        elif a != b:
            diffs.append(f"{name}.{key}: checkpoint {a!r} vs config {b!r}")
    return diffs


def config_mismatch(saved: dict, current: dict) -> list[str]:
    """The fields whose saved and current values differ ('Class.field: checkpoint X vs config
    Y'). A field the checkpoint does not record (it predates the field) counts as its default,
    so a run written by an older moejax resumes unless the config moved the new knob."""
    diffs = []
    for cls in sorted(set(saved) | set(current)):
        diffs += _diffs(cls, cls, saved.get(cls, {}), current.get(cls, {}))
    return diffs

"""Per-step metrics to JSON lines and TensorBoard, safe to resume.

In: host-side metric dicts (floats, and per-MoE-layer lists of tokens per expert). Out:
``<workdir>/metrics.jsonl`` (one record per training step), ``<workdir>/eval.jsonl`` (one record per
validation score) and TensorBoard event files under ``<workdir>/tensorboard``.

On resume from step s, records after s left by the interrupted run are dropped (rewritten through
a temporary file and an atomic rename), so every step appears exactly once.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from moejax import files


def _truncate_jsonl(path: str, last_step: int) -> None:
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
            if record.get("step", 0) <= last_step:
                kept.append(json.dumps(record))
    files.write_atomic(path, "".join(line + "\n" for line in kept))


def load_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    array = np.asarray(value)
    if array.ndim == 0:
        x = array.item()
        return x if not isinstance(x, float) or math.isfinite(x) else str(x)
    return array.tolist()


class MetricsWriter:
    def __init__(self, workdir: str, *, resume_step: int = 0, tensorboard: bool = True):
        self.train_path = os.path.join(workdir, "metrics.jsonl")
        self.eval_path = os.path.join(workdir, "eval.jsonl")
        for path in (self.train_path, self.eval_path):
            _truncate_jsonl(path, resume_step)
        self._train = open(self.train_path, "a")
        self._eval = open(self.eval_path, "a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter  # event files without importing TensorFlow

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

    def write_train(self, step: int, metrics: dict) -> None:
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._train.write(json.dumps(record) + "\n")
        self._train.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key == "moe":
                    for layer in value:
                        prefix = f"moe/block{layer.get('block', '?')}"
                        for name, stat in layer.items():
                            if name == "tokens_per_expert":
                                self._tb.add_histogram(f"{prefix}/tokens_per_expert",
                                                       np.asarray(stat, np.float64), step)
                            elif name != "block" and isinstance(stat, (int, float)):
                                self._tb.add_scalar(f"{prefix}/{name}", stat, step)
                elif key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"train/{key}", value, step)

    def write_eval(self, step: int, scores: dict[str, float]) -> None:
        for name, loss in scores.items():
            self._eval.write(json.dumps({"step": step, "task": name, "loss": loss}) + "\n")
        self._eval.flush()
        if self._tb is not None:
            for name, loss in scores.items():
                self._tb.add_scalar(f"validation/{name}", loss, step)

    def close(self) -> None:
        self._train.close()
        self._eval.close()
        if self._tb is not None:
            self._tb.close()

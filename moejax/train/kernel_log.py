"""``kernels.json``: which grouped-matmul implementation and tiles a run's expert matmuls ran with.

In: the run directory, the step this process starts training at, and the choices
``moejax.kernels.record`` collected while the train and eval steps were traced. Out:
``<workdir>/kernels.json``::

    {"format": "moejax-kernels/1",
     "segments": [{"start_step": 0, "backend": "cpu", "device_kind": "cpu", "jax": "0.10.2",
                   "gmm": [{"requested": "auto", "impl": "cpu", "choice": "cpu rows 512..16 slab 2",
                            "problem": {"rows": ..., "k": ..., "n": ..., ...},
                            "tiling": {...}}, ...]}]}

One segment per process start, since a resumed run may run on another device (or measure
another "tuned" pick); segments starting at or after this start are dropped, as their steps are
being trained again. The file is replaced atomically whenever a new choice appears (the first
train step, the first evaluation). A kernels.json that does not parse is moved aside (named in
the log), never overwritten.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax

from moejax import files
from moejax.kernels import autotune

FORMAT = "moejax-kernels/1"
FILENAME = "kernels.json"


def read_segments(path: str) -> list[dict]:
    """The segments of an existing kernels.json ([] if absent); ValueError if malformed."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        try:
            record = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"not JSON ({error})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"format is not {FORMAT!r}")
    segments = record.get("segments")
    if not isinstance(segments, list) or not all(
            isinstance(s, dict) and isinstance(s.get("start_step"), int) for s in segments):
        raise ValueError("'segments' must be a list of objects with an integer start_step")
    return segments


class KernelLog:
    """Keeps ``<workdir>/kernels.json`` in step with one process's recorded choices."""

    def __init__(self, workdir: str, start_step: int, log: Callable[[str], None] = print):
        self.path = os.path.join(workdir, FILENAME)
        try:
            earlier = read_segments(self.path)
        except ValueError as error:
            aside = files.move_aside(self.path, "unreadable")
            log(f"note: {self.path} is malformed ({error}); moved it to {aside} and starting "
                "a new one")
            earlier = []
        self.earlier = [s for s in earlier if s["start_step"] < start_step]
        self.segment = {"start_step": start_step, "backend": jax.default_backend(),
                        "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
                        "gmm": []}
        self._written = -1
        self._log = log

    def update(self, choices: list[dict]) -> None:
        """Rewrite the file if ``choices`` grew since the last write (cheap otherwise)."""
        if len(choices) == self._written:
            return
        for entry in choices[max(self._written, 0):]:
            problem = autotune.Problem(**entry["problem"]).describe()
            self._log(f"expert matmul {problem}: gmm {entry['requested']} -> {entry['choice']}")
        self.segment["gmm"] = list(choices)
        files.write_atomic(self.path, json.dumps(
            {"format": FORMAT, "segments": self.earlier + [self.segment]}, indent=1) + "\n")
        self._written = len(choices)


def describe(workdir: str) -> str | None:
    """The latest segment's distinct kernel choices, e.g. 'cpu rows 512..16 slab 2' ('none' for
    a run without grouped matmuls); None if the run has no readable kernels.json."""
    try:
        segments = read_segments(os.path.join(workdir, FILENAME))
    except (OSError, ValueError):
        return None
    if not segments:
        return None
    choices = [entry.get("choice", "?") for entry in segments[-1].get("gmm", [])]
    return ", ".join(dict.fromkeys(choices)) or "none"

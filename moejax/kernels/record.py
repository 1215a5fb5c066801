"""Which grouped-matmul implementation and tiles a traced program runs, for the run record.

In: every ``choose`` that ``gmm``/``tgmm`` make while a program is traced inside ``recording()``.
Out: a list of JSON-able entries, one per distinct (requested impl, problem, chosen impl, tiles):
what "auto" or "tuned" resolved to, so a run directory says which kernel produced its numbers.

A choice made while another is being made is not recorded: those are the candidates "tuned"
times on the side, not the program's own matmuls. Tracing is single-threaded in JAX, so a plain
module-level stack suffices.
"""

from __future__ import annotations

import contextlib
import dataclasses

from moejax.kernels.autotune import describe_choice

_logs: list[list[dict]] = []
_depth = 0


@contextlib.contextmanager
def recording():
    """Collect the choices of everything traced inside; yields the (growing) list."""
    log: list[dict] = []
    _logs.append(log)
    try:
        yield log
    finally:
        _logs.remove(log)


@contextlib.contextmanager
def choosing():
    """Marks one choice being made: choices made inside it (measurements) are not recorded."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def note(requested: str, problem, impl: str, tiling) -> None:
    """Add a choice to every active log (once per distinct entry); no-op inside another choice.
    "xla" (ragged_dot) has no tiles: its tiling is recorded as None."""
    if _depth > 1 or not _logs:
        return
    entry = {"requested": requested, "impl": impl, "choice": describe_choice(impl, tiling),
             "problem": dataclasses.asdict(problem),
             "tiling": None if impl == "xla" else dataclasses.asdict(tiling)}
    for log in _logs:
        if entry not in log:
            log.append(entry)

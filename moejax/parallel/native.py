"""Loading a native compiler into this process (libtpu, JAX's CUDA plugin) and reading what it
prints: a temporary environment, and the output its C++ writes to file descriptors 1 and 2,
which Python's own ``sys.stdout``/``sys.stderr`` redirection does not catch."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """``values`` set in ``os.environ`` inside, the previous values (or their absence) restored
    after, so that child processes started later do not inherit them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def output_captured(fds: tuple[int, ...] = (1, 2)):
    """What is written to ``fds`` inside, in the yielded dict's "text" once the block ends
    (there even when the block raises)."""
    with tempfile.TemporaryFile() as log:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(fd) for fd in fds]
        for fd in fds:
            os.dup2(log.fileno(), fd)
        found = {"text": ""}
        try:
            yield found
        finally:
            for fd, copy in zip(fds, saved):
                os.dup2(copy, fd)
                os.close(copy)
            log.seek(0)
            found["text"] = log.read().decode(errors="replace")

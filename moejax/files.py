"""Writing result files so that no reader ever sees half of one.

In: a path and the whole new content (bytes or text). Out: the file replaced in one rename, or
left as it was if anything failed (the temporary file is removed). ``locked`` serialises writers
on one machine that read, merge and rewrite a shared file (points files, the gmm tuning table).
Every step that writes a file a researcher keeps (checkpoints aside: orbax does its own) goes
through here; figures too (``write_figure``). ``move_aside`` keeps an unusable file or checkpoint
under a new name instead of deleting or overwriting it; ``directory_problem`` checks an output
directory before a command starts its work.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import tempfile
import time


@contextlib.contextmanager
def locked(path: str):
    """An exclusive ``flock`` on ``<path>.lock`` (created if needed, never deleted: deleting it
    would let two writers hold locks on different inodes). Only as good as the filesystem's
    flock: on NFS or a FUSE mount give each host its own file."""
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def write_atomic(path: str | os.PathLike, payload: bytes | str) -> None:
    """Temporary file in the same directory, fsync, rename over ``path``, fsync the directory.

    The temporary file has a unique name (concurrent writers never share one) and gets the
    permissions a plain ``open`` would give; it is deleted if writing fails or is interrupted.
    """
    path = os.fspath(path)
    data = payload.encode() if isinstance(payload, str) else payload
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def figure_png(figure, dpi: int = 120, **savefig_kwargs) -> bytes:
    """A matplotlib figure rendered to PNG bytes in memory."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, **savefig_kwargs)
    return buffer.getvalue()


def write_figure(path: str | os.PathLike, figure, dpi: int = 120, **savefig_kwargs) -> None:
    """A matplotlib figure as a PNG at ``path``, atomically (rendered in memory first)."""
    write_atomic(path, figure_png(figure, dpi, **savefig_kwargs))


def make_directories(path: str | os.PathLike) -> list[str]:
    """``os.makedirs(path, exist_ok=True)``; returns the directories it created, outermost
    first, for ``remove_empty`` to take back after a failed write."""
    created, current = [], os.path.abspath(path)
    while not os.path.lexists(current):
        created.append(current)
        current = os.path.dirname(current)
    os.makedirs(path, exist_ok=True)
    return created[::-1]


def remove_empty(directories: list[str]) -> None:
    """Remove ``directories`` innermost first, stopping at one that is not empty (something else
    was written there meanwhile) or is gone."""
    for directory in reversed(directories):
        try:
            os.rmdir(directory)
        except OSError:
            return


def move_aside(path: str, tag: str) -> str:
    """Rename a file or directory that cannot be used to ``<path>.<tag>-<unix time>`` (kept for
    inspection, never deleted); returns the new path."""
    aside = f"{path}.{tag}-{int(time.time())}"
    os.rename(path, aside)
    return aside


def directory_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be, or become, a directory to write into; None when it can. Nothing is
    created: commands call it before their work, so a mistyped output path fails at once rather
    than after an hour of scoring or fitting."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):  # the nearest part of the path that exists
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None

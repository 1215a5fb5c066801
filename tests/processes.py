"""Helpers for tests that run moejax in a subprocess."""

import os


def private_tmpdir(tmp_path):
    """The environment for a process a test SIGKILLs: its temporary files (TensorFlow's
    autograph writes one per function seqio's pipeline converts, removed only at a clean exit)
    go under tmp_path instead of staying in the machine's /tmp."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmpdir)}

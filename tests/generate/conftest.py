"""One tiny trained MoE run for the generate tests (the committed SentencePiece vocabulary, so
that decoded text has spaces to lose; checkpoints at steps 2 and 4; ~10 s on 2 CPU cores)."""

import pytest

from tests.tiny_runs import train_tiny_run


@pytest.fixture(scope="session")
def generate_run(tmp_path_factory):
    """Path of a finished run directory; tests must copy it before changing anything in it."""
    return train_tiny_run(tmp_path_factory.mktemp("generate_runs") / "run")

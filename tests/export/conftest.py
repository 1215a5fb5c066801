"""Tiny trained runs for the export tests (byte vocabulary; checkpoints at steps 2 and 4; ~10 s
each on 2 CPU cores): an MoE with 4 experts, top-2 renormalized (so it fits Mixtral), and the
dense model of the same size."""

import pytest

from tests.tiny_runs import train_tiny_run

# renormalized top-2, so that the MoE fits Mixtral
EXPORT = ["MoEConfig.renormalize = True", "DataConfig.vocabulary = 'byte'"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A finished MoE run; tests copy it before changing it."""
    return _train(tmp_path_factory.mktemp("export_runs") / "run", ["smoke.gin"])


@pytest.fixture(scope="session")
def trained_dense_run(tmp_path_factory):
    """The dense model of the same size (ModelConfig.moe = None)."""
    return _train(tmp_path_factory.mktemp("export_runs") / "dense_run",
                  ["base.gin", "models/dense_tiny.gin"])


@pytest.fixture(scope="session")
def train_tiny(tmp_path_factory):
    """``train_tiny(gin_files, bindings)``: a finished run of tests.tiny_runs.TINY plus ``bindings``, trained once
    per distinct (gin_files, bindings) in the session."""
    runs = {}

    def train(gin_files: tuple[str, ...], bindings: tuple[str, ...] = ()) -> str:
        key = (tuple(gin_files), tuple(bindings))
        if key not in runs:
            runs[key] = _train(tmp_path_factory.mktemp("export_runs") / f"run{len(runs)}",
                               list(gin_files), list(bindings))
        return runs[key]

    return train


def _train(workdir, gin_files, bindings=()) -> str:
    return train_tiny_run(workdir, gin_files, EXPORT + list(bindings))

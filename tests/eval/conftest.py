"""One tiny capacity-trained MoE run shared by the eval tests (trains in ~20 s on 2 CPU cores).

4 experts, top-2, capacity factor 0.5 in training (so tokens were dropped), byte vocabulary,
checkpoints at steps 2 and 4, two validation batches per task.
"""

import pytest

from tests.tiny_runs import train_tiny_run

CAPACITY = ["MoEConfig.capacity_factor = 0.5", "DataConfig.vocabulary = 'byte'",
            "TrainConfig.eval_batches = 2"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """Path of a finished run directory; tests must copy it before changing anything in it."""
    return train_tiny_run(tmp_path_factory.mktemp("eval_runs") / "capacity_run",
                          bindings=CAPACITY)

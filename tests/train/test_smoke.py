"""configs/smoke.gin trains and clearly lowers validation loss on the embedded corpus."""

import math

import pytest

from moejax.train.cli import load_configs
from moejax.train.loop import run_training


def _run(tmp_path, *bindings):
    model, data, train = load_configs(["smoke.gin"], list(bindings))
    return run_training(str(tmp_path), model, data, train)


@pytest.mark.slow  # 200 steps of the smoke model, about 40 s; launch/main.sh trains it too
def test_smoke_config_lowers_validation_loss_quickly(tmp_path):
    summary = _run(tmp_path, "TrainConfig.steps = 40", "TrainConfig.eval_every = 40",
                   "TrainConfig.checkpoint_every = 40")
    before = summary["initial_validation"]["moejax_embedded"]
    after = summary["validation"]["moejax_embedded"]
    assert abs(before - math.log(8000)) < 0.5  # untrained: about uniform over the vocabulary
    assert after < before - 1.5, (before, after)
    for task in ("moejax_wiki", "moejax_shakespeare", "moejax_bible"):
        assert summary["validation"][task] < summary["initial_validation"][task] - 1.0


@pytest.mark.slow
def test_full_smoke_run(tmp_path):
    summary = _run(tmp_path)
    assert summary["validation"]["moejax_embedded"] < summary["initial_validation"][
        "moejax_embedded"] - 3.0

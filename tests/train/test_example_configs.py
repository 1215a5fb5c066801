"""Every model config under configs/models/ builds, and the MoE variants train with moejax train."""

import glob
import os

import pytest

from moejax.ginconf import REPO_CONFIGS
from moejax.model import accounting
from moejax.train.cli import load_configs
from moejax.train.loop import run_training, validate_all

MODEL_FILES = sorted(glob.glob(os.path.join(REPO_CONFIGS, "models", "*.gin")))
SHORT = ["DataConfig.seq_len = 32", "DataConfig.batch_size = 4", "TrainConfig.steps = 3",
         "TrainConfig.warmup_steps = 1", "TrainConfig.eval_every = 3", "TrainConfig.eval_batches = 1",
         "DataConfig.vocabulary = 'byte'"]


@pytest.mark.parametrize("path", MODEL_FILES, ids=os.path.basename)
def test_model_config_validates(path):
    model, data, train = load_configs(["base.gin", path], [])
    model = validate_all(model, data, train)
    assert accounting.parameter_counts(model).total > 0


# The heterogeneous variant (48 small experts) compiles slowly; tests/train/test_run.py already
# trains one in the fast suite, so here it runs with -m slow.
@pytest.mark.parametrize("name", ["moe_tiny_fine_grained", "moe_tiny_shared",
                                  pytest.param("moe_tiny_heterogeneous", marks=pytest.mark.slow),
                                  "moe_tiny_capacity_lossfree"])
def test_variant_trains(tmp_path, name):
    model, data, train = load_configs(["smoke.gin", f"models/{name}.gin"], SHORT)
    summary = run_training(str(tmp_path), model, data, train)
    assert summary["final_step"] == 3 and summary["validation"]

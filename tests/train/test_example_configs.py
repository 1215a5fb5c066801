"""Every model config under configs/models/ builds, and the MoE variants train with moejax train."""

import glob
import json
import math
import os
import re

import pytest

from moejax.ginconf import REPO_CONFIGS
from moejax.model import accounting
from moejax.train.cli import load_configs
from moejax.train.loop import run_training, validate_all

MODEL_FILES = sorted(glob.glob(os.path.join(REPO_CONFIGS, "models", "*.gin")))
SHORT = ["DataConfig.seq_len = 32", "DataConfig.batch_size = 4", "TrainConfig.steps = 3",
         "TrainConfig.warmup_steps = 1", "TrainConfig.eval_every = 3", "TrainConfig.eval_batches = 1",
         "DataConfig.vocabulary = 'byte'"]


def _stated_sizes(path) -> tuple[float, float] | None:
    """(total, active) non-embedding parameters a config's header comment states, if it does:
    "~113M non-embedding parameters" (dense) or "~338M total and ~104M active non-embedding"."""
    header = " ".join(line.lstrip("#").strip() for line in open(path) if line.startswith("#"))
    scale = {"K": 1e3, "M": 1e6, "B": 1e9}
    moe = re.search(r"~([\d.]+)([KMB]) total and ~([\d.]+)([KMB]) active non-embedding", header)
    if moe:
        return (float(moe[1]) * scale[moe[2]], float(moe[3]) * scale[moe[4]])
    dense = re.search(r"~([\d.]+)([KMB]) non-embedding parameters", header)
    return (float(dense[1]) * scale[dense[2]],) * 2 if dense else None


@pytest.mark.parametrize("path", MODEL_FILES, ids=os.path.basename)
def test_model_config_validates_and_has_the_size_its_header_states(path):
    model, data, train = load_configs(["base.gin", path], [])
    model = validate_all(model, data, train)
    counts = accounting.parameter_counts(model)
    # the feed-forward and attention matrices by hand: the embedding is the rest of the total
    d, blocks = model.d_model, model.n_layers
    assert counts.total - counts.total_non_embedding == model.vocab_size * d * (
        1 if model.tie_embeddings else 2)
    stated = _stated_sizes(path)
    if os.path.basename(path).startswith(("dense_", "moe_base", "moe_small")):
        assert stated, f"{path}: its header should state its size"
    if stated:
        assert counts.total_non_embedding == pytest.approx(stated[0], rel=0.01), path
        assert counts.active_non_embedding == pytest.approx(stated[1], rel=0.01), path
    if model.moe is None:  # SwiGLU (3 d x d_ff) and attention with n_kv_heads (d x 2 d_kv)
        kv = model.kv_heads * model.head_dim
        per_block = 3 * d * model.d_ff + 2 * d * d + 2 * d * kv
        assert counts.total_non_embedding == pytest.approx(blocks * per_block, rel=0.01), path


# The fast suite trains the hash variant end to end; the others run with -m slow (12-16 s each).
# Their pieces stay in the fast suite: tests/model/test_moe.py checks fine-grained, shared and
# heterogeneous layers against a loop over experts, tests/train/test_run.py trains a
# heterogeneous run, tests/train/test_step.py moves the loss-free balancing bias, and
# tests/model/test_latent_attention.py checks latent attention and its gradients.
@pytest.mark.parametrize("name", [
    *(pytest.param(name, marks=pytest.mark.slow) for name in (
        "moe_tiny_fine_grained", "moe_tiny_shared", "moe_tiny_heterogeneous",
        "moe_tiny_capacity_lossfree")),
    pytest.param("moe_tiny_latent", marks=pytest.mark.slow), "moe_tiny_hash"])
def test_variant_trains(tmp_path, name):
    model, data, train = load_configs(["smoke.gin", f"models/{name}.gin"], SHORT)
    summary = run_training(str(tmp_path), model, data, train)
    assert summary["final_step"] == 3 and summary["validation"]
    assert all(math.isfinite(loss) for loss in summary["validation"].values())
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    layers = [layer for record in records for layer in record["moe"]]
    assert len(layers) == 3 * 4  # every step logs each of the 4 MoE blocks
    if name == "moe_tiny_capacity_lossfree":
        # the balancing bias moved (it starts at 0), and with top-2 of 4 experts at capacity
        # 1.25 some expert overflowed in some step
        assert records[-1]["moe"][0]["bias_norm"] > 0.0
        assert max(layer["dropped_fraction"] for layer in layers) > 0.0
    else:
        assert all(layer["dropped_fraction"] == 0.0 for layer in layers)  # dropless
    if name == "moe_tiny_hash":  # nothing learned routes: no balancing losses
        assert all(layer["aux_loss"] == 0.0 and layer["z_loss"] == 0.0 for layer in layers)

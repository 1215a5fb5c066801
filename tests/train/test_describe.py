"""``moejax describe``: the counts it prints against the built model's own leaves, its notes on
knob interactions, and its refusals."""

import json
import os

import jax
import numpy as np
import pytest

from moejax.cli import main
from moejax.model.functional import build_model
from moejax.train.cli import load_configs
from moejax.train.loop import validate_all

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
LATENT = [f"--gin_file={os.path.join(CONFIGS, 'base.gin')}",
          f"--gin_file={os.path.join(CONFIGS, 'models', 'moe_tiny_latent.gin')}"]


def _describe(argv, capsys):
    code = main(["describe", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_counts_are_the_built_models_leaves(capsys):
    code, out, _ = _describe([*LATENT, "--json"], capsys)
    assert code == 0
    described = json.loads(out)
    model, data, train = load_configs([a.split("=", 1)[1] for a in LATENT], [])
    params = build_model(validate_all(model, data, train)).init(jax.random.key(0))
    leaves = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
    p = described["parameters"]
    assert p["total"] == leaves
    # active: everything but the 8 - 2 routed experts each token skips in each of the 4 blocks
    # (an expert: gate and up 128 x 128, down 128 x 128)
    assert p["total"] - p["active"] == 4 * (8 - 2) * 3 * 128 * 128
    # the latent cache: (64 + 16) numbers per block, 4 blocks, 2 bytes
    assert described["inference"]["kv_cache_bytes_per_token_bf16"] == 80 * 4 * 2
    a = described["architecture"]
    assert (a["num_experts"], a["top_k"], a["sparsity"], a["granularity"]) == (8, 2, 4, 4)
    assert described["training"]["tokens"] == data.batch_size * data.seq_len * train.steps
    assert "liew.N_total" in described["paper_quantities"]
    code, text, _ = _describe(LATENT, capsys)
    assert code == 0 and "multi-head latent attention" in text and "3.1M total" in text


@pytest.mark.parametrize("bindings, expected", [
    (["MoEConfig.capacity_factor = 1.25"], "capacity factor 1.25: assignments over"),
    (["MoEConfig.aux_loss_weight = 0.0"], "nothing keeps the experts' loads apart"),
    (["MoEConfig.bias_update_rate = 0.001"], "both on"),
    (["MoEConfig.routing = 'expert_choice'"], "depends on later tokens"),
    (["MoEConfig.num_experts = 8", "MoEConfig.router_groups = 4"],
     "4 groups of 2 experts, each token chooses within its best 1"),
])
def test_notes_name_the_interactions(bindings, expected, capsys):
    argv = [f"--gin_file={os.path.join(CONFIGS, 'smoke.gin')}",
            *[f"--gin_bindings={b}" for b in bindings]]
    code, out, _ = _describe(argv, capsys)
    assert code == 0 and expected in out, out


@pytest.mark.parametrize("argv, expected", [
    (["--gin_bindings=MoEConfig.topk = 9"], "Did you mean MoEConfig.top_k"),
    (["--gin_bindings=MoEConfig.top_k = 9"], "MoEConfig.top_k = 9"),
    ([], "no --gin_file"),
])
def test_refusals_exit_2_naming_the_problem(argv, expected, capsys):
    if argv:
        argv = [f"--gin_file={os.path.join(CONFIGS, 'smoke.gin')}", *argv]
    code, out, err = _describe(argv, capsys)
    assert code == 2 and "moejax describe: error:" in err and expected in err
    assert out == ""

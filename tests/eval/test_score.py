"""moejax.eval.score against a hand-written evaluation loop, dropless vs capacity, failures.

The references restore parameters through ``restore_run``, run ``model.apply`` over the same
validation batches and compute the token-weighted NLL with a numpy log-softmax in float64.
"""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from moejax import data as data_lib
from moejax.eval import score as score_lib
from moejax.model.functional import build_model
from moejax.train.run import load_run_configs, restore_run

STEP = 4


_APPLY = {}  # (model config, eval capacity) -> jitted eval-mode apply: compile each once


def _eval_apply(model_config, factor):
    key = (model_config, factor)
    if key not in _APPLY:
        moe = dataclasses.replace(model_config.moe, eval_capacity_factor=factor)
        model = build_model(dataclasses.replace(model_config, moe=moe))
        _APPLY[key] = jax.jit(lambda p, b, x: model.apply(
            p, x["inputs"], x["positions"], x["segment_ids"], buffers=b, train=False))
    return _APPLY[key]


@pytest.fixture(scope="module")
def reference_batches(trained_run):
    """The run's validation batches per task, loaded here rather than through moejax.eval."""
    _, data, train = load_run_configs(trained_run)
    return {name: data_lib.eval_batches(data, name, train.eval_batches)
            for name in data_lib.eval_names(data)}


@pytest.fixture(scope="module")
def batch_cache():
    return score_lib.EvalBatchCache()


@pytest.fixture(scope="module")
def dropless_point(trained_run, batch_cache):
    result = score_lib.score_run(trained_run, [STEP], batch_cache=batch_cache)
    assert result.failures == [] and len(result.points) == 1
    return result.points[0]


def _per_batch(apply, params, buffers, batches):
    """[(nll_sum, tokens, max dropped fraction over MoE layers)] per batch, numpy float64."""
    out = []
    for batch in batches:
        logits, stats = apply(params, buffers, batch)
        logits = np.asarray(logits, np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        target_lp = np.take_along_axis(log_probs, batch["targets"][..., None], -1)[..., 0]
        weights = batch["loss_weights"].astype(np.float64)
        dropped = max(float(s.dropped_fraction) for s in stats)
        out.append((-(target_lp * weights).sum(), weights.sum(), dropped))
    return out


def test_scores_equal_a_hand_written_loop_and_repeat_exactly(trained_run, reference_batches,
                                                            batch_cache, dropless_point):
    point = dropless_point

    model_config, data, train = load_run_configs(trained_run)
    _, state, _ = restore_run(trained_run, STEP)
    model = _eval_apply(model_config, None)  # dropless
    for name, batches in reference_batches.items():
        rows = _per_batch(model, state.params, state.buffers, batches)
        nll, tokens = sum(r[0] for r in rows), sum(r[1] for r in rows)
        column = name.replace("-", "_")
        assert point[f"loss_{column}"] == pytest.approx(nll / tokens, rel=1e-5)
        assert point[f"eval_tokens_{column}"] == tokens
    assert point["loss"] == point[f"loss_{data.mixture}"]
    assert point["eval.capacity_factor"] is None and point["eval.batches"] == train.eval_batches
    assert point["tokens_seen"] == STEP * 4 * 32
    assert point["step"] == STEP and point["moe.capacity_factor"] == 0.5

    again = score_lib.score_run(trained_run, [STEP], batch_cache=batch_cache)
    strip = lambda p: {k: v for k, v in p.items() if k != "evaluated_at"}
    assert strip(again.points[0]) == strip(point)


def test_dropless_and_capacity_evaluation_differ_exactly_when_tokens_drop(
        trained_run, reference_batches, batch_cache, dropless_point):
    model_config, _, _ = load_run_configs(trained_run)
    _, state, _ = restore_run(trained_run, STEP)
    batches = reference_batches
    mixture = next(iter(batches))
    dropless = _per_batch(_eval_apply(model_config, None), state.params,
                          state.buffers, batches[mixture])
    assert all(row[2] == 0.0 for row in dropless)
    # E / K = 2.0 gives every expert room for every token: nothing can drop, by construction.
    any_dropped = {}
    for factor in (0.25, 2.0):
        rows = _per_batch(_eval_apply(model_config, factor), state.params,
                          state.buffers, batches[mixture])
        for (nll_d, tokens_d, _), (nll_c, tokens_c, dropped) in zip(dropless, rows):
            assert tokens_c == tokens_d
            differs = abs(nll_c - nll_d) > 1e-5 * abs(nll_d)
            assert differs == (dropped > 0), (factor, nll_c, nll_d, dropped)
        any_dropped[factor] = any(row[2] > 0 for row in rows)
    assert any_dropped[0.25] and not any_dropped[2.0]

    scored = {f: score_lib.score_run(trained_run, [STEP], eval_capacity_factor=f,
                                     batch_cache=batch_cache).points[0] for f in (0.25, 2.0)}
    scored[None] = dropless_point
    assert scored[2.0]["loss"] == pytest.approx(scored[None]["loss"], rel=1e-6)
    assert abs(scored[0.25]["loss"] - scored[None]["loss"]) > 1e-4
    assert scored[0.25]["eval.capacity_factor"] == 0.25


def _copy(run, tmp_path, name):
    target = str(tmp_path / name)
    shutil.copytree(run, target)
    return target


def test_missing_half_written_and_mismatched_checkpoints_are_reported(trained_run, tmp_path):
    missing = score_lib.score_run(trained_run, [3])
    assert missing.points == [] and missing.failures[0][0] == 3
    assert "never finalized" in missing.failures[0][1]

    half = _copy(trained_run, tmp_path, "half")
    os.remove(os.path.join(half, "checkpoints", str(STEP), "_CHECKPOINT_METADATA"))
    result = score_lib.score_run(half, [STEP])
    assert result.points == [] and "never finalized" in result.failures[0][1]

    mismatched = _copy(trained_run, tmp_path, "mismatched")
    path = os.path.join(mismatched, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["ModelConfig"]["init_std"] = 0.5  # same shapes, different model config
    with open(path, "w") as f:
        json.dump(config, f)
    result = score_lib.score_run(mismatched, "latest")
    assert result.points == [] and "differs from config.json" in result.failures[0][1]

    empty = score_lib.score_run(str(tmp_path / "not_a_run"))
    assert empty.failures[0][0] is None and "no config.json" in empty.failures[0][1]


def test_parse_and_select_steps():
    assert score_lib.parse_steps("latest") == "latest"
    assert score_lib.parse_steps("all") == "all"
    assert score_lib.parse_steps("200, 100,200") == [100, 200]
    with pytest.raises(ValueError, match="--steps='ten'"):
        score_lib.parse_steps("ten")
    assert score_lib.select_steps([2, 4], "latest") == [4]
    assert score_lib.select_steps([], "latest") == []
    assert score_lib.select_steps([2, 4], "all") == [2, 4]
    assert score_lib.select_steps([2, 4], [4, 3]) == [3, 4]


def test_tokens_seen_real_needs_every_step(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    with open(path, "w") as f:
        f.write("".join(json.dumps({"step": s, "tokens": 10.0 * s}) + "\n" for s in (1, 2, 3)))
        f.write('{"step": 4, "tok')  # a line torn by a kill
    assert score_lib.tokens_seen_real(path, 2) == 30
    assert score_lib.tokens_seen_real(path, 3) == 60
    assert score_lib.tokens_seen_real(path, 4) is None
    assert score_lib.tokens_seen_real(str(tmp_path / "none.jsonl"), 2) is None


def test_find_runs_stops_at_run_directories(tmp_path):
    for run in ("sweep/a", "sweep/b", "c"):
        os.makedirs(tmp_path / run / "checkpoints" / "inner")
        (tmp_path / run / "config.json").write_text("{}")
    (tmp_path / "c" / "checkpoints" / "inner" / "config.json").write_text("{}")
    assert score_lib.find_runs(str(tmp_path)) == [
        str(tmp_path / "c"), str(tmp_path / "sweep" / "a"), str(tmp_path / "sweep" / "b")]

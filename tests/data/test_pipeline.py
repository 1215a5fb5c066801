"""Tests for moejax.data.pipeline: packed batch format, determinism, resume, shards, eval."""

import dataclasses
import itertools

import gin
import numpy as np
import pytest

from moejax.data import DataConfig, eval_batches, eval_names, train_batches, vocab_size
from moejax.data.vocabularies import EOS_ID, get_vocabulary

CONFIG = DataConfig(seq_len=32, batch_size=4, seed=7)
KEYS = {"inputs": np.int32, "targets": np.int32, "loss_weights": np.float32, "segment_ids": np.int32, "positions": np.int32}


def take(iterator, count):
    return list(itertools.islice(iterator, count))


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def uninterrupted():
    return take(train_batches(CONFIG), 8)


def check_packed_row(inputs, targets, loss_weights, segment_ids, positions):
    """Checks one packed row against the definition, token by token."""
    previous_segment = 0
    for i in range(len(targets)):
        segment = segment_ids[i]
        assert loss_weights[i] == (1.0 if segment > 0 else 0.0)
        if segment == 0:  # padding: everything zero, and only padding after it
            assert inputs[i] == targets[i] == positions[i] == 0
            assert not segment_ids[i:].any()
            break
        starts_segment = segment != previous_segment
        assert segment == (previous_segment + 1 if starts_segment else previous_segment)
        assert positions[i] == (0 if starts_segment else positions[i - 1] + 1)
        assert inputs[i] == (0 if starts_segment else targets[i - 1])
        assert targets[i] != 0
        previous_segment = segment


def test_batches_are_well_formed_packed_rows(uninterrupted):
    for batch in uninterrupted:
        assert set(batch) == set(KEYS)
        for key, dtype in KEYS.items():
            assert batch[key].shape == (CONFIG.batch_size, CONFIG.seq_len) and batch[key].dtype == dtype
        for row in range(CONFIG.batch_size):
            check_packed_row(*(batch[k][row] for k in ("inputs", "targets", "loss_weights", "segment_ids", "positions")))


def test_token_ids_fit_the_vocabulary(uninterrupted):
    real_size = get_vocabulary("sentencepiece").vocab_size
    assert real_size <= vocab_size(CONFIG)
    for batch in uninterrupted:
        assert batch["targets"].min() >= 0 and batch["targets"].max() < real_size
        assert batch["inputs"].max() < real_size


def test_every_short_segment_ends_with_eos(uninterrupted):
    # A segment shorter than seq_len is a whole document or its last piece, so it must end in
    # EOS; only full-length segments may be the middle of a long document.
    short_segments = 0
    for batch in uninterrupted:
        for targets, segment_ids in zip(batch["targets"], batch["segment_ids"]):
            for segment_id in set(segment_ids.tolist()) - {0}:
                tokens = targets[segment_ids == segment_id]
                if len(tokens) < CONFIG.seq_len:
                    short_segments += 1
                    assert tokens[-1] == EOS_ID
                assert (tokens[:-1] != EOS_ID).all()
    assert short_segments > 0


def test_same_seed_same_batches_different_seed_different_batches(uninterrupted):
    assert_same_batches(take(train_batches(CONFIG), 3), uninterrupted[:3])
    other = take(train_batches(dataclasses.replace(CONFIG, seed=8)), 3)
    assert not all(np.array_equal(a["targets"], b["targets"]) for a, b in zip(other, uninterrupted))


def test_resume_equals_uninterrupted(uninterrupted):
    assert_same_batches(take(train_batches(CONFIG, start_step=5), 3), uninterrupted[5:8])


def test_shards_concatenate_to_the_global_batch(uninterrupted):
    shards = [take(train_batches(CONFIG, 5, shard_index=k, num_shards=2), 2) for k in range(2)]
    for step in range(2):
        for key in KEYS:
            assert shards[0][step][key].shape == (CONFIG.batch_size // 2, CONFIG.seq_len)
            joined = np.concatenate([shards[0][step][key], shards[1][step][key]])
            np.testing.assert_array_equal(joined, uninterrupted[5 + step][key])


def test_training_repeats_past_one_epoch(tmp_path):
    from moejax.data import register_text_task

    (tmp_path / "tiny.txt").write_text("A tiny corpus of a few words.")
    register_text_task("tiny_repeat", [str(tmp_path / "tiny.txt")], [str(tmp_path / "tiny.txt")])
    batches = take(train_batches(DataConfig(mixture="tiny_repeat", seq_len=16, batch_size=2)), 5)
    assert len(batches) == 5 and all(b["loss_weights"].sum() > 0 for b in batches)


def test_eval_batches_are_fixed_and_full_shape():
    first = eval_batches(CONFIG, num_batches=3)
    assert len(first) == 3
    assert_same_batches(first, eval_batches(CONFIG, num_batches=3))
    assert all(b["targets"].shape == (CONFIG.batch_size, CONFIG.seq_len) for b in first)
    wiki = eval_batches(CONFIG, "moejax_wiki", num_batches=2)
    assert not np.array_equal(wiki[0]["targets"], first[0]["targets"])


def test_eval_names_list_mixture_then_tasks():
    assert eval_names(CONFIG) == ["moejax_embedded", "moejax_bible", "moejax_shakespeare", "moejax_wiki"]
    assert eval_names(dataclasses.replace(CONFIG, mixture="moejax_bible")) == ["moejax_bible"]


def test_byte_vocabulary_config():
    config = dataclasses.replace(CONFIG, vocabulary="byte", validation_fraction=0.05)
    assert vocab_size(config) == 384
    (batch,) = take(train_batches(config), 1)
    assert batch["targets"].max() < 259
    assert eval_names(config) == ["moejax_embedded", "moejax_bible", "moejax_shakespeare", "moejax_wiki"]


@pytest.mark.parametrize("fields, message", [
    ({"seq_len": 1}, "seq_len"),
    ({"batch_size": 0}, "batch_size"),
    ({"vocabulary": "gpt2"}, "vocabulary"),
    ({"validation_fraction": 1.5}, "validation_fraction"),
])
def test_bad_configs_fail_at_construction_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=f"DataConfig.{message}"):
        DataConfig(**fields)


def test_batch_size_not_divisible_by_shards_fails_naming_the_field():
    with pytest.raises(ValueError, match="batch_size.*num_shards"):
        train_batches(DataConfig(batch_size=6), shard_index=0, num_shards=4)


def test_unknown_mixture_lists_registered_names():
    with pytest.raises(ValueError, match="unknown task or mixture 'nonexistent'.*moejax_embedded"):
        train_batches(DataConfig(mixture="nonexistent"))


def test_data_config_is_gin_configurable():
    with gin.unlock_config():
        gin.parse_config("DataConfig.seq_len = 64\nDataConfig.mixture = 'moejax_bible'")
    try:
        assert DataConfig() == DataConfig(mixture="moejax_bible", seq_len=64)
    finally:
        gin.clear_config()

"""Tests for moejax.data.tasks: registration, variants, C4 errors, user text tasks."""

import json

import pytest
import seqio

from moejax.data import DataConfig, eval_batches, tasks, train_batches
from moejax.data.vocabularies import EOS_ID, get_vocabulary


def segments(batch):
    """Target tokens of every packed segment, in order (independent of the pipeline code)."""
    result = []
    for row_targets, row_segments in zip(batch["targets"], batch["segment_ids"]):
        for segment_id in sorted(set(row_segments.tolist()) - {0}):
            result.append(row_targets[row_segments == segment_id].tolist())
    return result


def test_builtin_names_are_registered_and_registration_is_idempotent():
    tasks.register_builtin_tasks()
    tasks.register_builtin_tasks()
    for name in ("moejax_wiki", "moejax_shakespeare", "moejax_bible"):
        task = seqio.get_mixture_or_task(name)
        assert isinstance(task, seqio.Task) and set(task.splits) == {"train", "validation"}
    mixture = seqio.get_mixture_or_task("moejax_embedded")
    assert sorted(t.name for t in mixture.tasks) == ["moejax_bible", "moejax_shakespeare", "moejax_wiki"]
    assert {"moejax_embedded", "moejax_c4", "moejax_wiki"} <= set(tasks.moejax_names())


def test_mixture_rates_are_training_characters():
    mixture = seqio.get_mixture_or_task("moejax_embedded")
    for task in mixture.tasks:
        domain = task.name.removeprefix("moejax_")
        expected = sum(len(d.text) for d in tasks.split_documents(domain, "train", 0.03))
        assert mixture.get_rate(task) == expected


def test_variant_names_and_vocabulary():
    variant = tasks.TaskVariant("byte", 0.05)
    name = tasks.resolve_name("moejax_embedded", variant)
    assert name == "moejax_embedded.byte.val0.05"
    assert tasks.resolve_name("moejax_embedded", variant) == name  # second call: no re-registration
    mixture = seqio.get_mixture_or_task(name)
    assert sorted(t.name for t in mixture.tasks) == [
        "moejax_bible.byte.val0.05", "moejax_shakespeare.byte.val0.05", "moejax_wiki.byte.val0.05"]
    assert isinstance(mixture.tasks[0].output_features["targets"].vocabulary, seqio.ByteVocabulary)
    assert tasks.base_name("moejax_wiki.byte.val0.05") == "moejax_wiki"


def test_unknown_name_lists_registered_moejax_names():
    with pytest.raises(ValueError, match="moejax_embedded.*moejax_wiki|moejax_bible.*moejax_embedded"):
        tasks.resolve_name("moejax_wikipedia")


def test_c4_without_data_dir_explains_how_to_prepare(monkeypatch):
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="TFDS_DATA_DIR") as error:
        train_batches(DataConfig(mixture="moejax_c4"))
    assert "tfds build c4/en" in str(error.value) and "tfds_data_dir.path" in str(error.value)


def test_c4_with_empty_data_dir_names_the_missing_dataset(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="c4/en") as error:
        tasks.resolve_name("moejax_c4")
    assert str(tmp_path) in str(error.value)
    assert "moejax_c4" not in seqio.TaskRegistry.names()


@pytest.fixture()
def text_files(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph of a.\n\nSecond paragraph of a.\n")
    (tmp_path / "b.txt").write_text("Only paragraph of b.")
    with (tmp_path / "docs.jsonl").open("w") as f:
        for i in range(3):
            f.write(json.dumps({"body": f"json document {i}", "id": i}) + "\n")
    return tmp_path


def test_read_text_documents_units(text_files):
    files = [str(text_files / "a.txt"), str(text_files / "b.txt")]
    assert tasks.read_text_documents(files, "text", "text", "file") == [
        "First paragraph of a.\n\nSecond paragraph of a.", "Only paragraph of b."]
    assert tasks.read_text_documents(files, "text", "text", "paragraph") == [
        "First paragraph of a.", "Second paragraph of a.", "Only paragraph of b."]
    assert tasks.read_text_documents([str(text_files / "docs.jsonl")], "jsonl", "body", "file") == [
        "json document 0", "json document 1", "json document 2"]
    with pytest.raises(KeyError, match="'text'"):
        tasks.read_text_documents([str(text_files / "docs.jsonl")], "jsonl", "text", "file")


@pytest.mark.parametrize("file_format, pattern, text_key, expected_documents", [
    ("text", "*.txt", "text", ["First paragraph of a.", "Second paragraph of a.", "Only paragraph of b."]),
    ("jsonl", "docs.jsonl", "body", ["json document 0", "json document 1", "json document 2"]),
])
def test_user_task_validation_batches_hold_each_document_with_eos(
    text_files, file_format, pattern, text_key, expected_documents
):
    name = tasks.register_text_task(
        f"user_{file_format}", [str(text_files / pattern)], str(text_files / pattern),
        format=file_format, text_key=text_key, text_unit="paragraph")
    config = DataConfig(mixture=name, seq_len=32, batch_size=2)
    (batch,) = eval_batches(config, num_batches=4)
    vocabulary = get_vocabulary("sentencepiece")
    expected = [vocabulary.encode(d) + [EOS_ID] for d in expected_documents]
    assert segments(batch) == expected


def test_long_user_document_is_split_not_truncated(tmp_path):
    words = " ".join(f"word{i}" for i in range(400))
    (tmp_path / "long.txt").write_text(words)
    name = tasks.register_text_task("user_long", [str(tmp_path / "long.txt")], [str(tmp_path / "long.txt")])
    config = DataConfig(mixture=name, seq_len=64, batch_size=4)
    batches = eval_batches(config, num_batches=100)
    expected = get_vocabulary("sentencepiece").encode(words) + [EOS_ID]
    assert len(expected) > 10 * config.seq_len
    tokens = [t for b in batches for s in segments(b) for t in s]
    assert tokens == expected
    assert sum(b["loss_weights"].sum() for b in batches) == len(expected)


def test_reregistering_a_user_task_replaces_it(tmp_path):
    (tmp_path / "one.txt").write_text("one")
    (tmp_path / "two.txt").write_text("two two")
    tasks.register_text_task("user_replace", [str(tmp_path / "one.txt")], [str(tmp_path / "one.txt")])
    tasks.register_text_task("user_replace", [str(tmp_path / "two.txt")], [str(tmp_path / "two.txt")])
    (batch,) = eval_batches(DataConfig(mixture="user_replace", seq_len=16, batch_size=1), num_batches=1)
    assert segments(batch) == [get_vocabulary("sentencepiece").encode("two two") + [EOS_ID]]


def test_register_text_task_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_files"):
        tasks.register_text_task("user_missing", [str(tmp_path / "nope*.txt")], [])
    with pytest.raises(ValueError, match="format"):
        tasks.register_text_task("user_bad", [], [], format="csv")
    with pytest.raises(ValueError, match="built-in"):
        tasks.register_text_task("moejax_wiki", [], [])


def test_c4_data_dir_from_gin(monkeypatch, tmp_path):
    import gin

    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    with gin.unlock_config():
        gin.parse_config(f"tfds_data_dir.path = '{tmp_path}'")
    try:
        with pytest.raises(FileNotFoundError, match="no prepared TFDS dataset") as error:
            tasks.resolve_name("moejax_c4")
        assert str(tmp_path) in str(error.value)
    finally:
        gin.clear_config()

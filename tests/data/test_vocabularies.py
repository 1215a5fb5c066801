"""Tests for moejax.data.vocabularies: id layout, byte fallback, padded embedding size."""

import pytest
import sentencepiece as spm

from moejax.data import vocabularies


@pytest.fixture(scope="module")
def processor():
    return spm.SentencePieceProcessor(model_file=str(vocabularies.SENTENCEPIECE_MODEL))


def test_sentencepiece_t5_id_layout(processor):
    assert [processor.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) == (0, 1, 2, -1)
    vocabulary = vocabularies.get_vocabulary("sentencepiece")
    assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
    assert vocabulary.vocab_size == processor.get_piece_size() == 8000


@pytest.mark.parametrize("text", ["ǂ", "A click ǂ and a smile 😀.", "To be,\nor not to be"])
def test_sentencepiece_round_trips_unseen_characters_and_newlines(processor, text):
    vocabulary = vocabularies.get_vocabulary("sentencepiece")
    ids = vocabulary.encode(text)
    assert vocabularies.UNK_ID not in ids
    assert vocabulary.decode(ids) == text


def test_unseen_character_uses_byte_pieces(processor):
    pieces = [processor.id_to_piece(i) for i in processor.encode("ǂ")]
    assert [p for p in pieces if p.startswith("<0x")] == ["<0xC7>", "<0x82>"]  # UTF-8 of U+01C2


def test_byte_vocabulary_round_trips():
    vocabulary = vocabularies.get_vocabulary("byte")
    text = "ǂ 😀 abc"
    ids = vocabulary.encode(text)
    assert ids == [b + 3 for b in text.encode("utf-8")]
    assert vocabulary.decode(ids) == text
    assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)


@pytest.mark.parametrize("name, expected", [("sentencepiece", 8064), ("byte", 384)])
def test_padded_vocab_size_is_next_multiple_of_128(name, expected):
    assert vocabularies.padded_vocab_size(vocabularies.get_vocabulary(name)) == expected


def test_unknown_vocabulary_name():
    with pytest.raises(ValueError, match="vocabulary must be one of"):
        vocabularies.get_vocabulary("gpt2")


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """A 600-piece SentencePiece model of the Bible documents, in moejax's T5 layout."""
    from moejax.data import build_vocab, corpora

    sentences = [c for d in corpora.load_documents("bible")[:100]
                 for c in build_vocab.document_chunks(d.text)]
    path = tmp_path_factory.mktemp("vocab") / "own.model"
    path.write_bytes(build_vocab.train_model(sentences, vocab_size=600))
    return path


def test_your_own_sentencepiece_model_is_a_vocabulary(own_model, tmp_path, monkeypatch):
    import sentencepiece as spm

    from moejax.data import tasks
    from moejax.data.pipeline import DataConfig

    name = f"sentencepiece:{own_model}"
    vocabulary = vocabularies.get_vocabulary(name)
    text = "In the beginning God created the heaven and the earth. Ünïcode 42"
    processor = spm.SentencePieceProcessor(model_file=str(own_model))
    assert [int(i) for i in vocabulary.encode(text)] == processor.encode(text)
    assert vocabulary.decode(vocabulary.encode(text)) == text
    assert vocabularies.padded_vocab_size(vocabulary) == 640
    # a relative path is made absolute, so the run's config.json names the file from anywhere
    monkeypatch.chdir(own_model.parent)
    assert DataConfig(vocabulary="sentencepiece:own.model").vocabulary == name
    # its tasks are tagged by the file's content: another file is another task
    tag = vocabularies.vocabulary_tag(name)
    assert tag.startswith("spm_") and len(tag) == 16
    registered = tasks.resolve_name("moejax_bible", tasks.TaskVariant(name, 0.03))
    assert registered == f"moejax_bible.{tag}.val0.03"
    changed = tmp_path / "changed.model"
    content = own_model.read_bytes()
    changed.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    assert vocabularies.vocabulary_tag(f"sentencepiece:{changed}") != tag


def _spm_default_ids_model(path, own_model):
    """A model with SentencePiece's own id defaults: unk 0, bos 1, eos 2, no pad."""
    import io

    import sentencepiece as spm

    from moejax.data import corpora

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(d.text[:2000] for d in corpora.load_documents("bible")[:50]),
        model_writer=model, vocab_size=300, minloglevel=2, num_threads=1)
    path.write_bytes(model.getvalue())


@pytest.mark.parametrize("make, fragment", [
    (lambda path, own: None, "is not a file"),
    (lambda path, own: path.write_bytes(b"\x00not a model" * 10), "is not a SentencePiece model"),
    (_spm_default_ids_model, "moejax needs pad_id 0 and eos_id 1"),
])
def test_an_unusable_model_file_is_refused_naming_why(own_model, tmp_path, make, fragment):
    from moejax.data.pipeline import DataConfig
    from moejax.errors import ConfigError

    path = tmp_path / "bad.model"
    make(path, own_model)
    with pytest.raises(ConfigError, match=f"DataConfig.vocabulary must be .*{fragment}"):
        DataConfig(vocabulary=f"sentencepiece:{path}")
    with pytest.raises(ConfigError, match="'sentencepiece:PATH'"):
        DataConfig(vocabulary="spm.model")

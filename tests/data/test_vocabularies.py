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

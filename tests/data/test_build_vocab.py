"""Tests for moejax.data.build_vocab: chunking and byte-identical, reproducible training."""

import hashlib

import pytest
import sentencepiece as spm

from moejax.data import build_vocab, corpora, vocabularies


def test_document_chunks_keep_lines_and_respect_byte_limit():
    text = "\n".join(f"line {i} ǂ" * (i % 7 + 1) for i in range(300))
    chunks = list(build_vocab.document_chunks(text, max_chunk_bytes=200))
    assert all(len(c.encode("utf-8")) <= 200 for c in chunks)
    assert "\n".join(chunks) == text


def test_document_chunks_cut_overlong_line_on_character_boundary():
    line = "ǂ" * 150  # 300 bytes
    chunks = list(build_vocab.document_chunks(line, max_chunk_bytes=101))
    assert "".join(chunks) == line
    assert all(len(c.encode("utf-8")) <= 101 for c in chunks)


def test_training_twice_gives_identical_model_with_t5_layout():
    sentences = [d.text for d in corpora.load_documents("bible")[:120]]
    sentences = [c for s in sentences for c in build_vocab.document_chunks(s)]
    first = build_vocab.train_model(sentences, vocab_size=600)
    second = build_vocab.train_model(sentences, vocab_size=600)
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    processor = spm.SentencePieceProcessor(model_proto=first)
    assert [processor.id_to_piece(i) for i in range(5)] == ["<pad>", "</s>", "<unk>", "\n", "<0x00>"]
    assert processor.bos_id() == -1


@pytest.mark.slow
def test_rebuilding_reproduces_committed_model(tmp_path):
    build_vocab.main(["--out", str(tmp_path / "moejax_8k")])
    rebuilt = (tmp_path / "moejax_8k.model").read_bytes()
    assert rebuilt == vocabularies.SENTENCEPIECE_MODEL.read_bytes()

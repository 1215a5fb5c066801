"""Tests for moejax.data.build_vocab: chunking and byte-identical, reproducible training."""

import hashlib
import json

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


def test_a_vocabulary_trained_on_your_own_files(tmp_path):
    """--text_files: plain text and JSON lines give a T5-layout model moejax accepts, whose
    pieces come from those files (a word frequent there is one piece)."""
    texts = [d.text for d in corpora.load_documents("shakespeare")[:80]]
    (tmp_path / "txt").mkdir()
    for i, text in enumerate(texts):
        (tmp_path / "txt" / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    (tmp_path / "docs.jsonl").write_text(
        "\n".join(json.dumps({"body": t}) for t in texts) + "\n", encoding="utf-8")
    for out, args in (("from_text", ["--text_files", str(tmp_path / "txt" / "*.txt")]),
                      ("from_jsonl", ["--text_files", str(tmp_path / "docs.jsonl"),
                                      "--format", "jsonl", "--text_key", "body"])):
        build_vocab.main(["--out", str(tmp_path / "vocab" / out), "--vocab-size", "700", *args])
        path = tmp_path / "vocab" / f"{out}.model"
        processor = spm.SentencePieceProcessor(model_file=str(path))
        assert processor.get_piece_size() == 700
        assert (processor.pad_id(), processor.eos_id(), processor.bos_id()) == (0, 1, -1)
        assert vocabularies.vocabulary_problem(f"sentencepiece:{path}") is None
        assert processor.encode("that", out_type=str) == ["▁that"]  # 1,221 times in those files
    # the same sentences from either file layout: the same model
    assert ((tmp_path / "vocab" / "from_text.model").read_bytes()
            == (tmp_path / "vocab" / "from_jsonl.model").read_bytes())


@pytest.mark.parametrize("args, message", [
    (["--text_files", "{tmp}/nothing*.txt"], "matches no file"),
    (["--text_files", "{tmp}/empty.txt"], "no text in 1 file(s)"),
    (["--text_files", "{tmp}/docs.jsonl", "--format", "jsonl"], "no key 'text'"),
    (["--text_files", "{tmp}/small.txt", "--vocab-size", "100000"],
     "SentencePiece could not train"),
])
def test_build_vocab_names_what_is_wrong_with_your_files(tmp_path, capsys, args, message):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "docs.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "small.txt").write_text("a few words, not enough for a large vocabulary\n" * 20)
    with pytest.raises(SystemExit) as exit_info:
        build_vocab.main(["--out", str(tmp_path / "v" / "x"),
                          *[a.format(tmp=tmp_path) for a in args]])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "v" / "x.model").exists()

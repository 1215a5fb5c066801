"""The exported tokenizers, read by the ``tokenizers`` library (what transformers' fast tokenizers
run), against moejax's own vocabularies (SentencePiece and seqio's ByteVocabulary)."""

import json
import random

import pytest
from tokenizers import Tokenizer

from moejax.data import corpora
from moejax.data.vocabularies import SENTENCEPIECE_MODEL, get_vocabulary
from moejax.export.tokenizer import byte_json, sentencepiece_json, tokenizer_files

HAND_TEXTS = ["The king said: 'Ünïcode café, naïve résumé'.", "digits 3.14159 and 2026-11-24",
              "a  b   c\n\nnew line\tand tab", "ﬁ ligature ＡＢＣ full width",
              "日本語 and 🎉",
              "x", "", "<0x41> is not a byte piece", "  leading spaces"]


def _tokenizer(spec: dict) -> Tokenizer:
    return Tokenizer.from_str(json.dumps(spec))


@pytest.fixture(scope="module")
def corpus_texts():
    texts = []
    for domain in corpora.DOMAINS:
        documents = list(corpora.load_documents(domain))
        random.Random(0).shuffle(documents)
        texts += [d.text for d in documents[:40]]
    return texts


def test_sentencepiece_ids_are_the_vocabulary_s(corpus_texts):
    vocabulary = get_vocabulary("sentencepiece")
    tokenizer = _tokenizer(sentencepiece_json(SENTENCEPIECE_MODEL.read_bytes()))
    texts = corpus_texts + HAND_TEXTS
    tokens = differing_texts = 0
    for text in texts:
        expected = [int(i) for i in vocabulary.encode(text)]
        got = tokenizer.encode(text, add_special_tokens=False).ids
        tokens += len(expected)
        differing_texts += got != expected
        # pieces back to text as SentencePiece does (it normalizes: NFKC, single spaces)
        assert tokenizer.decode(expected) == vocabulary.decode(expected), text
    assert tokens > 50_000
    # Measured on 458 corpus texts (484,345 tokens): 454 identical, 6 tokens differ (the unigram
    # search of `tokenizers` picks a better-scoring split than SentencePiece's in 3 words, and
    # trailing whitespace gives one more piece). Here: at most 2 of the 129 texts.
    assert differing_texts <= 2


def test_sentencepiece_newline_and_digits_split_as_sentencepiece_does():
    vocabulary = get_vocabulary("sentencepiece")
    tokenizer = _tokenizer(sentencepiece_json(SENTENCEPIECE_MODEL.read_bytes()))
    for text in ("ACT I\nSCENE II", "one person \nintentionally", "in 1603 and 42"):
        assert tokenizer.encode(text, add_special_tokens=False).ids == [
            int(i) for i in vocabulary.encode(text)], text


def test_byte_ids_are_utf8_bytes_plus_three():
    vocabulary = get_vocabulary("byte")
    tokenizer = _tokenizer(byte_json())
    rng = random.Random(0)
    texts = HAND_TEXTS + ["".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 0x3000),
                                                   rng.randrange(0x1F300, 0x1F600)]))
                                  for _ in range(rng.randrange(1, 40))) for _ in range(300)]
    for text in texts:
        expected = [int(i) for i in vocabulary.encode(text)]
        assert expected == [b + 3 for b in text.encode()]  # the layout the file is built for
        assert tokenizer.encode(text, add_special_tokens=False).ids == expected, text
        assert tokenizer.decode(expected) == text
    assert tokenizer.token_to_id("</s>") == 1 and tokenizer.token_to_id("<pad>") == 0


@pytest.mark.parametrize("vocabulary", ["sentencepiece", "byte"])
def test_files_name_the_special_tokens_and_add_none(vocabulary):
    files = tokenizer_files(vocabulary, max_length=128)
    config = json.loads(files["tokenizer_config.json"])
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    special = (config["eos_token"], config["pad_token"], config["bos_token"])
    assert special == ("</s>", "<pad>", None)
    tokenizer = Tokenizer.from_str(files["tokenizer.json"].decode())
    ids = tokenizer.encode("The king said", add_special_tokens=True).ids
    assert 1 not in ids and 0 not in ids  # no EOS or padding added to a prompt
    assert ("tokenizer.model" in files) == (vocabulary == "sentencepiece")


def test_an_unknown_vocabulary_is_named():
    with pytest.raises(ValueError, match="'bpe'"):
        tokenizer_files("bpe", max_length=128)


def test_a_run_on_your_own_sentencepiece_model_exports_that_model(train_tiny, tmp_path,
                                                                   corpus_texts):
    import sentencepiece as spm

    from moejax.export.cli import export_run
    from tests.spm_models import train_spm

    vocabulary = train_spm(tmp_path / "own.model")
    run = train_tiny(("smoke.gin",), (f"DataConfig.vocabulary = '{vocabulary}'",))
    out = export_run(run, out=str(tmp_path / "export"), log=lambda line: None)["out"]
    with open(f"{out}/config.json") as f:
        assert json.load(f)["vocab_size"] == 640  # 600 pieces, padded to a multiple of 128
    with open(f"{out}/tokenizer.model", "rb") as f:
        assert f.read() == (tmp_path / "own.model").read_bytes()
    tokenizer = Tokenizer.from_file(f"{out}/tokenizer.json")
    processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "own.model"))
    texts = corpus_texts[:30] + HAND_TEXTS
    same = sum(tokenizer.encode(t, add_special_tokens=False).ids == processor.encode(t)
               for t in texts)
    assert same >= len(texts) - 1


def test_a_bpe_model_has_no_tokenizer_file_and_says_so(tmp_path):
    from moejax.export.tokenizer import tokenizer_problem
    from tests.spm_models import train_spm

    bpe = train_spm(tmp_path / "bpe.model", model_type="bpe", vocab_size=400)
    assert "is BPE; only unigram models" in tokenizer_problem(bpe)
    with pytest.raises(ValueError, match="only unigram"):
        tokenizer_files(bpe, max_length=128)
    assert tokenizer_problem("sentencepiece") is None and tokenizer_problem("byte") is None

"""The files that let Hugging Face ``transformers`` tokenize text as a run's vocabulary does.

In: the run's vocabulary name (``DataConfig.vocabulary``) and its sequence length. Out: file name
-> bytes for the export directory. moejax's vocabularies use the T5 id layout (pad 0, EOS 1,
UNK 2, no BOS) and add no token when encoding text (the data pipeline appends EOS per document).
Both are written as a ``tokenizers`` library file (``tokenizer.json``) that transformers' generic
fast tokenizer reads as it is (a Llama or T5 tokenizer class would rebuild it its own way):
- "sentencepiece", and a user's "sentencepiece:PATH" when it is a unigram model:
  ``sentencepiece_json`` rebuilds the unigram model from its pieces, scores and normalization,
  and the model file itself is kept as ``tokenizer.model``. transformers' own
  conversions of this model do not reproduce SentencePiece's ids (transformers 5's Llama one
  builds a BPE from a unigram model, its T5 one drops the byte fallback).
- "byte": ``byte_json``, UTF-8 bytes shifted by 3, as ``seqio.ByteVocabulary`` (a ByT5Tokenizer
  would append EOS to every text).
"""

from __future__ import annotations

import base64
import json

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                  "bos_token": None}


def sentencepiece_json(model_bytes: bytes) -> dict:
    """A ``tokenizers`` Tokenizer (as its JSON) that splits text as the SentencePiece unigram model
    ``model_bytes`` does. What each part stands for in SentencePiece:
    - normalizer: the model's precompiled character map (NFKC and its rules);
    - normalizer, then: runs of spaces made one (remove_extra_whitespaces);
    - pre-tokenizer: spaces as U+2581 (its whitespace escape), one before the text (the dummy
      prefix), words split before each U+2581, then digits isolated (split_digits);
    - model: unigram over the pieces and scores, unknown text as UTF-8 byte pieces
      (byte_fallback);
    - added tokens: pad, EOS and UNK as special tokens and user-defined pieces (such as the
      newline) matched before normalization, as SentencePiece matches them.
    """
    from sentencepiece import sentencepiece_model_pb2

    model = _model_proto(model_bytes)
    trainer, normalizer = model.trainer_spec, model.normalizer_spec
    if trainer.model_type != trainer.UNIGRAM:
        raise ValueError("only unigram SentencePiece models are converted, this one is "
                         f"{trainer.ModelType.Name(trainer.model_type)}")
    piece = sentencepiece_model_pb2.ModelProto.SentencePiece
    added = [{"id": i, "content": p.piece, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False,
              "special": p.type in (piece.CONTROL, piece.UNKNOWN)}
             for i, p in enumerate(model.pieces)
             if p.type in (piece.CONTROL, piece.UNKNOWN, piece.USER_DEFINED)]
    # "first": the dummy prefix goes before the text, not after every user-defined piece
    metaspace = {"type": "Metaspace", "replacement": "\u2581",
                 "prepend_scheme": "first" if normalizer.add_dummy_prefix else "never",
                 "split": True}
    pre_tokenizers = [metaspace]
    if trainer.split_digits:
        pre_tokenizers.append({"type": "Digits", "individual_digits": True})
    unk_id = next(i for i, p in enumerate(model.pieces) if p.type == piece.UNKNOWN)
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(
                normalizer.precompiled_charsmap).decode()},
            *([{"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]
              if normalizer.remove_extra_whitespaces else [])]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre_tokenizers},
        "post_processor": None,
        # pieces back to text: U+2581 is a space, byte pieces are joined into UTF-8, and the
        # dummy prefix's space is dropped
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            *([{"type": "Strip", "content": " ", "start": 1, "stop": 0}]
              if normalizer.add_dummy_prefix else [])]},
        "model": {"type": "Unigram", "unk_id": unk_id, "byte_fallback": trainer.byte_fallback,
                  "vocab": [[p.piece, p.score] for p in model.pieces]},
    }


def byte_level_alphabet() -> list[str]:
    """The character that stands for each byte 0..255 in the ``tokenizers`` ByteLevel scheme:
    printable Latin-1 bytes ('!'..'~', '\u00a1'..'\u00ac', '\u00ae'..'\u00ff') stand for
    themselves, the other 68 bytes, in order, for U+0100, U+0101, ..."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = iter(range(0x100, 0x200))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


def byte_json() -> dict:
    """A ``tokenizers`` Tokenizer (as its JSON) giving byte b of the UTF-8 text id b + 3, after
    pad 0, EOS 1 and UNK 2, as ``seqio.ByteVocabulary`` does: ByteLevel maps every byte to a
    character of its own and a BPE without merges looks each one up."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({char: b + 3 for b, char in enumerate(byte_level_alphabet())})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": token, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for token, i in list(vocab.items())[:3]],
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": None,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }


def _model_proto(model_bytes: bytes):
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(model_bytes)
    return model


def tokenizer_problem(vocabulary: str) -> str | None:
    """Why ``vocabulary`` has no tokenizer file here (None when it has): a user's SentencePiece
    model that is not a unigram one (BPE, word, char)."""
    from moejax.data.vocabularies import sentencepiece_model_bytes, vocabulary_problem

    problem = vocabulary_problem(vocabulary)
    if problem:
        return f"DataConfig.vocabulary must be {problem}"
    model_bytes = sentencepiece_model_bytes(vocabulary)
    if model_bytes is None:
        return None
    trainer = _model_proto(model_bytes).trainer_spec
    if trainer.model_type != trainer.UNIGRAM:
        return (f"the run's SentencePiece model is {trainer.ModelType.Name(trainer.model_type)}; "
                "only unigram models are converted to a tokenizer.json")
    return None


def tokenizer_files(vocabulary: str, max_length: int) -> dict[str, bytes]:
    """File name -> content for the vocabulary called ``vocabulary``."""
    from moejax.data.vocabularies import sentencepiece_model_bytes

    problem = tokenizer_problem(vocabulary)
    if problem:
        raise ValueError(problem)
    model_bytes = sentencepiece_model_bytes(vocabulary)
    special = dict(SPECIAL_TOKENS)
    if model_bytes is not None:  # the committed model or the user's own
        files = {"tokenizer.model": model_bytes,
                 "tokenizer.json": json.dumps(sentencepiece_json(model_bytes)).encode()}
        pieces = _model_proto(model_bytes).pieces  # the special tokens under the model's names
        unk = next(p.piece for p in pieces if p.type == p.UNKNOWN)
        special.update(pad_token=pieces[0].piece, eos_token=pieces[1].piece, unk_token=unk)
    else:
        files = {"tokenizer.json": json.dumps(byte_json()).encode()}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "model_max_length": max_length,
              "model_input_names": ["input_ids", "attention_mask"], **special}
    files["tokenizer_config.json"] = json.dumps(config, indent=2).encode()
    files["special_tokens_map.json"] = json.dumps(
        {k: v for k, v in special.items() if v is not None}, indent=2).encode()
    return files

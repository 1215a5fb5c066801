"""Vocabularies by name, and the embedding size a model needs for them.

In: a vocabulary name — ``"sentencepiece"`` (the committed 8k SentencePiece model
``moejax/data/vocab/moejax_8k.model``, built by ``moejax.data.build_vocab``), ``"byte"``
(``seqio.ByteVocabulary``: UTF-8 bytes shifted by 3) or ``"sentencepiece:PATH"``, the user's own
SentencePiece model (``python -m moejax.data.build_vocab --text_files ...`` trains one on the
user's text; any model with pad 0 and EOS 1 works). Out: a ``seqio.Vocabulary`` with the T5
id layout (pad 0, EOS 1, UNK 2, no BOS), and ``padded_vocab_size``, the number of embedding
rows a model should allocate: the vocabulary size rounded up to a multiple of 128 so the
embedding and logits matmuls tile well on accelerators. Ids at or above the real vocabulary
size never occur in the data.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import pathlib

from moejax.data import tf_setup  # noqa: F401  (quiet TF before seqio imports it)

import seqio  # noqa: E402

VOCAB_DIR = pathlib.Path(__file__).parent / "vocab"
SENTENCEPIECE_MODEL = VOCAB_DIR / "moejax_8k.model"
VOCABULARY_NAMES = ("sentencepiece", "byte")
USER_SENTENCEPIECE = "sentencepiece:"  # + the path of the user's own SentencePiece model

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
EMBEDDING_MULTIPLE = 128  # rows; the embedding is padded up to a multiple of this


def user_model_path(name: str) -> str | None:
    """The path in a "sentencepiece:PATH" name (None for the built-in vocabularies)."""
    return name[len(USER_SENTENCEPIECE):] if name.startswith(USER_SENTENCEPIECE) else None


def vocabulary_problem(name: str) -> str | None:
    """Why ``name`` is not a vocabulary moejax can train with; None when it is. A user's model
    must load and use the T5 ids the pipeline and the exports assume: pad 0, EOS 1."""
    if name in VOCABULARY_NAMES:
        return None
    path = user_model_path(name)
    if path is None:
        return (f"one of {VOCABULARY_NAMES} or 'sentencepiece:PATH' (your own SentencePiece "
                f"model), got {name!r}")
    if not os.path.isfile(path):
        return f"{name!r}: {path} is not a file"
    import sentencepiece as spm

    try:
        processor = spm.SentencePieceProcessor(model_file=path)
    except (RuntimeError, OSError) as e:
        return f"{name!r}: {path} is not a SentencePiece model ({str(e).splitlines()[0]})"
    ids = {"pad_id": processor.pad_id(), "eos_id": processor.eos_id()}
    if ids != {"pad_id": PAD_ID, "eos_id": EOS_ID}:
        return (f"{name!r}: the model has {ids}; moejax needs pad_id {PAD_ID} and eos_id {EOS_ID} "
                "(train it with --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1, as "
                "`python -m moejax.data.build_vocab --text_files ...` does)")
    return None


def vocabulary_tag(name: str) -> str:
    """``name`` as it may appear in a seqio task name: a user's model is ``spm_`` and the first
    12 hex digits of its file's SHA-256, so a changed file is another task."""
    path = user_model_path(name)
    if path is None:
        return name
    return "spm_" + hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:12]


def sentencepiece_model_bytes(name: str) -> bytes | None:
    """The SentencePiece model file behind ``name`` (None for "byte")."""
    if name == "sentencepiece":
        return SENTENCEPIECE_MODEL.read_bytes()
    path = user_model_path(name)
    return None if path is None else pathlib.Path(path).read_bytes()


@functools.lru_cache(maxsize=None)
def get_vocabulary(name: str) -> seqio.Vocabulary:
    """Returns the vocabulary called ``name`` ("sentencepiece", "byte" or
    "sentencepiece:PATH"), cached."""
    if user_model_path(name) is not None:
        problem = vocabulary_problem(name)
        if problem:
            raise ValueError(f"vocabulary {problem}")
        return seqio.SentencePieceVocabulary(user_model_path(name))
    if name == "sentencepiece":
        if not SENTENCEPIECE_MODEL.exists():
            raise FileNotFoundError(
                f"SentencePiece model {SENTENCEPIECE_MODEL} is missing; rebuild it with "
                f"`python -m moejax.data.build_vocab --out {SENTENCEPIECE_MODEL.with_suffix('')}`"
            )
        return seqio.SentencePieceVocabulary(str(SENTENCEPIECE_MODEL))
    if name == "byte":
        return seqio.ByteVocabulary()
    raise ValueError(f"vocabulary must be {vocabulary_problem(name)}")


def padded_vocab_size(vocabulary: seqio.Vocabulary, multiple: int = EMBEDDING_MULTIPLE) -> int:
    """Vocabulary size rounded up to a multiple of ``multiple`` (embedding rows)."""
    return int(math.ceil(vocabulary.vocab_size / multiple) * multiple)

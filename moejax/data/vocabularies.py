"""Vocabularies by name, and the embedding size a model needs for them.

In: a vocabulary name — ``"sentencepiece"`` (the committed 8k SentencePiece model
``moejax/data/vocab/moejax_8k.model``, built by ``moejax.data.build_vocab``) or ``"byte"``
(``seqio.ByteVocabulary``: UTF-8 bytes shifted by 3). Out: a ``seqio.Vocabulary`` with the T5
id layout (pad 0, EOS 1, UNK 2, no BOS), and ``padded_vocab_size``, the number of embedding
rows a model should allocate: the vocabulary size rounded up to a multiple of 128 so the
embedding and logits matmuls tile well on accelerators. Ids at or above the real vocabulary
size never occur in the data.
"""

from __future__ import annotations

import functools
import math
import pathlib

from moejax.data import tf_setup  # noqa: F401  (quiet TF before seqio imports it)

import seqio  # noqa: E402

VOCAB_DIR = pathlib.Path(__file__).parent / "vocab"
SENTENCEPIECE_MODEL = VOCAB_DIR / "moejax_8k.model"
VOCABULARY_NAMES = ("sentencepiece", "byte")

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
EMBEDDING_MULTIPLE = 128  # rows; the embedding is padded up to a multiple of this


@functools.lru_cache(maxsize=None)
def get_vocabulary(name: str) -> seqio.Vocabulary:
    """Returns the vocabulary called ``name`` ("sentencepiece" or "byte"), cached."""
    if name == "sentencepiece":
        if not SENTENCEPIECE_MODEL.exists():
            raise FileNotFoundError(
                f"SentencePiece model {SENTENCEPIECE_MODEL} is missing; rebuild it with "
                f"`python -m moejax.data.build_vocab --out {SENTENCEPIECE_MODEL.with_suffix('')}`"
            )
        return seqio.SentencePieceVocabulary(str(SENTENCEPIECE_MODEL))
    if name == "byte":
        return seqio.ByteVocabulary()
    raise ValueError(f"vocabulary must be one of {VOCABULARY_NAMES}, got {name!r}")


def padded_vocab_size(vocabulary: seqio.Vocabulary, multiple: int = EMBEDDING_MULTIPLE) -> int:
    """Vocabulary size rounded up to a multiple of ``multiple`` (embedding rows)."""
    return int(math.ceil(vocabulary.vocab_size / multiple) * multiple)

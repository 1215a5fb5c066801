"""seqio preprocessors shared by every moejax language-modelling task.

In: a ``tf.data.Dataset`` of examples with a raw-text ``"targets"`` string feature. Out: a
dataset of token pieces ``{"targets": int32[n]}`` with ``1 <= n <= sequence_length["targets"]``:
the text is tokenized, EOS is appended to the whole document, and the document is then cut
into consecutive pieces of at most ``sequence_length`` tokens, so packing never truncates
text (the last piece of a document ends with EOS; earlier pieces continue in the next one).
``LM_PREPROCESSORS`` is the list a Task uses after its source-specific preprocessors.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from moejax.data.tf_setup import tf

import seqio  # noqa: E402


def piece_lengths(num_tokens: tf.Tensor, max_length: int) -> tf.Tensor:
    """Lengths of the pieces a document of ``num_tokens`` tokens is cut into.

    All pieces but the last have ``max_length`` tokens; the last has the rest. A document of
    0 tokens gives no piece. Returns int32[ceil(num_tokens / max_length)].
    """
    num_tokens = tf.cast(num_tokens, tf.int32)
    num_pieces = (num_tokens + max_length - 1) // max_length
    starts = tf.range(num_pieces, dtype=tf.int32) * max_length
    return tf.minimum(max_length, num_tokens - starts)


def split_long_documents(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None = None,
    feature_key: str = "targets",
) -> tf.data.Dataset:
    """Cuts each tokenized ``feature_key`` sequence into pieces of <= sequence_length tokens.

    Only ``feature_key`` is kept (other features are dropped). With ``sequence_length=None``
    (seqio calls preprocessors that way when no lengths are requested) the data pass through
    unchanged.
    """
    if sequence_length is None or sequence_length.get(feature_key) is None:
        return dataset
    max_length = int(sequence_length[feature_key])

    def to_pieces(features):
        tokens = features[feature_key]
        lengths = piece_lengths(tf.size(tokens), max_length)
        return {feature_key: tf.RaggedTensor.from_row_lengths(tokens, lengths)}

    return dataset.map(to_pieces, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


LM_PREPROCESSORS = (
    functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
    seqio.preprocessors.append_eos,
    split_long_documents,
)

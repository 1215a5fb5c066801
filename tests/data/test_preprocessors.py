"""Tests for moejax.data.preprocessors: long documents are split, never truncated."""

import numpy as np
import pytest

from moejax.data.preprocessors import piece_lengths, split_long_documents
from moejax.data.tf_setup import tf


@pytest.mark.parametrize(
    "num_tokens, max_length, expected",
    [(0, 4, []), (1, 4, [1]), (4, 4, [4]), (5, 4, [4, 1]), (11, 4, [4, 4, 3])],
)
def test_piece_lengths(num_tokens, max_length, expected):
    assert piece_lengths(tf.constant(num_tokens), max_length).numpy().tolist() == expected


def test_split_long_documents_concatenates_back_to_the_input():
    rng = np.random.default_rng(0)
    documents = [rng.integers(3, 100, size=n).tolist() for n in (1, 7, 16, 17, 50)]
    dataset = tf.data.Dataset.from_tensor_slices(tf.ragged.constant(documents, dtype=tf.int32))
    dataset = dataset.map(lambda tokens: {"targets": tokens})
    pieces = [p["targets"].tolist() for p in split_long_documents(dataset, {"targets": 16}).as_numpy_iterator()]
    assert all(1 <= len(p) <= 16 for p in pieces)
    assert sum(pieces, []) == sum(documents, [])
    assert [len(p) for p in pieces] == [1, 7, 16, 16, 1, 16, 16, 16, 2]


def test_split_long_documents_without_lengths_is_identity():
    dataset = tf.data.Dataset.from_tensor_slices({"targets": [[1, 2, 3]]})
    assert split_long_documents(dataset, None) is dataset

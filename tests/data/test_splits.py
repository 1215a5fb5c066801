"""Tests for moejax.data.splits: stable hash assignment of documents to train/validation."""

import hashlib

import pytest

from moejax.data import splits, tasks


def reference_is_validation(domain, doc_id, fraction):
    """Independent restatement of the documented rule: first 8 bytes of sha256, big-endian."""
    digest = hashlib.sha256((domain + "/" + doc_id).encode()).hexdigest()
    return int(digest[:16], 16) < fraction * 2**64


def test_matches_documented_hash_rule():
    ids = [f"doc-{i}" for i in range(2000)]
    for fraction in (0.0, 0.03, 0.5):
        assert [splits.is_validation("wiki", i, fraction) for i in ids] == [
            reference_is_validation("wiki", i, fraction) for i in ids
        ]


def test_fraction_is_roughly_as_configured_and_monotone():
    ids = [f"doc-{i}" for i in range(20_000)]
    small = {i for i in ids if splits.is_validation("bible", i, 0.03)}
    large = {i for i in ids if splits.is_validation("bible", i, 0.10)}
    assert 0.025 < len(small) / len(ids) < 0.035
    assert small <= large  # growing the fraction only moves documents into validation


def test_select_split_partitions_items_in_order():
    items = [f"x{i}" for i in range(500)]
    train = splits.select_split("d", items, str, "train", 0.2)
    validation = splits.select_split("d", items, str, "validation", 0.2)
    assert not set(train) & set(validation)
    assert sorted(train + validation) == sorted(items)
    assert train == [i for i in items if i in set(train)]


@pytest.mark.parametrize("domain", ["wiki", "shakespeare", "bible"])
def test_embedded_train_and_validation_documents_are_disjoint(domain):
    train = {d.doc_id for d in tasks.split_documents(domain, "train", 0.03)}
    validation = {d.doc_id for d in tasks.split_documents(domain, "validation", 0.03)}
    assert validation and not train & validation
    total = len(train) + len(validation)
    assert abs(len(validation) / total - 0.03) < (0.02 if domain == "wiki" else 0.03)


def test_rejects_bad_fraction_and_split():
    with pytest.raises(ValueError, match="validation_fraction"):
        splits.check_validation_fraction(1.0)
    with pytest.raises(ValueError, match="split"):
        splits.select_split("d", [], str, "test", 0.1)

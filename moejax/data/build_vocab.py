"""Trains the committed SentencePiece vocabulary on the embedded corpus — or one on your own text
files — reproducibly.

In: the TRAINING split (default validation fraction) of the three embedded domains
(``moejax.data.corpora``), or with ``--text_files`` your .txt/.jsonl files (read as
``moejax.data.register_text_task`` reads them). Out: ``{out}.model`` and ``{out}.vocab`` — a
unigram SentencePiece model with ``vocab_size`` pieces (default 8000) in the T5 id layout: pad 0,
EOS 1, UNK 2, no BOS, then ``"\\n"`` as a user-defined piece (so play line breaks survive
tokenization), then the 256 byte-fallback pieces (so any character round-trips). Run as
``python -m moejax.data.build_vocab --out moejax/data/vocab/moejax_8k``; for your own files
``python -m moejax.data.build_vocab --out vocab/mine --text_files 'data/train/*.txt'`` and then
``DataConfig.vocabulary = 'sentencepiece:vocab/mine.model'``.

Determinism: the same corpus gives a byte-identical ``.model``. Training sentences are fed
through an iterator in a fixed order (no file paths end up in the model's trainer spec), the
subsample is chosen by a stable hash instead of SentencePiece's random sampler, input
shuffling is off and training uses one thread. Takes about half a minute on one CPU core.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import pathlib
from collections.abc import Iterable, Iterator

import sentencepiece as spm

from moejax import files
from moejax.data import corpora, splits

DEFAULT_VOCAB_SIZE = 8000
DEFAULT_VALIDATION_FRACTION = 0.03
MAX_CHUNK_BYTES = 2000  # SentencePiece skips "sentences" above max_sentence_length (4192 B)
DEFAULT_MAX_TRAINING_CHARS = 20_000_000  # more than the embedded corpus (~14M chars): use all of it


def document_chunks(text: str, max_chunk_bytes: int = MAX_CHUNK_BYTES) -> Iterator[str]:
    """Splits a document into runs of whole lines, each at most ``max_chunk_bytes`` UTF-8 bytes.

    Lines inside a chunk stay joined by ``"\\n"`` so the trainer sees line breaks; a single
    line longer than the limit is cut at the byte limit (on a character boundary).
    """
    chunk: list[str] = []
    chunk_bytes = 0
    for line in text.split("\n"):
        while len(line.encode("utf-8")) > max_chunk_bytes:
            head = line.encode("utf-8")[:max_chunk_bytes].decode("utf-8", errors="ignore")
            yield head
            line = line[len(head):]
        line_bytes = len(line.encode("utf-8")) + 1
        if chunk and chunk_bytes + line_bytes > max_chunk_bytes:
            yield "\n".join(chunk)
            chunk, chunk_bytes = [], 0
        chunk.append(line)
        chunk_bytes += line_bytes
    if any(chunk):
        yield "\n".join(chunk)


def keep_fraction(total_chars: int, max_training_chars: int) -> float:
    """Fraction of chunks to keep so about ``max_training_chars`` characters remain."""
    return 1.0 if total_chars <= max_training_chars else max_training_chars / total_chars


def training_sentences(
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    max_training_chars: int = DEFAULT_MAX_TRAINING_CHARS,
) -> list[str]:
    """Chunks of the embedded training documents, stably subsampled to ~max_training_chars."""
    chunks: list[str] = []
    for domain in corpora.DOMAINS:
        documents = splits.select_split(
            domain, corpora.load_documents(domain), lambda d: d.doc_id, "train", validation_fraction
        )
        chunks.extend(chunk for document in documents for chunk in document_chunks(document.text))
    keep = keep_fraction(sum(map(len, chunks)), max_training_chars)
    return [chunk for chunk in chunks if _stable_unit(chunk) < keep]


def file_sentences(patterns: list[str], file_format: str = "text", text_key: str = "text",
                   text_unit: str = "file",
                   max_training_chars: int = DEFAULT_MAX_TRAINING_CHARS) -> list[str]:
    """Chunks of the documents in the files ``patterns`` match (glob), stably subsampled to
    ~max_training_chars; a pattern that matches no file raises FileNotFoundError."""
    from moejax.data.tasks import read_text_documents

    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"--text_files pattern {pattern!r} matches no file")
        paths.extend(matches)
    documents = read_text_documents(paths, file_format, text_key, text_unit)
    chunks = [chunk for document in documents for chunk in document_chunks(document)]
    if not chunks:
        raise ValueError(f"no text in {len(paths)} file(s) matched by {patterns}")
    keep = keep_fraction(sum(map(len, chunks)), max_training_chars)
    return [chunk for chunk in chunks if _stable_unit(chunk) < keep]


def _stable_unit(text: str) -> float:
    """Deterministic number in [0, 1) for a text (for subsampling)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def train_model(sentences: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> bytes:
    """Trains a unigram SentencePiece model on ``sentences``; returns the serialized .model."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        byte_fallback=True,
        user_defined_symbols=["\n"],
        character_coverage=0.9995,
        split_digits=True,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def vocab_listing(model_proto: bytes) -> str:
    """The human-readable ``.vocab`` text: one ``piece<TAB>score`` line per id."""
    processor = spm.SentencePieceProcessor(model_proto=model_proto)
    lines = []
    for piece_id in range(processor.get_piece_size()):
        piece = processor.id_to_piece(piece_id).replace("\n", "\\n")  # keep one line per id
        lines.append(f"{piece}\t{processor.get_score(piece_id):g}\n")
    return "".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output prefix; writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    parser.add_argument("--max-training-chars", type=int, default=DEFAULT_MAX_TRAINING_CHARS)
    parser.add_argument("--text_files", nargs="+", default=None, metavar="GLOB",
                        help="train on these files (paths or glob patterns) instead of the "
                             "embedded corpus")
    parser.add_argument("--format", choices=("text", "jsonl"), default="text",
                        help="of --text_files: plain text, or JSON lines with the text in "
                             "--text_key")
    parser.add_argument("--text_key", default="text", help="JSON field of the text (jsonl)")
    parser.add_argument("--text_unit", choices=("file", "paragraph"), default="file",
                        help="plain text: one document per file or per blank-line paragraph")
    args = parser.parse_args(argv)
    if args.text_files:
        try:
            sentences = file_sentences(args.text_files, args.format, args.text_key,
                                       args.text_unit, args.max_training_chars)
        except (OSError, ValueError, KeyError) as e:
            parser.error(str(e))
    else:
        sentences = training_sentences(max_training_chars=args.max_training_chars)
    try:
        model_proto = train_model(sentences, args.vocab_size)
    except RuntimeError as e:  # SentencePiece's own complaint, e.g. a vocab_size too large
        parser.error(f"SentencePiece could not train: {str(e).splitlines()[-1]}")
    prefix = pathlib.Path(args.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(prefix.with_suffix(".model"), model_proto)  # whole files or none
    files.write_atomic(prefix.with_suffix(".vocab"), vocab_listing(model_proto))
    print(f"wrote {prefix}.model ({len(model_proto)} bytes, sha256 {hashlib.sha256(model_proto).hexdigest()})")


if __name__ == "__main__":
    main()

"""seqio Tasks and Mixtures of moejax, registered by name.

In: a task or mixture name plus a ``TaskVariant`` (vocabulary name, validation fraction).
Out: the name of a registered seqio Task/Mixture whose examples are ``{"targets": int32[n]}``
token pieces (tokenized, EOS-terminated documents cut to at most the requested length, see
``moejax.data.preprocessors``), with splits ``train`` and ``validation``.

Names. On import this module registers, for the default variant (``"sentencepiece"``, 0.03):
``moejax_wiki``, ``moejax_shakespeare``, ``moejax_bible`` (one Task per embedded domain,
documents assigned to validation by a stable hash, see ``moejax.data.splits``) and the Mixture
``moejax_embedded`` over them, with rates proportional to each domain's number of TRAINING
CHARACTERS (a vocabulary-independent proxy for training tokens, so every training character
is seen about equally often). Other variants are registered on first use under
``{name}.{vocabulary}.val{fraction}``, e.g. ``moejax_wiki.byte.val0.05``; ask
``resolve_name(name, variant)`` rather than building names by hand. ``moejax_c4`` (C4 English
from TFDS) is registered on first use, because it needs a prepared TFDS data dir: gin
``tfds_data_dir.path`` or the ``TFDS_DATA_DIR`` environment variable. ``register_text_task``
adds a Task over the user's own .txt or .jsonl files.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import pathlib
import re
from collections.abc import Callable, Sequence

import gin

from moejax.data import corpora, splits
from moejax.data.preprocessors import LM_PREPROCESSORS
from moejax.data.tf_setup import tf
from moejax.data.vocabularies import get_vocabulary, vocabulary_problem, vocabulary_tag

import seqio  # noqa: E402

EMBEDDED_TASKS = {f"moejax_{domain}": domain for domain in corpora.DOMAINS}
EMBEDDED_MIXTURE = "moejax_embedded"
C4_TASK = "moejax_c4"
C4_TFDS_NAME = "c4/en:3.*.*"
SHUFFLE_BUFFER_SIZE = 1024  # document pieces, after the full document-level shuffle


@dataclasses.dataclass(frozen=True)
class TaskVariant:
    """The knobs that change a task's examples: vocabulary and validation fraction."""

    vocabulary: str = "sentencepiece"
    validation_fraction: float = 0.03

    def __post_init__(self):
        problem = vocabulary_problem(self.vocabulary)
        if problem:
            raise ValueError(f"vocabulary must be {problem}")
        splits.check_validation_fraction(self.validation_fraction)

    def suffix(self) -> str:
        """``""`` for the default variant, else ``".{vocabulary tag}.val{fraction}"`` (a user's
        SentencePiece model is tagged by its content: ``vocabularies.vocabulary_tag``)."""
        if self == TaskVariant():
            return ""
        fraction = f"{self.validation_fraction:.6f}".rstrip("0").rstrip(".")
        return f".{vocabulary_tag(self.vocabulary)}.val{fraction}"


DEFAULT_VARIANT = TaskVariant()

# A builder registers the seqio Task/Mixture `registered_name` for one variant of its base name.
Builder = Callable[[str, TaskVariant], None]
_BUILDERS: dict[str, Builder] = {}
_BASE_NAME: dict[str, str] = {}  # registered seqio name -> moejax base name


def moejax_names() -> list[str]:
    """Every moejax task/mixture base name (what DataConfig.mixture accepts), sorted."""
    return sorted(_BUILDERS)


def base_name(registered_name: str) -> str:
    """The moejax base name of a registered variant name (unknown names map to themselves)."""
    return _BASE_NAME.get(registered_name, registered_name)


def _is_registered(name: str) -> bool:
    return name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names()


def _unregister(name: str) -> None:
    seqio.TaskRegistry.remove(name)
    seqio.MixtureRegistry.remove(name)
    _BASE_NAME.pop(name, None)


def resolve_name(name: str, variant: TaskVariant = DEFAULT_VARIANT) -> str:
    """Registers (once) and returns the seqio name of moejax task/mixture ``name`` for ``variant``.

    A name that is not a moejax base name but is registered with seqio (a Task the user
    registered directly) is returned unchanged. Anything else raises a ValueError listing the
    moejax names.
    """
    if name in _BUILDERS:
        registered_name = name + variant.suffix()
        if not _is_registered(registered_name):
            _BUILDERS[name](registered_name, variant)
        _BASE_NAME[registered_name] = name
        return registered_name
    if _is_registered(name):
        return name
    raise ValueError(
        f"unknown task or mixture {name!r}; registered moejax tasks/mixtures: "
        f"{', '.join(moejax_names())} (or any name registered with seqio)"
    )


def add_builder(name: str, builder: Builder, *, register_default: bool = True) -> None:
    """Makes ``name`` resolvable; replaces a previous builder and its registered variants."""
    for registered_name in [r for r, b in _BASE_NAME.items() if b == name]:
        _unregister(registered_name)
    _BUILDERS[name] = builder
    if register_default:
        resolve_name(name)


def lm_task(name: str, source: seqio.DataSource, vocabulary: str, preprocessors: Sequence = ()) -> seqio.Task:
    """A language-modelling Task: source text in ``"targets"`` -> EOS-terminated token pieces."""
    return seqio.Task(
        name,
        source=source,
        output_features={"targets": seqio.Feature(get_vocabulary(vocabulary), add_eos=True, dtype=tf.int32)},
        preprocessors=[*preprocessors, *LM_PREPROCESSORS],
        shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
    )


def texts_dataset(texts: Sequence[str], shuffle: bool, seed: int | None) -> tf.data.Dataset:
    """``{"targets": text}`` examples; with ``shuffle``, a full shuffle of the documents.

    The shuffle reshuffles on every repetition (each epoch sees a new, seed-determined order).
    """
    dataset = tf.data.Dataset.from_tensor_slices({"targets": tf.constant(list(texts), dtype=tf.string)})
    if shuffle and texts:
        dataset = dataset.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
    return dataset


# ---------------------------------------------------------------------------- embedded corpus


@functools.lru_cache(maxsize=None)
def split_documents(domain: str, split: str, validation_fraction: float) -> tuple[corpora.Document, ...]:
    """The embedded ``domain``'s documents of ``split``, in corpus order (cached)."""
    documents = corpora.load_documents(domain)
    return tuple(splits.select_split(domain, documents, lambda d: d.doc_id, split, validation_fraction))


def training_characters(domain: str, validation_fraction: float) -> int:
    """Characters in ``domain``'s training split: the embedded mixture's rate for it."""
    return sum(len(d.text) for d in split_documents(domain, "train", validation_fraction))


def _embedded_source(domain: str, validation_fraction: float) -> seqio.DataSource:
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        texts = [d.text for d in split_documents(domain, split, validation_fraction)]
        return texts_dataset(texts, shuffle_files, seed)

    return seqio.FunctionDataSource(dataset_fn, splits=splits.SPLITS)


def _embedded_task_builder(domain: str) -> Builder:
    def build(registered_name: str, variant: TaskVariant) -> None:
        source = _embedded_source(domain, variant.validation_fraction)
        seqio.TaskRegistry.add_provider(registered_name, lm_task(registered_name, source, variant.vocabulary))

    return build


def _embedded_mixture(registered_name: str, variant: TaskVariant) -> None:
    components = [
        (resolve_name(task_name, variant), _character_rate(domain, variant.validation_fraction))
        for task_name, domain in EMBEDDED_TASKS.items()
    ]
    seqio.MixtureRegistry.add(registered_name, components)


def _character_rate(domain: str, validation_fraction: float) -> Callable[[seqio.Task], float]:
    """A seqio rate callable; the corpus is read when a dataset is built, not at import."""

    def rate(_task: seqio.Task) -> float:
        return float(training_characters(domain, validation_fraction))

    return rate


# ---------------------------------------------------------------------------- C4


@gin.configurable
def tfds_data_dir(path: str | None = None) -> str | None:
    """The TFDS data dir holding prepared C4: gin ``tfds_data_dir.path``, else $TFDS_DATA_DIR."""
    return path or os.environ.get("TFDS_DATA_DIR") or None


def check_c4_prepared(data_dir: str | None) -> str:
    """Returns ``data_dir`` if it holds prepared ``c4/en`` version 3.x; raises otherwise.

    The error names what is missing and how to prepare it (there is no download at training
    time: machines may have no network).
    """
    how = (
        "Prepare C4 once on a machine with network access and enough disk (~800 GB for c4/en), "
        "e.g. `tfds build c4/en --data_dir=DIR` (needs apache-beam), or copy an existing "
        "prepared `c4/en/3.0.1` folder into DIR; then set gin `tfds_data_dir.path = 'DIR'` or "
        "the TFDS_DATA_DIR environment variable."
    )
    if not data_dir:
        raise FileNotFoundError(f"Task '{C4_TASK}' needs a TFDS data dir, and none is set. {how}")
    if not tf.io.gfile.glob(os.path.join(data_dir, "c4", "en", "3.*", "dataset_info.json")):
        raise FileNotFoundError(
            f"Task '{C4_TASK}' found no prepared TFDS dataset '{C4_TFDS_NAME}' under "
            f"{data_dir!r} (expected {os.path.join(data_dir, 'c4', 'en', '3.*', 'dataset_info.json')}). {how}"
        )
    return data_dir


def _c4_task(registered_name: str, variant: TaskVariant) -> None:
    source = seqio.TfdsDataSource(
        tfds_name=C4_TFDS_NAME,
        tfds_data_dir=check_c4_prepared(tfds_data_dir()),
        splits={"train": "train", "validation": "validation"},
    )
    rename = functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"})
    seqio.TaskRegistry.add_provider(registered_name, lm_task(registered_name, source, variant.vocabulary, [rename]))


# ---------------------------------------------------------------------------- user text


def read_text_documents(paths: Sequence[str], file_format: str, text_key: str, text_unit: str) -> list[str]:
    """Documents from the user's files, in file order.

    ``file_format="text"``: with ``text_unit="file"`` each file is one document; with
    ``text_unit="paragraph"`` each blank-line-separated paragraph is one. ``"jsonl"``: each
    non-empty line is a JSON object and ``obj[text_key]`` is one document. Empty documents
    are dropped.
    """
    documents: list[str] = []
    for path in paths:
        content = pathlib.Path(path).read_text(encoding="utf-8")
        if file_format == "jsonl":
            for line_number, line in enumerate(content.splitlines(), start=1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if text_key not in record:
                    raise KeyError(f"{path}:{line_number}: no key {text_key!r} (text_key) in {sorted(record)}")
                documents.append(str(record[text_key]))
        elif text_unit == "paragraph":
            documents.extend(re.split(r"\n[ \t]*\n", content.replace("\r\n", "\n")))
        else:
            documents.append(content)
    return [d.strip() for d in documents if d.strip()]


def _expand(patterns: Sequence[str] | str, what: str, name: str) -> list[str]:
    """Glob patterns -> sorted existing files; raises if a pattern matches nothing."""
    paths: list[str] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        matches = sorted(glob.glob(os.fspath(pattern)))
        if not matches:
            raise FileNotFoundError(f"register_text_task({name!r}): {what} pattern {pattern!r} matches no file")
        paths.extend(matches)
    return paths


@gin.configurable
def register_text_task(
    name: str,
    train_files: Sequence[str] | str,
    validation_files: Sequence[str] | str,
    format: str = "text",  # noqa: A002  (the public keyword the trainer configs use)
    text_key: str = "text",
    text_unit: str = "file",
) -> str:
    """Registers a Task ``name`` over the user's own files; returns ``name``.

    ``train_files``/``validation_files``: paths or glob patterns. ``format``: "text" or
    "jsonl". ``text_key``: the JSON field holding the text (jsonl only). ``text_unit``
    (text only): "file" = one document per file, "paragraph" = one per blank-line-separated
    paragraph. Files are checked to exist now and read when a dataset is built. Registering
    the same name again replaces the task. Use the name as ``DataConfig.mixture``.
    """
    if format not in ("text", "jsonl"):
        raise ValueError(f"register_text_task({name!r}): format must be 'text' or 'jsonl', got {format!r}")
    if text_unit not in ("file", "paragraph"):
        raise ValueError(f"register_text_task({name!r}): text_unit must be 'file' or 'paragraph', got {text_unit!r}")
    if name in (*EMBEDDED_TASKS, EMBEDDED_MIXTURE, C4_TASK):
        raise ValueError(f"register_text_task: {name!r} is a built-in moejax name; choose another name")
    if name not in _BUILDERS and _is_registered(name):
        raise ValueError(f"register_text_task: {name!r} is already registered with seqio by other code")
    files = {
        "train": _expand(train_files, "train_files", name),
        "validation": _expand(validation_files, "validation_files", name),
    }

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        return texts_dataset(read_text_documents(files[split], format, text_key, text_unit), shuffle_files, seed)

    def build(registered_name: str, variant: TaskVariant) -> None:
        source = seqio.FunctionDataSource(dataset_fn, splits=splits.SPLITS)
        seqio.TaskRegistry.add_provider(registered_name, lm_task(registered_name, source, variant.vocabulary))

    add_builder(name, build)
    return name


# ---------------------------------------------------------------------------- registration


def register_builtin_tasks() -> None:
    """Registers the embedded tasks, their mixture and (lazily) C4; safe to call repeatedly."""
    for task_name, domain in EMBEDDED_TASKS.items():
        if task_name not in _BUILDERS:
            add_builder(task_name, _embedded_task_builder(domain))
    if EMBEDDED_MIXTURE not in _BUILDERS:
        add_builder(EMBEDDED_MIXTURE, _embedded_mixture)
    if C4_TASK not in _BUILDERS:
        add_builder(C4_TASK, _c4_task, register_default=False)


register_builtin_tasks()

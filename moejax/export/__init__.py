"""Export a trained run to other codebases' formats.

In: a run directory and one of its finalized checkpoints. Out: a directory that Hugging Face
``transformers`` loads with ``AutoModelForCausalLM.from_pretrained`` (``config.json``, safetensors
weights, tokenizer files), written whole or not at all. ``hf`` maps moejax's parameters onto a
format (``FORMATS``: Mixtral, Qwen2-MoE) and says why a model does not fit one; ``safetensors``
writes the weight files; ``tokenizer`` the vocabulary's files; ``cli`` is ``moejax export``.
"""

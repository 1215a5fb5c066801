"""The naive reference for generation: the training forward pass re-run on the whole growing
sequence for every new token (right-padded to a fixed width, so it compiles once), the next token
chosen by numpy."""

import numpy as np


def greedy_by_full_forward(apply, params, prompt, new_tokens, *, vocab_size, width, buffers=None,
                           eos_id=None):
    """(tokens, stop): the greedy continuation of ``prompt`` by ``apply`` (a jitted
    ``FunctionalModel.apply``), never choosing id 0 or ids >= ``vocab_size``; ``stop`` is "eos"
    when ``eos_id`` was chosen (it is not returned), else "length"."""
    sequence, out = [0, *prompt], []
    for _ in range(new_tokens):
        tokens = np.zeros((1, width), np.int32)
        tokens[0, :len(sequence)] = sequence
        segments = (np.arange(width) < len(sequence)).astype(np.int32)[None]
        logits, _ = apply(params, tokens, None, segments, buffers=buffers)
        last = np.asarray(logits[0, len(sequence) - 1], np.float64)
        last[vocab_size:] = -np.inf
        last[0] = -np.inf
        out.append(int(last.argmax()))
        if out[-1] == eos_id:
            return out[:-1], "eos"
        sequence.append(out[-1])
    return out, "length"

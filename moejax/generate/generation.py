"""Autoregressive generation for a batch of prompts with a key/value cache.

In: a ``FunctionalModel``, its params and buffers, prompts as token ids, a ``Sampling``. Out: one
``Generated`` per prompt: the new token ids (EOS excluded) and why it stopped.

The prompts are left-padded into one batch (``moejax.model.decoding``), prefilled in one call,
then every step feeds the previous token of each row and samples the next; rows that emitted EOS
keep running (their tokens are discarded) until every row has stopped or ``max_new_tokens`` is
reached. Each step is one jitted call: prefill compiles once per prompt width, the step once
(per model and sampling setting).
"""

from __future__ import annotations

import functools
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moejax.generate.sampling import Sampling, allowed_ids, sample_tokens
from moejax.model.decoding import PROMPT_SEGMENT, init_cache, left_padded
from moejax.model.functional import FunctionalModel

EOS_ID = 1  # every moejax vocabulary: pad 0, EOS 1


class Generated(NamedTuple):
    tokens: list[int]  # the new tokens, EOS excluded
    stop: str  # "eos" or "length"


class NonFiniteLogits(FloatingPointError):
    """The model produced NaN or infinite logits (a diverged or damaged checkpoint)."""


def _choose(logits_BV, rng, sampling: Sampling, vocab_size: int):
    finite = jnp.all(jnp.isfinite(logits_BV))
    return sample_tokens(rng, allowed_ids(logits_BV, vocab_size), sampling), finite


# ``extend`` (a FunctionalModel's), ``sampling`` and ``vocab_size`` are static: each compiles once
# per model and setting, however many times ``generate`` is called. The cache is donated, so
# each step writes its new keys and values in place instead of copying the whole cache.
@functools.partial(jax.jit, static_argnames=("extend", "sampling", "vocab_size"),
                   donate_argnames=("cache",))
def _prefill(params, buffers, cache, tokens_BP, positions_BP, segments_BP, rng, *, extend,
             sampling, vocab_size):
    logits_BPV, cache = extend(params, cache, tokens_BP, positions_BP, segments_BP,
                               buffers=buffers)
    return (*_choose(logits_BPV[:, -1], rng, sampling, vocab_size), cache)


@functools.partial(jax.jit, static_argnames=("extend", "sampling", "vocab_size"),
                   donate_argnames=("cache",))
def _step(params, buffers, cache, tokens_B, positions_B, rng, *, extend, sampling, vocab_size):
    segments_B1 = jnp.full((tokens_B.shape[0], 1), PROMPT_SEGMENT, jnp.int32)
    logits_B1V, cache = extend(params, cache, tokens_B[:, None], positions_B[:, None],
                               segments_B1, buffers=buffers)
    return (*_choose(logits_B1V[:, 0], rng, sampling, vocab_size), cache)


def generate(model: FunctionalModel, params, buffers, prompts: Sequence[Sequence[int]], *,
             max_new_tokens: int, sampling: Sampling, vocab_size: int, rng: jax.Array,
             eos_id: int = EOS_ID,
             progress: Callable[[int, int, float], None] | None = None) -> list[Generated]:
    """Continue every prompt by up to ``max_new_tokens`` tokens (stopping a row at ``eos_id``).

    ``vocab_size`` is the vocabulary's real size: ids at or past it (the embedding's padding rows)
    and the start/padding id 0 are never emitted. ``progress(done, total, seconds)`` is called
    after each step. Raises ``NonFiniteLogits`` naming the step where logits stopped being finite.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    batch = left_padded(prompts)
    rows, width = batch.tokens_BP.shape
    cache = init_cache(model.config, rows, width + max_new_tokens - 1)
    static = dict(extend=model.extend, sampling=sampling, vocab_size=vocab_size)
    start = time.perf_counter()
    rng, key = jax.random.split(rng)
    tokens_B, finite, cache = _prefill(params, buffers, cache, batch.tokens_BP,
                                       batch.positions_BP, batch.segment_ids_BP, key, **static)
    positions_B = jnp.asarray(batch.lengths_B)  # the position of the token just sampled
    chosen, stopped = [], np.zeros(rows, bool)
    for made in range(1, max_new_tokens + 1):
        if not bool(finite):
            where = "the prompt" if made == 1 else f"generated token {made - 1}"
            raise NonFiniteLogits(f"the model's logits are not finite after {where}: a diverged "
                                  "run or a damaged checkpoint")
        host_tokens = np.asarray(tokens_B)
        chosen.append(np.where(stopped, eos_id, host_tokens))
        stopped |= host_tokens == eos_id
        if progress is not None:
            progress(made, max_new_tokens, time.perf_counter() - start)
        if stopped.all() or made == max_new_tokens:
            break
        rng, key = jax.random.split(rng)
        tokens_B, finite, cache = _step(params, buffers, cache, tokens_B, positions_B, key,
                                        **static)
        positions_B = positions_B + 1
    out = []
    for row in np.stack(chosen, axis=1):
        ends = np.flatnonzero(row == eos_id)
        out.append(Generated(row[:ends[0]].tolist(), "eos") if ends.size
                   else Generated(row.tolist(), "length"))
    return out

"""Next-token choice from logits: greedy, or sampling with temperature, top-k and top-p (nucleus).

Pure functions over (B, V) float32 logits. Filters keep the tokens they allow and set the others
to -inf; ``sample_tokens`` then takes the argmax (temperature 0) or draws from the softmax of the
filtered, temperature-scaled logits. ``allowed_ids`` removes what a model may never emit: the
padding / start id 0 and the rows the embedding was padded with past the vocabulary.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen.

    Attributes:
      temperature: 0 for greedy (argmax); otherwise logits are divided by it before sampling.
      top_k: keep only the k most likely tokens (0: all).
      top_p: keep the smallest set of most likely tokens whose probability reaches top_p
        (1.0: all). Applied after top_k, on the temperature-scaled distribution.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        problems = []
        if not self.temperature >= 0:
            problems.append(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 keeps every token), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if problems:
            raise ValueError("; ".join(problems))


def allowed_ids(logits_BV: jax.Array, vocab_size: int, disallowed=(0,)) -> jax.Array:
    """Logits with ids >= ``vocab_size`` (embedding padding) and ``disallowed`` set to -inf."""
    ids_V = jnp.arange(logits_BV.shape[-1])
    banned_V = ids_V >= vocab_size
    for token in disallowed:
        banned_V = banned_V | (ids_V == token)
    return jnp.where(banned_V, -jnp.inf, logits_BV)


def top_k_filter(logits_BV: jax.Array, k: int) -> jax.Array:
    """Keep the k largest logits of each row (ties at the k-th value are all kept)."""
    if k <= 0 or k >= logits_BV.shape[-1]:
        return logits_BV
    kth_B1 = jax.lax.top_k(logits_BV, k)[0][:, -1:]
    return jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)


def top_p_filter(logits_BV: jax.Array, p: float) -> jax.Array:
    """Keep, in each row, the most likely tokens until their probability first reaches p (the
    token that crosses p is kept; so is the most likely token, always)."""
    if p >= 1.0:
        return logits_BV
    order_BV = jnp.argsort(-logits_BV, axis=-1)
    sorted_BV = jnp.take_along_axis(logits_BV, order_BV, axis=-1)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # mass of the more likely tokens
    keep_sorted_BV = before_BV < p
    keep_BV = jnp.zeros_like(keep_sorted_BV).at[
        jnp.arange(logits_BV.shape[0])[:, None], order_BV].set(keep_sorted_BV)
    return jnp.where(keep_BV, logits_BV, -jnp.inf)


def filtered_logits(logits_BV: jax.Array, sampling: Sampling) -> jax.Array:
    """The temperature-scaled logits that ``sample_tokens`` draws from (temperature > 0)."""
    scaled_BV = logits_BV / sampling.temperature
    return top_p_filter(top_k_filter(scaled_BV, sampling.top_k), sampling.top_p)


def sample_tokens(rng: jax.Array, logits_BV: jax.Array, sampling: Sampling) -> jax.Array:
    """(B,) int32: each row's next token."""
    if sampling.temperature == 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filtered_logits(logits_BV, sampling)).astype(jnp.int32)

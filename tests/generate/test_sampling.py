"""Token choice against numpy references written apart: top-k and top-p kept sets by sorting, the
sampled frequencies against the filtered softmax, greedy against argmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.generate.sampling import (Sampling, allowed_ids, filtered_logits, sample_tokens,
                                      top_k_filter, top_p_filter)


def kept_by_top_k(logits, k):
    threshold = np.sort(logits)[::-1][k - 1]
    return logits >= threshold


def kept_by_top_p(logits, p):
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    kept, mass = np.zeros(len(logits), bool), 0.0
    for token in order:
        kept[token] = True
        mass += probs[token]
        if mass >= p:
            break
    return kept


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_keeps_the_k_largest(k):
    logits = np.random.default_rng(k).normal(size=(4, 10)).astype(np.float32)
    out = np.asarray(top_k_filter(jnp.asarray(logits), k))
    for row, got in zip(logits, out):
        keep = kept_by_top_k(row, k)
        assert keep.sum() == k
        np.testing.assert_array_equal(np.isfinite(got), keep)
        np.testing.assert_array_equal(got[keep], row[keep])


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_keeps_the_smallest_set_reaching_p(p):
    logits = np.random.default_rng(7).normal(size=(6, 12)).astype(np.float32) * 2
    out = np.asarray(top_p_filter(jnp.asarray(logits), p))
    for row, got in zip(logits, out):
        np.testing.assert_array_equal(np.isfinite(got), kept_by_top_p(row.astype(np.float64), p))
    assert np.isfinite(out).sum(axis=1).min() >= 1  # the most likely token is always kept


def test_banned_ids_are_never_chosen():
    logits = jnp.zeros((3, 16)).at[:, 0].set(10.0).at[:, 13].set(9.0)  # 0 and a padding row lead
    allowed = allowed_ids(logits, vocab_size=12)
    assert np.isneginf(np.asarray(allowed)[:, [0, 12, 13, 14, 15]]).all()
    greedy = sample_tokens(jax.random.key(0), allowed, Sampling(temperature=0))
    assert set(np.asarray(greedy)) <= set(range(1, 12))
    drawn = jax.vmap(lambda key: sample_tokens(key, allowed, Sampling()))(
        jax.random.split(jax.random.key(1), 200))
    assert set(np.asarray(drawn).ravel()) <= set(range(1, 12))


def test_greedy_is_argmax():
    logits = np.random.default_rng(3).normal(size=(5, 30)).astype(np.float32)
    np.testing.assert_array_equal(sample_tokens(jax.random.key(0), jnp.asarray(logits),
                                                Sampling(temperature=0)), logits.argmax(axis=1))


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.5),
                                      Sampling(temperature=2.0, top_k=4),
                                      Sampling(temperature=1.0, top_p=0.7)])
def test_sampled_frequencies_follow_the_filtered_softmax(sampling):
    logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], np.float32)
    scaled = logits / sampling.temperature
    keep = np.ones(len(logits), bool)
    if sampling.top_k:
        keep &= kept_by_top_k(scaled, sampling.top_k)
    if sampling.top_p < 1:
        keep &= kept_by_top_p(np.where(keep, scaled, -np.inf).astype(np.float64), sampling.top_p)
    probs = np.where(keep, np.exp(scaled - scaled.max()), 0.0)
    probs /= probs.sum()
    n = 40_000
    drawn = sample_tokens(jax.random.key(5), jnp.broadcast_to(logits, (n, len(logits))), sampling)
    freq = np.bincount(np.asarray(drawn), minlength=len(logits)) / n
    assert (freq[~keep] == 0).all()
    sigma = np.sqrt(probs * (1 - probs) / n)
    assert (np.abs(freq - probs) <= 4.5 * sigma + 1e-9).all(), (freq, probs)
    np.testing.assert_array_equal(
        np.isfinite(np.asarray(filtered_logits(jnp.asarray(logits[None]), sampling)))[0], keep)


@pytest.mark.parametrize("kwargs,message", [
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"top_k": -1}, "top_k must be >= 0"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"temperature": float("nan")}, "temperature must be >= 0"),
])
def test_bad_sampling_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**kwargs)

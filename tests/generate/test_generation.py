"""Generation through the cache against a naive reference (``tests/generate/reference.py``): the
full forward pass re-run on the whole growing sequence for every new token."""

import dataclasses

import jax
import numpy as np
import pytest

from moejax.generate import NonFiniteLogits, Sampling, generate
from moejax.model import ModelConfig, MoEConfig, build_model
from tests.generate.reference import greedy_by_full_forward

CONFIG = ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                     moe=MoEConfig(num_experts=4, top_k=2, d_expert=16), moe_every=1)
VOCAB = 100  # the real vocabulary; ids 100..127 are embedding padding
PROMPTS = [[5, 17, 33, 2, 9], [], [71]]


@pytest.fixture(scope="module")
def model_and_params():
    model = build_model(CONFIG)
    params = model.init(jax.random.key(0))
    # Make the embedding padding rows and id 0 the most likely tokens, so a generator that does
    # not ban them would pick them.
    params["embed_VD"] = params["embed_VD"].at[VOCAB:].multiply(30.0).at[0].multiply(30.0)
    return model, params


WIDTH = 16  # the reference runs every sequence right-padded to this width: one compilation


def naive_greedy(model, params, prompt, new_tokens):
    return greedy_by_full_forward(jax.jit(model.apply), params, prompt, new_tokens,
                                  vocab_size=VOCAB, width=WIDTH)[0]


def test_greedy_generation_is_the_naive_argmax_loop(model_and_params):
    model, params = model_and_params
    made = generate(model, params, {}, PROMPTS, max_new_tokens=6, sampling=Sampling(0.0),
                    vocab_size=VOCAB, rng=jax.random.key(0), eos_id=-1)
    for prompt, got in zip(PROMPTS, made):
        assert got.tokens == naive_greedy(model, params, prompt, 6)
        assert got.stop == "length"


def test_rows_stop_at_eos(model_and_params):
    model, params = model_and_params
    reference = naive_greedy(model, params, PROMPTS[0], 6)
    eos = reference[2]  # pretend the third greedy token of row 0 is EOS
    calls = []
    made = generate(model, params, {}, PROMPTS, max_new_tokens=6, sampling=Sampling(0.0),
                    vocab_size=VOCAB, rng=jax.random.key(0), eos_id=eos,
                    progress=lambda done, total, seconds: calls.append((done, total)))
    assert made[0] == (reference[:reference.index(eos)], "eos")
    for prompt, got in zip(PROMPTS[1:], made[1:]):
        full = naive_greedy(model, params, prompt, 6)
        want = (full[:full.index(eos)], "eos") if eos in full else (full, "length")
        assert got == want
    assert calls[-1][1] == 6 and [d for d, _ in calls] == list(range(1, len(calls) + 1))


def test_sampling_is_reproducible_by_seed(model_and_params):
    model, params = model_and_params

    def sample(seed):
        return generate(model, params, {}, PROMPTS, max_new_tokens=8, sampling=Sampling(1.0),
                        vocab_size=VOCAB, rng=jax.random.key(seed), eos_id=-1)

    first = sample(1)
    assert sample(1) == first
    assert sample(2) != first
    assert all(0 < t < VOCAB for row in first for t in row.tokens)


def test_non_finite_logits_are_named(model_and_params):
    model, params = model_and_params
    broken = dict(params, final_norm={"scale": params["final_norm"]["scale"] * np.nan})
    with pytest.raises(NonFiniteLogits, match="after the prompt"):
        generate(model, broken, {}, PROMPTS, max_new_tokens=3, sampling=Sampling(0.0),
                 vocab_size=VOCAB, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate(model, params, {}, PROMPTS, max_new_tokens=0, sampling=Sampling(0.0),
                 vocab_size=VOCAB, rng=jax.random.key(0))


def test_the_cache_is_sized_for_the_longest_prompt():
    # 9 prompt slots + 4 new tokens: the cache must hold 9 + 3 (the last token is never fed).
    model = build_model(dataclasses.replace(CONFIG, moe=None))
    params = model.init(jax.random.key(1))
    made = generate(model, params, {}, [[3] * 8, [4]], max_new_tokens=4, sampling=Sampling(0.0),
                    vocab_size=VOCAB, rng=jax.random.key(0), eos_id=-1)
    assert [len(m.tokens) for m in made] == [4, 4]
    assert made[1].tokens == naive_greedy(model, params, [4], 4)

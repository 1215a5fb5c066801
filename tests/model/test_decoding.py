"""Decoding through the key/value cache against the training forward pass: a batch of left-padded
prompts prefilled, then extended token by token (or a few at a time), must give every row the
logits the full forward pass gives that row's sequence on its own, for every model variant that
decodes causally."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.model import ModelConfig, MoEConfig, build_model
from moejax.model.config import LatentAttentionConfig
from moejax.model.decoding import (cache_bytes, init_cache, left_padded, PADDING_SEGMENT,
                                   START_TOKEN, UNWRITTEN_SEGMENT)
from moejax.model.layers import attention_mask, cached_attention_mask

MOE = MoEConfig(num_experts=4, top_k=2, d_expert=16)
BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=48,
                   moe=MOE, moe_every=1)

VARIANTS = {
    "moe_gqa": BASE,
    "qk_per_head": dataclasses.replace(BASE, qk_norm="per_head"),
    "qk_across_heads": dataclasses.replace(BASE, qk_norm="across_heads", n_kv_heads=4),
    "hash_routing": dataclasses.replace(BASE, moe=dataclasses.replace(MOE, routing="hash")),
    "shared_first_dense_every_2": dataclasses.replace(
        BASE, n_layers=4, first_dense_layers=1, moe_every=2,
        moe=dataclasses.replace(MOE, num_shared_experts=1)),
    "balancing_bias": dataclasses.replace(BASE, moe=dataclasses.replace(
        MOE, bias_update_rate=1e-3, router_scores="sigmoid")),
    "dense_untied": dataclasses.replace(BASE, moe=None, tie_embeddings=False),
    # the cache holds latents; the step attends in latent space (LatentAttention.extend)
    "latent_attention": dataclasses.replace(BASE, n_kv_heads=None, latent_attention=(
        LatentAttentionConfig(kv_lora_rank=12, qk_rope_head_dim=4, qk_nope_head_dim=6,
                              v_head_dim=5, q_lora_rank=10))),
}

PROMPT_LENGTHS = (5, 1, 0, 9)  # prompt tokens per row (START_TOKEN comes on top)


def _params_and_buffers(config):
    model = build_model(config)
    params = model.init(jax.random.key(0))
    buffers = model.init_buffers()
    # Non-zero balancing biases, so a cache path that ignored them would be caught.
    buffers = jax.tree.map(lambda b: jax.random.normal(jax.random.key(3), b.shape), buffers)
    return model, params, buffers


def _cached_logits(model, params, buffers, prompts, continuation, chunk):
    """Row b's logits at each position from its last prompt token on, through the cache."""
    batch = left_padded(prompts)
    rows, width = batch.tokens_BP.shape
    extend = jax.jit(model.extend)
    cache = init_cache(model.config, rows, width + continuation.shape[1])
    logits, cache = extend(params, cache, batch.tokens_BP, batch.positions_BP,
                           batch.segment_ids_BP, buffers=buffers)
    out = [logits[:, -1:]]
    positions = batch.lengths_B[:, None] + np.arange(chunk)[None]
    for t in range(0, continuation.shape[1], chunk):
        logits, cache = extend(params, cache, continuation[:, t:t + chunk], positions,
                               np.ones((rows, chunk), np.int32), buffers=buffers)
        out.append(logits)
        positions = positions + chunk
    assert int(cache.length) == width + continuation.shape[1]
    return np.concatenate(out, axis=1)


def _full_forward_logits(model, params, buffers, prompts, continuation):
    """Row b's logits from its last prompt token on, by the training forward pass: every row's
    whole sequence right-padded (causal attention keeps the padding out of earlier positions)."""
    rows = [[START_TOKEN, *prompt, *extra] for prompt, extra in zip(prompts, continuation)]
    width = max(map(len, rows))
    tokens = np.zeros((len(rows), width), np.int32)
    segments = np.zeros((len(rows), width), np.int32)
    for b, row in enumerate(rows):
        tokens[b, :len(row)], segments[b, :len(row)] = row, 1
    positions = np.broadcast_to(np.arange(width, dtype=np.int32), tokens.shape)
    logits, _ = jax.jit(model.apply)(params, tokens, positions, segments, buffers=buffers)
    steps = continuation.shape[1] + 1
    return [np.asarray(logits[b, len(p):len(p) + steps]) for b, p in enumerate(prompts)]


def _case(config, seed, prompt_lengths, new_tokens):
    model, params, buffers = _params_and_buffers(config)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(2, 64, n).tolist() for n in prompt_lengths]
    continuation = rng.integers(2, 64, (len(prompts), new_tokens)).astype(np.int32)
    want = _full_forward_logits(model, params, buffers, prompts, continuation)
    return model, params, buffers, prompts, continuation, want


SLOW = {"qk_per_head", "shared_first_dense_every_2"}  # kin of a fast case, in the slow suite


@pytest.mark.parametrize("variant,chunk", [
    pytest.param(v, 1, marks=[pytest.mark.slow] if v in SLOW else []) for v in sorted(VARIANTS)]
    + [("shared_first_dense_every_2", 2)])
def test_cached_decoding_matches_the_full_forward(variant, chunk):
    """``chunk`` tokens per call after the prefill."""
    model, params, buffers, prompts, continuation, want = _case(VARIANTS[variant], 1,
                                                                PROMPT_LENGTHS, 4)
    got = _cached_logits(model, params, buffers, prompts, continuation, chunk)
    for b in range(len(prompts)):
        np.testing.assert_allclose(got[b], want[b], rtol=2e-5, atol=2e-5,
                                   err_msg=f"{variant}, row {b}")


@pytest.mark.slow
def test_bfloat16_decoding_stays_near_the_full_forward():
    # Dense, so that no near-tie between experts flips with bfloat16 rounding.
    config = dataclasses.replace(BASE, moe=None, compute_dtype="bfloat16")
    model, params, buffers, prompts, continuation, want = _case(config, 2, (6, 2), 3)
    got = _cached_logits(model, params, buffers, prompts, continuation, 1)
    for b in range(len(prompts)):
        error = np.abs(got[b] - want[b]).max()
        assert error < 0.03 * np.abs(want[b]).max(), (b, error)


def test_left_padding_layout():
    batch = left_padded([[7, 8, 9], [], [5]])
    np.testing.assert_array_equal(batch.tokens_BP, [[0, 7, 8, 9], [0, 0, 0, 0], [0, 0, 0, 5]])
    np.testing.assert_array_equal(batch.positions_BP, [[0, 1, 2, 3], [0, 0, 0, 0],
                                                       [0, 0, 0, 1]])
    np.testing.assert_array_equal(batch.segment_ids_BP, [[1, 1, 1, 1], [0, 0, 0, 1],
                                                         [0, 0, 1, 1]])
    np.testing.assert_array_equal(batch.lengths_B, [4, 1, 2])
    with pytest.raises(ValueError, match="no prompts"):
        left_padded([])


def test_cached_mask_over_a_full_cache_is_the_training_mask():
    # Prefilling a packed row into an empty cache sees exactly what training attention sees.
    segments = jnp.array([[1, 1, 2, 2, 2, 0], [0, 0, 1, 1, 1, 1]])
    rule = np.array([[[[s <= t and row[s] == row[t] for s in range(6)] for t in range(6)]]
                     for row in np.asarray(segments)])  # causal, same segment, written apart
    np.testing.assert_array_equal(cached_attention_mask(segments, segments, 0), rule)
    np.testing.assert_array_equal(attention_mask(segments), rule)
    # One query at slot 3 of 6: slots 4 and 5 (unwritten) and other segments are hidden.
    keys = jnp.array([[PADDING_SEGMENT, 1, 1, 1, UNWRITTEN_SEGMENT, UNWRITTEN_SEGMENT]])
    mask = cached_attention_mask(jnp.array([[1]]), keys, 3)
    np.testing.assert_array_equal(mask[0, 0, 0], [False, True, True, True, False, False])


def test_empty_cache_and_its_size():
    cache = init_cache(BASE, batch=3, slots=10)
    assert len(cache.layers) == BASE.n_layers
    assert cache.layers[0].keys_BGSH.shape == (3, BASE.kv_heads, 10, BASE.head_dim)
    assert int(cache.length) == 0 and (np.asarray(cache.segment_ids_BS) == -1).all()
    # 2 (keys, values) x 3 layers x 2 kv heads x 8 dims x 4 bytes, per slot and row
    assert cache_bytes(BASE, batch=3, slots=10) == 3 * 10 * 2 * 3 * 2 * 8 * 4


def test_the_cache_holds_what_the_planner_counts():
    # accounting.kv_cache_bytes_per_token is the inference memory the planner budgets for.
    from moejax.model.accounting import kv_cache_bytes_per_token

    for config in (BASE, VARIANTS["qk_across_heads"], dataclasses.replace(BASE, n_layers=5),
                   VARIANTS["latent_attention"]):
        bf16 = dataclasses.replace(config, compute_dtype="bfloat16")
        assert cache_bytes(bf16, batch=2, slots=7) == 2 * 7 * kv_cache_bytes_per_token(bf16)
        cache = init_cache(bf16, batch=2, slots=7)
        held = sum(x.nbytes for layer in cache.layers for x in layer)
        assert held == cache_bytes(bf16, batch=2, slots=7)

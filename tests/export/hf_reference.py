"""The forward pass of Hugging Face's MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM,
OlmoeForCausalLM, DeepseekV3ForCausalLM, LlamaForCausalLM and Qwen3ForCausalLM (no biases), in
float64 numpy,
written from transformers' modeling files (v4.57 / v5.18) and reading only what they read: the
checkpoint's tensors by their Hugging Face names and config.json. Nothing of moejax is used, so
logits that agree with moejax's show the export put every weight where transformers looks for it.

Conventions followed (transformers' names in brackets): linear layers are x @ W.T [nn.Linear];
RMSNorm is w * x / sqrt(mean(x^2) + eps) [MixtralRMSNorm]; rotary frequencies base^(-2i/H) and
q * cos + rotate_half(q) * sin with rotate_half(x) = (-x2, x1) [apply_rotary_pos_emb]; key/value
head g serves query heads g*n_rep .. (g+1)*n_rep - 1 [repeat_kv]; softmax router over all experts,
top-k, optional renormalization [MixtralSparseMoeBlock, Qwen2MoeTopKRouter]; Qwen2-MoE's shared
expert scaled by sigmoid(x @ gate.T) [Qwen2MoeSparseMoeBlock]; layer i sparse unless listed in
mlp_only_layers and when (i + 1) % decoder_sparse_step == 0 [Qwen2MoeDecoderLayer]; Qwen3's
q_norm/k_norm an RMSNorm of each head's head_dim features after the projection is viewed as
heads [Qwen3MoeAttention]; OLMoE's an RMSNorm of the whole projection, before it is split into
heads [OlmoeAttention]; both before the rotary embedding. DeepSeek-V3 [DeepseekV3Attention,
DeepseekV3TopkRouter, DeepseekV3MoE]: queries from q_proj or q_b_proj(RMSNorm(q_a_proj x)),
split per head into qk_nope_head_dim + qk_rope_head_dim features; kv_a_proj_with_mqa x split into
the latent (kv_lora_rank) and one rotary key for all heads; kv_b_proj(RMSNorm(latent)) per head
split into key (qk_nope_head_dim) and value (v_head_dim) features; with rope_interleave the
rotary features (2i, 2i + 1) are regrouped as (i, i + R/2) before rotating; scores scaled by
qk_head_dim^-0.5; the latent norms' epsilon is 1e-6. The router: sigmoid scores, experts chosen
by scores + e_score_correction_bias inside the topk_group best of n_group groups (a group's
worth is the sum of its two best), weights the unbiased scores, renormalized when
norm_topk_prob, times routed_scaling_factor; shared_experts added; layers before
first_k_dense_replace dense.
"""

from __future__ import annotations

import numpy as np


def _linear(x, tensors, name):
    y = x @ tensors[f"{name}.weight"].T
    bias = tensors.get(f"{name}.bias")
    return y if bias is None else y + bias


def _rms_norm(x, weight, eps):
    return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _mlp(x, tensors, prefix, names=("gate_proj", "up_proj", "down_proj")):
    gate, up, down = names
    hidden = _silu(_linear(x, tensors, f"{prefix}.{gate}")) * _linear(x, tensors, f"{prefix}.{up}")
    return _linear(hidden, tensors, f"{prefix}.{down}")


def _rotated(x, theta):
    """x (T, heads, dim) rotated at positions 0..T-1: x * cos + rotate_half(x) * sin, frequencies
    theta^(-2i/dim) [apply_rotary_pos_emb]."""
    seq, dim = x.shape[0], x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    angles = np.arange(seq)[:, None] * inv_freq[None, :]
    cos = np.concatenate([np.cos(angles)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(angles)] * 2, axis=-1)[:, None, :]
    return x * cos + _rotate_half(x) * sin


def _causal_attention(q, k, v, scale):
    """(T, heads * value dim): causal softmax(q k * scale) v per head; q, k, v (T, heads, dim)."""
    seq = q.shape[0]
    scores = np.einsum("tnh,snh->nts", q, k) * scale
    scores = np.where(np.tril(np.ones((seq, seq), bool))[None], scores, -np.inf)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    return np.einsum("nts,snh->tnh", probs, v).reshape(seq, -1)


def _attention(x_TD, tensors, prefix, config):
    seq = x_TD.shape[0]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    eps = config["rms_norm_eps"]
    q, k = _linear(x_TD, tensors, f"{prefix}.q_proj"), _linear(x_TD, tensors, f"{prefix}.k_proj")
    if config["model_type"] == "olmoe":  # over all heads' features
        q = _rms_norm(q, tensors[f"{prefix}.q_norm.weight"], eps)
        k = _rms_norm(k, tensors[f"{prefix}.k_norm.weight"], eps)
    q, k = q.reshape(seq, heads, head_dim), k.reshape(seq, kv_heads, head_dim)
    if config["model_type"] in ("qwen3", "qwen3_moe"):  # over each head's own features
        q = _rms_norm(q, tensors[f"{prefix}.q_norm.weight"], eps)
        k = _rms_norm(k, tensors[f"{prefix}.k_norm.weight"], eps)
    v = _linear(x_TD, tensors, f"{prefix}.v_proj").reshape(seq, kv_heads, head_dim)
    q, k = _rotated(q, config["rope_theta"]), _rotated(k, config["rope_theta"])
    n_rep = heads // kv_heads
    k = np.repeat(k, n_rep, axis=1)  # head g -> g*n_rep .. g*n_rep + n_rep - 1
    v = np.repeat(v, n_rep, axis=1)
    out = _causal_attention(q, k, v, head_dim ** -0.5)
    return _linear(out, tensors, f"{prefix}.o_proj")


def _deinterleave(x):
    """Features (2i, 2i + 1) -> (i, i + R/2) along the last axis
    [apply_rotary_pos_emb_interleave]."""
    return np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)


def _latent_attention(x_TD, tensors, prefix, config):
    seq, heads = x_TD.shape[0], config["num_attention_heads"]
    nope, rope = config["qk_nope_head_dim"], config["qk_rope_head_dim"]
    latent_rank, v_dim = config["kv_lora_rank"], config["v_head_dim"]
    if config["q_lora_rank"] is None:
        q = _linear(x_TD, tensors, f"{prefix}.q_proj")
    else:
        q_latent = _rms_norm(_linear(x_TD, tensors, f"{prefix}.q_a_proj"),
                             tensors[f"{prefix}.q_a_layernorm.weight"], 1e-6)
        q = _linear(q_latent, tensors, f"{prefix}.q_b_proj")
    q = q.reshape(seq, heads, nope + rope)
    q_pass, q_rot = q[..., :nope], q[..., nope:]
    compressed = _linear(x_TD, tensors, f"{prefix}.kv_a_proj_with_mqa")
    latent, k_rot = compressed[:, :latent_rank], compressed[:, None, latent_rank:]
    kv = _linear(_rms_norm(latent, tensors[f"{prefix}.kv_a_layernorm.weight"], 1e-6), tensors,
                 f"{prefix}.kv_b_proj").reshape(seq, heads, nope + v_dim)
    k_pass, v = kv[..., :nope], kv[..., nope:]
    if config.get("rope_interleave", True):
        q_rot, k_rot = _deinterleave(q_rot), _deinterleave(k_rot)
    q_rot, k_rot = _rotated(q_rot, config["rope_theta"]), _rotated(k_rot, config["rope_theta"])
    query = np.concatenate([q_pass, q_rot], axis=-1)
    key = np.concatenate([k_pass, np.broadcast_to(k_rot, (seq, heads, rope))], axis=-1)
    out = _causal_attention(query, key, v, (nope + rope) ** -0.5)
    return _linear(out, tensors, f"{prefix}.o_proj")


def _deepseek_moe(x_TD, tensors, prefix, config):
    scores = 1.0 / (1.0 + np.exp(-_linear(x_TD, tensors, f"{prefix}.gate")))
    experts, groups = config["n_routed_experts"], config["n_group"]
    choice = scores + tensors[f"{prefix}.gate.e_score_correction_bias"]
    out = np.zeros_like(x_TD)
    for t in range(x_TD.shape[0]):
        by_group = choice[t].reshape(groups, experts // groups)
        worth = np.sort(by_group, axis=-1)[:, -2:].sum(axis=-1)
        kept = np.argsort(-worth, kind="stable")[:config["topk_group"]]
        masked = np.where(np.isin(np.arange(groups), kept)[:, None], by_group, 0.0).reshape(-1)
        chosen = np.argsort(-masked, kind="stable")[:config["num_experts_per_tok"]]
        weights = scores[t, chosen]
        if config["norm_topk_prob"]:
            weights = weights / (weights.sum() + 1e-20)
        for e, w in zip(chosen, weights * config["routed_scaling_factor"]):
            out[t] += w * _mlp(x_TD[t], tensors, f"{prefix}.experts.{e}")
    return out + _mlp(x_TD, tensors, f"{prefix}.shared_experts")


def _sparse(x_TD, tensors, prefix, config, expert_names, renormalize):
    logits = _linear(x_TD, tensors, f"{prefix}.gate")
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    top_k = config["num_experts_per_tok"]
    out = np.zeros_like(x_TD)
    for t in range(x_TD.shape[0]):
        chosen = np.argsort(-probs[t], kind="stable")[:top_k]
        weights = probs[t, chosen]
        if renormalize:
            weights = weights / weights.sum()
        for e, w in zip(chosen, weights):
            out[t] += w * _mlp(x_TD[t], tensors, f"{prefix}.experts.{e}", expert_names)
    return out


def _feed_forward(x_TD, tensors, layer, config):
    prefix = f"model.layers.{layer}"
    names = ("gate_proj", "up_proj", "down_proj")
    if config["model_type"] in ("llama", "qwen3"):
        return _mlp(x_TD, tensors, f"{prefix}.mlp")
    if config["model_type"] == "deepseek_v3":
        if layer < config["first_k_dense_replace"]:
            return _mlp(x_TD, tensors, f"{prefix}.mlp")
        return _deepseek_moe(x_TD, tensors, f"{prefix}.mlp", config)
    if config["model_type"] == "mixtral":
        return _sparse(x_TD, tensors, f"{prefix}.block_sparse_moe", config, ("w1", "w3", "w2"),
                       renormalize=True)
    if config["model_type"] == "olmoe":  # every layer sparse
        return _sparse(x_TD, tensors, f"{prefix}.mlp", config, names, config["norm_topk_prob"])
    sparse = (layer not in config["mlp_only_layers"]
              and (layer + 1) % config["decoder_sparse_step"] == 0)
    if not sparse:
        return _mlp(x_TD, tensors, f"{prefix}.mlp")
    routed = _sparse(x_TD, tensors, f"{prefix}.mlp", config, names, config["norm_topk_prob"])
    if config["model_type"] == "qwen3_moe":  # no shared expert
        return routed
    gate = 1.0 / (1.0 + np.exp(-_linear(x_TD, tensors, f"{prefix}.mlp.shared_expert_gate")))
    return routed + gate * _mlp(x_TD, tensors, f"{prefix}.mlp.shared_expert")


def logits(tensors: dict[str, np.ndarray], config: dict, tokens_T) -> np.ndarray:
    """(T, V) float64 logits of one sequence."""
    tensors = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    eps = config["rms_norm_eps"]
    x = tensors["model.embed_tokens.weight"][np.asarray(tokens_T)]
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        h = _rms_norm(x, tensors[f"{prefix}.input_layernorm.weight"], eps)
        attention = (_latent_attention if config["model_type"] == "deepseek_v3"
                     else _attention)
        x = x + attention(h, tensors, f"{prefix}.self_attn", config)
        h = _rms_norm(x, tensors[f"{prefix}.post_attention_layernorm.weight"], eps)
        x = x + _feed_forward(h, tensors, layer, config)
    x = _rms_norm(x, tensors["model.norm.weight"], eps)
    head = tensors["model.embed_tokens.weight" if config["tie_word_embeddings"]
                   else "lm_head.weight"]
    return x @ head.T

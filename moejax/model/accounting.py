"""Exact parameter, FLOP and memory accounting of a model configuration, and every paper's quantities.

In: a ``ModelConfig`` (no Flax, no JAX: plain arithmetic, microseconds). Out: parameter counts
(total and active, with and without embeddings), FLOPs per token (the 6N rule and an exact count
of every matmul, attention and router included), memory in bytes (parameters, training state, KV
cache per token), and ``paper_quantities``: each paper's variables under its own convention, by
name, so the law code never recomputes them.

Conventions (LAWS.md): "active" parameters are those a token touches: every non-expert parameter,
the routers, the K chosen experts of each group and the shared experts. "Embeddings" are the input
embedding and, when untied, the output projection. A FLOP is one multiply or one add (a multiply-
accumulate is 2 FLOPs); training = forward + backward = 3 x forward.
"""

from __future__ import annotations

import dataclasses

from moejax.model.config import ModelConfig, moe_layer_indices

BYTES_PER_DTYPE = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}

# Krajewski et al. 2024, Eq. 10: FLOPs per parameter per token (forward + backward) and router
# FLOPs per expert granule.
KRAJEWSKI_C_F = 6.0
KRAJEWSKI_C_R = 14.0


@dataclasses.dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of one configuration (each an exact integer)."""

    embedding: int  # input embedding + untied output projection
    attention: int  # all blocks
    norms: int  # RMSNorm scales, all blocks + final
    dense_ff: int  # dense feed-forward blocks
    router: int  # all MoE routers
    routed_experts: int  # all routed experts of all MoE blocks
    routed_experts_active: int  # the K chosen experts per group, summed over MoE blocks
    shared_experts: int

    @property
    def total(self) -> int:
        return (self.embedding + self.attention + self.norms + self.dense_ff + self.router
                + self.routed_experts + self.shared_experts)

    @property
    def total_non_embedding(self) -> int:
        return self.total - self.embedding

    @property
    def active(self) -> int:
        return self.total - self.routed_experts + self.routed_experts_active

    @property
    def active_non_embedding(self) -> int:
        return self.active - self.embedding


def _swiglu_params(d_model: int, hidden: int) -> int:
    return 3 * d_model * hidden  # fused gate/up (D x 2F) and down (F x D)


def attention_params_per_block(c: ModelConfig) -> int:
    """Projection weights of one block's attention (its norms' scales aside)."""
    mla = c.latent_attention
    if mla is not None:  # moejax.model.latent_attention
        heads = c.n_heads
        if mla.q_lora_rank is None:
            query = c.d_model * heads * mla.qk_head_dim
        else:
            query = (c.d_model + heads * mla.qk_head_dim) * mla.q_lora_rank
        latent = c.d_model * (mla.kv_lora_rank + mla.qk_rope_head_dim)
        expand = mla.kv_lora_rank * heads * (mla.qk_nope_head_dim + mla.v_head_dim)
        return query + latent + expand + heads * mla.v_head_dim * c.d_model
    q_and_out = 2 * c.d_model * c.n_heads * c.head_dim
    k_and_v = 2 * c.d_model * c.kv_heads * c.head_dim
    return q_and_out + k_and_v


def qk_norm_params_per_block(c: ModelConfig) -> int:
    """Scales of the query and key norms: (H,) each per head, (N, H) and (G, H) across heads;
    for latent attention, those of the latents' norms (C, and Q when queries have a latent)."""
    mla = c.latent_attention
    if mla is not None:
        return mla.kv_lora_rank + (mla.q_lora_rank or 0)
    return {"none": 0, "per_head": 2 * c.head_dim,
            "across_heads": (c.n_heads + c.kv_heads) * c.head_dim}[c.qk_norm]


def attention_context_flops_per_block(c: ModelConfig, context: int, *,
                                      decoding: bool = False) -> int:
    """FLOPs of one query's scores and weighted values over ``context`` positions in one block.

    Grouped-query and latent attention in training: 2 * context * N * (query/key width + value
    width). Latent attention when decoding (``decoding=True``) works on the cached latents, as
    ``LatentAttention.extend`` does: 2 * context * N * (C + R) for the scores and
    2 * context * N * C for the values; the up-projections it folds into the query and output
    cost what their parameters do, as in training.
    """
    mla = c.latent_attention
    if mla is None:
        return 2 * (2 * context * c.n_heads * c.head_dim)
    if decoding:
        return 2 * context * c.n_heads * (2 * mla.kv_lora_rank + mla.qk_rope_head_dim)
    return 2 * context * c.n_heads * (mla.qk_head_dim + mla.v_head_dim)


def parameter_counts(c: ModelConfig) -> ParameterCounts:
    """Exact counts; equals the number of parameters the Flax model initialises."""
    n_moe = len(moe_layer_indices(c))
    n_dense = c.n_layers - n_moe
    router = routed = routed_active = shared = 0
    if c.moe is not None:
        learned_router = c.moe.routing != "hash"  # hash routing has no parameters
        for group in c.moe.groups:
            router += learned_router * n_moe * c.d_model * group.num_experts
            routed += n_moe * group.num_experts * _swiglu_params(c.d_model, group.d_expert)
            routed_active += n_moe * group.top_k * _swiglu_params(c.d_model, group.d_expert)
        shared = n_moe * _swiglu_params(c.d_model, c.moe.shared_width)
    return ParameterCounts(
        embedding=c.vocab_size * c.d_model * (1 if c.tie_embeddings else 2),
        attention=c.n_layers * attention_params_per_block(c),
        norms=(2 * c.n_layers + 1) * c.d_model + c.n_layers * qk_norm_params_per_block(c),
        dense_ff=n_dense * _swiglu_params(c.d_model, c.dense_d_ff),
        router=router,
        routed_experts=routed,
        routed_experts_active=routed_active,
        shared_experts=shared,
    )


def forward_flops_per_token(c: ModelConfig, context: int, *, decoding: bool = False) -> int:
    """Exact matmul FLOPs of one token's forward pass attending over ``context`` positions.

    Counts projections, attention scores and values (``attention_context_flops_per_block``: the
    full context as a dense kernel computes it), routers, dense and expert SwiGLUs (K per group),
    shared experts and the output projection; elementwise work is left out.
    """
    counts = parameter_counts(c)
    attention_scores = attention_context_flops_per_block(c, context,
                                                         decoding=decoding) * c.n_layers
    unembedding = 2 * c.d_model * c.vocab_size
    matmul_params = (counts.attention + counts.dense_ff + counts.router
                     + counts.routed_experts_active + counts.shared_experts)
    return 2 * matmul_params + attention_scores + unembedding


def training_flops_per_token(c: ModelConfig, seq_len: int) -> int:
    """Exact training FLOPs per token: 3 x forward (backward costs twice the forward)."""
    return 3 * forward_flops_per_token(c, seq_len)


def training_flops_per_token_6n(c: ModelConfig, *, include_embeddings: bool = True) -> int:
    """The 6N rule with N = active parameters (Joint MoE counts embeddings; Kaplan does not)."""
    counts = parameter_counts(c)
    return 6 * (counts.active if include_embeddings else counts.active_non_embedding)


def inference_flops_per_token(c: ModelConfig, context: int) -> int:
    """Forward FLOPs of one generated token with a KV cache over ``context`` positions."""
    return forward_flops_per_token(c, context, decoding=True)


def inference_flops_per_token_2n(c: ModelConfig) -> int:
    """The 2N rule with N = active parameters including embeddings (Joint MoE)."""
    return 2 * parameter_counts(c).active


def parameter_bytes(c: ModelConfig, dtype: str = "bfloat16") -> int:
    """Bytes to hold every parameter (the model-memory constraint of Joint MoE and Liew et al.)."""
    return parameter_counts(c).total * BYTES_PER_DTYPE[dtype]


def training_state_bytes(c: ModelConfig) -> int:
    """Bytes of the training state as moejax keeps it: float32 parameters, float32 gradients and
    AdamW's two float32 moments (16 bytes per parameter), activations excluded."""
    return parameter_counts(c).total * (4 + 4 + 8)


def optimizer_state_bytes(c: ModelConfig) -> int:
    """AdamW's two float32 moments."""
    return parameter_counts(c).total * 8


def kv_cache_bytes_per_token(c: ModelConfig, dtype: str = "bfloat16") -> int:
    """What a decoding cache holds of one token in every block: the keys and values of the
    grouped-query heads, or the latent and the shared rotary key (latent attention)."""
    mla = c.latent_attention
    if mla is not None:
        per_block = mla.kv_lora_rank + mla.qk_rope_head_dim
    else:
        per_block = 2 * c.kv_heads * c.head_dim
    return c.n_layers * per_block * BYTES_PER_DTYPE[dtype]


def corresponding_dense(c: ModelConfig) -> ModelConfig:
    """The dense model an MoE is built from: every MoE feed-forward back to a dense d_ff one."""
    return dataclasses.replace(c, moe=None, dense_ff_multiplier=1.0)


def krajewski_training_flops(d_model: float, n_blocks: float, expansion: float,
                             granularity: float, tokens: float) -> float:
    """Krajewski et al. Eq. 10: F = (12 d^2 c_f + d E G c_r) D n_blocks (their model family)."""
    return float((12.0 * d_model**2 * KRAJEWSKI_C_F + d_model * expansion * granularity
                  * KRAJEWSKI_C_R) * tokens * n_blocks)


def routed_summary(c: ModelConfig) -> tuple[float, float, float]:
    """(total routed experts, total top-k, mean expert width) over the groups; (1, 1, d_ff) dense."""
    if c.moe is None:
        return 1.0, 1.0, float(c.d_ff)
    groups = c.moe.groups
    experts = float(sum(g.num_experts for g in groups))
    top_k = float(sum(g.top_k for g in groups))
    width = sum(g.num_experts * g.d_expert for g in groups) / experts
    return experts, top_k, width


def paper_quantities(c: ModelConfig, seq_len: int = 2048) -> dict[str, float]:
    """Each paper's variables for this configuration, named '<paper>.<variable>'.

    Granularity and sparsity follow each paper's own definition (LAWS.md, conventions table);
    heterogeneous layers use totals over groups and the expert-weighted mean width.
    """
    counts = parameter_counts(c)
    dense_counts = parameter_counts(corresponding_dense(c))
    experts, top_k, width = routed_summary(c)
    krajewski_granularity = c.d_ff / width
    krajewski_expansion = experts * width / c.d_ff  # total expert width in dense-FFN units
    return {
        # Joint MoE (Ludziejewski et al. 2025): N_act with embeddings, E, 6 N_act D.
        "joint_moe.N_act": counts.active,
        "joint_moe.N_total": counts.total,
        "joint_moe.E": experts,
        "joint_moe.train_flops_per_token": training_flops_per_token_6n(c),
        "joint_moe.inference_flops_per_token": inference_flops_per_token_2n(c),
        # Krajewski et al. 2024: N = total non-embedding, G = d_ff / d_expert, E = expansion rate.
        "krajewski.N": counts.total_non_embedding,
        "krajewski.G": krajewski_granularity,
        "krajewski.E": krajewski_expansion,
        "krajewski.train_flops_per_token": krajewski_training_flops(
            c.d_model, c.n_layers, krajewski_expansion, krajewski_granularity, 1.0),
        # Liew et al. 2026: N_total, sparsity s = n_exp / n_topk, G = d_model / d_expert.
        "liew.N_total": counts.total,
        "liew.N_active": counts.active,
        "liew.s": experts / top_k,
        "liew.G": c.d_model / width,
        # Slicing & Dicing 2026: expert width multiplier d_expert / d_model.
        "slicing_dicing.multiplier": width / c.d_model,
        "slicing_dicing.N_active": counts.active,
        # Abnar et al. 2025: N total, N_a active, S = (E - K) / E.
        "abnar.N": counts.total,
        "abnar.N_active": counts.active,
        "abnar.S": (experts - top_k) / experts,
        # Clark et al. 2022 and Yun et al. 2024: the corresponding dense model's size and E.
        "clark.N": dense_counts.total_non_embedding,
        "clark.E": experts,
        "yun.N": dense_counts.total_non_embedding,
        "yun.E": experts,
        # Shared quantities.
        "exact.train_flops_per_token": training_flops_per_token(c, seq_len),
        "exact.inference_flops_per_token": inference_flops_per_token(c, seq_len),
        "memory.parameter_bytes_bf16": parameter_bytes(c, "bfloat16"),
        "memory.training_state_bytes": training_state_bytes(c),
        "memory.kv_cache_bytes_per_token_bf16": kv_cache_bytes_per_token(c, "bfloat16"),
    }

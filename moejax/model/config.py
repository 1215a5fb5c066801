"""Model configuration: one canonical description of an architecture, and its validation.

In: gin bindings such as ``ModelConfig.d_model = 256`` or ``MoEConfig.num_experts = 8``.
Out: frozen dataclasses that the Flax modules, the accounting functions and the laws read, and
``validate_model_config`` which rejects impossible combinations before anything is compiled, with
a ``ConfigError`` that names the knob, its value and the allowed range.

Letters used for shapes across ``moejax.model``: B batch, T tokens (sequence), D d_model,
N query heads, H head dim, F feed-forward hidden, E experts, K top-k, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import gin

from moejax.errors import ConfigError, check_field_types

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# What a block keeps for the backward pass (moejax.model.transformer): "none" every activation;
# "block" only its input, recomputing the rest (one more forward, the least memory); "dots" the
# outputs of its matmuls (dense ones; not the expert kernels'), recomputing the elementwise rest.
REMAT = ("none", "block", "dots")
# How queries and keys are normalised before the rotary embedding (moejax.model.layers.QK_NORMS):
# "none"; "per_head" an RMSNorm over each head's H features (Qwen3-MoE); "across_heads" one over
# all heads' features together (OLMoE). Both bound the attention logits' growth at high learning
# rates (Dehghani et al. 2023; Wortsman et al. 2023).
QK_NORM = ("none", "per_head", "across_heads")


class ExpertGroup(NamedTuple):
    """Experts of one width with their own router and top-k (one group = a homogeneous MoE)."""

    num_experts: int
    d_expert: int
    top_k: int


ROUTINGS = ("token_choice", "hash", "expert_choice")
ROUTER_SCORES = ("softmax", "sigmoid")
AUX_LOSS_SCOPES = ("global", "sequence")
EP_EXCHANGES = ("auto", "ragged", "dense")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """An MoE feed-forward layer: routed expert groups, optional shared experts, balancing.

    Attributes:
      num_experts: E, routed experts per MoE layer (>= 1).
      top_k: K, experts each token is sent to (1 <= K <= E); sparsity E/K.
      d_expert: F, hidden width of each expert's SwiGLU (granularity G = d_ff / d_expert).
      expert_groups: heterogeneous experts: ((num_experts, d_expert, top_k), ...), each group with
        its own router and top-k, outputs summed (Slicing & Dicing). When set it replaces
        num_experts, d_expert and top_k.
      num_shared_experts: always-active experts added to the routed output (0 = none).
      d_shared_expert: width of each shared expert (None = d_expert of the first group).
      routing: "token_choice" (each token picks K experts by a learned router), "hash" (each
        token goes to K distinct experts fixed by a hash of its token id, Roller et al. 2021: no
        router parameters, combine weights 1/K, balanced as far as the token frequencies allow;
        its aux and z losses are 0) or "expert_choice" (each expert picks its top tokens; leaks
        future tokens in a decoder, for analysis only).
      router_scores: "softmax" or "sigmoid" scores, computed in float32.
      renormalize: rescale the K chosen weights to sum to one (Mixtral) instead of raw scores.
      router_groups: G, group-limited routing (DeepSeek-V3): the experts (of each expert group)
        split into G groups of consecutive ids; 1 = no limit.
      router_groups_per_token: M, the groups a token may choose its K experts from (its M
        groups with the highest sums of two best scores): at most M groups (devices, with
        expert parallelism over G shards) per token. 1 <= M <= G, M * E / G >= K.
      routed_scaling: multiplies the routed experts' combine weights (after renormalize), as
        DeepSeek-V3's routed_scaling_factor (2.5) does to keep the routed output's scale next to
        the shared expert's.
      router_jitter: multiplicative uniform noise (1 +- jitter) on router inputs in training.
      aux_loss_weight: weight of the Switch load-balancing loss (0 disables it).
      aux_loss_scope: "global" (f and p averaged over the whole batch) or "sequence" (per sequence,
        then averaged); they have different minima, so record which.
      z_loss_weight: weight of the router z-loss (0 disables it).
      bias_update_rate: auxiliary-loss-free balancing: a per-expert bias added to the scores only
        to choose experts, moved by rate * sign(mean load - load) after every optimizer step,
        never seen by the optimizer (0 disables it).
      capacity_factor: None = dropless (token choice); else each expert takes at most
        ceil(capacity_factor * K * T / E) assignments in training, top-1 choices first, the rest
        dropped (they pass through the residual). Expert choice: tokens per expert
        = ceil(capacity_factor * K * T / E) (None means 1.0).
      eval_capacity_factor: the same at evaluation (None = dropless), so a model trained with
        capacity can be evaluated dropless.
      gmm_impl: grouped-matmul implementation of the dropless experts (``moejax.kernels.gmm``):
        "auto" (the usual fastest for the backend), "tuned" (measured fastest for each
        problem on this device, kept in the tuning table: ``moejax.kernels.autotune``), "cpu",
        "pallas_gpu", "mosaic_gpu", "cudnn" (ragged_dot on cuDNN, Triton weight gradient),
        "pallas_tpu" or "xla" (``jax.lax.ragged_dot``, the reference).
      ep_buffer_factor: expert parallelism (dropless, on a mesh with an ``expert`` axis > 1): the
        static receive buffer of each device holds about ep_buffer_factor * K * T_local rows
        (1.0 = the balanced load); assignments beyond it are dropped deterministically and
        counted in dropped_fraction. None = the worst case, min(EP, E/K) times the balanced
        load: never drops.
      ep_exchange: how expert parallelism moves rows: "auto" ("ragged" on GPU/TPU, "dense" on
        CPU), "ragged" (``jax.lax.ragged_all_to_all``, not implemented by XLA:CPU) or "dense"
        (``jax.lax.all_to_all`` of one fixed slot per peer; each slot holds
        ep_buffer_factor * K * T_local / EP rows).
    """

    num_experts: int = 8
    top_k: int = 2
    d_expert: int = 512
    expert_groups: tuple | None = None
    num_shared_experts: int = 0
    d_shared_expert: int | None = None
    routing: str = "token_choice"
    router_scores: str = "softmax"
    renormalize: bool = False
    router_groups: int = 1
    router_groups_per_token: int = 1
    routed_scaling: float = 1.0
    router_jitter: float = 0.0
    aux_loss_weight: float = 1e-2
    aux_loss_scope: str = "global"
    z_loss_weight: float = 1e-3
    bias_update_rate: float = 0.0
    capacity_factor: float | None = None
    eval_capacity_factor: float | None = None
    gmm_impl: str = "auto"
    ep_buffer_factor: float | None = None
    ep_exchange: str = "auto"

    @property
    def groups(self) -> tuple[ExpertGroup, ...]:
        """The routed expert groups: one for a homogeneous layer, several for heterogeneous."""
        if self.expert_groups is None:
            return (ExpertGroup(self.num_experts, self.d_expert, self.top_k),)
        return tuple(ExpertGroup(*map(int, g)) for g in self.expert_groups)

    @property
    def shared_width(self) -> int:
        """Total hidden width of the shared experts (n shared SwiGLUs == one of n times the width)."""
        width = self.d_shared_expert if self.d_shared_expert is not None else self.groups[0].d_expert
        return self.num_shared_experts * width


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LatentAttentionConfig:
    """Multi-head latent attention (MLA, DeepSeek-V2 and V3): keys and values are expanded per
    head from one small latent per token, so a decoding cache holds kv_lora_rank +
    qk_rope_head_dim numbers per token and layer instead of 2 * kv_heads * head_dim.

    Each head's query and key are [a part without position (qk_nope_head_dim) | a rotary part
    (qk_rope_head_dim)]; the rotary part of the key is one per token, shared by all heads.

    Attributes:
      kv_lora_rank: C, width of the key/value latent (RMSNorm-ed before it is expanded).
      qk_rope_head_dim: R, rotary features of every query head and of the one shared key.
      qk_nope_head_dim: P, position-free query/key features per head.
      v_head_dim: value features per head (what the output projection reads).
      q_lora_rank: Q, width of the query's own latent (down-projection, RMSNorm, up-projection);
        None projects queries straight from the residual stream (DeepSeek-V2-Lite).
    """

    kv_lora_rank: int = 64
    qk_rope_head_dim: int = 16
    qk_nope_head_dim: int = 32
    v_head_dim: int = 32
    q_lora_rank: int | None = None

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer whose feed-forward layers are dense or MoE.

    Attributes:
      vocab_size: V, embedding rows; None (the default) takes the data vocabulary's size.
      d_model: D, residual width.
      n_layers: number of transformer blocks.
      n_heads: N, query heads.
      n_kv_heads: key/value heads (grouped-query attention when < n_heads; None = n_heads).
      d_head: H, per-head width (None = d_model // n_heads).
      d_ff: hidden width of a dense SwiGLU feed-forward layer.
      dense_ff_multiplier: scales d_ff of the dense layers (FLOP-matched dense baselines).
      moe: the MoE layer description, or None for a dense model.
      moe_every: every n-th block is MoE (1 = all; 2 = blocks 1, 3, 5, ... as in GShard).
      first_dense_layers: the first k blocks stay dense whatever moe_every says.
      tie_embeddings: reuse the token embedding as the output projection.
      rope_theta: base of the rotary position embedding.
      norm_eps: RMSNorm epsilon (also of the query/key norms).
      qk_norm: RMSNorm of queries and keys before the rotary embedding, one of ``QK_NORM``:
        "none", "per_head" (each head alone, scales (H,): Qwen3-MoE) or "across_heads" (all
        heads of a token together, scales (N, H): OLMoE).
      latent_attention: None for grouped-query attention (n_kv_heads, d_head, qk_norm), or a
        ``LatentAttentionConfig`` for multi-head latent attention (DeepSeek), which then sets
        every head width itself.
      compute_dtype: dtype of activations and matmuls ("float32" on CPU, "bfloat16" on
        accelerators); parameters are always float32, router and loss math float32.
      init_std: standard deviation of the embedding initialiser.
      remat: rematerialisation of each block in the backward pass, one of ``REMAT``: "none"
        keeps every activation, "block" recomputes the block from its input (activation memory
        of about one block instead of all; one more forward pass of compute), "dots" keeps
        only the dense matmuls' outputs.
    """

    vocab_size: int | None = None
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_head: int | None = None
    d_ff: int = 1024
    dense_ff_multiplier: float = 1.0
    moe: MoEConfig | None = None
    moe_every: int = 1
    first_dense_layers: int = 0
    tie_embeddings: bool = True
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    qk_norm: str = "none"
    latent_attention: LatentAttentionConfig | None = None
    compute_dtype: str = "float32"
    init_std: float = 0.02
    remat: str = "none"

    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def dense_d_ff(self) -> int:
        return int(round(self.d_ff * self.dense_ff_multiplier))


def moe_layer_indices(config: ModelConfig) -> tuple[int, ...]:
    """Indices of the blocks whose feed-forward is MoE (empty for a dense model).

    Block i is MoE when i >= first_dense_layers and (i - first_dense_layers + 1) is a multiple of
    moe_every: with moe_every=2 the second block of every pair is MoE, as in GShard and Switch.
    """
    if config.moe is None:
        return ()
    return tuple(
        i
        for i in range(config.first_dense_layers, config.n_layers)
        if (i - config.first_dense_layers + 1) % config.moe_every == 0
    )


def _require(ok: bool, knob: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{knob} = {value!r} is not allowed: {allowed}")


def validate_model_config(config: ModelConfig) -> ModelConfig:
    """Raise ConfigError naming the first impossible knob; return the config unchanged if valid.

    Pure Python, no JAX: runs in microseconds before anything is traced or compiled.
    """
    c = config
    check_field_types(c)
    if c.moe is not None:
        check_field_types(c.moe)
    if c.latent_attention is not None:
        validate_latent_attention(c)
    _require(c.vocab_size is not None, "ModelConfig.vocab_size", c.vocab_size,
             "an integer >= 1 (the trainer fills it from the data vocabulary)")
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff"):
        value = getattr(c, name)
        _require(isinstance(value, int) and value >= 1, f"ModelConfig.{name}", value, "an integer >= 1")
    if c.latent_attention is None:  # grouped-query heads (latent attention sets its own)
        if c.d_head is None:
            _require(
                c.d_model % c.n_heads == 0,
                "ModelConfig.n_heads",
                c.n_heads,
                f"must divide d_model = {c.d_model} when d_head is not set",
            )
        else:
            _require(c.d_head >= 1, "ModelConfig.d_head", c.d_head, "an integer >= 1")
        _require(c.head_dim % 2 == 0, "ModelConfig.d_head", c.head_dim,
                 "must be even (rotary embedding)")
        _require(
            1 <= c.kv_heads <= c.n_heads and c.n_heads % c.kv_heads == 0,
            "ModelConfig.n_kv_heads",
            c.n_kv_heads,
            f"must divide n_heads = {c.n_heads} (1 <= n_kv_heads <= n_heads)",
        )
    _require(c.dense_ff_multiplier > 0 and c.dense_d_ff >= 1, "ModelConfig.dense_ff_multiplier",
             c.dense_ff_multiplier, "> 0, and d_ff * multiplier must round to >= 1")
    _require(c.compute_dtype in COMPUTE_DTYPES, "ModelConfig.compute_dtype", c.compute_dtype,
             f"one of {COMPUTE_DTYPES}")
    _require(c.remat in REMAT, "ModelConfig.remat", c.remat, f"one of {REMAT}")
    _require(c.qk_norm in QK_NORM, "ModelConfig.qk_norm", c.qk_norm, f"one of {QK_NORM}")
    _require(c.rope_theta > 0, "ModelConfig.rope_theta", c.rope_theta, "> 0")
    _require(c.norm_eps > 0, "ModelConfig.norm_eps", c.norm_eps, "> 0")
    _require(c.init_std > 0, "ModelConfig.init_std", c.init_std, "> 0")
    _require(isinstance(c.moe_every, int) and c.moe_every >= 1, "ModelConfig.moe_every", c.moe_every,
             "an integer >= 1")
    _require(
        isinstance(c.first_dense_layers, int) and 0 <= c.first_dense_layers <= c.n_layers,
        "ModelConfig.first_dense_layers",
        c.first_dense_layers,
        f"an integer in [0, n_layers = {c.n_layers}]",
    )
    if c.moe is not None:
        validate_moe_config(c.moe)
        _require(c.moe.gmm_impl != "mosaic_gpu" or c.compute_dtype != "float32",
                 "MoEConfig.gmm_impl", c.moe.gmm_impl,
                 "'mosaic_gpu' multiplies 16-bit operands: set ModelConfig.compute_dtype = "
                 "'bfloat16', or use gmm_impl = 'pallas_gpu' for float32")
        _require(
            len(moe_layer_indices(c)) > 0,
            "ModelConfig.first_dense_layers",
            c.first_dense_layers,
            f"leaves no MoE block among n_layers = {c.n_layers} with moe_every = {c.moe_every}; "
            "set ModelConfig.moe = None for a dense model",
        )
    return c


def validate_latent_attention(config: ModelConfig) -> None:
    """Raise ConfigError naming the first latent-attention knob that is impossible, or a
    grouped-query knob that latent attention does not have."""
    mla = config.latent_attention
    _require(isinstance(mla, LatentAttentionConfig), "ModelConfig.latent_attention", mla,
             "None or @LatentAttentionConfig()")
    check_field_types(mla)
    for name in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
        value = getattr(mla, name)
        _require(isinstance(value, int) and value >= 1, f"LatentAttentionConfig.{name}", value,
                 "an integer >= 1")
    _require(mla.qk_rope_head_dim % 2 == 0, "LatentAttentionConfig.qk_rope_head_dim",
             mla.qk_rope_head_dim, "must be even (rotary embedding)")
    _require(mla.q_lora_rank is None or (isinstance(mla.q_lora_rank, int)
                                         and mla.q_lora_rank >= 1),
             "LatentAttentionConfig.q_lora_rank", mla.q_lora_rank, "None or an integer >= 1")
    # Latent attention has its own key/value heads (one per query head, from the latent), head
    # widths and normalisation (of the latents): the grouped-query knobs would be ignored.
    for name, value, unset in (("n_kv_heads", config.n_kv_heads, None),
                               ("d_head", config.d_head, None),
                               ("qk_norm", config.qk_norm, "none")):
        _require(value == unset, f"ModelConfig.{name}", value,
                 f"{unset!r} with latent_attention set (LatentAttentionConfig sets the heads' "
                 "widths, and normalises the latents instead of queries and keys)")


def validate_moe_config(moe: MoEConfig) -> MoEConfig:
    """Raise ConfigError naming the first impossible MoE knob."""
    if moe.expert_groups is None:
        _require(isinstance(moe.num_experts, int) and moe.num_experts >= 1, "MoEConfig.num_experts",
                 moe.num_experts, "an integer >= 1")
        _require(isinstance(moe.top_k, int) and 1 <= moe.top_k <= moe.num_experts, "MoEConfig.top_k",
                 moe.top_k, f"an integer in [1, num_experts = {moe.num_experts}]")
        _require(isinstance(moe.d_expert, int) and moe.d_expert >= 1, "MoEConfig.d_expert",
                 moe.d_expert, "an integer >= 1")
    else:
        groups = moe.expert_groups
        _require(isinstance(groups, (tuple, list)) and len(groups) >= 1
                 and all(isinstance(g, (tuple, list)) and len(g) == 3 for g in groups),
                 "MoEConfig.expert_groups", groups,
                 "a non-empty tuple of (num_experts, d_expert, top_k) triples")
        for i, (e, f, k) in enumerate(groups):
            _require(isinstance(e, int) and e >= 1, f"MoEConfig.expert_groups[{i}].num_experts", e,
                     "an integer >= 1")
            _require(isinstance(f, int) and f >= 1, f"MoEConfig.expert_groups[{i}].d_expert", f,
                     "an integer >= 1")
            _require(isinstance(k, int) and 1 <= k <= e, f"MoEConfig.expert_groups[{i}].top_k", k,
                     f"an integer in [1, num_experts of the group = {e}]")
    _require(isinstance(moe.num_shared_experts, int) and moe.num_shared_experts >= 0,
             "MoEConfig.num_shared_experts", moe.num_shared_experts, "an integer >= 0")
    _require(moe.d_shared_expert is None or (isinstance(moe.d_shared_expert, int)
                                             and moe.d_shared_expert >= 1),
             "MoEConfig.d_shared_expert", moe.d_shared_expert, "None or an integer >= 1")
    _require(moe.routing in ROUTINGS, "MoEConfig.routing", moe.routing, f"one of {ROUTINGS}")
    _require(moe.router_scores in ROUTER_SCORES, "MoEConfig.router_scores", moe.router_scores,
             f"one of {ROUTER_SCORES}")
    _require(0 <= moe.router_jitter < 1, "MoEConfig.router_jitter", moe.router_jitter, "in [0, 1)")
    _require(moe.aux_loss_weight >= 0, "MoEConfig.aux_loss_weight", moe.aux_loss_weight, ">= 0")
    _require(moe.aux_loss_scope in AUX_LOSS_SCOPES, "MoEConfig.aux_loss_scope", moe.aux_loss_scope,
             f"one of {AUX_LOSS_SCOPES}")
    _require(moe.z_loss_weight >= 0, "MoEConfig.z_loss_weight", moe.z_loss_weight, ">= 0")
    _require(moe.bias_update_rate >= 0, "MoEConfig.bias_update_rate", moe.bias_update_rate, ">= 0")
    for name in ("capacity_factor", "eval_capacity_factor"):
        value = getattr(moe, name)
        _require(value is None or (isinstance(value, (int, float)) and value > 0),
                 f"MoEConfig.{name}", value, "None (dropless) or a number > 0")
    _require(moe.ep_buffer_factor is None or (isinstance(moe.ep_buffer_factor, (int, float))
                                              and moe.ep_buffer_factor > 0),
             "MoEConfig.ep_buffer_factor", moe.ep_buffer_factor,
             "None (worst-case buffer, never drops) or a number > 0")
    _require(moe.ep_exchange in EP_EXCHANGES, "MoEConfig.ep_exchange", moe.ep_exchange,
             f"one of {EP_EXCHANGES}")
    from moejax.kernels import IMPLEMENTATIONS  # no JAX work at import time

    _require(moe.gmm_impl in IMPLEMENTATIONS, "MoEConfig.gmm_impl", moe.gmm_impl,
             f"one of {IMPLEMENTATIONS}")
    _validate_group_limit(moe)
    if moe.routing == "expert_choice":
        _require(moe.bias_update_rate == 0, "MoEConfig.bias_update_rate", moe.bias_update_rate,
                 "0 with routing = 'expert_choice' (experts already receive equal load)")
    if moe.routing == "hash":  # no router: nothing to bias or jitter
        _require(moe.bias_update_rate == 0, "MoEConfig.bias_update_rate", moe.bias_update_rate,
                 "0 with routing = 'hash' (a token's experts are fixed by its id)")
        _require(moe.router_jitter == 0, "MoEConfig.router_jitter", moe.router_jitter,
                 "0 with routing = 'hash' (there is no router input to jitter)")
    return moe


def _validate_group_limit(moe: MoEConfig) -> None:
    """Group-limited routing and the routed scaling: token choice only; G divides every expert
    group's E, and a token's M groups hold at least its K experts."""
    G, M = moe.router_groups, moe.router_groups_per_token
    _require(isinstance(G, int) and not isinstance(G, bool) and G >= 1, "MoEConfig.router_groups",
             G, "an integer >= 1 (1 = every expert open to every token)")
    _require(isinstance(M, int) and not isinstance(M, bool) and 1 <= M <= G,
             "MoEConfig.router_groups_per_token", M, f"an integer in [1, router_groups = {G}]")
    _require(isinstance(moe.routed_scaling, (int, float)) and 0 < moe.routed_scaling < math.inf,
             "MoEConfig.routed_scaling", moe.routed_scaling, "a finite number > 0")
    for knob, value, off in (("router_groups", G, 1), ("routed_scaling", moe.routed_scaling, 1.0)):
        _require(value == off or moe.routing == "token_choice", f"MoEConfig.{knob}", value,
                 f"{off} with routing = {moe.routing!r} (only a learned token-choice router "
                 "chooses among groups or scales its weights)")
    for i, group in enumerate(moe.groups):
        where = "" if moe.expert_groups is None else f" (expert_groups[{i}])"
        _require(group.num_experts % G == 0, "MoEConfig.router_groups", G,
                 f"a divisor of num_experts = {group.num_experts}{where}")
        _require(M * (group.num_experts // G) >= group.top_k, "MoEConfig.router_groups_per_token",
                 M, f"an integer with M x {group.num_experts // G} experts per group >= top_k = "
                    f"{group.top_k}{where} (a token's M groups must hold its K experts)")


def capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """Assignments one expert can take: ceil(capacity_factor * K * T / E), at least 1."""
    return max(1, math.ceil(capacity_factor * top_k * num_tokens / num_experts))

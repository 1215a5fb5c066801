"""Hugging Face ``transformers`` formats of a moejax model: which fit, their config, their tensors.

In: a ``ModelConfig`` and the params tree of a checkpoint. Out: a format's ``config.json`` fields
and its (name, array) list in the file layout Hugging Face checkpoints use, or ``ExportError``
listing everything about the model that the format cannot hold.

The formats are the decoder moejax trains (pre-RMSNorm blocks, rotary embedding on pairs
(i, i + H/2), grouped-query attention with query head n reading key/value head n // (N/G),
SwiGLU), so embeddings, attention, norms and dense layers map one to one. Query/key norms
(``ModelConfig.qk_norm``) decide the family: none, Llama/Mixtral/Qwen2-MoE; "per_head", the
Qwen3 formats; "across_heads", OLMoE. A dense model is ``llama`` (LlamaForCausalLM) or ``qwen3``
(Qwen3ForCausalLM). The MoE formats differ in the MoE layer:
- ``mixtral`` (MixtralForCausalLM): every block MoE, softmax router whose K chosen weights are
  renormalized to sum to one, no shared experts.
- ``qwen2_moe`` (Qwen2MoeForCausalLM): any blocks MoE (``mlp_only_layers`` lists the dense ones),
  renormalized or raw softmax weights (``norm_topk_prob``), and one shared expert scaled by a
  sigmoid gate. moejax's shared experts have no gate (n of width F are one of width nF): the gate
  is written zero, so it is sigmoid(0) = 1/2 for every token, and the shared down projection is
  written times 2, which is exact in binary floating point. A model without shared experts gets a
  shared expert of width 1 whose weights are zero: it adds exactly 0. Its query/key/value biases
  are written zero.
- ``qwen3_moe`` (Qwen3MoeForCausalLM): as Qwen2-MoE without shared experts or biases, with a
  per-head query/key RMSNorm (one (H,) scale for all query heads, one for all key heads).
- ``olmoe`` (OlmoeForCausalLM): every block MoE, no shared experts, query/key RMSNorm over all
  N*H query (G*H key) features, which requires N*H = d_model.
- ``deepseek_v3`` (DeepseekV3ForCausalLM): multi-head latent attention
  (``ModelConfig.latent_attention``), the first ``first_dense_layers`` blocks dense and the rest
  MoE, sigmoid router scores with the auxiliary-loss-free balancing bias as
  ``e_score_correction_bias``, group-limited routing (``MoEConfig.router_groups`` and
  ``router_groups_per_token`` as n_group and topk_group) and ``routed_scaling`` as
  routed_scaling_factor, shared experts as one of n times the expert width (none: one of zero
  weights). transformers masks the experts outside a token's groups with 0 where DeepSeek's own
  code (and moejax) uses -inf: the two choose alike unless one of a token's K best biased scores
  in its groups is <= 0 (a balancing bias below minus the sigmoid). Its rotary
  features are written interleaved (pairs (2i, 2i + 1), ``rope_interleave``), the layout of
  DeepSeek's own checkpoints that serving engines expect; transformers turns them back into
  moejax's pairs (i, i + R/2).
The formats other than deepseek_v3 have grouped-query attention, softmax router scores and no
balancing bias (it changes which experts are chosen); no format holds heterogeneous expert
groups or routing other than a learned token-choice router.
Capacity routing is a training choice: the exported model routes dropless, as ``moejax eval``
does by default.

Layout: a Hugging Face linear weight is (out, in) and applied as x @ W.T; moejax's are (in, out)
with heads kept apart (w_q_DNH), so every weight is transposed, and heads are flattened with the
head index major (the n-th head is rows n*H .. n*H + H - 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moejax.model.config import ModelConfig, moe_layer_indices

Tensors = list[tuple[str, np.ndarray]]


class ExportError(ValueError):
    """A model that a format cannot represent; the message lists every reason."""


def _array(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _heads_in(w_DNH) -> np.ndarray:
    """(D, N, H) query/key/value weight -> (N*H, D)."""
    w = _array(w_DNH)
    return w.reshape(w.shape[0], -1).T


def _heads_out(w_NHD) -> np.ndarray:
    """(N, H, D) output weight -> (D, N*H)."""
    w = _array(w_NHD)
    return w.reshape(-1, w.shape[-1]).T


def _swiglu(w_in_DF2, w_out_FD, names: tuple[str, str, str], prefix: str,
            down_scale: float = 1.0) -> Tensors:
    """A fused (D, 2F) gate|up and (F, D) down SwiGLU as three (out, in) weights."""
    w_in = _array(w_in_DF2)
    width = w_in.shape[1] // 2
    gate, up, down = names
    down_weight = _array(w_out_FD).T
    return [(f"{prefix}.{gate}.weight", w_in[:, :width].T),
            (f"{prefix}.{up}.weight", w_in[:, width:].T),
            (f"{prefix}.{down}.weight", down_weight * down_scale if down_scale != 1.0
             else down_weight)]


def moe_problems(config: ModelConfig) -> list[str]:
    """What about the MoE layer of ``config`` no MoE format here can hold."""
    problems = []
    moe = config.moe
    if moe is None:
        return ["ModelConfig.moe = None: a dense model (formats llama, qwen3)"]
    if len(moe.groups) > 1:
        problems.append(f"MoEConfig.expert_groups = {moe.expert_groups!r}: heterogeneous expert "
                        "groups, each with its own router, have no Hugging Face format")
    if moe.routing != "token_choice":
        problems.append(f"MoEConfig.routing = {moe.routing!r}: only a learned token-choice "
                        "router")
    return problems


def softmax_router_problems(config: ModelConfig) -> list[str]:
    """What a format with a plain softmax router (every MoE format but deepseek_v3) lacks."""
    moe, problems = config.moe, []
    if moe.router_scores != "softmax":
        problems.append(f"MoEConfig.router_scores = {moe.router_scores!r}: only softmax scores")
    if moe.bias_update_rate > 0:
        problems.append(f"MoEConfig.bias_update_rate = {moe.bias_update_rate}: the balancing "
                        "bias changes which experts are chosen and has no place in the format")
    if moe.router_groups > 1:
        problems.append(f"MoEConfig.router_groups = {moe.router_groups}: group-limited routing "
                        "(only deepseek_v3 has it)")
    if moe.routed_scaling != 1:
        problems.append(f"MoEConfig.routed_scaling = {moe.routed_scaling}: the combine weights "
                        "are not scaled (only deepseek_v3 scales them)")
    return problems


class _Format:
    """Mapping shared by the formats: embeddings, attention, norms, dense feed-forward layers,
    the output projection. A format adds its feed-forward fields and its MoE layer's tensors."""

    name = ""
    model_type = ""
    architecture = ""
    ff = "mlp"  # module name of a block's MoE feed-forward
    qkv_bias = False
    qk_norm = "none"  # the ModelConfig.qk_norm the format's attention has
    latent_attention = False  # whether its attention is latent (else grouped-query)

    def problems(self, config: ModelConfig) -> list[str]:
        """Every reason the format cannot hold ``config`` (empty when it can)."""
        problems = self.feed_forward_problems(config)
        if config.latent_attention is not None and not self.latent_attention:
            problems.append(f"ModelConfig.latent_attention is set: {self.architecture} has "
                            "grouped-query attention")
        if config.latent_attention is None and self.latent_attention:
            problems.append(f"ModelConfig.latent_attention = None: {self.architecture} has "
                            "latent attention")
        if config.qk_norm != self.qk_norm:
            problems.append(f"ModelConfig.qk_norm = {config.qk_norm!r}: {self.architecture} "
                            f"has qk_norm {self.qk_norm!r}")
        return problems

    def feed_forward_problems(self, config: ModelConfig) -> list[str]:
        raise NotImplementedError

    def notes(self, config: ModelConfig) -> list[str]:
        """What a user of the export should know: limits of some transformers versions."""
        return []

    def config_json(self, config: ModelConfig, *, max_position_embeddings: int,
                    dtype: str) -> dict[str, Any]:
        return {
            "architectures": [self.architecture], "model_type": self.model_type,
            "vocab_size": config.vocab_size, "hidden_size": config.d_model,
            "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
            "num_key_value_heads": config.kv_heads, "head_dim": config.head_dim,
            "hidden_act": "silu", "max_position_embeddings": max_position_embeddings,
            "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
            "tie_word_embeddings": config.tie_embeddings, "initializer_range": config.init_std,
            "attention_dropout": 0.0, "use_cache": True,
            # moejax's vocabularies: pad 0, EOS 1, no BOS (moejax.data.vocabularies)
            "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": None,
            "torch_dtype": dtype, "dtype": dtype,
            **self.feed_forward_fields(config),
        }

    def feed_forward_fields(self, config: ModelConfig) -> dict[str, Any]:
        raise NotImplementedError

    def tensors(self, params: dict, config: ModelConfig, buffers: dict | None = None) -> Tensors:
        """Every tensor of the format, in the order of a Hugging Face checkpoint. ``buffers``
        (the checkpoint's, holding balancing biases) is needed only by a format that keeps
        them."""
        problems = self.problems(config)
        if problems:
            raise ExportError(f"the model cannot be written as {self.name}: " + "; ".join(problems))
        out: Tensors = [("model.embed_tokens.weight", _array(params["embed_VD"]))]
        moe_blocks = set(moe_layer_indices(config))
        for i in range(config.n_layers):
            block, prefix = params["blocks"][i], f"model.layers.{i}"
            out.append((f"{prefix}.input_layernorm.weight", _array(block["attn_norm"]["scale"])))
            out += self.attention_tensors(block["attn"], f"{prefix}.self_attn", config)
            out.append((f"{prefix}.post_attention_layernorm.weight",
                        _array(block["ff_norm"]["scale"])))
            if i in moe_blocks:
                # only blocks with a balancing bias have buffers
                block_buffers = (buffers or {}).get("blocks", {}).get(i, {}).get("ff")
                out += self.moe_tensors(block["ff"], f"{prefix}.{self.ff}", config,
                                        block_buffers)
            else:
                out += _swiglu(block["ff"]["w_in_DF2"], block["ff"]["w_out_FD"],
                               ("gate_proj", "up_proj", "down_proj"), f"{prefix}.mlp")
        out.append(("model.norm.weight", _array(params["final_norm"]["scale"])))
        if not config.tie_embeddings:
            out.append(("lm_head.weight", _array(params["unembed_DV"]).T))
        return out

    def attention_tensors(self, attn: dict, prefix: str, config: ModelConfig) -> Tensors:
        """Grouped-query attention: q/k/v/o projections, and query/key norms when it has them."""
        out: Tensors = []
        for proj, key in (("q_proj", "w_q_DNH"), ("k_proj", "w_k_DGH"), ("v_proj", "w_v_DGH")):
            weight = _heads_in(attn[key])
            out.append((f"{prefix}.{proj}.weight", weight))
            if self.qkv_bias:
                out.append((f"{prefix}.{proj}.bias", np.zeros(weight.shape[0], np.float32)))
        out.append((f"{prefix}.o_proj.weight", _heads_out(attn["w_o_NHD"])))
        if config.qk_norm != "none":  # (H,) per head, or (N, H) flattened head-major
            for norm in ("q_norm", "k_norm"):
                out.append((f"{prefix}.{norm}.weight", _array(attn[norm]["scale"]).reshape(-1)))
        return out

    def moe_tensors(self, ff: dict, prefix: str, config: ModelConfig,
                    buffers: dict | None) -> Tensors:
        raise NotImplementedError


class Llama(_Format):
    """A dense model: LlamaForCausalLM (no biases)."""

    name, model_type, architecture = "llama", "llama", "LlamaForCausalLM"

    def feed_forward_problems(self, config: ModelConfig) -> list[str]:
        if config.moe is not None:
            return [f"an MoE model (ModelConfig.moe is set): {self.architecture} has no experts"]
        return []

    def feed_forward_fields(self, config: ModelConfig) -> dict[str, Any]:
        return {"intermediate_size": config.dense_d_ff, "attention_bias": False,
                "mlp_bias": False}


class Qwen3(Llama):
    """A dense model with per-head query/key norms: Qwen3ForCausalLM."""

    name, model_type, architecture = "qwen3", "qwen3", "Qwen3ForCausalLM"
    qk_norm = "per_head"

    def feed_forward_fields(self, config: ModelConfig) -> dict[str, Any]:
        return {"intermediate_size": config.dense_d_ff, "attention_bias": False,
                "use_sliding_window": False, "sliding_window": None,
                "max_window_layers": config.n_layers}


class _MoEFormat(_Format):
    """An MoE format: what no MoE format holds (``moe_problems``) plus its own limits."""

    def feed_forward_problems(self, config: ModelConfig) -> list[str]:
        problems = moe_problems(config)
        return problems or self.router_problems(config) + self.own_problems(config)

    def router_problems(self, config: ModelConfig) -> list[str]:
        return softmax_router_problems(config)

    def own_problems(self, config: ModelConfig) -> list[str]:
        return []

    def feed_forward_fields(self, config: ModelConfig) -> dict[str, Any]:
        return {"num_experts_per_tok": config.moe.groups[0].top_k,
                "output_router_logits": False,
                "router_aux_loss_coef": config.moe.aux_loss_weight, **self.moe_fields(config)}

    def moe_fields(self, config: ModelConfig) -> dict[str, Any]:
        raise NotImplementedError


def _experts(group: dict, prefix: str, names: tuple[str, str, str]) -> Tensors:
    """The router (E, D) and each expert's three weights."""
    out: Tensors = [(f"{prefix}.gate.weight", _array(group["router"]["w_DE"]).T)]
    w_in, w_out = group["experts"]["w_in_EDF2"], group["experts"]["w_out_EFD"]
    for e in range(w_in.shape[0]):
        out += _swiglu(w_in[e], w_out[e], names, f"{prefix}.experts.{e}")
    return out


def _dense_blocks(config: ModelConfig) -> list[int]:
    return sorted(set(range(config.n_layers)) - set(moe_layer_indices(config)))


def _all_moe_problem(config: ModelConfig, architecture: str) -> list[str]:
    dense = _dense_blocks(config)
    if not dense:
        return []
    return [f"blocks {dense} are dense (ModelConfig.first_dense_layers = "
            f"{config.first_dense_layers}, moe_every = {config.moe_every}): every "
            f"{architecture} block is MoE"]


def _no_shared_problem(config: ModelConfig, architecture: str) -> list[str]:
    if not config.moe.num_shared_experts:
        return []
    return [f"MoEConfig.num_shared_experts = {config.moe.num_shared_experts}: {architecture} "
            "has no shared experts"]


class Mixtral(_MoEFormat):
    name, model_type, architecture = "mixtral", "mixtral", "MixtralForCausalLM"
    ff = "block_sparse_moe"

    def own_problems(self, config: ModelConfig) -> list[str]:
        problems = _all_moe_problem(config, "Mixtral")
        if not config.moe.renormalize:
            problems.append("MoEConfig.renormalize = False: Mixtral always renormalizes the K "
                            "chosen weights")
        return problems + _no_shared_problem(config, "Mixtral")

    def moe_fields(self, config: ModelConfig) -> dict[str, Any]:
        group = config.moe.groups[0]
        return {"intermediate_size": group.d_expert, "num_local_experts": group.num_experts,
                "sliding_window": None, "router_jitter_noise": 0.0}

    def moe_tensors(self, ff: dict, prefix: str, config: ModelConfig, buffers) -> Tensors:
        return _experts(ff["groups"][0], prefix, ("w1", "w3", "w2"))


class Qwen2Moe(_MoEFormat):
    name, model_type, architecture = "qwen2_moe", "qwen2_moe", "Qwen2MoeForCausalLM"
    qkv_bias = True

    def notes(self, config: ModelConfig) -> list[str]:
        if config.head_dim * config.n_heads == config.d_model:
            return []
        return [f"head_dim x heads = {config.head_dim * config.n_heads} is not the hidden size "
                f"{config.d_model}: transformers 5 loads this Qwen2-MoE, transformers 4 refuses "
                "it (its attention requires them equal)"]

    def moe_fields(self, config: ModelConfig) -> dict[str, Any]:
        moe = config.moe
        group = moe.groups[0]
        return {"intermediate_size": config.dense_d_ff, "moe_intermediate_size": group.d_expert,
                "shared_expert_intermediate_size": moe.shared_width or 1,
                "num_experts": group.num_experts, "norm_topk_prob": moe.renormalize,
                "decoder_sparse_step": 1, "mlp_only_layers": _dense_blocks(config),
                "qkv_bias": True, "use_sliding_window": False, "sliding_window": None}

    def moe_tensors(self, ff: dict, prefix: str, config: ModelConfig, buffers) -> Tensors:
        names = ("gate_proj", "up_proj", "down_proj")
        out = _experts(ff["groups"][0], prefix, names)
        d_model = config.d_model
        if config.moe.num_shared_experts:
            # the format's gate sigmoid(0) = 1/2 halves the shared output: double it back
            out += _swiglu(ff["shared"]["w_in_DF2"], ff["shared"]["w_out_FD"], names,
                           f"{prefix}.shared_expert", down_scale=2.0)
        else:  # the format always has a shared expert: one of width 1 that outputs 0
            out += _swiglu(np.zeros((d_model, 2), np.float32), np.zeros((1, d_model), np.float32),
                           names, f"{prefix}.shared_expert")
        out.append((f"{prefix}.shared_expert_gate.weight", np.zeros((1, d_model), np.float32)))
        return out


class Qwen3Moe(_MoEFormat):
    name, model_type, architecture = "qwen3_moe", "qwen3_moe", "Qwen3MoeForCausalLM"
    qk_norm = "per_head"

    def own_problems(self, config: ModelConfig) -> list[str]:
        return _no_shared_problem(config, "Qwen3-MoE")

    def moe_fields(self, config: ModelConfig) -> dict[str, Any]:
        group = config.moe.groups[0]
        return {"intermediate_size": config.dense_d_ff, "moe_intermediate_size": group.d_expert,
                "num_experts": group.num_experts, "norm_topk_prob": config.moe.renormalize,
                "decoder_sparse_step": 1, "mlp_only_layers": _dense_blocks(config),
                "attention_bias": False, "use_sliding_window": False, "sliding_window": None}

    def moe_tensors(self, ff: dict, prefix: str, config: ModelConfig, buffers) -> Tensors:
        return _experts(ff["groups"][0], prefix, ("gate_proj", "up_proj", "down_proj"))


class Olmoe(_MoEFormat):
    name, model_type, architecture = "olmoe", "olmoe", "OlmoeForCausalLM"
    qk_norm = "across_heads"

    def own_problems(self, config: ModelConfig) -> list[str]:
        problems = _all_moe_problem(config, "OLMoE") + _no_shared_problem(config, "OLMoE")
        if config.head_dim * config.n_heads != config.d_model:
            problems.append(f"ModelConfig.d_head = {config.d_head}: OLMoE's head width is "
                            f"d_model / n_heads = {config.d_model / config.n_heads:g}")
        return problems

    def moe_fields(self, config: ModelConfig) -> dict[str, Any]:
        group = config.moe.groups[0]
        return {"intermediate_size": group.d_expert, "num_experts": group.num_experts,
                "norm_topk_prob": config.moe.renormalize, "attention_bias": False,
                "clip_qkv": None}

    def moe_tensors(self, ff: dict, prefix: str, config: ModelConfig, buffers) -> Tensors:
        return _experts(ff["groups"][0], prefix, ("gate_proj", "up_proj", "down_proj"))


def _interleaved(w_XR) -> np.ndarray:
    """Rotary features in pairs (i, i + R/2) (moejax) -> pairs (2i, 2i + 1) along the last axis:
    column 2i takes i, column 2i + 1 takes i + R/2."""
    half = w_XR.shape[-1] // 2
    order = np.stack([np.arange(half), np.arange(half) + half], axis=-1).reshape(-1)
    return w_XR[..., order]


# DeepSeek-V3's latent norms (q_a_layernorm, kv_a_layernorm) are built with RMSNorm's default
# epsilon, whatever config.json says.
DEEPSEEK_LATENT_NORM_EPS = 1e-6


class DeepseekV3(_MoEFormat):
    name, model_type, architecture = "deepseek_v3", "deepseek_v3", "DeepseekV3ForCausalLM"
    latent_attention = True

    def router_problems(self, config: ModelConfig) -> list[str]:
        moe = config.moe
        if moe.router_scores != "sigmoid":
            return [f"MoEConfig.router_scores = {moe.router_scores!r}: DeepSeek-V3's router "
                    "scores are sigmoids"]
        return []

    def own_problems(self, config: ModelConfig) -> list[str]:
        problems = []
        dense = _dense_blocks(config)
        if dense != list(range(config.first_dense_layers)):
            problems.append(f"blocks {dense} are dense (moe_every = {config.moe_every}): "
                            "DeepSeek-V3's dense blocks are the first first_dense_layers")
        group = config.moe.groups[0]
        per_group = group.num_experts // config.moe.router_groups
        if per_group < 2:
            problems.append(f"{per_group} expert(s) per router group (num_experts = "
                            f"{group.num_experts}, router_groups = {config.moe.router_groups}): "
                            "DeepSeek-V3's router ranks groups by their two best scores, so it "
                            "needs >= 2 per group")
        if config.moe.shared_width % group.d_expert:
            problems.append(f"shared experts of total width {config.moe.shared_width}: "
                            f"DeepSeek-V3's are n experts of d_expert = {group.d_expert}")
        if config.norm_eps != DEEPSEEK_LATENT_NORM_EPS:
            problems.append(f"ModelConfig.norm_eps = {config.norm_eps}: DeepSeek-V3 normalises "
                            f"its latents with eps {DEEPSEEK_LATENT_NORM_EPS}")
        return problems

    def moe_fields(self, config: ModelConfig) -> dict[str, Any]:
        moe, mla = config.moe, config.latent_attention
        group = moe.groups[0]
        return {"intermediate_size": config.dense_d_ff, "moe_intermediate_size": group.d_expert,
                "n_routed_experts": group.num_experts,
                "n_shared_experts": max(1, moe.shared_width // group.d_expert),
                "routed_scaling_factor": float(moe.routed_scaling), "n_group": moe.router_groups,
                "topk_group": moe.router_groups_per_token,
                "first_k_dense_replace": config.first_dense_layers,
                "norm_topk_prob": moe.renormalize, "kv_lora_rank": mla.kv_lora_rank,
                "q_lora_rank": mla.q_lora_rank, "qk_rope_head_dim": mla.qk_rope_head_dim,
                "qk_nope_head_dim": mla.qk_nope_head_dim, "v_head_dim": mla.v_head_dim,
                "head_dim": mla.qk_rope_head_dim, "num_key_value_heads": config.n_heads,
                "rope_interleave": True, "rope_scaling": None, "attention_bias": False,
                "pretraining_tp": 1}

    def attention_tensors(self, attn: dict, prefix: str, config: ModelConfig) -> Tensors:
        mla = config.latent_attention
        P = mla.qk_nope_head_dim

        def query(w_XNK):  # each head's rotary features interleaved, then heads flattened
            w = _array(w_XNK)
            return np.concatenate([w[..., :P], _interleaved(w[..., P:])], axis=-1)

        out: Tensors = []
        if mla.q_lora_rank is None:
            out.append((f"{prefix}.q_proj.weight", _heads_in(query(attn["w_q_DNK"]))))
        else:
            out += [(f"{prefix}.q_a_proj.weight", _array(attn["w_q_down_DQ"]).T),
                    (f"{prefix}.q_a_layernorm.weight", _array(attn["q_norm"]["scale"])),
                    (f"{prefix}.q_b_proj.weight", _heads_in(query(attn["w_q_up_QNK"])))]
        latent_and_rope = np.concatenate([_array(attn["w_kv_down_DC"]),
                                          _interleaved(_array(attn["w_k_rope_DR"]))], axis=1)
        # kv_b_proj's rows: head n's P key features, then its V value features
        keys_and_values = np.concatenate([_array(attn["w_k_up_CNP"]),
                                          _array(attn["w_v_up_CNV"])], axis=-1)
        return out + [(f"{prefix}.kv_a_proj_with_mqa.weight", latent_and_rope.T),
                      (f"{prefix}.kv_a_layernorm.weight", _array(attn["kv_norm"]["scale"])),
                      (f"{prefix}.kv_b_proj.weight", _heads_in(keys_and_values)),
                      (f"{prefix}.o_proj.weight", _heads_out(attn["w_o_NVD"]))]

    def moe_tensors(self, ff: dict, prefix: str, config: ModelConfig, buffers) -> Tensors:
        names = ("gate_proj", "up_proj", "down_proj")
        gate, *experts = _experts(ff["groups"][0], prefix, names)
        if config.moe.bias_update_rate > 0:
            if buffers is None:
                raise ExportError("the model has balancing biases (MoEConfig.bias_update_rate "
                                  "> 0): pass the checkpoint's buffers to tensors()")
            bias = _array(buffers["groups"][0]["router"]["bias_E"])
        else:
            bias = np.zeros(gate[1].shape[0], np.float32)
        out = [gate, (f"{prefix}.gate.e_score_correction_bias", bias), *experts]
        if config.moe.num_shared_experts:
            shared_in, shared_out = ff["shared"]["w_in_DF2"], ff["shared"]["w_out_FD"]
        else:  # the format always has shared experts: one that outputs 0
            width = config.moe.groups[0].d_expert
            shared_in = np.zeros((config.d_model, 2 * width), np.float32)
            shared_out = np.zeros((width, config.d_model), np.float32)
        return out + _swiglu(shared_in, shared_out, names, f"{prefix}.shared_experts")


FORMATS: dict[str, _Format] = {f.name: f for f in (Mixtral(), Qwen2Moe(), Qwen3Moe(), Olmoe(),
                                                   DeepseekV3(), Llama(), Qwen3())}


def choose_format(config: ModelConfig, name: str = "auto") -> _Format:
    """The format called ``name``, or for "auto" the first in ``FORMATS`` that holds the model
    (for an MoE, Mixtral when it fits: the most widely supported); ExportError names every
    reason when none (or the named one) does."""
    if name != "auto":
        if name not in FORMATS:
            raise ExportError(f"unknown format {name!r}: one of auto, {', '.join(FORMATS)}")
        problems = FORMATS[name].problems(config)
        if problems:
            raise ExportError(f"the model cannot be written as {name}: " + "; ".join(problems))
        return FORMATS[name]
    reasons = {}
    for fmt in FORMATS.values():
        problems = fmt.problems(config)
        if not problems:
            return fmt
        if isinstance(fmt, _MoEFormat) == (config.moe is not None):  # formats of its kind
            reasons[fmt.name] = problems
    common = moe_problems(config) if config.moe is not None else []
    if common:
        raise ExportError("the model fits no Hugging Face format here: " + "; ".join(common))
    raise ExportError("the model fits no Hugging Face format here: " + "; ".join(
        f"{name}: {', '.join(problems)}" for name, problems in reasons.items()))

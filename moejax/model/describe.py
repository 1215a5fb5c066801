"""What a configuration amounts to, before anything is built: the architecture in words, exact
parameter counts by part, FLOPs and memory per token, and the knobs that act together.

In: a resolved, validated ``ModelConfig`` (``moejax.train.loop.validate_all``), the ``DataConfig``
and ``TrainConfig``. Out: ``summary(...)``, a JSON-able dict of numbers (every count from
``moejax.model.accounting``), and ``notes(...)``, the interactions of MoE knobs a researcher
should know of (which balancing is on, what capacity drops, what a routing rule leaks), each a
sentence. ``render`` writes both as the text ``moejax describe`` prints.
"""

from __future__ import annotations

from moejax.model import accounting
from moejax.model.config import ModelConfig, moe_layer_indices


def architecture(c: ModelConfig) -> dict:
    """The shape of the model as numbers and short phrases."""
    mla = c.latent_attention
    if mla is not None:
        query = ("projected directly" if mla.q_lora_rank is None
                 else f"through a {mla.q_lora_rank}-wide latent")
        attention = (f"multi-head latent attention, {c.n_heads} heads: keys and values from a "
                     f"{mla.kv_lora_rank}-wide latent, a {mla.qk_rope_head_dim}-wide rotary key "
                     f"shared by the heads, queries {query}")
    else:
        kind = ("multi-head" if c.kv_heads == c.n_heads else
                "multi-query" if c.kv_heads == 1 else "grouped-query")
        attention = (f"{kind} attention, {c.n_heads} query heads, {c.kv_heads} key/value heads "
                     f"of {c.head_dim}")
        if c.qk_norm != "none":
            attention += f", query/key norm {c.qk_norm}"
    out = {"n_layers": c.n_layers, "d_model": c.d_model, "vocab_size": c.vocab_size,
           "attention": attention, "moe_blocks": list(moe_layer_indices(c)),
           "tie_embeddings": c.tie_embeddings}
    moe = c.moe
    if moe is None:
        out["feed_forward"] = f"dense SwiGLU of width {c.d_ff} in every block"
        return out
    groups = "; ".join(f"{g.num_experts} experts of width {g.d_expert}, top-{g.top_k}"
                       for g in moe.groups)
    routing = {"token_choice": "token choice", "hash": "hash of the token id",
               "expert_choice": "expert choice"}[moe.routing]
    shared = (f", {moe.num_shared_experts} shared expert(s) of total width {moe.shared_width}"
              if moe.num_shared_experts else "")
    out["feed_forward"] = f"MoE: {groups}{shared}; routing by {routing}"
    experts, top_k, width = accounting.routed_summary(c)
    out.update(num_experts=experts, top_k=top_k, sparsity=experts / top_k,
               granularity=c.d_ff / width)
    return out


def summary(c: ModelConfig, data, train) -> dict:
    """Counts, FLOPs and bytes of the configuration (``moejax.model.accounting``), and the
    training budget its TrainConfig and DataConfig spend."""
    counts = accounting.parameter_counts(c)
    tokens_per_step = data.batch_size * data.seq_len
    flops_per_token = accounting.training_flops_per_token(c, data.seq_len)
    return {
        "architecture": architecture(c),
        "parameters": {"total": counts.total, "active": counts.active,
                       "total_non_embedding": counts.total_non_embedding,
                       "active_non_embedding": counts.active_non_embedding,
                       "embedding": counts.embedding, "attention": counts.attention,
                       "dense_ff": counts.dense_ff, "routed_experts": counts.routed_experts,
                       "routed_experts_active": counts.routed_experts_active,
                       "shared_experts": counts.shared_experts, "router": counts.router,
                       "norms": counts.norms},
        "training": {"flops_per_token": flops_per_token,
                     "flops_per_token_6n": accounting.training_flops_per_token_6n(c),
                     "tokens_per_step": tokens_per_step, "steps": train.steps,
                     "tokens": tokens_per_step * train.steps,
                     "flops": flops_per_token * tokens_per_step * train.steps,
                     "state_bytes": accounting.training_state_bytes(c)},
        "inference": {"flops_per_token": accounting.inference_flops_per_token(c, data.seq_len),
                      "context": data.seq_len,
                      "parameter_bytes_bf16": accounting.parameter_bytes(c),
                      "kv_cache_bytes_per_token_bf16": accounting.kv_cache_bytes_per_token(c)},
        "paper_quantities": accounting.paper_quantities(c, data.seq_len),
        "notes": notes(c, data, train),
    }


def notes(c: ModelConfig, data, train) -> list[str]:
    """The interactions of the MoE knobs, each a sentence (none for a dense model)."""
    moe = c.moe
    if moe is None:
        return []
    out = []
    balancing = [name for name, on in (("the Switch auxiliary loss", moe.aux_loss_weight > 0),
                                       ("the loss-free bias", moe.bias_update_rate > 0))
                 if on]
    if moe.routing == "token_choice":
        out.append("load balancing: " + (" and ".join(balancing) + " (both on: each pulls "
                                         "towards balance by its own means)"
                                         if len(balancing) == 2 else
                                         balancing[0] if balancing else
                                         "none (aux_loss_weight = 0, bias_update_rate = 0): "
                                         "nothing keeps the experts' loads apart from collapse"))
    if moe.routing == "hash" and (moe.aux_loss_weight or moe.z_loss_weight):
        out.append("hash routing has no router: aux_loss_weight and z_loss_weight have nothing "
                   "to act on (both losses are 0)")
    if moe.routing == "expert_choice":
        out.append("expert choice: each expert picks from the whole sequence, so a token's "
                   "output depends on later tokens; for analysis, not for a decoder's loss")
    if moe.routing != "expert_choice":
        train_path = ("dropless" if moe.capacity_factor is None else
                      f"capacity factor {moe.capacity_factor}: assignments over "
                      "ceil(factor x K x T / E) per expert are dropped")
        eval_path = ("dropless" if moe.eval_capacity_factor is None
                     else f"capacity factor {moe.eval_capacity_factor}")
        out.append(f"training: {train_path}; evaluation: {eval_path}")
    if moe.router_groups > 1:
        out.append(f"group-limited routing: {moe.router_groups} groups of "
                   f"{moe.groups[0].num_experts // moe.router_groups} experts, each token chooses "
                   f"within its best {moe.router_groups_per_token}")
    if moe.routed_scaling != 1:
        out.append(f"routed weights times {moe.routed_scaling}")
    if moe.router_scores == "sigmoid" and not moe.renormalize:
        out.append("sigmoid scores without renormalize: the K weights do not sum to one")
    if moe.router_jitter and moe.routing != "hash":
        out.append(f"router inputs jittered by +-{moe.router_jitter} in training only")
    return out


def short_count(n: float) -> str:
    """1.23M, 456k, 7.8B: three significant digits and an SI-style suffix."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _bytes(n: float) -> str:
    for scale, unit in ((2.0**40, "TiB"), (2.0**30, "GiB"), (2.0**20, "MiB"), (2.0**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:g} B"


def render(described: dict) -> str:
    """The text of ``moejax describe``."""
    a, p = described["architecture"], described["parameters"]
    t, i = described["training"], described["inference"]
    lines = [f"model: {a['n_layers']} blocks of d_model {a['d_model']}, vocabulary "
             f"{a['vocab_size']}" + (", tied embeddings" if a["tie_embeddings"] else ""),
             f"  attention: {a['attention']}", f"  feed-forward: {a['feed_forward']}"]
    if "sparsity" in a:
        blocks = a["moe_blocks"]
        lines.append(f"  MoE in {len(blocks)} of {a['n_layers']} blocks {blocks}; sparsity E/K "
                     f"{a['sparsity']:g}, granularity d_ff/d_expert {a['granularity']:g}")
    n = short_count
    lines += [f"parameters: {n(p['total'])} total ({n(p['total_non_embedding'])} "
              f"without embeddings), {n(p['active'])} active per token "
              f"({n(p['active_non_embedding'])} without embeddings)",
              "  " + ", ".join(f"{name.replace('_', ' ')} {n(p[name])}" for name in
                               ("embedding", "attention", "dense_ff", "routed_experts",
                                "shared_experts", "router", "norms") if p[name])]
    lines += [f"training: {n(t['flops_per_token'])} FLOPs per token (6N: "
              f"{n(t['flops_per_token_6n'])}), {t['tokens_per_step']} tokens per step x "
              f"{t['steps']} steps = {n(t['tokens'])} tokens, {t['flops']:.3g} FLOPs; "
              f"state (float32 parameters, AdamW) {_bytes(t['state_bytes'])}",
              f"inference: {n(i['flops_per_token'])} FLOPs per token at context "
              f"{i['context']}; bfloat16 weights {_bytes(i['parameter_bytes_bf16'])}, KV cache "
              f"{_bytes(i['kv_cache_bytes_per_token_bf16'])} per token"]
    if described["notes"]:
        lines.append("notes:")
        lines += [f"  - {note}" for note in described["notes"]]
    return "\n".join(lines)

"""The Hugging Face formats against transformers' forward pass (tests/export/hf_reference.py,
float64 numpy from the tensors as the ``safetensors`` library reads them back): the same tokens
must give the same logits as moejax's own model."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from moejax.export import hf
from moejax.export.safetensors import write_checkpoint
from moejax.model.config import LatentAttentionConfig, ModelConfig, MoEConfig
from moejax.model.functional import build_model
from tests.export import hf_reference

TOKENS = np.array([5, 17, 3, 99, 42, 7, 7, 120, 64, 1, 88, 30], np.int32)


def _config(**model_fields) -> ModelConfig:
    moe_fields = model_fields.pop("moe", {})
    dense = model_fields.pop("dense", False)
    base = dict(vocab_size=128, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=48,
                rope_theta=500.0, norm_eps=1e-5, tie_embeddings=False)
    base.update(model_fields)
    moe = dict(num_experts=4, top_k=2, d_expert=16, renormalize=True)
    moe.update(moe_fields)
    return ModelConfig(moe=None if dense else MoEConfig(**moe), **base)


def _random_params(model, seed):
    """Random parameters with norms away from 1, so a misplaced norm weight shows."""
    params = model.init(jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(treedef, [
        leaf * (1.0 + 0.5 * jax.random.uniform(k, leaf.shape)) for leaf, k in zip(leaves, keys)])


def _random_buffers(model, seed):
    """Balancing biases of the size of sigmoid scores, so that they change which experts win."""
    buffers = model.init_buffers()
    return jax.tree.map(lambda b: 0.3 * jax.random.normal(jax.random.key(seed), b.shape), buffers)


def _export(tmp_path, config, params, fmt="auto", max_shard_bytes=1 << 40, buffers=None):
    chosen = hf.choose_format(config, fmt)
    write_checkpoint(str(tmp_path), chosen.tensors(params, config, buffers), dtype=np.float32,
                     max_shard_bytes=max_shard_bytes, metadata={"format": "pt"})
    config_json = chosen.config_json(config, max_position_embeddings=64, dtype="float32")
    tensors = {}
    for path in sorted(tmp_path.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return chosen, json.loads(json.dumps(config_json)), tensors


LATENT = LatentAttentionConfig(kv_lora_rank=12, qk_rope_head_dim=6, qk_nope_head_dim=4,
                               v_head_dim=5, q_lora_rank=10)

CASES = {
    # name: (model fields, format auto picks)
    "mixtral, GQA, untied": (dict(), "mixtral"),
    "mixtral, tied, d_head 12": (dict(tie_embeddings=True, d_head=12, n_kv_heads=1), "mixtral"),
    "qwen2_moe, raw weights, no shared, d_head 12": (dict(d_head=12, moe=dict(renormalize=False)),
                                                     "qwen2_moe"),
    "qwen2_moe, 2 shared, first dense, every 2nd": (
        dict(n_layers=4, first_dense_layers=1, moe_every=2,
             moe=dict(num_shared_experts=2, d_shared_expert=8, top_k=1)), "qwen2_moe"),
    "llama, dense, GQA, tied": (dict(dense=True, tie_embeddings=True), "llama"),
    "qwen3_moe, per-head qk norm, d_head 12, raw weights, first dense": (
        dict(qk_norm="per_head", d_head=12, first_dense_layers=1, moe=dict(renormalize=False)),
        "qwen3_moe"),
    "olmoe, qk norm across heads, GQA, tied": (dict(qk_norm="across_heads", tie_embeddings=True),
                                               "olmoe"),
    "qwen3, dense, per-head qk norm": (dict(dense=True, qk_norm="per_head"), "qwen3"),
    "deepseek_v3, query latent, 2 shared, first dense, balancing bias, 1 of 2 groups": (
        dict(n_kv_heads=None, norm_eps=1e-6, first_dense_layers=1, latent_attention=LATENT,
             moe=dict(router_scores="sigmoid", bias_update_rate=1e-3, num_shared_experts=2,
                      num_experts=8, router_groups=2, router_groups_per_token=1,
                      routed_scaling=2.5)),
        "deepseek_v3"),
    "deepseek_v3, query straight, no shared, raw weights, tied": (
        dict(n_kv_heads=None, norm_eps=1e-6, tie_embeddings=True, n_heads=3,
             latent_attention=dataclasses.replace(LATENT, q_lora_rank=None),
             moe=dict(router_scores="sigmoid", renormalize=False, top_k=1)), "deepseek_v3"),
}


SLOW_CASES = {"deepseek_v3, query straight, no shared, raw weights, tied"}  # kin of a fast one
DEEPSEEK = "deepseek_v3, query latent, 2 shared, first dense, balancing bias, 1 of 2 groups"


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.slow] if name in SLOW_CASES else []) for name in CASES])
def test_logits_match_the_transformers_forward_pass(tmp_path, name):
    fields, expected_format = CASES[name]
    config = _config(**fields)
    model = build_model(config)
    params = _random_params(model, seed=len(name))
    buffers = _random_buffers(model, seed=len(name))
    chosen, config_json, tensors = _export(tmp_path, config, params, buffers=buffers)
    assert chosen.name == expected_format
    ours, _ = model.apply(params, TOKENS[None], buffers=buffers)
    reference = hf_reference.logits(tensors, config_json, TOKENS)
    assert reference.shape == (len(TOKENS), config.vocab_size)
    np.testing.assert_allclose(np.asarray(ours[0]), reference, rtol=2e-4, atol=2e-4)
    # and the choices are not all alike: the logits vary across the vocabulary
    assert np.std(reference) > 0.1


def test_deepseek_v3_rotary_layout_bias_and_groups_matter(tmp_path):
    """The comparison can fail: read with moejax's own rotary pairs, without the balancing bias,
    without the group limit or without the routed scaling, the exported DeepSeek-V3 gives other
    logits."""
    fields, _ = CASES[DEEPSEEK]
    config = _config(**fields)
    model = build_model(config)
    params, buffers = _random_params(model, seed=5), _random_buffers(model, seed=5)
    _, config_json, tensors = _export(tmp_path, config, params, buffers=buffers)
    ours, _ = model.apply(params, TOKENS[None], buffers=buffers)
    assert config_json["rope_interleave"] is True
    wrong_layout = hf_reference.logits(tensors, {**config_json, "rope_interleave": False}, TOKENS)
    assert np.max(np.abs(np.asarray(ours[0]) - wrong_layout)) > 1e-3
    no_bias = {k: np.zeros_like(v) if k.endswith("e_score_correction_bias") else v
               for k, v in tensors.items()}
    assert np.max(np.abs(np.asarray(ours[0]) - hf_reference.logits(no_bias, config_json,
                                                                  TOKENS))) > 1e-3
    for changed in ({"n_group": 1, "topk_group": 1}, {"routed_scaling_factor": 1.0}):
        other = hf_reference.logits(tensors, {**config_json, **changed}, TOKENS)
        assert np.max(np.abs(np.asarray(ours[0]) - other)) > 1e-3, changed
    with pytest.raises(hf.ExportError, match="pass the checkpoint's buffers"):
        hf.choose_format(config).tensors(params, config)


def test_deepseek_v3_names_and_shapes(tmp_path):
    fields, _ = CASES[DEEPSEEK]
    config = _config(**fields)
    model = build_model(config)
    _, config_json, tensors = _export(tmp_path, config, model.init(jax.random.key(0)),
                                      buffers=model.init_buffers())
    attn, moe = "model.layers.1.self_attn", "model.layers.1.mlp"
    shapes = {f"{attn}.q_a_proj.weight": (10, 32), f"{attn}.q_a_layernorm.weight": (10,),
              f"{attn}.q_b_proj.weight": (4 * 10, 10),
              f"{attn}.kv_a_proj_with_mqa.weight": (12 + 6, 32),
              f"{attn}.kv_a_layernorm.weight": (12,), f"{attn}.kv_b_proj.weight": (4 * 9, 12),
              f"{attn}.o_proj.weight": (32, 4 * 5), f"{moe}.gate.weight": (8, 32),
              f"{moe}.gate.e_score_correction_bias": (8,),
              f"{moe}.experts.3.down_proj.weight": (32, 16),
              f"{moe}.shared_experts.gate_proj.weight": (32, 32),
              "model.layers.0.mlp.up_proj.weight": (48, 32)}
    for name, shape in shapes.items():
        assert tensors[name].shape == shape, name
    assert (config_json["architectures"], config_json["n_shared_experts"],
            config_json["first_k_dense_replace"], config_json["n_group"],
            config_json["topk_group"], config_json["routed_scaling_factor"]) == (
                ["DeepseekV3ForCausalLM"], 2, 1, 2, 1, 2.5)


def test_a_misplaced_weight_is_caught(tmp_path):
    """The comparison can fail: gate and up projections swapped in one expert change the logits."""
    config = _config()
    model = build_model(config)
    params = _random_params(model, seed=3)
    _, config_json, tensors = _export(tmp_path, config, params)
    prefix = "model.layers.1.block_sparse_moe.experts.0"
    tensors[f"{prefix}.w1.weight"], tensors[f"{prefix}.w3.weight"] = (
        tensors[f"{prefix}.w3.weight"], tensors[f"{prefix}.w1.weight"])
    ours, _ = model.apply(params, TOKENS[None])
    reference = hf_reference.logits(tensors, config_json, TOKENS)
    assert np.max(np.abs(np.asarray(ours[0]) - reference)) > 1e-3


def test_names_and_shapes_are_those_of_hugging_face_checkpoints(tmp_path):
    config = _config(n_layers=2)
    model = build_model(config)
    _, config_json, tensors = _export(tmp_path, config, model.init(jax.random.key(0)))
    assert tensors["model.embed_tokens.weight"].shape == (128, 32)
    assert tensors["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 8, 32)
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 8, 32)
    assert tensors["model.layers.0.self_attn.o_proj.weight"].shape == (32, 4 * 8)
    assert tensors["model.layers.1.block_sparse_moe.gate.weight"].shape == (4, 32)
    assert tensors["model.layers.1.block_sparse_moe.experts.3.w1.weight"].shape == (16, 32)
    assert tensors["model.layers.1.block_sparse_moe.experts.3.w2.weight"].shape == (32, 16)
    assert tensors["lm_head.weight"].shape == (128, 32)
    # 2 embeddings + final norm + per layer 2 norms, 4 attention, router, 4 experts x 3
    assert len(tensors) == 3 + 2 * (2 + 4 + 1 + 4 * 3)
    assert config_json["num_local_experts"] == 4 and config_json["intermediate_size"] == 16
    assert config_json["architectures"] == ["MixtralForCausalLM"]


def test_shards_split_the_tensors_and_index_them(tmp_path):
    config = _config(n_layers=2)
    model = build_model(config)
    params = model.init(jax.random.key(0))
    _, _, tensors = _export(tmp_path, config, params, max_shard_bytes=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(index["weight_map"]) == sorted(tensors)
    for name, shard in index["weight_map"].items():
        assert name in load_file(str(tmp_path / shard))
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())


def test_bfloat16_export_rounds_the_float32_weights(tmp_path):
    from safetensors import safe_open

    config = _config(n_layers=1)
    model = build_model(config)
    params = model.init(jax.random.key(0))
    chosen = hf.choose_format(config)
    write_checkpoint(str(tmp_path), chosen.tensors(params, config), dtype=jax.numpy.bfloat16,
                     max_shard_bytes=1 << 40, metadata={"format": "pt"})
    with safe_open(str(tmp_path / "model.safetensors"), framework="flax") as f:
        embed = f.get_tensor("model.embed_tokens.weight")
    assert embed.dtype == jax.numpy.bfloat16
    expected = np.asarray(params["embed_VD"]).astype(jax.numpy.bfloat16)
    np.testing.assert_array_equal(np.asarray(embed, np.float32), expected.astype(np.float32))


@pytest.mark.parametrize("fields, fragments", [
    (dict(moe=dict(expert_groups=((4, 16, 1), (2, 32, 1)))), ["expert_groups", "heterogeneous"]),
    (dict(moe=dict(router_scores="sigmoid")), ["router_scores = 'sigmoid'"]),
    (dict(moe=dict(routing="expert_choice")), ["routing = 'expert_choice'"]),
    (dict(moe=dict(routing="hash")), ["routing = 'hash': only a learned token-choice router"]),
    (dict(moe=dict(bias_update_rate=1e-3)), ["bias_update_rate = 0.001"]),
    (dict(n_kv_heads=None, latent_attention=LATENT),
     ["deepseek_v3: MoEConfig.router_scores = 'softmax': DeepSeek-V3's router scores are "
      "sigmoids", "ModelConfig.norm_eps = 1e-05: DeepSeek-V3 normalises its latents with eps "
      "1e-06", "mixtral: ModelConfig.latent_attention is set: MixtralForCausalLM has grouped-"
      "query attention"]),
    (dict(n_kv_heads=None, latent_attention=LATENT, norm_eps=1e-6, moe_every=2,
          moe=dict(router_scores="sigmoid", num_shared_experts=1, d_shared_expert=8)),
     ["blocks [0, 2] are dense (moe_every = 2): DeepSeek-V3's dense blocks are the first",
      "shared experts of total width 8: DeepSeek-V3's are n experts of d_expert = 16"]),
])
def test_models_no_format_holds_are_refused_with_the_reason(fields, fragments):
    with pytest.raises(hf.ExportError) as error:
        hf.choose_format(_config(**fields))
    for fragment in fragments:
        assert fragment in str(error.value)


def test_mixtral_named_explicitly_says_why_it_does_not_fit():
    config = _config(first_dense_layers=1, moe=dict(renormalize=False, num_shared_experts=1))
    with pytest.raises(hf.ExportError) as error:
        hf.choose_format(config, "mixtral")
    message = str(error.value)
    assert "blocks [0] are dense" in message
    assert "renormalize = False" in message and "num_shared_experts = 1" in message
    assert hf.choose_format(config).name == "qwen2_moe"


def test_a_qwen2_moe_whose_heads_do_not_span_the_hidden_size_comes_with_a_note():
    """transformers 4.57.6 raises 'hidden_size must be divisible by num_heads' for it (seen)."""
    odd = _config(d_head=12, moe=dict(renormalize=False))
    (note,) = hf.choose_format(odd).notes(odd)
    assert "48 is not the hidden size 32" in note and "transformers 4 refuses" in note
    assert hf.choose_format(_config(moe=dict(renormalize=False))).notes(_config()) == []


def test_dense_models_are_llama_and_moe_ones_are_not():
    dense, moe = _config(dense=True), _config()
    assert hf.choose_format(dense).name == "llama"
    with pytest.raises(hf.ExportError, match="ModelConfig.moe = None: a dense model"):
        hf.choose_format(dense, "mixtral")
    with pytest.raises(hf.ExportError, match="LlamaForCausalLM has no experts"):
        hf.choose_format(moe, "llama")
    config_json = hf.FORMATS["llama"].config_json(dense, max_position_embeddings=64,
                                                  dtype="float32")
    assert config_json["intermediate_size"] == 48 and "num_experts_per_tok" not in config_json


def test_query_key_norms_pick_the_family_and_a_mismatch_is_named():
    per_head, across = _config(qk_norm="per_head"), _config(qk_norm="across_heads")
    assert hf.choose_format(per_head).name == "qwen3_moe"
    assert hf.choose_format(across).name == "olmoe"
    assert hf.choose_format(_config(dense=True, qk_norm="per_head")).name == "qwen3"
    with pytest.raises(hf.ExportError, match="qk_norm = 'per_head': MixtralForCausalLM has "
                       "qk_norm 'none'"):
        hf.choose_format(per_head, "mixtral")
    with pytest.raises(hf.ExportError, match="qk_norm = 'none': OlmoeForCausalLM has qk_norm "
                       "'across_heads'"):
        hf.choose_format(_config(), "olmoe")


def test_what_olmoe_and_qwen3_moe_cannot_hold_is_listed_when_none_fits():
    config = _config(qk_norm="across_heads", d_head=12, first_dense_layers=1,
                     moe=dict(num_shared_experts=1))
    with pytest.raises(hf.ExportError) as error:
        hf.choose_format(config)
    message = str(error.value)
    for fragment in ("olmoe: blocks [0] are dense", "OLMoE has no shared experts",
                     "OLMoE's head width is d_model / n_heads = 8",
                     "qwen3_moe: MoEConfig.num_shared_experts = 1: Qwen3-MoE has no shared"):
        assert fragment in message
    assert "llama" not in message and "qwen3:" not in message  # dense formats are not listed
    with pytest.raises(hf.ExportError, match="llama: .*qk_norm = 'across_heads'.* qwen3: .*has "
                       "qk_norm 'per_head'"):
        hf.choose_format(_config(dense=True, qk_norm="across_heads"))


def test_query_key_norm_tensors_have_hugging_face_shapes(tmp_path):
    for qk_norm, fmt, q_shape, k_shape in (("per_head", "qwen3_moe", (8,), (8,)),
                                           ("across_heads", "olmoe", (4 * 8,), (2 * 8,))):
        config = _config(qk_norm=qk_norm, n_layers=1)
        model = build_model(config)
        out = tmp_path / qk_norm
        out.mkdir()
        _, config_json, tensors = _export(out, config, model.init(jax.random.key(0)))
        assert config_json["architectures"][0].lower().startswith(fmt.replace("_", ""))
        assert tensors["model.layers.0.self_attn.q_norm.weight"].shape == q_shape
        assert tensors["model.layers.0.self_attn.k_norm.weight"].shape == k_shape

"""The planned attention: its counts against the model's own accounting of the gin it becomes,
and what a smaller KV cache does to a memory-bound plan."""

import json

import pytest

from moejax.model import accounting
from moejax.plan.attention import GroupedQuery, Latent, MultiHead, parse_attention
from moejax.plan.joint_moe import budget_plan, joint_moe_counts, kv_cache_bytes
from moejax.plan.recommend import joint_moe_architecture
from moejax.train.cli import load_configs
from moejax.train.loop import validate_all

VARIANTS = [MultiHead(), GroupedQuery(4), GroupedQuery(16), Latent(256), Latent(512, 64)]


@pytest.mark.parametrize("attention", VARIANTS, ids=repr)
def test_planned_counts_and_cache_are_the_accounting_of_the_model_they_become(attention):
    """joint_moe_counts and kv_cache_bytes (closed forms of d) against moejax.model.accounting
    counting the concrete ModelConfig leaf by leaf: the two differ by exactly what the paper's
    counting leaves out, the norms (two per block, the final one, a latent's) and the routers."""
    d, experts, vocab = 1024, 8, 50257
    config = joint_moe_architecture(d, experts, vocab_size=vocab, attention=attention)
    blocks = d // 64
    ours, planned = accounting.parameter_counts(config), joint_moe_counts(d, experts,
                                                                         attention=attention)
    latent_norm = attention.kv_rank if isinstance(attention, Latent) else 0
    left_out = blocks * (2 * d + latent_norm + d * experts) + d
    assert ours.total - planned.n_total == pytest.approx(left_out, abs=1e-3)
    assert ours.active - planned.n_active == pytest.approx(left_out, abs=1e-3)
    assert accounting.kv_cache_bytes_per_token(config) == kv_cache_bytes(d, 1, attention=attention)


def test_grouped_query_heads_divide_the_heads():
    # 12 heads, 8 per group asked: 1.5 key/value heads; 1 and 2 both divide 12, the tie goes to
    # the smaller cache; 16 heads at group 8 split exactly
    assert joint_moe_architecture(768, 4, attention=GroupedQuery(8)).n_kv_heads == 1
    assert joint_moe_architecture(1024, 4, attention=GroupedQuery(8)).n_kv_heads == 2
    assert joint_moe_architecture(640, 4, attention=GroupedQuery(4)).n_kv_heads == 2  # 10 heads


def test_a_smaller_cache_lets_the_memory_bound_plan_grow():
    """With a long context in an 8 GB budget the cache sets the size: every variant's plan fills
    the budget exactly (weights in bf16 plus the cache, worked from the variant's per-block
    values), and the smaller the cache, the more active parameters and the lower the loss."""
    flops, memory, context = 1e21, 8e9, 131072
    plans = {}
    for name, attention, values_per_block in [("mha", MultiHead(), lambda d: 2 * d),
                                              ("gqa8", GroupedQuery(8), lambda d: 2 * d / 8),
                                              ("mla", Latent(256), lambda d: 288)]:
        plan = budget_plan(flops, 16, memory_bytes=memory, context_tokens=context,
                           attention=attention)
        assert plan.size_set_by == "memory"
        cache = context * (plan.d_model / 64) * values_per_block(plan.d_model) * 2
        assert 2 * plan.n_total + cache == pytest.approx(memory, rel=1e-9)
        plans[name] = plan
    assert plans["mha"].n_active < plans["gqa8"].n_active < plans["mla"].n_active
    assert plans["mha"].loss > plans["gqa8"].loss > plans["mla"].loss
    # without a context the cache costs nothing: grouped-query attention's fewer attention
    # parameters are the only difference, and the active-parameter optimum is the same
    free = [budget_plan(flops, 16, attention=a) for a in (MultiHead(), GroupedQuery(8))]
    assert free[0].n_active == pytest.approx(free[1].n_active, rel=1e-9)
    assert free[0].d_model < free[1].d_model


@pytest.mark.parametrize("text, expected", [
    ("mha", MultiHead()), (" gqa:8 ", GroupedQuery(8)), ("mla:256", Latent(256, 32)),
    ("mla:512:64", Latent(512, 64))])
def test_attention_names_parse(text, expected):
    assert parse_attention(text) == expected


def test_plan_writes_a_latent_attention_model_that_trains(tmp_path, capsys):
    from moejax.cli import main

    out = tmp_path / "plan"
    assert main(["plan", "--flops=1e19", "--memory-bytes=2e9", "--context-tokens=65536",
                 "--experts=4,16", "--attention=mla:128", f"--out={out}"]) == 0
    report = capsys.readouterr().out
    assert "multi-head latent attention, a 128-wide latent" in report
    written = json.loads((out / "plan.json").read_text())
    assert written["attention"] == [Latent(128).describe()]
    best = written["recommended"]
    gin_file = out / written["gin_files"][0]
    assert "LatentAttentionConfig.kv_lora_rank = 128" in gin_file.read_text()
    model, data, train = load_configs([str(gin_file)], [])
    resolved = validate_all(model, data, train)
    assert resolved.latent_attention.kv_lora_rank == 128
    assert resolved.moe.num_experts == best["E"]
    assert resolved.d_model == 64 * round(best["d_model"] / 64)


def test_several_attentions_are_planned_side_by_side(tmp_path, capsys):
    """One plan per expert count and attention, each the same as planning that attention alone;
    the recommendation is the lowest loss over all of them, its gin file the attention's."""
    from moejax.cli import main

    argv = ["plan", "--flops=1e21", "--memory-bytes=8e9", "--context-tokens=131072",
            "--experts=4,16,64"]
    assert main([*argv, "--attention=mha,gqa:8,mla:256,gqa:8", f"--out={tmp_path / 'all'}"]) == 0
    report = capsys.readouterr().out
    both = json.loads((tmp_path / "all" / "plan.json").read_text())
    assert [row["attention"] for row in both["plans"]] == (
        ["mha"] * 3 + ["gqa:8"] * 3 + ["mla:256:32"] * 3)  # gqa:8 given twice, planned once
    for spec in ("mha", "mla:256:32"):
        assert main([*argv, f"--attention={spec}", f"--out={tmp_path / spec}"]) == 0
        alone = json.loads((tmp_path / spec / "plan.json").read_text())["plans"]
        assert [r for r in both["plans"] if r["attention"] == spec] == alone
    best = min(both["plans"], key=lambda row: row["loss"])
    assert both["recommended"] == best and best["attention"] == "mla:256:32"
    assert f"Recommended: E = {best['E']:g} with mla:256:32" in report
    first = tmp_path / "all" / both["gin_files"][0]
    assert first.name == f"recommended_1_E{best['E']:g}_mla-256-32.gin"
    assert "LatentAttentionConfig.kv_lora_rank = 256" in first.read_text()


def test_liew_ranks_with_the_planned_attentions_parameters(tmp_path):
    """Every candidate counts fewer parameters with grouped-query attention's fewer key/value
    heads; the counts are the accounting of the gin files written."""
    from moejax.cli import main

    argv = ["plan", "--liew", "--memory-params=3e7", "--depths=4,8", "--widths=256,512",
            "--experts=1,4", "--top-ks=1"]
    ranked = {}
    for spec in ("mha", "gqa:8"):
        out = tmp_path / spec
        assert main([*argv, f"--attention={spec}", f"--out={out}"]) == 0
        written = json.loads((out / "plan.json").read_text())
        ranked[spec] = {r["name"]: r for r in written["ranked"]}
        best = written["ranked"][0]
        model, data, train = load_configs([str(out / written["gin_files"][0])],
                                          ["ModelConfig.vocab_size = 8064"])
        counts = accounting.parameter_counts(validate_all(model, data, train))
        assert (counts.total, counts.active) == (best["n_total"], best["n_active"])
        assert model.n_kv_heads == (None if spec == "mha" else max(1, model.n_heads // 8))
    # every candidate feasible with multi-head attention is feasible with fewer parameters here
    for name, row in ranked["mha"].items():
        assert ranked["gqa:8"][name]["n_total"] < row["n_total"]

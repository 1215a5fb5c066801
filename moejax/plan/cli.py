"""``moejax plan``: recommended MoE configurations for a budget, as reports and gin files.

Two modes.
- Joint MoE (default): ``--flops`` (training FLOPs), optionally ``--memory-bytes`` (bf16 weights,
  plus KV cache for ``--context-tokens``), ``--inference-tokens`` (expected tokens served, 2 N_act
  FLOPs each), ``--experts=1,2,4,...``, ``--fit=fit.json`` (a ``joint_moe`` fit from ``moejax fit``;
  default the paper's Table 3) and ``--hardware`` for the serving cost. Out: a table per expert
  count (active/total parameters, d_model, tokens, predicted loss, serving cost per token).
- Liew et al. (``--liew``): ``--memory-params`` (total-parameter budget), ``--active-params``
  (inference budget), a grid of ``--depths``, ``--widths``, ``--experts``, ``--top-ks``,
  ``--granularities``. Out: concrete architectures counted exactly by ``moejax.model.accounting``,
  ranked by the rule (max N_total, then min sparsity, then min E).

With ``--out=DIR``: ``plan.json``, ``report.md``, ``plan.png`` and one gin file per top
recommendation (``recommended_<rank>_<name>.gin``) that ``moejax train`` runs as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
from pathlib import Path

import scipy.optimize

from moejax.files import write_atomic, write_figure
from moejax.model import accounting
from moejax.plan.hardware import HARDWARE_PRESETS, serving_cost_per_token
from moejax.plan.joint_moe import (JOINT_MOE_TABLE3, inference_aware_optimal,
                                   joint_moe_counts, kv_cache_bytes, memory_optimal)
from moejax.plan.recommend import (candidate_config, candidate_grid, gin_text,
                                   joint_moe_architecture, joint_moe_learning_rate, rank_by_liew)


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flops", type=float, default=None,
                        help="training budget in FLOPs (6 N_act D); required without --liew")
    parser.add_argument("--memory-bytes", type=float, default=None, help="memory budget in bytes (bf16 weights)")
    parser.add_argument("--context-tokens", type=float, default=0.0, help="KV-cache tokens counted in memory")
    parser.add_argument("--inference-tokens", type=float, default=0.0, help="expected tokens served")
    parser.add_argument("--experts", default="1,2,4,8,16,32,64", help="expert counts to consider")
    parser.add_argument("--fit", type=Path, default=None, help="fit.json of a joint_moe fit (default: Table 3)")
    parser.add_argument("--hardware", choices=sorted(HARDWARE_PRESETS), default="h100")
    parser.add_argument("--serving-context", type=float, default=4096, help="context per served sequence")
    parser.add_argument("--liew", action="store_true", help="rank concrete architectures by Liew et al.'s rule")
    parser.add_argument("--memory-params", type=float, default=None, help="--liew: total-parameter budget")
    parser.add_argument("--active-params", type=float, default=math.inf, help="--liew: active-parameter budget")
    parser.add_argument("--depths", default="4,8,12,16,24", help="--liew: blocks to consider")
    parser.add_argument("--widths", default="256,512,768,1024,1536,2048", help="--liew: d_model values")
    parser.add_argument("--top-ks", default="1,2,4,8", help="--liew: top-k values")
    parser.add_argument("--granularities", default="1", help="--liew: expert granularities (d_ff / d_expert)")
    parser.add_argument("--vocab-size", type=int, default=8064, help="--liew: vocabulary rows counted")
    parser.add_argument("--top", type=int, default=3, help="gin files written for this many recommendations")
    parser.add_argument("--out", type=Path, default=None, help="directory for plan.json, report.md, plan.png, gin files")


def joint_moe_rows(args, parameters) -> list[dict]:
    """One plan per expert count under the compute (and memory / inference) budget."""
    rows = []
    for num_experts in [float(x) for x in args.experts.split(",") if x.strip()]:
        if args.memory_bytes is not None:
            _, plans = memory_optimal(args.flops, args.memory_bytes, [num_experts], args.context_tokens, parameters)
            if not plans:
                continue
            plan = plans[0]
            n_active, tokens, loss, d_model = plan.n_active, plan.tokens, plan.loss, plan.d_model
        else:
            n_active, tokens, loss = inference_aware_optimal(args.flops, args.inference_tokens, num_experts,
                                                             parameters)
            d_model = scipy.optimize.brentq(lambda d: joint_moe_counts(d, num_experts).n_active - n_active,
                                            1e-3, 1e7)
        counts = joint_moe_counts(d_model, num_experts)
        serving = serving_cost_per_token(counts.n_total, counts.n_active, kv_cache_bytes(d_model, 1),
                                         args.serving_context, args.hardware)
        rows.append({"E": num_experts, "d_model": d_model, "n_active": counts.n_active, "n_total": counts.n_total,
                     "tokens": tokens, "loss": loss, "serving": dataclasses.asdict(serving)})
    return rows


def _joint_moe_report(args, rows, source) -> str:
    out = io.StringIO()
    budget = f"training FLOPs {args.flops:.3g}"
    if args.memory_bytes is not None:
        budget += f", memory {args.memory_bytes:.3g} bytes (+ KV cache of {args.context_tokens:g} tokens)"
    if args.inference_tokens:
        budget += f", {args.inference_tokens:.3g} inference tokens"
    out.write(f"# moejax plan (Joint MoE law, {source})\n\nBudget: {budget}.\n\n")
    out.write(f"| E | d_model | N_act | N_total | tokens | predicted loss | {args.hardware} cost/token "
              f"(device-s) |\n|---|---|---|---|---|---|---|\n")
    for row in rows:
        out.write(f"| {row['E']:g} | {row['d_model']:.0f} | {row['n_active']:.3g} | {row['n_total']:.3g} | "
                  f"{row['tokens']:.3g} | {row['loss']:.4f} | {3600 * row['serving']['cost_per_token']:.3g} |\n")
    best = min(rows, key=lambda r: r["loss"])
    out.write(f"\nRecommended: E = {best['E']:g} (lowest predicted loss).\n")
    return out.getvalue()


def _plot(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experts = [r["E"] for r in rows]
    fig, (ax_loss, ax_size) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(experts, [r["loss"] for r in rows], marker="o")
    ax_loss.set_xscale("log", base=2)
    ax_loss.set_xlabel("experts E")
    ax_loss.set_ylabel("predicted loss")
    ax_loss.set_title(title)
    ax_loss.grid(alpha=0.3)
    ax_size.plot(experts, [r["n_active"] for r in rows], marker="o", label="N_act")
    ax_size.plot(experts, [r["n_total"] for r in rows], marker="s", label="N_total")
    ax_size.plot(experts, [r["tokens"] for r in rows], marker="^", label="training tokens")
    ax_size.set_xscale("log", base=2)
    ax_size.set_yscale("log")
    ax_size.set_xlabel("experts E")
    ax_size.legend()
    ax_size.grid(alpha=0.3)
    fig.tight_layout()
    write_figure(path, fig, dpi=110)
    plt.close(fig)


def _plot_liew(path: Path, ranked: list, memory_budget: float, active_budget: float,
               top: int) -> None:
    """Every feasible candidate at (N_total, N_active), coloured by sparsity E/K, the budgets as
    lines, the top ``top`` of the ranking numbered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    dots = ax.scatter([r.n_total for r in ranked], [r.n_active for r in ranked],
                      c=[r.candidate.sparsity for r in ranked], cmap="viridis", s=18,
                      norm=matplotlib.colors.LogNorm())
    fig.colorbar(dots, ax=ax, label="sparsity E/K")
    for rank, item in enumerate(ranked[:top], 1):
        ax.scatter([item.n_total], [item.n_active], s=90, facecolors="none", edgecolors="red")
        ax.annotate(str(rank), (item.n_total, item.n_active), textcoords="offset points",
                    xytext=(5, 5), color="red")
    ax.axvline(memory_budget, color="grey", linestyle="--", label="N_total budget")
    if math.isfinite(active_budget):
        ax.axhline(active_budget, color="grey", linestyle=":", label="N_active budget")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("total parameters N_total")
    ax.set_ylabel("active parameters N_active")
    ax.set_title(f"Liew rule: {len(ranked)} feasible architectures, top {min(top, len(ranked))} "
                 "circled")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    write_figure(path, fig, dpi=110)
    plt.close(fig)


def _run_joint_moe(args) -> int:
    parameters, source = JOINT_MOE_TABLE3, "published Table 3"
    if args.fit is not None:
        fitted = json.loads(args.fit.read_text())
        if fitted.get("law") != "joint_moe":
            print(f"moejax plan: error: {args.fit} holds a {fitted.get('law')!r} fit; plan needs joint_moe")
            return 2
        parameters, source = fitted["parameters"], f"fit {args.fit}"
    rows = joint_moe_rows(args, parameters)
    if not rows:
        print("moejax plan: error: no expert count fits the memory budget")
        return 2
    report = _joint_moe_report(args, rows, source)
    print(report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        ranked = sorted(rows, key=lambda r: r["loss"])[: args.top]
        files = []
        for rank, row in enumerate(ranked, 1):
            config = joint_moe_architecture(row["d_model"], int(row["E"]))
            name = f"recommended_{rank}_E{int(row['E'])}.gin"
            write_atomic(args.out / name, gin_text(
                config, tokens=row["tokens"], learning_rate=joint_moe_learning_rate(config),
                title=f"moejax plan rank {rank}: E = {row['E']:g}, predicted loss {row['loss']:.4f}, "
                      f"{row['tokens']:.3g} tokens"))
            files.append(name)
        report += "\nGin files (train with `moejax train --gin_file=FILE --workdir=...`): " + \
            ", ".join(f"`{f}`" for f in files) + "\n"
        write_atomic(args.out / "plan.json", json.dumps(
            {"law": "joint_moe", "source": source, "plans": rows, "recommended": ranked[0],
             "gin_files": files}, indent=2))
        write_atomic(args.out / "report.md", report)
        _plot(args.out / "plan.png", rows, f"compute {args.flops:.2g} FLOPs")
        print(f"wrote {args.out}/report.md, plan.json, plan.png and {len(files)} gin file(s)")
    return 0


def _run_liew(args) -> int:
    if args.memory_params is None:
        print("moejax plan: error: --liew needs --memory-params (the total-parameter budget)")
        return 2
    candidates = candidate_grid(_ints(args.depths), _ints(args.widths), _ints(args.experts),
                                _ints(args.top_ks), _ints(args.granularities))
    ranked = rank_by_liew(candidates, vocab_size=args.vocab_size, memory_budget_params=args.memory_params,
                          inference_budget_params=args.active_params)
    if not ranked:
        print("moejax plan: error: no candidate fits the budgets; widen --depths/--widths or raise them")
        return 2
    out = io.StringIO()
    out.write(f"# moejax plan (Liew et al. rule)\n\nBudgets: N_total <= {args.memory_params:.3g}, "
              f"N_active <= {args.active_params:.3g}; {len(candidates)} candidates, {len(ranked)} feasible.\n\n"
              "| rank | architecture | N_total | N_active | sparsity E/K |\n|---|---|---|---|---|\n")
    for rank, item in enumerate(ranked[:20], 1):
        out.write(f"| {rank} | {item.candidate.name} | {item.n_total:.4g} | {item.n_active:.4g} | "
                  f"{item.candidate.sparsity:g} |\n")
    report = out.getvalue()
    print(report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        files = []
        for rank, item in enumerate(ranked[: args.top], 1):
            config = candidate_config(item.candidate, vocab_size=args.vocab_size)
            tokens = None if args.flops is None else args.flops / (
                6.0 * accounting.parameter_counts(config).active)
            name = f"recommended_{rank}_{item.candidate.name}.gin"
            write_atomic(args.out / name, gin_text(
                dataclasses.replace(config, vocab_size=None), tokens=tokens,
                title=f"moejax plan (Liew rule) rank {rank}: {item.candidate.name}"))
            files.append(name)
        write_atomic(args.out / "plan.json", json.dumps(
            {"rule": "liew", "ranked": [{"name": r.candidate.name, "n_total": r.n_total, "n_active": r.n_active,
                                         **dataclasses.asdict(r.candidate)} for r in ranked],
             "gin_files": files}, indent=2))
        write_atomic(args.out / "report.md", report + "\nGin files: " +
                          ", ".join(f"`{f}`" for f in files) + "\n")
        _plot_liew(args.out / "plan.png", ranked, args.memory_params, args.active_params,
                   args.top)
        print(f"wrote {args.out}/report.md, plan.json, plan.png and {len(files)} gin file(s)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.liew:
        return _run_liew(args)
    if args.flops is None:
        print("moejax plan: error: --flops (the training budget) is required without --liew")
        return 2
    return _run_joint_moe(args)

"""``moejax plan``: recommended MoE configurations for a budget, as reports and gin files.

Two modes.
- Joint MoE (default): ``--flops`` (training FLOPs), optionally ``--memory-bytes`` (bf16 weights,
  plus KV cache for ``--context-tokens``), ``--inference-tokens`` (expected tokens served, 2 N_act
  FLOPs each, paid from ``--flops``), ``--experts=1,2,4,...``, ``--fit=fit.json`` (a ``joint_moe``
  fit from ``moejax fit``; default the paper's Table 3), ``--attention`` (``mha``, the paper's;
  ``gqa:GROUP``; ``mla:KV_RANK[:ROPE_DIM]``: see ``moejax.plan.attention``; several,
  comma-separated, are planned side by side) and ``--hardware`` for the serving cost.
  Per expert count: the inference-aware optimum (6 N D + 2 N D_inf = flops), shrunk to the largest
  model that fits the memory budget. Out: a table per expert count (active/total parameters,
  d_model, tokens, predicted loss, serving cost per token), with the counts that fit no model and
  why. Expert counts are whole numbers: the law takes real E, but every plan becomes a model with
  that many experts.
- Liew et al. (``--liew``): ``--memory-params`` (total-parameter budget), ``--active-params``
  (inference budget), a grid of ``--depths``, ``--widths``, ``--experts``, ``--top-ks``,
  ``--granularities``, one ``--attention``. Out: concrete architectures counted exactly by
  ``moejax.model.accounting``, ranked by the rule (max N_total, then min sparsity, then min E).

With ``--out=DIR``: ``plan.json``, ``report.md``, ``plan.png`` and one gin file per top
recommendation (``recommended_<rank>_<name>.gin``) that ``moejax train`` runs as it is.
Bad arguments and budgets no model meets exit 2 with ``moejax plan: error: ...`` on stderr, before
anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
from pathlib import Path

from moejax.errors import ConfigError
from moejax.files import directory_problem, write_atomic, write_figure
from moejax.model import accounting
from moejax.model.config import validate_model_config
from moejax.plan.attention import MultiHead, parse_attention, parse_attentions
from moejax.plan.hardware import HARDWARE_PRESETS, serving_cost_per_token
from moejax.plan.joint_moe import JOINT_MOE_TABLE3, InfeasiblePlan, budget_plans, kv_cache_bytes
from moejax.plan.liew import Candidate
from moejax.plan.recommend import (candidate_config, candidate_grid, gin_text,
                                   joint_moe_architecture, joint_moe_learning_rate, rank_by_liew)

SERVING_DEVICES = (1, 2, 4, 8, 16, 32, 64)  # device counts the serving cost is the best of


def _number(text: str) -> float:
    """An argparse type: a real number (inf allowed, nan not)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    return value


def _positive(text: str) -> float:
    """An argparse type: a finite number > 0 (a budget)."""
    value = _number(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _positive_or_inf(text: str) -> float:
    """An argparse type: a number > 0; inf means no limit."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (or inf for no limit), got {text}")
    return value


def _non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0 (a token count)."""
    value = _number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _count(text: str) -> int:
    """An argparse type: a whole number >= 1 (``8``, ``8.0`` and ``1e3`` are whole)."""
    value = _number(text.strip())
    if not (1 <= value < math.inf and value.is_integer()):
        raise argparse.ArgumentTypeError(f"{text.strip()!r} is not a whole number >= 1")
    return int(value)


def _counts(text: str) -> list[int]:
    """An argparse type: a comma-separated list of whole numbers >= 1, at least one."""
    counts = [_count(item) for item in text.split(",") if item.strip()]
    if not counts:
        raise argparse.ArgumentTypeError(f"{text!r} lists no number")
    return counts


def _attentions(text: str):
    """An argparse type: planned attentions (``mha``, ``gqa:8``, ``mla:256``, ``mla:512:64``),
    comma-separated."""
    try:
        return parse_attentions(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flops", type=_positive, default=None,
                        help="training budget in FLOPs (6 N_act D, plus 2 N_act per inference "
                             "token); required without --liew")
    parser.add_argument("--memory-bytes", type=_positive, default=None,
                        help="memory budget in bytes (bf16 weights)")
    parser.add_argument("--context-tokens", type=_non_negative, default=0.0,
                        help="KV-cache tokens counted in memory")
    parser.add_argument("--inference-tokens", type=_non_negative, default=0.0,
                        help="expected tokens served, paid from --flops")
    parser.add_argument("--experts", type=_counts, default="1,2,4,8,16,32,64",
                        help="expert counts to consider (whole numbers >= 1)")
    parser.add_argument("--fit", type=Path, default=None,
                        help="fit.json of a joint_moe fit (default: Table 3)")
    parser.add_argument("--attention", type=_attentions, default=(MultiHead(),),
                        help="the planned models' attention, which sets their KV cache: mha "
                             "(default, the paper's), gqa:GROUP (query heads per key/value "
                             "head), mla:KV_RANK[:ROPE_DIM] (latent attention; ROPE_DIM 32); "
                             "several, comma-separated, are compared")
    parser.add_argument("--hardware", choices=sorted(HARDWARE_PRESETS), default="h100")
    parser.add_argument("--serving-context", type=_non_negative, default=4096,
                        help="context per served sequence")
    parser.add_argument("--liew", action="store_true",
                        help="rank concrete architectures by Liew et al.'s rule")
    parser.add_argument("--memory-params", type=_positive, default=None,
                        help="--liew: total-parameter budget")
    parser.add_argument("--active-params", type=_positive_or_inf, default=math.inf,
                        help="--liew: active-parameter budget")
    parser.add_argument("--depths", type=_counts, default="4,8,12,16,24",
                        help="--liew: blocks to consider")
    parser.add_argument("--widths", type=_counts, default="256,512,768,1024,1536,2048",
                        help="--liew: d_model values (heads of 64)")
    parser.add_argument("--top-ks", type=_counts, default="1,2,4,8", help="--liew: top-k values")
    parser.add_argument("--granularities", type=_counts, default="1",
                        help="--liew: expert granularities (d_ff / d_expert)")
    parser.add_argument("--vocab-size", type=_count, default=8064,
                        help="--liew: vocabulary rows counted")
    parser.add_argument("--top", type=_count, default=3,
                        help="gin files written for this many recommendations (>= 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for plan.json, report.md, plan.png, gin files")


def load_joint_moe_fit(path: Path) -> dict[str, float]:
    """The parameters of a ``joint_moe`` fit.json; ConfigError naming the file and the problem."""
    try:
        fitted = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"--fit={path}: cannot read it: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"--fit={path} is not JSON: {err}") from None
    if not isinstance(fitted, dict):
        raise ConfigError(f"--fit={path} holds no fit (a JSON object with 'law' and 'parameters')")
    if fitted.get("law") != "joint_moe":
        raise ConfigError(f"{path} holds a {fitted.get('law')!r} fit; plan needs joint_moe")
    parameters = fitted.get("parameters")
    if not isinstance(parameters, dict):
        raise ConfigError(f"--fit={path} has no 'parameters' object")
    missing = [name for name in JOINT_MOE_TABLE3 if name not in parameters]
    if missing:
        raise ConfigError(f"--fit={path} lacks the joint_moe parameter(s) {', '.join(missing)} "
                          f"(a joint_moe fit has {', '.join(JOINT_MOE_TABLE3)})")
    bad = [name for name in JOINT_MOE_TABLE3
           if isinstance(parameters[name], bool) or not isinstance(parameters[name], (int, float))
           or not math.isfinite(parameters[name])]
    if bad:
        raise ConfigError(f"--fit={path}: parameter(s) {', '.join(bad)} are not finite numbers")
    values = {name: float(parameters[name]) for name in JOINT_MOE_TABLE3}
    if not 1 < values["E_start"] < values["E_max"]:
        raise ConfigError(f"--fit={path}: the saturating expert count needs 1 < E_start < E_max, "
                          f"got E_start = {values['E_start']:g}, E_max = {values['E_max']:g}")
    return values


def check_out(out: Path | None) -> None:
    """Refuse an --out that cannot become a directory, before any work is done."""
    problem = out is not None and directory_problem(out)
    if problem:
        raise ConfigError(f"--out={out}: {problem}")


def _write_out(out: Path, texts: dict[str, str]) -> None:
    """Every file of a plan, made in memory first, so a refused plan leaves no directory."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        write_atomic(out / name, text)


def _serving(plan, args, attention) -> dict | None:
    """Yun et al.'s serving cost of a plan on --hardware; None when the weights fit on none of
    SERVING_DEVICES devices."""
    try:
        kv_per_token = kv_cache_bytes(plan.d_model, 1, attention=attention)
        cost = serving_cost_per_token(plan.n_total, plan.n_active, kv_per_token,
                                      args.serving_context, args.hardware, SERVING_DEVICES)
    except ValueError:
        return None
    return dataclasses.asdict(cost)


def joint_moe_rows(args, parameters) -> tuple[list[dict], list[dict]]:
    """(one plan per expert count and attention under the compute, memory and inference
    budgets, [{E, attention, reason}] for those no model of which meets them). Raises
    InfeasiblePlan only when no attention has a plan."""
    rows, skipped, refusals = [], [], []
    for attention in args.attention:
        try:
            plans, refused = budget_plans(
                args.flops, args.experts, memory_bytes=args.memory_bytes,
                context_tokens=args.context_tokens, inference_tokens=args.inference_tokens,
                parameters=parameters, attention=attention)
        except InfeasiblePlan as err:
            refusals.append(err)
            refused = [(num_experts, str(err)) for num_experts in args.experts]
            plans = []
        rows += [{"attention": attention.spec(), "E": plan.num_experts, "d_model": plan.d_model,
                  "n_active": plan.n_active, "n_total": plan.n_total, "tokens": plan.tokens,
                  "loss": plan.loss, "memory_bytes": plan.memory_bytes,
                  "size_set_by": plan.size_set_by, "serving": _serving(plan, args, attention)}
                 for plan in plans]
        skipped += [{"E": num_experts, "attention": attention.spec(), "reason": reason}
                    for num_experts, reason in refused]
    if not rows:
        raise refusals[0] if len(refusals) == 1 else InfeasiblePlan(
            "no attention fits a model: " + "; ".join(
                f"{a.spec()}: {err}" for a, err in zip(args.attention, refusals)))
    return rows, skipped


def _cost_cell(serving: dict | None) -> str:
    if serving is None:
        return f"over {max(SERVING_DEVICES)} devices"
    return f"{3600 * serving['cost_per_token']:.3g}"


def _joint_moe_report(args, rows, skipped, source) -> str:
    out = io.StringIO()
    budget = f"training FLOPs {args.flops:.3g}"
    if args.memory_bytes is not None:
        budget += (f", memory {args.memory_bytes:.3g} bytes (+ KV cache of "
                   f"{args.context_tokens:g} tokens)")
    if args.inference_tokens:
        budget += (f", {args.inference_tokens:.3g} inference tokens (2 N_act FLOPs each, paid "
                   "from the training FLOPs)")
    out.write(f"# moejax plan (Joint MoE law, {source})\n\nBudget: {budget}.\n")
    for attention in args.attention:
        mine = [row for row in rows if row["attention"] == attention.spec()]
        out.write(f"\n{'### ' if len(args.attention) > 1 else ''}Attention: "
                  f"{attention.describe()}.\n\n")
        if mine:
            out.write(f"| E | d_model | N_act | N_total | tokens | predicted loss | size set by | "
                      f"{args.hardware} cost/token (device-s) |\n"
                      "|---|---|---|---|---|---|---|---|\n")
        for row in mine:
            out.write(f"| {row['E']:g} | {row['d_model']:.0f} | {row['n_active']:.3g} | "
                      f"{row['n_total']:.3g} | {row['tokens']:.3g} | {row['loss']:.4f} | "
                      f"{row['size_set_by']} | {_cost_cell(row['serving'])} |\n")
        refused = [item for item in skipped if item["attention"] == attention.spec()]
        if refused:
            out.write(("\n" if mine else "") + "No model fits for:\n"
                      + "".join(f"- {item['reason']}\n" for item in refused))
    best = min(rows, key=lambda r: r["loss"])
    with_attention = f" with {best['attention']}" if len(args.attention) > 1 else ""
    out.write(f"\nRecommended: E = {best['E']:g}{with_attention} (lowest predicted loss).\n")
    return out.getvalue()


def _plot(path: Path, rows: list[dict], title: str) -> None:
    """Predicted loss against E (a line per attention), and the plans' sizes and tokens (one
    attention) or active and total parameters per attention (several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attentions = list(dict.fromkeys(r["attention"] for r in rows))
    fig, (ax_loss, ax_size) = plt.subplots(1, 2, figsize=(10, 4))
    for name in attentions:
        mine = [r for r in rows if r["attention"] == name]
        experts = [r["E"] for r in mine]
        ax_loss.plot(experts, [r["loss"] for r in mine], marker="o", label=name)
        if len(attentions) > 1:
            line, = ax_size.plot(experts, [r["n_total"] for r in mine], marker="s",
                                 label=f"N_total, {name}")
            ax_size.plot(experts, [r["n_active"] for r in mine], marker="o", linestyle="--",
                         color=line.get_color(), label=f"N_act, {name}")
        else:
            ax_size.plot(experts, [r["n_active"] for r in mine], marker="o", label="N_act")
            ax_size.plot(experts, [r["n_total"] for r in mine], marker="s", label="N_total")
            ax_size.plot(experts, [r["tokens"] for r in mine], marker="^",
                         label="training tokens")
    if len(attentions) > 1:
        ax_loss.legend()
    ax_loss.set_xscale("log", base=2)
    ax_loss.set_xlabel("experts E")
    ax_loss.set_ylabel("predicted loss")
    ax_loss.set_title(title)
    ax_loss.grid(alpha=0.3)
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
        parameters, source = load_joint_moe_fit(args.fit), f"fit {args.fit}"
    rows, skipped = joint_moe_rows(args, parameters)
    report = _joint_moe_report(args, rows, skipped, source)
    print(report)
    if args.out is not None:
        ranked = sorted(rows, key=lambda r: r["loss"])[: args.top]
        texts = {}
        for rank, row in enumerate(ranked, 1):
            config = joint_moe_architecture(row["d_model"], int(row["E"]),
                                            attention=parse_attention(row["attention"]))
            suffix = "" if len(args.attention) == 1 else "_" + row["attention"].replace(":", "-")
            texts[f"recommended_{rank}_E{int(row['E'])}{suffix}.gin"] = gin_text(
                config, tokens=row["tokens"], learning_rate=joint_moe_learning_rate(config),
                title=f"moejax plan rank {rank}: E = {row['E']:g}, {row['attention']}, "
                      f"predicted loss {row['loss']:.4f}, {row['tokens']:.3g} tokens")
        files = list(texts)
        report += "\nGin files (train with `moejax train --gin_file=FILE --workdir=...`): " + \
            ", ".join(f"`{f}`" for f in files) + "\n"
        texts["plan.json"] = json.dumps(
            {"law": "joint_moe", "source": source,
             "attention": [attention.describe() for attention in args.attention],
             "plans": rows, "skipped": skipped,
             "recommended": ranked[0], "gin_files": files}, indent=2)
        texts["report.md"] = report
        _write_out(args.out, texts)
        title = f"compute {args.flops:.2g} FLOPs"
        if args.memory_bytes is not None:
            title += f", memory {args.memory_bytes:.2g} B"
            title += f" with {args.context_tokens:g} cached tokens" if args.context_tokens else ""
        _plot(args.out / "plan.png", rows, title)
        print(f"wrote {args.out}/report.md, plan.json, plan.png and {len(files)} gin file(s)")
    return 0


def _check_widths(widths: list[int], vocab_size: int) -> None:
    """Every --widths value must make a valid model with heads of 64 (candidate_config)."""
    for width in widths:
        config = candidate_config(Candidate(1, width, 1, 1), vocab_size=vocab_size)
        try:
            validate_model_config(config)
        except ConfigError as err:
            raise ConfigError(f"--widths: {width} makes no valid model ({err}); use multiples "
                              "of 64") from None


def _liew_candidates(args) -> list:
    _check_widths(args.widths, args.vocab_size)
    candidates = candidate_grid(args.depths, args.widths, args.experts, args.top_ks,
                                args.granularities)
    if not candidates:
        raise ConfigError("--depths/--widths/--experts/--top-ks/--granularities give no candidate: "
                          "each needs 1 <= top-k <= E, a granularity dividing 4 x width, and "
                          "top-k = granularity = 1 when E = 1")
    return candidates


def _no_liew_fit(args, candidates) -> str:
    """Why no candidate fits: the budgets against the grid's smallest counts."""
    every = rank_by_liew(candidates, vocab_size=args.vocab_size, memory_budget_params=math.inf,
                         attention=args.attention[0])
    return (f"no candidate fits the budgets N_total <= {args.memory_params:.3g}, N_active <= "
            f"{args.active_params:.3g}: the grid's smallest N_total is "
            f"{min(r.n_total for r in every):.3g} and smallest N_active "
            f"{min(r.n_active for r in every):.3g}; raise them or add smaller --depths/--widths")


def _run_liew(args) -> int:
    candidates = _liew_candidates(args)
    attention = args.attention[0]  # one: _check_arguments
    ranked = rank_by_liew(candidates, vocab_size=args.vocab_size,
                          memory_budget_params=args.memory_params,
                          inference_budget_params=args.active_params, attention=attention)
    if not ranked:
        raise ConfigError(_no_liew_fit(args, candidates))
    out = io.StringIO()
    out.write(f"# moejax plan (Liew et al. rule)\n\nBudgets: N_total <= {args.memory_params:.3g}, "
              f"N_active <= {args.active_params:.3g}; {len(candidates)} candidates, "
              f"{len(ranked)} feasible. Attention: {attention.describe()}.\n\n"
              "| rank | architecture | N_total | N_active | sparsity E/K |\n"
              "|---|---|---|---|---|\n")
    for rank, item in enumerate(ranked[:20], 1):
        out.write(f"| {rank} | {item.candidate.name} | {item.n_total:.4g} | "
                  f"{item.n_active:.4g} | {item.candidate.sparsity:g} |\n")
    report = out.getvalue()
    print(report)
    if args.out is not None:
        texts = {}
        for rank, item in enumerate(ranked[: args.top], 1):
            config = candidate_config(item.candidate, vocab_size=args.vocab_size,
                                      attention=attention)
            tokens = None if args.flops is None else args.flops / (
                6.0 * accounting.parameter_counts(config).active)
            texts[f"recommended_{rank}_{item.candidate.name}.gin"] = gin_text(
                dataclasses.replace(config, vocab_size=None), tokens=tokens,
                title=f"moejax plan (Liew rule) rank {rank}: {item.candidate.name}")
        files = list(texts)
        texts["plan.json"] = json.dumps(
            {"rule": "liew", "attention": attention.describe(),
             "ranked": [{"name": r.candidate.name, "n_total": r.n_total, "n_active": r.n_active,
                         **dataclasses.asdict(r.candidate)} for r in ranked],
             "gin_files": files}, indent=2)
        texts["report.md"] = report + "\nGin files: " + ", ".join(f"`{f}`" for f in files) + "\n"
        _write_out(args.out, texts)
        _plot_liew(args.out / "plan.png", ranked, args.memory_params, args.active_params,
                   args.top)
        print(f"wrote {args.out}/report.md, plan.json, plan.png and {len(files)} gin file(s)")
    return 0


def _other_mode_budgets(args) -> list[str]:
    """The budget flags given that the chosen mode would ignore (a silently dropped budget)."""
    if args.liew:
        given = {"--memory-bytes": args.memory_bytes is not None,
                 "--inference-tokens": args.inference_tokens != 0,
                 "--context-tokens": args.context_tokens != 0, "--fit": args.fit is not None}
    else:
        given = {"--memory-params": args.memory_params is not None,
                 "--active-params": args.active_params != math.inf}
    return [flag for flag, is_given in given.items() if is_given]


def _check_arguments(args) -> None:
    """What the mode needs, and an --out that can be written, before any work."""
    if args.liew and args.memory_params is None:
        raise ConfigError("--liew needs --memory-params (the total-parameter budget)")
    if not args.liew and args.flops is None:
        raise ConfigError("--flops (the training budget) is required without --liew")
    ignored = _other_mode_budgets(args)
    if ignored:
        mode = "--liew" if args.liew else "the Joint MoE mode (without --liew)"
        raise ConfigError(f"{', '.join(ignored)} would be ignored by {mode}; the Joint MoE mode "
                          "takes --memory-bytes, --context-tokens, --inference-tokens, --fit; "
                          "--liew takes --memory-params, --active-params")
    if args.liew and len(args.attention) > 1:
        raise ConfigError(f"--liew ranks one attention at a time; --attention names "
                          f"{len(args.attention)}: "
                          f"{', '.join(a.spec() for a in args.attention)}")
    check_out(args.out)


def run(args: argparse.Namespace) -> int:
    try:
        _check_arguments(args)
        return _run_liew(args) if args.liew else _run_joint_moe(args)
    except (ConfigError, ValueError) as err:  # InfeasiblePlan is a ValueError
        print(f"moejax plan: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # --out not writable (permissions, a full disk)
        print(f"moejax plan: error: cannot write --out={args.out}: {err}", file=sys.stderr)
        return 1

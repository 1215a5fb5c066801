"""``moejax plan``: recommended Joint MoE configurations for a budget.

In: ``--flops`` (training FLOPs), optionally ``--memory-bytes`` (bf16 weights, plus KV cache for
``--context-tokens`` cached tokens), ``--inference-tokens`` (expected tokens served, charged at
2 N_act FLOPs each), ``--experts=1,2,4,...``, ``--fit=fit.json`` (a ``joint_moe`` fit from ``moejax
fit``; default: the paper's Table 3) and ``--hardware`` for serving cost. Out: a Markdown table per
expert count (active/total parameters, d_model, tokens, predicted loss, serving cost per token) on
stdout, the recommended E, and with ``--out=FILE`` the same as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import scipy.optimize

from moejax.plan.hardware import HARDWARE_PRESETS, serving_cost_per_token
from moejax.plan.joint_moe import (JOINT_MOE_TABLE3, compute_optimal, inference_aware_optimal, joint_moe_counts,
                                   kv_cache_bytes, memory_optimal)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flops", type=float, required=True, help="training budget in FLOPs (6 N_act D)")
    parser.add_argument("--memory-bytes", type=float, default=None, help="memory budget in bytes (bf16 weights)")
    parser.add_argument("--context-tokens", type=float, default=0.0, help="KV-cache tokens counted in memory")
    parser.add_argument("--inference-tokens", type=float, default=0.0, help="expected tokens served")
    parser.add_argument("--experts", default="1,2,4,8,16,32,64", help="expert counts to consider")
    parser.add_argument("--fit", type=Path, default=None, help="fit.json of a joint_moe fit (default: Table 3)")
    parser.add_argument("--hardware", choices=sorted(HARDWARE_PRESETS), default="h100")
    parser.add_argument("--serving-context", type=float, default=4096, help="context per served sequence")
    parser.add_argument("--out", type=Path, default=None, help="write the plans as JSON here")


def run(args: argparse.Namespace) -> int:
    parameters = JOINT_MOE_TABLE3
    if args.fit is not None:
        fitted = json.loads(args.fit.read_text())
        if fitted.get("law") != "joint_moe":
            print(f"moejax plan: error: {args.fit} holds a {fitted.get('law')!r} fit; plan needs joint_moe")
            return 2
        parameters = fitted["parameters"]
    experts = [float(x) for x in args.experts.split(",") if x.strip()]
    rows = []
    for num_experts in experts:
        if args.memory_bytes is not None:
            _, plans = memory_optimal(args.flops, args.memory_bytes, [num_experts], args.context_tokens, parameters)
            if not plans:
                continue
            plan = plans[0]
            n_active, tokens, loss, d_model = plan.n_active, plan.tokens, plan.loss, plan.d_model
        elif args.inference_tokens > 0:
            n_active, tokens, loss = inference_aware_optimal(args.flops, args.inference_tokens, num_experts, parameters)
            d_model = None
        else:
            n_active, tokens = compute_optimal(args.flops, num_experts, parameters)
            _, _, loss = inference_aware_optimal(args.flops, 0.0, num_experts, parameters)
            d_model = None
        if d_model is None:
            d_model = scipy.optimize.brentq(lambda d: joint_moe_counts(d, num_experts).n_active - n_active, 1e-3, 1e7)
        counts = joint_moe_counts(d_model, num_experts)
        serving = serving_cost_per_token(counts.n_total, counts.n_active, kv_cache_bytes(d_model, 1),
                                         args.serving_context, args.hardware)
        rows.append({"E": num_experts, "d_model": d_model, "n_active": counts.n_active, "n_total": counts.n_total,
                     "tokens": tokens, "loss": loss, "serving": dataclasses.asdict(serving)})
    if not rows:
        print("moejax plan: error: no expert count fits the memory budget")
        return 2
    best = min(rows, key=lambda row: row["loss"])
    print(f"| E | d_model | N_act | N_total | tokens | loss | {args.hardware} cost/token (device-s) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['E']:g} | {row['d_model']:.0f} | {row['n_active']:.3g} | {row['n_total']:.3g} | "
              f"{row['tokens']:.3g} | {row['loss']:.4f} | {3600 * row['serving']['cost_per_token']:.3g} |")
    print(f"\nRecommended: E = {best['E']:g} (lowest predicted loss).")
    if args.out is not None:
        args.out.write_text(json.dumps({"recommended": best, "plans": rows}, indent=2))
    return 0

"""``moejax generate``: continue prompts with one checkpoint of a run.

    moejax generate --workdir=runs/a [--step=latest|N] --prompt="Once upon" [--prompt=...]
        [--prompts_file=FILE] [--max_new_tokens=64] [--temperature=1.0] [--top_k=0]
        [--top_p=1.0] [--seed=0] [--eval_capacity_factor=none|X] [--out=FILE.jsonl]

Prompts come from ``--prompt`` (repeatable; ``--prompt=`` is an empty prompt, for unconditional
text) and ``--prompts_file`` (one prompt per line; a ``.jsonl`` file: one object with a
"prompt" string per line). Each continuation is printed; ``--out`` also writes one JSON record per
prompt (prompt, text, token ids, why it stopped, the step and the sampling), written whole or not
at all. The tokens are those of the run's own vocabulary; MoE layers route dropless unless
``--eval_capacity_factor`` says otherwise, as ``moejax eval`` does. Expert-choice models are
refused: their routing of a token depends on the rest of the batch, so they cannot decode one
token at a time.

Exit status: 0 generated, 1 the run or checkpoint cannot be used (the message says why), 2 bad
arguments or prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from moejax import files
from moejax.arguments import capacity_factor_or_none, checkpoint_step, integer_at_least


class _Refused(Exception):
    """Why generation cannot be done, for a one-line error."""


def _number(kind, check, hint):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{hint}, got {text}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="the run directory to generate with")
    parser.add_argument("--step", type=checkpoint_step, default="latest",
                        help="checkpoint step: 'latest' (default) or a step number")
    parser.add_argument("--prompt", action="append", default=[],
                        help="a prompt to continue; repeatable (--prompt= for an empty one)")
    parser.add_argument("--prompts_file", default=None,
                        help="prompts, one per line (.jsonl: objects with a \"prompt\" string)")
    parser.add_argument("--max_new_tokens", type=integer_at_least(1), default=64,
                        help="tokens to generate per prompt at most (default 64)")
    parser.add_argument("--temperature", type=_number(float, lambda v: v >= 0, "must be >= 0"),
                        default=1.0, help="0 is greedy; default 1.0")
    parser.add_argument("--top_k", type=integer_at_least(0), default=0,
                        help="sample among the k most likely tokens only (default 0: all)")
    parser.add_argument("--top_p", type=_number(float, lambda v: 0 < v <= 1, "must be in (0, 1]"),
                        default=1.0, help="nucleus sampling mass (default 1.0: all)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--eval_capacity_factor", type=capacity_factor_or_none, default=None,
                        help="'none' (default): MoE layers route dropless; a number: with that "
                             "capacity factor over each step's tokens")
    parser.add_argument("--out", default=None, help="also write the results here as JSON lines")
    parser.add_argument("--quiet", action="store_true", help="no progress output (notes and "
                        "errors are still printed)")


def read_prompts(prompts: list[str], prompts_file: str | None) -> list[str]:
    """``--prompt`` values, then those of ``--prompts_file``; ValueError naming a bad line."""
    out = list(prompts)
    if prompts_file is None:
        return out
    try:
        with open(prompts_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"--prompts_file {prompts_file} is not UTF-8 text") from None
    except OSError as e:
        raise ValueError(f"--prompts_file {prompts_file}: {e.strerror}") from None
    if prompts_file.endswith(".jsonl"):
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{prompts_file}:{number}: not JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f"{prompts_file}:{number}: expected an object with a "
                                 "\"prompt\" string")
            out.append(record["prompt"])
    else:
        out.extend(line for line in lines if line.strip())
    return out


def continuation(vocabulary, prompt_ids: list[int], new_ids: list[int]) -> str:
    """The text the new tokens add to the prompt's. Decoded together with the prompt, since a
    SentencePiece piece's leading space is dropped when it starts a decoded text."""
    before = vocabulary.decode(prompt_ids)
    whole = vocabulary.decode(prompt_ids + new_ids)
    return whole[len(before):] if whole.startswith(before) else vocabulary.decode(new_ids)


def generate_run(workdir: str, prompts: list[str], *, step="latest", max_new_tokens: int = 64,
                 sampling=None, seed: int = 0, eval_capacity_factor: float | None = None,
                 log=print, show_progress: bool = True) -> list[dict]:
    """One record per prompt: prompt, text, tokens, stop, step, sampling. Raises _Refused, or the
    configuration's, checkpoint's or vocabulary's own error, before generating. ``log`` gets
    notes, and progress lines unless ``show_progress`` is False."""
    import dataclasses

    import jax

    from moejax.data.vocabularies import get_vocabulary
    from moejax.eval.score import with_eval_capacity
    from moejax.generate.generation import generate
    from moejax.generate.sampling import Sampling
    from moejax.model.functional import build_model
    from moejax.train.run import choose_checkpoint_step, load_run_configs, restore_params

    sampling = sampling or Sampling()
    workdir = os.path.abspath(workdir)
    model_config, data_config, _ = load_run_configs(workdir)
    if model_config.moe is not None and model_config.moe.routing == "expert_choice":
        raise _Refused("the run routes by expert choice (MoEConfig.routing = 'expert_choice'): "
                       "each token's experts depend on the other tokens of the batch, so it "
                       "cannot decode one token at a time")
    vocabulary = get_vocabulary(data_config.vocabulary)
    encoded = [list(vocabulary.encode(text)) for text in prompts]
    longest = max(map(len, encoded)) + 1 + max_new_tokens  # + the start token
    if longest > data_config.seq_len:
        log(f"note: prompts of up to {max(map(len, encoded))} tokens plus {max_new_tokens} new "
            f"ones reach position {longest - 1}, past the {data_config.seq_len} positions the run "
            "trained on; what comes after is extrapolation")
    chosen = choose_checkpoint_step(workdir, step)
    _, params, buffers, _ = restore_params(workdir, chosen)
    model = build_model(with_eval_capacity(model_config, eval_capacity_factor))
    last = [0.0]

    def progress(done: int, total: int, seconds: float) -> None:
        if show_progress and (done == total or seconds - last[0] >= 5):
            last[0] = seconds
            log(f"  {done}/{total} tokens per prompt, {done * len(prompts) / seconds:.1f} "
                f"tokens/s")

    results = generate(model, params, buffers, encoded, max_new_tokens=max_new_tokens,
                       sampling=sampling, vocab_size=vocabulary.vocab_size,
                       rng=jax.random.key(seed), progress=progress)
    return [{"prompt": text, "text": continuation(vocabulary, prompt_ids, made.tokens),
             "tokens": made.tokens, "stop": made.stop, "workdir": workdir, "step": chosen,
             "seed": seed, "max_new_tokens": max_new_tokens, **dataclasses.asdict(sampling)}
            for text, prompt_ids, made in zip(prompts, encoded, results)]


def run(args: argparse.Namespace) -> int:
    from moejax.errors import ConfigError
    from moejax.generate.generation import NonFiniteLogits
    from moejax.generate.sampling import Sampling
    from moejax.train.checkpoint import CheckpointError

    def fail(message: str, status: int) -> int:
        print(f"moejax generate: error: {message}", file=sys.stderr)
        return status

    if not os.path.isdir(args.workdir):
        return fail(f"--workdir {args.workdir} is not a directory", 2)
    try:
        prompts = read_prompts(args.prompt, args.prompts_file)
    except ValueError as e:
        return fail(str(e), 2)
    if not prompts:
        return fail("no prompts: give --prompt (repeatable; --prompt= for an empty one) or "
                    "--prompts_file", 2)
    if args.out is not None:
        problem = files.directory_problem(os.path.dirname(os.path.abspath(args.out)))
        if problem or os.path.isdir(args.out):
            return fail(f"--out {args.out}: {problem or 'is a directory'}", 2)
    def log(line: str) -> None:
        print(line, file=sys.stderr)

    started = time.perf_counter()
    try:
        records = generate_run(args.workdir, prompts, step=args.step,
                               max_new_tokens=args.max_new_tokens,
                               sampling=Sampling(args.temperature, args.top_k, args.top_p),
                               seed=args.seed, eval_capacity_factor=args.eval_capacity_factor,
                               log=log, show_progress=not args.quiet)
    except (_Refused, CheckpointError, ConfigError, NonFiniteLogits) as e:
        return fail(str(e), 1)
    for record in records:
        print(f"--- {record['prompt']!r} (step {record['step']}, stop: {record['stop']})")
        print(record["prompt"] + record["text"])
    if args.out is not None:
        files.make_directories(os.path.dirname(os.path.abspath(args.out)))
        files.write_atomic(args.out, "".join(json.dumps(r) + "\n" for r in records))
    if not args.quiet:
        log(f"moejax generate: {len(records)} prompt(s) in {time.perf_counter() - started:.1f} s"
            + (f" -> {args.out}" if args.out else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moejax generate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""``moejax export``: write one checkpoint of a run as a Hugging Face model directory.

    moejax export --workdir=runs/a [--step=latest|N] [--format=auto|mixtral|qwen2_moe|qwen3_moe|
        olmoe|deepseek_v3|llama|qwen3] [--dtype=float32|bfloat16] [--max_shard_size=5GB] [--out=DIR]

A dense run is written as Llama (as Qwen3 with per-head query/key norms), a run with latent
attention as DeepSeek-V3. The directory
(default ``<workdir>/exports/<format>-step<N>``) holds ``config.json``, the weights as
safetensors (sharded past ``--max_shard_size``, with their index), the tokenizer files and
``moejax_export.json`` (which run, step, configs and code wrote it). It is written next to its
final place and renamed into it whole, so a failed or interrupted export leaves nothing; an
existing directory is never overwritten. Then, in Python:
``transformers.AutoModelForCausalLM.from_pretrained(DIR)``.

Exit status: 0 written, 1 the run, checkpoint or model cannot be exported (the message says
why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import contextlib
import re
import shutil
import signal
import sys
import tempfile
import time

import numpy as np

from moejax import files
from moejax.arguments import checkpoint_step

DTYPES = ("float32", "bfloat16")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def shard_size(text: str) -> int:
    """'5GB', '500MB', '2GiB' or a byte count -> bytes (> 0)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 5GB, 500MB or 2GiB")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text}")
    return size


def _out(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a directory to create, or leave --out "
                                         "out for <workdir>/exports/<format>-step<N>")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from moejax.export.hf import FORMATS

    parser.add_argument("--workdir", required=True, help="the run directory to export from")
    parser.add_argument("--step", type=checkpoint_step, default="latest",
                        help="checkpoint step to export: 'latest' (default) or a step number")
    parser.add_argument("--format", choices=("auto", *FORMATS), default="auto",
                        help="'auto' (default): the first that holds the model of mixtral, "
                             "qwen2_moe (no query/key norm), qwen3_moe (per-head), olmoe "
                             "(across heads), deepseek_v3 (latent attention); llama or qwen3 "
                             "for a dense model")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="stored dtype of the weights (default float32, as trained)")
    parser.add_argument("--max_shard_size", type=shard_size, default=shard_size("5GB"),
                        help="largest weight file before the weights are split (default 5GB)")
    parser.add_argument("--out", type=_out, default=None,
                        help="directory to create (default <workdir>/exports/<format>-step<N>); "
                             "must not exist")


class _Refused(Exception):
    """Why the export cannot be done, for a one-line error."""


class _Terminated(BaseException):
    """SIGTERM or SIGHUP while writing (a scheduler's kill, a closed terminal): like Ctrl-C, it
    must remove the partial directory before the process ends."""


@contextlib.contextmanager
def _terminate_as_exception():
    def raise_terminated(signum, frame):
        raise _Terminated(signal.Signals(signum).name)

    previous = {s: signal.signal(s, raise_terminated) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def export_run(workdir: str, *, step: str | int = "latest", format_name: str = "auto",
               dtype: str = "float32", max_shard_bytes: int = 5 * 10**9, out: str | None = None,
               log=print) -> dict:
    """Export one checkpoint of ``workdir``; returns what was written (directory, step, format,
    tensors, bytes of weights). A run, step, output or model that cannot be exported raises
    (_Refused, or the configuration's, checkpoint's or format's own error) before anything is
    written; an error while writing removes what was written and is raised again."""
    import jax.numpy as jnp

    from moejax.eval.score import code_version
    from moejax.export import hf, safetensors, tokenizer
    from moejax.model.config import validate_model_config
    from moejax.train.run import choose_checkpoint_step, load_run_configs, restore_params

    workdir = os.path.abspath(workdir)
    model_config, data_config, train_config = load_run_configs(workdir)
    validate_model_config(model_config)
    fmt = hf.choose_format(model_config, format_name)
    problem = tokenizer.tokenizer_problem(data_config.vocabulary)
    if problem:
        raise _Refused(f"no tokenizer for the run's vocabulary: {problem}")
    chosen_step = choose_checkpoint_step(workdir, step)
    out = os.path.abspath(out or os.path.join(workdir, "exports",
                                              f"{fmt.name}-step{chosen_step}"))
    if os.path.lexists(out):
        raise _Refused(f"{out} exists; give another --out (nothing is overwritten)")
    checkpoints = os.path.join(workdir, "checkpoints")
    if os.path.commonpath([out, checkpoints]) == checkpoints:
        raise _Refused(f"--out {out} is inside the run's checkpoints directory, which orbax "
                       "manages (old steps are deleted there); give another --out")
    problem = files.directory_problem(os.path.dirname(out))
    if problem:
        raise _Refused(f"--out {out}: {problem}")
    for note in fmt.notes(model_config):
        log(f"note: {note}")
    if model_config.moe is not None and model_config.moe.capacity_factor is not None:
        log(f"note: the run trained with capacity_factor = {model_config.moe.capacity_factor}; "
            "the exported model routes dropless, as `moejax eval` does by default")

    _, params, buffers, meta = restore_params(workdir, chosen_step)
    tensors = fmt.tensors(params, model_config, buffers)
    not_finite = [name for name, array in tensors if not np.isfinite(array).all()]
    if not_finite:
        raise _Refused(f"step {chosen_step} has non-finite weights in {len(not_finite)} "
                       f"tensor(s), e.g. {', '.join(not_finite[:3])}: a diverged run or a damaged "
                       "checkpoint; export an earlier --step")
    stored = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    created = files.make_directories(os.path.dirname(out))
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-",
                               dir=os.path.dirname(out))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o777 & ~umask)  # mkdtemp's is 0700: the export is for sharing
    try:
        with _terminate_as_exception():
            written = safetensors.write_checkpoint(
                partial, tensors, dtype=stored, max_shard_bytes=max_shard_bytes,
                metadata={"format": "pt"}, progress=lambda line: log(f"  {line}"))
            extra = {
                "config.json": fmt.config_json(
                    model_config, max_position_embeddings=data_config.seq_len, dtype=dtype),
                "generation_config.json": {"eos_token_id": 1, "pad_token_id": 0},
                "moejax_export.json": {
                    "workdir": workdir, "step": chosen_step, "format": fmt.name, "dtype": dtype,
                    "checkpoint_saved_at": meta.get("time"), "exported_at": time.time(),
                    "code_version": code_version(), "config": meta.get("config")},
            }
            for name, content in extra.items():
                with open(os.path.join(partial, name), "w") as f:
                    json.dump(content, f, indent=2)
            for name, content in tokenizer.tokenizer_files(data_config.vocabulary,
                                                           data_config.seq_len).items():
                with open(os.path.join(partial, name), "wb") as f:
                    f.write(content)
            if os.path.lexists(out):  # another export got there first
                raise _Refused(f"{out} appeared while writing; nothing is overwritten")
            try:
                os.rename(partial, out)
            except OSError as e:  # a non-empty directory appeared at out since the check
                raise _Refused(f"{out} appeared while writing ({e.strerror}); nothing is "
                               "overwritten") from None
    except BaseException as e:
        shutil.rmtree(partial, ignore_errors=True)
        files.remove_empty(created)  # the parents of --out this export made
        if isinstance(e, OSError) and e.filename is None:  # a full disk names no file
            e.filename = out
        raise
    return {"out": out, "workdir": workdir, "step": chosen_step, "format": fmt.name,
            "dtype": dtype, "tensors": len(tensors),
            "weight_bytes": sum(os.path.getsize(os.path.join(out, name)) for name in written)}


def run(args: argparse.Namespace) -> int:
    from moejax.errors import ConfigError
    from moejax.export.hf import ExportError
    from moejax.train.checkpoint import CheckpointError

    if not os.path.isdir(args.workdir):
        print(f"moejax export: error: --workdir {args.workdir} is not a directory", file=sys.stderr)
        return 2
    try:
        done = export_run(args.workdir, step=args.step, format_name=args.format,
                          dtype=args.dtype, max_shard_bytes=args.max_shard_size, out=args.out,
                          log=lambda line: print(line, file=sys.stderr))
    except (_Refused, ExportError, CheckpointError, ConfigError) as e:
        print(f"moejax export: error: {e}", file=sys.stderr)
        return 1
    except _Terminated as e:
        print(f"moejax export: {e} while writing; nothing was written", file=sys.stderr)
        return 128 + signal.Signals[str(e)].value
    print(f"moejax export: {done['workdir']} step {done['step']} as {done['format']} "
          f"({done['tensors']} tensors, {done['dtype']}, {done['weight_bytes'] / 2**20:.1f} MiB) "
          f"-> {done['out']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run without the top-level ``moejax`` command (``python -m moejax.export.cli``)."""
    from moejax.cli import _run

    parser = argparse.ArgumentParser(prog="moejax export", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return _run("export", sys.modules[__name__], parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

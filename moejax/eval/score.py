"""Score the checkpoints of trained runs: run directories in, one point per (run, step) out.

In: run directories written by ``moejax train`` (``config.json`` + finalized orbax checkpoints),
which steps to score (``"latest"``, ``"all"`` or a list of steps), the number of validation
batches per task and an evaluation capacity factor. Out: ``RunScores`` (the points of one run and
the failures, one message per step or per run), and through ``score_runs`` a points file.

The score of a task is the token-weighted mean negative log-likelihood (nats/token) over the
first ``eval_batches`` fixed, unshuffled validation batches of that task
(``moejax.data.eval_batches``), for the mixture and each of its tasks, computed by
``moejax.train.loop.evaluate`` with ``make_eval_step`` — the same numbers the training loop logs.
Evaluation is dropless by default whatever capacity the model trained with (the Joint MoE
protocol); ``eval_capacity_factor=X`` evaluates with capacity X instead (parameters are the same;
only ``MoEConfig.eval_capacity_factor`` changes). Expert-choice models have no dropless mode and
use their capacity (1.0 when unset). Scoring is deterministic: the same checkpoint scored twice
gives the same numbers.

A checkpoint that is missing, half-written, corrupt or written by another config fails with the
``CheckpointError`` message of ``moejax.train.run.restore_params``; the failure is recorded for that
(run, step) and scoring goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import time
from typing import Callable, Iterable, Sequence

import numpy as np

from moejax.eval import points as points_lib

LATEST, ALL = "latest", "all"


@dataclasses.dataclass
class RunScores:
    """What scoring one run produced: its points and (step or None for the run, message) pairs."""

    workdir: str
    points: list[dict] = dataclasses.field(default_factory=list)
    failures: list[tuple[int | None, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ScoreSummary:
    """Every run's scores; ``ok`` is False when any run or step failed."""

    runs: list[RunScores]
    points_path: str | None = None

    @property
    def points(self) -> list[dict]:
        return [p for r in self.runs for p in r.points]

    @property
    def failures(self) -> list[tuple[str, int | None, str]]:
        return [(r.workdir, step, message) for r in self.runs for step, message in r.failures]

    @property
    def ok(self) -> bool:
        return not self.failures


# --- small pure pieces -----------------------------------------------------------------------

def parse_steps(text: str) -> str | list[int]:
    """``"latest"``, ``"all"`` or ``"N,M,..."`` (non-negative integers) -> LATEST, ALL or a list."""
    text = text.strip()
    if text in (LATEST, ALL):
        return text
    try:
        steps = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--steps={text!r} is not 'latest', 'all' or a comma-separated list of "
                         "steps such as 1000,2000") from None
    if not steps or steps[0] < 0:
        raise ValueError(f"--steps={text!r} must name at least one step >= 0")
    return steps


def select_steps(available: Sequence[int], steps: str | Sequence[int]) -> list[int]:
    """The steps to score given the run's finalized steps (requested steps are kept even when
    absent, so that their absence is reported)."""
    if steps == LATEST:
        return list(available[-1:])
    if steps == ALL:
        return list(available)
    return sorted(set(int(s) for s in steps))


def batch_tokens(batches: Sequence[dict]) -> int:
    """Real tokens (loss weight 1) in a list of batches: what a validation score averages over."""
    return int(sum(float(np.sum(b["loss_weights"])) for b in batches))


def tokens_seen_real(metrics_path: str, step: int) -> int | None:
    """Sum of the per-step ``tokens`` of metrics.jsonl over steps 1..step, or None when the file
    is missing or does not hold every one of those steps."""
    if step == 0:
        return 0
    try:
        with open(metrics_path) as f:
            tokens = {}
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill mid-write
                if "step" in record and "tokens" in record and record["step"] <= step:
                    tokens[int(record["step"])] = float(record["tokens"])
    except OSError:
        return None
    if len(tokens) != step:
        return None
    return int(round(sum(tokens.values())))


def find_runs(root: str) -> list[str]:
    """Run directories (those holding config.json) under ``root``, sorted; a run's own
    subdirectories are not searched."""
    runs = []
    for directory, subdirs, files in os.walk(root):
        if "config.json" in files:
            runs.append(os.path.abspath(directory))
            subdirs[:] = []
        else:
            subdirs.sort()
    return sorted(runs)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``git rev-parse HEAD`` of the moejax source tree, or "unknown" (never fails)."""
    source = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"


def with_eval_capacity(model_config, eval_capacity_factor: float | None):
    """The model config evaluated with ``eval_capacity_factor`` (None = dropless); dense models
    are returned unchanged."""
    if model_config.moe is None:
        return model_config
    moe = dataclasses.replace(model_config.moe, eval_capacity_factor=eval_capacity_factor)
    return dataclasses.replace(model_config, moe=moe)


# --- scoring ---------------------------------------------------------------------------------

class EvalBatchCache:
    """Validation batches per (DataConfig, batches) so runs of one grid load them once."""

    def __init__(self):
        self._cache: dict[tuple, dict[str, list]] = {}

    def get(self, data_config, num_batches: int) -> dict[str, list]:
        from moejax import data as data_lib

        key = (json.dumps(dataclasses.asdict(data_config), sort_keys=True), num_batches)
        if key not in self._cache:
            self._cache[key] = {name: data_lib.eval_batches(data_config, name, num_batches)
                                for name in data_lib.eval_names(data_config)}
        return self._cache[key]


def score_state(eval_step: Callable, params, buffers, batches_by_name: dict[str, list]
                ) -> tuple[dict[str, float], dict[str, int]]:
    """(token-weighted mean NLL per task, real tokens scored per task) of one set of parameters."""
    from moejax.train.loop import evaluate

    losses = evaluate(eval_step, params, buffers, batches_by_name)
    return losses, {name: batch_tokens(b) for name, b in batches_by_name.items()}


def score_run(workdir: str, steps: str | Sequence[int] = LATEST, *,
              eval_batches: int | None = None, eval_capacity_factor: float | None = None,
              batch_cache: EvalBatchCache | None = None,
              on_step: Callable[[str, int, str | None], None] | None = None) -> RunScores:
    """Score the chosen checkpoints of one run.

    Args:
      workdir: a run directory.
      steps: LATEST, ALL or explicit steps (a missing one is a failure).
      eval_batches: validation batches per task (None = the run's TrainConfig.eval_batches).
      eval_capacity_factor: None = dropless; else the capacity factor used at evaluation.
      batch_cache: share validation batches between runs.
      on_step: called as (workdir, step, error message or None) after each step (progress).
    Returns RunScores; never raises for a bad run or checkpoint (they become failures).
    """
    from moejax.errors import ConfigError
    from moejax.model.functional import build_model
    from moejax.train.checkpoint import CheckpointError
    from moejax.train.run import checkpoint_steps, load_run_configs, restore_params
    from moejax.train.step import make_eval_step

    workdir = os.path.abspath(workdir)
    result = RunScores(workdir)
    try:
        model_config, data_config, train_config = load_run_configs(workdir)
        with open(os.path.join(workdir, "config.json")) as f:
            identity = points_lib.run_identity(workdir, json.load(f))
        available = checkpoint_steps(workdir)
    except (CheckpointError, ConfigError, OSError, ValueError) as e:
        result.failures.append((None, f"{type(e).__name__}: {e}"))
        return result
    chosen = select_steps(available, steps)
    if not chosen:
        result.failures.append((None, f"{workdir} has no finalized checkpoint"))
        return result
    num_batches = eval_batches if eval_batches is not None else train_config.eval_batches
    eval_model = None
    for step in chosen:
        try:
            _, params, buffers, meta = restore_params(workdir, step)
            if eval_model is None:  # one compilation per run
                eval_model = build_model(with_eval_capacity(model_config, eval_capacity_factor))
                eval_step = make_eval_step(eval_model)
                batches = (batch_cache or EvalBatchCache()).get(data_config, num_batches)
            losses, tokens = score_state(eval_step, params, buffers, batches)
            result.points.append(points_lib.build_point(
                identity=identity, step=step, model=model_config,
                data=data_config, train=train_config, losses=losses, eval_tokens=tokens,
                eval_batches=num_batches, eval_capacity_factor=eval_capacity_factor,
                tokens_seen_real=tokens_seen_real(os.path.join(workdir, "metrics.jsonl"), step),
                code_version=code_version(), evaluated_at=time.time(),
                checkpoint_saved_at=meta.get("time")))
            error = None
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # a bad checkpoint must not stop the other runs
            error = str(e) if isinstance(e, CheckpointError) else f"{type(e).__name__}: {e}"
            result.failures.append((step, error))
        if on_step is not None:
            on_step(workdir, step, error)
    return result


class _Progress:
    """A tqdm bar over (run, step) pairs on a terminal, plain lines otherwise."""

    def __init__(self, total: int, enabled: bool, log: Callable[[str], None]):
        self.bar = None
        self.log = log if enabled else (lambda _: None)
        self.done = 0
        self.total = total
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="checkpoint", dynamic_ncols=True)

    def grow(self, extra: int) -> None:
        self.total += extra
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def __call__(self, workdir: str, step: int | None, error: str | None) -> None:
        self.done += 1
        where = f"{os.path.basename(workdir)} step {step}"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(where + (" FAILED" if error else ""))
        else:
            self.log(f"[{self.done}/{self.total}] {where}: " + ("FAILED" if error else "scored"))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def score_runs(workdirs: Iterable[str], steps: str | Sequence[int] = LATEST, *,
               points_path: str | None = None, format: str | None = None,
               eval_batches: int | None = None, eval_capacity_factor: float | None = None,
               progress: bool = True, log: Callable[[str], None] = print) -> ScoreSummary:
    """Score several runs; after each run its points are merged into ``points_path`` (if given),
    so an interrupted sweep keeps what it scored. Never raises for a bad run: see ``.failures``."""
    workdirs = [os.path.abspath(w) for w in workdirs]
    if points_path is not None:
        format = points_lib.points_format(points_path, format)  # fail before scoring, not after
        if os.path.exists(points_path):
            points_lib.read_point_records(points_path, format)  # unreadable or another schema
    cache = EvalBatchCache()
    # The total is an estimate until each run's steps are known (LATEST: one per run).
    estimate = len(workdirs) * (len(steps) if isinstance(steps, (list, tuple)) else 1)
    bar = _Progress(estimate, progress, log)
    runs = []
    try:
        for workdir in workdirs:
            if steps == ALL:
                from moejax.train.run import checkpoint_steps

                try:
                    bar.grow(max(len(checkpoint_steps(workdir)) - 1, 0))
                except Exception:  # reported by score_run
                    pass
            result = score_run(workdir, steps, eval_batches=eval_batches,
                               eval_capacity_factor=eval_capacity_factor, batch_cache=cache,
                               on_step=bar)
            for step, message in result.failures:
                if step is None:
                    bar(workdir, None, message)
                log(f"FAILED {workdir}" + (f" step {step}" if step is not None else "")
                    + f": {message}")
            if points_path is not None and result.points:
                points_lib.write_points(points_path, result.points, format)
            runs.append(result)
    finally:
        bar.close()
    return ScoreSummary(runs, points_path)

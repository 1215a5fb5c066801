"""The training loop: configs in, a run directory with checkpoints, metrics and scores out.

In: a workdir and the three configs (model, data, training), normally from gin. Out, under the
workdir: ``config.gin`` (the operative gin config), ``config.json`` (the dataclasses),
``checkpoints/<step>/`` (orbax), ``metrics.jsonl`` and ``eval.jsonl``, ``tensorboard/``, and
``kernels.json`` (which grouped-matmul kernel and tiles the expert matmuls ran with).

Behaviour a researcher can rely on:
- resume: the newest finalized checkpoint in the workdir is restored and the data stream resumes at
  that step, so a run killed at any point (even SIGKILL) continues with exactly the losses of a
  run never interrupted;
- preemption: SIGTERM finishes the current step, saves a checkpoint and returns normally;
- divergence: a non-finite loss or gradient stops the run with ``TrainingDiverged`` naming the step;
  no checkpoint is written after the last finite step;
- a mesh (``mesh_config``, from gin's ``MeshConfig``): the state is created, trained, evaluated and
  checkpointed sharded (``moejax.parallel``); a checkpoint restores onto whatever mesh the resumed
  run declares. Each process reads its own rows of every batch; process 0 writes the run files.
  Without a mesh the run uses one device, as before.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
import warnings
from typing import Callable

import jax

from moejax import data as data_lib
from moejax import files
from moejax.kernels import record as kernels_record
from moejax.model import accounting
from moejax.model.config import ConfigError, ModelConfig, moe_layer_indices, validate_model_config
from moejax.model.functional import build_model
from moejax.parallel import distributed
from moejax.parallel.mesh import MeshConfig, make_mesh, mesh_shape
from moejax.parallel.rules import sharding_rules
from moejax.parallel.sharding import (abstract_sharded_state, init_sharded_train_state,
                                      make_sharded_eval_step, make_sharded_train_step, put_batch,
                                      setup_sharded_training)
from moejax.train.checkpoint import (Checkpointer, config_fingerprint, config_mismatch,
                                     same_model_and_data)
from moejax.train.config import TrainConfig, validate_train_config
from moejax.train.kernel_log import KernelLog
from moejax.train.metrics import MetricsWriter, load_jsonl
from moejax.train.optim import make_optimizer, make_schedule
from moejax.train.plots import plot_loss_curves
from moejax.train.step import TrainState, init_train_state, make_eval_step, make_train_step

# CPU has no buffer donation; the warning says nothing a user can act on.
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN or infinite."""




def resolve_model_config(model: ModelConfig, data: "data_lib.DataConfig") -> ModelConfig:
    """Fill the vocabulary size from the data and check an explicit one is large enough."""
    needed = data_lib.vocab_size(data)
    if model.vocab_size is None:
        return dataclasses.replace(model, vocab_size=needed)
    if model.vocab_size < needed:
        raise ConfigError(f"ModelConfig.vocab_size = {model.vocab_size} is smaller than the "
                          f"{data.vocabulary!r} vocabulary's {needed} ids; unset it to use the data's")
    return model


def validate_all(model: ModelConfig, data, train: TrainConfig) -> ModelConfig:
    """Every check that can fail before compiling; returns the resolved model config."""
    validate_train_config(train)
    if data.batch_size % train.grad_accum_steps:
        raise ConfigError(f"TrainConfig.grad_accum_steps = {train.grad_accum_steps} must divide "
                          f"DataConfig.batch_size = {data.batch_size}")
    model = resolve_model_config(model, data)
    return validate_model_config(model)


def evaluate(eval_step: Callable, params, buffers, batches_by_name: dict[str, list]
             ) -> dict[str, float]:
    """Token-weighted mean NLL (nats/token) per validation task."""
    scores = {}
    for name, batches in batches_by_name.items():
        nll, tokens = 0.0, 0.0
        for batch in batches:
            batch_nll, batch_tokens = jax.device_get(eval_step(params, buffers, batch))
            nll += float(batch_nll)
            tokens += float(batch_tokens)
        scores[name] = nll / max(tokens, 1.0)
    return scores


def last_validation(workdir: str) -> dict[str, float]:
    """The newest validation score of every task in eval.jsonl ({} when there is none)."""
    path = os.path.join(workdir, "eval.jsonl")
    if not os.path.exists(path):
        return {}
    latest: dict[str, tuple[int, float]] = {}
    for record in load_jsonl(path):
        if record["task"] not in latest or record["step"] >= latest[record["task"]][0]:
            latest[record["task"]] = (record["step"], record["loss"])
    return {task: loss for task, (_, loss) in latest.items()}


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _NullWriter:
    """Metrics sink of the processes other than process 0."""

    def write_train(self, step, metrics):
        pass

    def write_eval(self, step, scores):
        pass

    def close(self):
        pass


def _progress(total: int, initial: int):
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
    return None


def _non_finite(metrics: dict) -> str:
    """Which of a diverged step's loss and gradient norm is not finite, with both values."""
    loss, norm = float(metrics["loss"]), float(metrics["grad_norm"])
    bad = [name for name, value in (("loss", loss), ("gradient norm", norm))
           if not math.isfinite(value)]
    what = f"the {' and the '.join(bad)}" if bad else "the step"  # (the loss is the total)
    return f"{what} became non-finite (loss {loss}, gradient norm {norm})"


def run_training(workdir: str, model: ModelConfig, data, train: TrainConfig, *,
                 gin_config: str | None = None, log: Callable[[str], None] = print,
                 mesh_config: MeshConfig | None = None, rules: dict | None = None) -> dict:
    """Train (or resume) one run in ``workdir``; returns a summary dict.

    ``mesh_config`` None trains on one device; otherwise on a mesh of all devices with the
    logical-axis ``rules`` (None = ``sharding_rules()``, i.e. the defaults plus gin overrides).
    Raises ConfigError before compiling if any config (mesh included) is impossible,
    CheckpointError if the workdir holds checkpoints of a different model or data config, and
    TrainingDiverged on a non-finite loss.
    """
    model = validate_all(model, data, train)
    if distributed.is_primary():
        counts = accounting.parameter_counts(model)
        log(f"model: {counts.total:,} parameters, {counts.active:,} active per token "
            f"({counts.active_non_embedding:,} without embeddings); `moejax describe` with the "
            "same gin files gives the rest")
    fmodel = build_model(model)
    schedule = make_schedule(train)
    tx = make_optimizer(train)
    sharded = None
    if mesh_config is not None:
        mesh = make_mesh(mesh_config)  # a wrong mesh fails here, before anything compiles
        sharded = setup_sharded_training(
            fmodel, tx, mesh, rules if rules is not None else sharding_rules(),
            batch_size=data.batch_size, grad_accum_steps=train.grad_accum_steps, seed=train.seed)
    primary = distributed.is_primary()
    workdir = os.path.abspath(workdir)
    problem = files.directory_problem(workdir)
    if problem:
        raise ConfigError(f"workdir {workdir}: {problem}")
    os.makedirs(workdir, exist_ok=True)
    fingerprint = config_fingerprint(model, data, train)
    vocabulary_tag = data_lib.vocabulary_tag(data.vocabulary)

    if sharded is None:
        abstract_state = jax.eval_shape(lambda: init_train_state(fmodel, tx, train.seed))
    else:
        log(f"mesh {mesh_shape(sharded.mesh)} over {sharded.mesh.size} devices "
            f"({jax.process_count()} process(es))")
        abstract_state = abstract_sharded_state(fmodel, tx, sharded.state_shardings, train.seed)

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=train.keep_checkpoints)
    restored = checkpointer.restore_latest(
        abstract_state, log=log,
        accept=same_model_and_data(fingerprint, checkpointer.directory, vocabulary_tag))
    if primary:  # only now: a refused resume leaves the run's own config files as they were
        if gin_config is not None:
            files.write_atomic(os.path.join(workdir, "config.gin"), gin_config)
        files.write_atomic(os.path.join(workdir, "config.json"),
                           json.dumps(fingerprint, indent=2) + "\n")
    if restored is None:
        state = (init_train_state(fmodel, tx, train.seed) if sharded is None else
                 init_sharded_train_state(fmodel, tx, train.seed, sharded.state_shardings))
        start_step = 0
    else:
        state, meta = restored
        saved = meta.get("config", {})
        for diff in config_mismatch({"TrainConfig": saved.get("TrainConfig", {})},
                                    {"TrainConfig": fingerprint["TrainConfig"]}):
            log(f"note: resuming with a changed training knob: {diff}")
        start_step = int(jax.device_get(state.step))
        log(f"resumed from {checkpointer.directory}/{start_step}")

    writer = MetricsWriter(workdir, resume_step=start_step) if primary else _NullWriter()
    moe_blocks = moe_layer_indices(model)
    eval_sets = {name: data_lib.eval_batches(data, name, train.eval_batches)
                 for name in data_lib.eval_names(data)} if train.eval_every else {}
    if sharded is None:
        train_step = make_train_step(fmodel, tx, schedule, grad_accum_steps=train.grad_accum_steps)
        eval_step = make_eval_step(fmodel)
        batches = data_lib.train_batches(data, start_step)
    else:
        train_step = make_sharded_train_step(fmodel, tx, schedule, sharded.mesh, sharded.rules,
                                             sharded.state_shardings,
                                             grad_accum_steps=train.grad_accum_steps)
        eval_step = make_sharded_eval_step(fmodel, sharded.mesh, sharded.rules,
                                           sharded.state_shardings)
        eval_sets = {name: [put_batch(b, sharded.batch_sharding) for b in batches]
                     for name, batches in eval_sets.items()}
        shard_index, num_shards = distributed.process_batch_shard(
            sharded.batch_sharding, (data.batch_size, data.seq_len))
        batches = (distributed.global_batch(local, sharded.batch_sharding, data.batch_size)
                   for local in data_lib.train_batches(data, start_step, shard_index=shard_index,
                                                       num_shards=num_shards))
    run_meta = {} if sharded is None else {"mesh": mesh_shape(sharded.mesh)}
    if vocabulary_tag != data.vocabulary:  # a user's model file: its content, for resumes
        run_meta["vocabulary_tag"] = vocabulary_tag

    def save(step: int, state: TrainState) -> None:
        checkpointer.save(step, state, {"step": step, "config": fingerprint,
                                        "time": time.time(), **run_meta})

    summary = {"workdir": workdir, "start_step": start_step, "validation": {}}
    kernel_log = KernelLog(workdir, start_step, log) if primary else None
    bar = _progress(train.steps, start_step)
    step = start_step
    try:
        # record: what each expert matmul of the traced steps resolved to, for kernels.json
        with _Preemption() as preemption, kernels_record.recording() as kernel_choices:
            if eval_sets and start_step == 0:  # the untrained model's score anchors the curves
                scores = evaluate(eval_step, state.params, state.buffers, eval_sets)
                writer.write_eval(0, scores)
                summary["initial_validation"] = scores
            last_time = time.time()
            while step < train.steps:
                batch = next(batches)
                state, metrics = train_step(state, batch)
                if kernel_log is not None:
                    kernel_log.update(kernel_choices)  # writes only when a choice is new
                metrics = jax.device_get(metrics)
                now = time.time()
                step_seconds, last_time = now - last_time, now
                if not bool(metrics.pop("finite")):
                    checkpointer.wait()  # so the message lists saves still in flight
                    raise TrainingDiverged(
                        f"{_non_finite(metrics)} at step {step + 1}; stopped without "
                        f"saving. Last good checkpoint: "
                        f"{checkpointer.steps()[-1] if checkpointer.steps() else 'none'} "
                        f"in {checkpointer.directory}")
                step += 1
                for block, layer in zip(moe_blocks, metrics["moe"]):
                    layer["block"] = block
                metrics["step_seconds"] = step_seconds
                metrics["tokens_per_second"] = float(metrics["tokens"]) / max(step_seconds, 1e-9)
                writer.write_train(step, metrics)
                summary["train_loss"] = float(metrics["loss"])
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
                elif step % train.log_every == 0 or step == train.steps:
                    log(f"step {step}/{train.steps} loss {float(metrics['loss']):.4f} "
                        f"lr {float(metrics['learning_rate']):.2e} "
                        f"tokens/s {metrics['tokens_per_second']:.0f}")
                is_last = step == train.steps
                if train.eval_every and (step % train.eval_every == 0 or is_last):
                    scores = evaluate(eval_step, state.params, state.buffers, eval_sets)
                    if kernel_log is not None:
                        kernel_log.update(kernel_choices)
                    writer.write_eval(step, scores)
                    summary["validation"] = scores
                    log(f"step {step} validation " +
                        " ".join(f"{k} {v:.4f}" for k, v in scores.items()))
                if step % train.checkpoint_every == 0 or is_last or preemption.requested:
                    save(step, state)
                if preemption.requested and not is_last:
                    checkpointer.wait()
                    log(f"SIGTERM: saved checkpoint {checkpointer.directory}/{step}; exiting")
                    summary["preempted"] = True
                    break
    finally:
        if bar is not None:
            bar.close()
        checkpointer.close()
        writer.close()
    summary["final_step"] = step
    if start_step >= train.steps:
        log(f"{workdir} is already trained to step {start_step} (TrainConfig.steps = "
            f"{train.steps}); nothing to do")
        summary["validation"] = last_validation(workdir)
    summary["loss_curve"] = plot_loss_curves(workdir) if primary else None
    return summary

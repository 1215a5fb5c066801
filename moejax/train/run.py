"""Reopening a run directory: its configs, its checkpoints, and a restored train state.

In: a workdir written by ``moejax train``. Out: the three configs exactly as the run resolved them
(from ``config.json``), the finalized checkpoint steps, and ``TrainState``s restored onto the
structure the configs imply (or only the parameters: ``restore_params``). Evaluation, sweeps and notebooks use this instead of re-parsing gin.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from moejax.data import DataConfig
from moejax.model.config import LatentAttentionConfig, ModelConfig, MoEConfig
from moejax.model.functional import FunctionalModel, build_model
from moejax.train.checkpoint import Checkpointer, CheckpointError
from moejax.train.config import TrainConfig
from moejax.train.optim import make_optimizer
from moejax.train.step import TrainState, init_train_state


def _tuples(value):
    """JSON lists back to the tuples the frozen dataclasses hold (expert_groups)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _build(cls, fields: dict):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise CheckpointError(f"{cls.__name__} in config.json has fields this moejax does not know: "
                              f"{unknown}")
    return cls(**{k: _tuples(v) for k, v in fields.items()})


def configs_from_json(text: str) -> tuple[ModelConfig, DataConfig, TrainConfig]:
    """Inverse of the config.json a run writes (``checkpoint.config_fingerprint``)."""
    raw = json.loads(text)
    model_fields = dict(raw["ModelConfig"])
    if model_fields.get("moe") is not None:
        model_fields["moe"] = _build(MoEConfig, model_fields["moe"])
    if model_fields.get("latent_attention") is not None:
        model_fields["latent_attention"] = _build(LatentAttentionConfig,
                                                  model_fields["latent_attention"])
    return (_build(ModelConfig, model_fields), _build(DataConfig, raw["DataConfig"]),
            _build(TrainConfig, raw["TrainConfig"]))


def load_run_configs(workdir: str) -> tuple[ModelConfig, DataConfig, TrainConfig]:
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            return configs_from_json(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"{workdir} is not a moejax run directory: no config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is unreadable: {type(e).__name__}: {e}") from None


def checkpoint_steps(workdir: str) -> list[int]:
    """Finalized checkpoint steps of a run, ascending (half-written ones excluded)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    checkpointer = Checkpointer(directory, async_save=False)
    try:
        return checkpointer.steps()
    finally:
        checkpointer.close()


def choose_checkpoint_step(workdir: str, wanted: str | int) -> int:
    """The finalized step ``wanted`` ('latest': the newest); CheckpointError when there is none."""
    steps = checkpoint_steps(workdir)
    if not steps:
        raise CheckpointError(f"{workdir} has no finalized checkpoint")
    if wanted == "latest":
        return steps[-1]
    if wanted not in steps:
        raise CheckpointError(f"{workdir} has no finalized checkpoint at step {wanted}; it has "
                              f"{', '.join(map(str, steps))}")
    return wanted


def abstract_train_state(model: FunctionalModel, train: TrainConfig) -> TrainState:
    """Shapes and dtypes of the run's train state, without allocating it."""
    tx = make_optimizer(train)
    return jax.eval_shape(lambda: init_train_state(model, tx, train.seed))


def restore_run(workdir: str, step: int) -> tuple[FunctionalModel, TrainState, dict]:
    """(model, state, checkpoint meta) of one finalized step; CheckpointError names what is wrong
    (missing, half-written, corrupt, or written by a different config than config.json)."""
    model_config, data_config, train_config = load_run_configs(workdir)
    model = build_model(model_config)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        state, meta = checkpointer.restore(step, abstract_train_state(model, train_config))
    finally:
        checkpointer.close()
    _check_written_by(workdir, step, model_config, meta)
    return model, state, meta


def restore_params(workdir: str, step: int) -> tuple[FunctionalModel, dict, dict, dict]:
    """(model, params, buffers, checkpoint meta) of one finalized step, without reading the
    optimizer state: what evaluation and export need, a third of an Adam checkpoint's bytes.
    Errors as ``restore_run``."""
    model_config, data_config, train_config = load_run_configs(workdir)
    model = build_model(model_config)
    abstract = abstract_train_state(model, train_config)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        parts, meta = checkpointer.restore_parts(
            step, {"params": abstract.params, "buffers": abstract.buffers})
    finally:
        checkpointer.close()
    _check_written_by(workdir, step, model_config, meta)
    return model, parts["params"], parts["buffers"], meta


def _check_written_by(workdir: str, step: int, model_config: ModelConfig, meta: dict) -> None:
    saved_model = meta.get("config", {}).get("ModelConfig")
    current = json.loads(json.dumps(dataclasses.asdict(model_config), default=str))
    if saved_model is not None and saved_model != current:
        raise CheckpointError(f"{workdir}/checkpoints/{step} was written by a model config that "
                              "differs from config.json")

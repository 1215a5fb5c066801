"""Scored points: one flat record per (run, step), written safely and read back as a DataFrame.

In: a run's three configs, its validation scores at one step, and where it came from. Out: a flat
``dict`` (``build_point``) with the configuration, every accounting quantity of
``moejax.model.accounting``, tokens and FLOPs so far, losses per task and provenance; files of
such records (``write_points``: JSON lines, CSV or Parquet) and a pandas DataFrame
(``load_points``) for ``moejax.laws``.

Columns (see the module constants for the exact names):
- identity: ``schema_version``, ``run_id``, ``run_name``, ``run_path``, ``config_hash``, ``step``;
- scores: ``loss`` (the mixture), ``loss_<task>`` (nats/token, token-weighted over the validation
  batches), ``eval_tokens_<task>`` (real tokens scored), ``eval.batches``,
  ``eval.capacity_factor`` (None = dropless);
- tokens: ``tokens_seen`` = step x batch_size x seq_len, i.e. every packed position including
  padding; ``tokens_seen_real`` = the sum of the per-step ``tokens`` (positions with loss weight)
  of the run's metrics.jsonl, or None when that file does not cover steps 1..step;
- law conveniences: ``n_total``, ``n_active``, ``n_total_non_embedding``,
  ``n_active_non_embedding``, ``num_experts`` and ``top_k`` (summed over heterogeneous groups;
  1 for a dense model), ``granularity`` (Krajewski's G = d_ff / mean expert width),
  ``train_flops`` (exact training FLOPs so far), ``train_flops_6n`` (6 N_active D);
- configuration: ``model.<field>``, ``moe.<field>`` (None for a dense model; ``moe.groups`` the
  resolved ``[[num_experts, d_expert, top_k], ...]`` as a JSON string), ``data.<field>``,
  ``train.<field>``;
- accounting: ``params.<part>`` (exact counts), ``flops.<quantity>`` (per token),
  ``memory.<quantity>`` (bytes), ``paper.<paper>.<variable>`` (``paper_quantities``);
- provenance: ``code_version`` (git commit or "unknown"), ``evaluated_at`` and
  ``checkpoint_saved_at`` (ISO 8601, UTC).

A record is keyed by (run_id, step): writing a record whose key is already in the file replaces
it. Files are rewritten whole under an exclusive ``fcntl.flock`` on ``<file>.lock`` (read, merge,
write a temporary file, fsync, ``os.replace``), so readers never see half a file and concurrent
writers on one machine lose nothing. ``flock`` is only as good as the filesystem: on NFS or a
GCS/FUSE mount give each host its own points file and concatenate them with ``write_points``.

Every record carries ``schema_version``; reading a file of another version raises
``SchemaVersionError`` naming both versions. All three formats read back to the same frame:
records are the canonical form and one function types the columns (integers stay integers, with
missing values as pandas' nullable ``Int64``).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import math
import os
import re
from typing import Any, Iterable

import pandas as pd

from moejax import files
from moejax.model import accounting
from moejax.model.config import ModelConfig

SCHEMA_VERSION = 1
FORMATS = ("jsonl", "csv", "parquet")
SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
                  ".pq": "parquet"}
KEY = ("run_id", "step")

# Columns that stay strings even when their text looks like a number (read back from CSV).
STRING_COLUMNS = ("run_id", "run_name", "run_path", "config_hash", "code_version", "evaluated_at",
                  "checkpoint_saved_at")
# Columns first in every file, in this order; the rest follow in order of first appearance.
LEADING_COLUMNS = ("schema_version", "run_id", "step", "tokens_seen", "tokens_seen_real", "loss",
                   "n_total", "n_active", "n_total_non_embedding", "n_active_non_embedding",
                   "num_experts", "top_k", "granularity", "train_flops", "train_flops_6n")


class PointsError(ValueError):
    """A points file is unreadable or a record is malformed; the message names the file."""


class SchemaVersionError(PointsError):
    """A points file was written with a schema version this moejax does not read."""


# --- building a record -----------------------------------------------------------------------

def config_hash(config_json: dict) -> str:
    """First 10 hex digits of the sha256 of a run's config.json content (canonical JSON)."""
    canonical = json.dumps(config_json, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def run_identity(run_path: str, config_json: dict) -> dict[str, str]:
    """``run_id`` = ``<directory name>-<config hash>``: stable when the directory moves or is
    scored through a different --root, and distinct for runs with different configs. Two
    directories with the same name and identical configs count as the same run (one record)."""
    run_path = os.path.abspath(run_path)
    name = os.path.basename(os.path.normpath(run_path))
    digest = config_hash(config_json)
    return {"run_id": f"{name}-{digest}", "run_name": name, "run_path": run_path,
            "config_hash": digest}


def column_suffix(task: str) -> str:
    """A task name as a column suffix: anything but letters, digits and '_' becomes '_'."""
    return re.sub(r"[^0-9A-Za-z_]", "_", task)


def _plain(value: Any) -> Any:
    """Config values as flat cells: tuples and lists become JSON strings."""
    if isinstance(value, (tuple, list)):
        return json.dumps(_lists(value))
    return value


def _lists(value):
    if isinstance(value, (tuple, list)):
        return [_lists(v) for v in value]
    return value


def config_columns(model: ModelConfig, data, train) -> dict[str, Any]:
    """``model.*``, ``moe.*``, ``data.*`` and ``train.*`` columns of the three configs."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(model):
        if field.name not in ("moe", "latent_attention"):
            out[f"model.{field.name}"] = _plain(getattr(model, field.name))
    latent = model.latent_attention
    # grouped-query head widths; latent attention's are its own columns
    out["model.head_dim"] = model.head_dim if latent is None else None
    out["model.kv_heads"] = model.kv_heads if latent is None else None
    out["model.latent_attention"] = latent is not None
    from moejax.model.config import LatentAttentionConfig

    for field in dataclasses.fields(LatentAttentionConfig):
        out[f"latent_attention.{field.name}"] = None if latent is None else getattr(latent,
                                                                                     field.name)
    out["model.dense_d_ff"] = model.dense_d_ff
    out["is_moe"] = model.moe is not None
    from moejax.model.config import MoEConfig  # the field list, also for dense models

    for field in dataclasses.fields(MoEConfig):
        out[f"moe.{field.name}"] = None if model.moe is None else _plain(getattr(model.moe, field.name))
    out["moe.groups"] = None if model.moe is None else json.dumps(
        [list(map(int, g)) for g in model.moe.groups])
    out["moe.shared_width"] = None if model.moe is None else model.moe.shared_width
    for prefix, config in (("data", data), ("train", train)):
        for field in dataclasses.fields(config):
            out[f"{prefix}.{field.name}"] = _plain(getattr(config, field.name))
    return out


def accounting_columns(model: ModelConfig, seq_len: int) -> dict[str, Any]:
    """Every quantity of ``moejax.model.accounting`` for one configuration at ``seq_len``."""
    counts = accounting.parameter_counts(model)
    out: dict[str, Any] = {}
    for field in dataclasses.fields(counts):
        out[f"params.{field.name}"] = getattr(counts, field.name)
    for name in ("total", "total_non_embedding", "active", "active_non_embedding"):
        out[f"params.{name}"] = getattr(counts, name)
    out["flops.forward_per_token"] = float(accounting.forward_flops_per_token(model, seq_len))
    out["flops.train_per_token"] = float(accounting.training_flops_per_token(model, seq_len))
    out["flops.train_per_token_6n"] = float(accounting.training_flops_per_token_6n(model))
    out["flops.train_per_token_6n_non_embedding"] = float(
        accounting.training_flops_per_token_6n(model, include_embeddings=False))
    out["flops.inference_per_token"] = float(accounting.inference_flops_per_token(model, seq_len))
    out["flops.inference_per_token_2n"] = float(accounting.inference_flops_per_token_2n(model))
    out["memory.parameter_bytes_float32"] = accounting.parameter_bytes(model, "float32")
    out["memory.parameter_bytes_bfloat16"] = accounting.parameter_bytes(model, "bfloat16")
    out["memory.training_state_bytes"] = accounting.training_state_bytes(model)
    out["memory.optimizer_state_bytes"] = accounting.optimizer_state_bytes(model)
    out["memory.kv_cache_bytes_per_token_bfloat16"] = accounting.kv_cache_bytes_per_token(
        model, "bfloat16")
    for name, value in accounting.paper_quantities(model, seq_len).items():
        out[f"paper.{name}"] = float(value)
    return out


def _utc(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(
        timespec="seconds")


def build_point(*, identity: dict[str, str], step: int, model: ModelConfig, data, train,
                losses: dict[str, float], eval_tokens: dict[str, int], eval_batches: int,
                eval_capacity_factor: float | None, tokens_seen_real: int | None = None,
                code_version: str = "unknown", evaluated_at: float | None = None,
                checkpoint_saved_at: float | None = None) -> dict[str, Any]:
    """One flat record. ``losses`` and ``eval_tokens`` are keyed by task name, the mixture
    (``data.mixture``) first; times are Unix seconds."""
    counts = accounting.parameter_counts(model)
    quantities = accounting.paper_quantities(model, data.seq_len)
    tokens_seen = int(step) * data.batch_size * data.seq_len
    if model.moe is None:
        num_experts, top_k = 1, 1
    else:
        num_experts = sum(g.num_experts for g in model.moe.groups)
        top_k = sum(g.top_k for g in model.moe.groups)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": identity["run_id"],
        "step": int(step),
        "tokens_seen": tokens_seen,
        "tokens_seen_real": None if tokens_seen_real is None else int(tokens_seen_real),
        "loss": float(losses[data.mixture]) if data.mixture in losses else None,
        "n_total": counts.total,
        "n_active": counts.active,
        "n_total_non_embedding": counts.total_non_embedding,
        "n_active_non_embedding": counts.active_non_embedding,
        "num_experts": num_experts,
        "top_k": top_k,
        "granularity": float(quantities["krajewski.G"]),
        "train_flops": float(accounting.training_flops_per_token(model, data.seq_len)) * tokens_seen,
        "train_flops_6n": float(accounting.training_flops_per_token_6n(model)) * tokens_seen,
        "run_name": identity["run_name"],
        "run_path": identity["run_path"],
        "config_hash": identity["config_hash"],
    }
    for task, loss in losses.items():
        record[f"loss_{column_suffix(task)}"] = float(loss)
    for task, tokens in eval_tokens.items():
        record[f"eval_tokens_{column_suffix(task)}"] = int(tokens)
    record["eval.batches"] = int(eval_batches)
    record["eval.capacity_factor"] = (None if eval_capacity_factor is None
                                      else float(eval_capacity_factor))
    record.update(config_columns(model, data, train))
    record.update(accounting_columns(model, data.seq_len))
    record["code_version"] = code_version
    record["evaluated_at"] = _utc(evaluated_at)
    record["checkpoint_saved_at"] = _utc(checkpoint_saved_at)
    return record


# --- reading ---------------------------------------------------------------------------------

def points_format(path: str, format: str | None = None) -> str:
    """The file format: ``format`` if given (it must agree with a known suffix), else from the
    suffix (.jsonl/.json, .csv, .parquet/.pq), else JSON lines."""
    suffix_format = SUFFIX_FORMATS.get(os.path.splitext(path)[1].lower())
    if format is not None:
        if format not in FORMATS:
            raise PointsError(f"points format {format!r} is not one of {FORMATS}")
        if suffix_format is not None and suffix_format != format:
            raise PointsError(f"{path}: the suffix says {suffix_format} but format={format!r}; "
                              "rename the file or drop the format")
        return format
    return suffix_format or "jsonl"


def _check_record(record: Any, where: str) -> dict:
    if not isinstance(record, dict):
        raise PointsError(f"{where}: a point must be a JSON object, got {type(record).__name__}")
    version = record.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{where}: points schema version {version!r}, but this moejax reads version "
            f"{SCHEMA_VERSION}; re-export the points with this moejax (moejax eval) or read the "
            "file with the moejax that wrote it")
    missing = [k for k in KEY if record.get(k) is None]
    if missing:
        raise PointsError(f"{where}: point without {missing}")
    return record


def _read_jsonl(path: str) -> list[dict]:
    records = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise PointsError(f"{path}, line {number}: not valid JSON ({e.msg} at column "
                                  f"{e.colno})") from None
            records.append(_check_record(record, f"{path}, line {number}"))
    return records


_INT = re.compile(r"[+-]?\d+")


def _parse_cell(column: str, text: str) -> Any:
    """A CSV cell back to the Python value ``_format_cell`` wrote."""
    if text == "":
        return None
    if column in STRING_COLUMNS:
        return text
    if text in ("True", "False"):
        return text == "True"
    if _INT.fullmatch(text):
        return int(text)
    try:
        return float(text)  # floats are written with repr: always a '.', 'e', 'nan' or 'inf'
    except ValueError:
        return text


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return []
        records = []
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            if len(row) != len(header):
                raise PointsError(f"{where}: {len(row)} cells for {len(header)} columns")
            record = {c: _parse_cell(c, cell) for c, cell in zip(header, row)}
            records.append(_check_record(record, where))
    return records


def _read_parquet(path: str) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise PointsError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    records = []
    for number, row in enumerate(table.to_pylist(), start=1):
        row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        records.append(_check_record(row, f"{path}, row {number}"))
    return records


READERS = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}


def read_point_records(path: str, format: str | None = None) -> list[dict]:
    """The records of a points file as dicts (missing cells are None), in file order."""
    try:
        return READERS[points_format(path, format)](path)
    except FileNotFoundError:
        raise PointsError(f"points file {path} does not exist") from None


def _ordered_columns(records: Iterable[dict]) -> list[str]:
    seen: dict[str, None] = {c: None for c in LEADING_COLUMNS}
    for record in records:
        for column in record:
            seen.setdefault(column, None)
    return list(seen)


def _typed(values: list) -> pd.Series:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
    return pd.Series(values, dtype=object)


def points_frame(records: list[dict]) -> pd.DataFrame:
    """Records -> a DataFrame typed from the values: integer columns ``Int64``, real ones
    ``float64`` (missing = NaN), booleans ``boolean``, the rest Python objects (missing = None).
    A column absent from some records (e.g. a task only some runs have) is missing there."""
    columns = [c for c in _ordered_columns(records) if any(c in r for r in records)]
    return pd.DataFrame({c: _typed([r.get(c) for r in records]) for c in columns},
                        index=pd.RangeIndex(len(records)))


def load_points(path: str, format: str | None = None) -> pd.DataFrame:
    """A points file (JSON lines, CSV or Parquet) as a DataFrame, one row per (run, step)."""
    return points_frame(read_point_records(path, format))


# --- writing ---------------------------------------------------------------------------------

def _jsonl_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _csv_bytes(records: list[dict]) -> bytes:
    columns = [c for c in _ordered_columns(records) if any(c in r for r in records)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        writer.writerow([_format_cell(r.get(c)) for c in columns])
    return out.getvalue().encode()


def _parquet_bytes(records: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = points_frame(records)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


WRITERS = {"jsonl": _jsonl_bytes, "csv": _csv_bytes, "parquet": _parquet_bytes}


def merge_points(existing: list[dict], new: list[dict]) -> list[dict]:
    """``existing`` with every (run_id, step) of ``new`` replaced in place or appended."""
    merged: dict[tuple, dict] = {}
    for record in list(existing) + list(new):
        merged[tuple(record[k] for k in KEY)] = record
    return list(merged.values())


def write_points(path: str, records: Iterable[dict], format: str | None = None) -> int:
    """Merge ``records`` into the points file at ``path`` (created if missing) and return how
    many records the file now holds. Idempotent: a (run_id, step) already there is replaced."""
    records = [_check_record(dict(r), f"record for {path}") for r in records]
    fmt = points_format(path, format)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with files.locked(path):
        existing = read_point_records(path, fmt) if os.path.exists(path) else []
        merged = merge_points(existing, records)
        files.write_atomic(path, WRITERS[fmt](merged))
    return len(merged)

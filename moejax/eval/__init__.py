"""moejax.eval: trained checkpoints in, scored points out — the bridge from a grid to the laws.

In: run directories of ``moejax train``. Out: one record per (run, step) with the validation
losses, the full configuration, every accounting quantity, tokens and FLOPs so far and provenance,
merged into a points file (JSON lines, CSV or Parquet) that ``load_points`` reads back as a pandas
DataFrame for ``moejax.laws``. Modules: ``score`` (restore and score checkpoints), ``points``
(record schema, atomic idempotent writing, reading), ``cli`` (``moejax eval``).

``score_run``/``score_runs`` import JAX and the data pipeline (TensorFlow) on first use;
``load_points``/``write_points`` need only pandas, so a notebook that only reads points stays light.
"""

from moejax.eval.points import (SCHEMA_VERSION, PointsError, SchemaVersionError, load_points,
                                write_points)

__all__ = ["SCHEMA_VERSION", "PointsError", "SchemaVersionError", "find_runs", "load_points",
           "score_run", "score_runs", "write_points"]

_LAZY = {"score_run", "score_runs", "find_runs"}


def __getattr__(name):
    if name in _LAZY:
        from moejax.eval import score

        return getattr(score, name)
    raise AttributeError(f"module 'moejax.eval' has no attribute {name!r}")

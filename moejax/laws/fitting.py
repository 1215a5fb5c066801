"""Fit a scaling law to scored points, with convergence diagnostics and bootstrap bands.

In: a DataFrame of points (one row per training run: the law's variables such as N, D, E and a
final loss), the law's name, an optional column mapping, an optional held-out set and a number of
bootstrap refits. Out: a ``FitResult`` (JSON-serialisable) with the paper-named parameters, train
and held-out RMSE of ln L, the optimiser's convergence report and, with bootstrap, per-parameter
confidence intervals; ``predict`` turns a result into predicted losses with bootstrap bands.

The objective is the SUM over training runs of Huber_delta(ln L_pred - ln L_obs) (squared error
for Clark's law), never the mean, evaluated in float64. It is minimised in three stages:

1. every start of the law's initialisation grid is evaluated in one vectorised pass (chunks of a
   jitted ``vmap``); evaluating the full grid costs about as much as one gradient step on it;
2. the ``n_optimised`` best starts are optimised together to convergence by a batched,
   Levenberg-Marquardt-damped Newton method with exact JAX gradients and Hessians (P <= 11
   parameters, so a P x P solve per start is free). A damped Newton step converges in tens of
   iterations where first-order methods need hundreds, which is what makes the batch cheap;
3. the best few distinct candidates are polished with SciPy's L-BFGS-B using the exact float64
   gradient and tight tolerances (ftol 1e-15, gtol 1e-12); its status, iterations and final
   gradient are reported. The result is chosen by the objective, or, when a held-out set is given,
   by train RMSE + held-out RMSE (the Joint MoE protocol).

Bootstrap refits resample the training points with replacement (as integer weights on them), or
whole runs when ``run_column`` names each point's run (a run's checkpoints are not independent
draws), and re-run stage 2 for all resamples at once, started from the fitted optimum; the
intervals are percentiles of the refitted parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.optimize

from moejax.laws.forms import Law, get_law

LOSS_KEY = "loss"
_MAX_ELEMENTS_PER_CHUNK = 2_000_000  # starts x points evaluated per jitted call in stage 1
# Bound on Ê's fit coordinates during the L-BFGS-B polish: E_max - E_start <= 1e7 is "no saturation"
# for any expert count in use, and stops the polish crawling along that flat direction.
_SATURATION_COORDINATE_BOUNDS = (-12.0, math.log(1e7))
# A gradient this small (largest component, relative to max(|objective|, 1)) is rounding noise:
# L-BFGS-B's own test (gtol 1e-12, absolute) can miss it by a hair and stop with "ABNORMAL".
_NOISE_GRADIENT = 1e-9


class FitInputError(ValueError):
    """The points cannot identify the law (missing columns, bad values, too few or flat points)."""


def parse_columns(text: str) -> dict[str, str]:
    """'N=n_active,D=tokens_seen,loss=loss' (``--columns``, ``Grid.fit_columns``) -> {law variable:
    points column}; FitInputError naming an item that is not ``variable=column``."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not key or not column:
            raise FitInputError(f"{item!r} is not law_variable=column "
                                "(e.g. 'N=n_active,D=tokens_seen,loss=loss')")
        mapping[key] = column
    return mapping


@dataclasses.dataclass
class FitResult:
    """Outcome of ``fit``. RMSEs are of ln L (natural log of the loss). ``intervals`` maps each
    parameter to [lower, upper] at ``confidence`` from bootstrap refits (empty without bootstrap)."""

    law: str
    parameters: dict[str, float]
    fit_coordinates: dict[str, float]
    objective: float
    train_rmse: float
    holdout_rmse: float | None
    n_train: int
    n_holdout: int
    converged: bool
    convergence: dict[str, Any]
    columns: dict[str, str]
    huber_delta: float | None
    confidence: float = 0.95
    intervals: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    bootstrap_parameters: list[dict[str, float]] = dataclasses.field(default_factory=list)
    # Each refit's fit coordinates (as fit_coordinates): what predictions are made from, exact
    # where a paper-named parameter underflowed (a degenerate refit's A = 0.0, say).
    bootstrap_coordinates: list[dict[str, float]] = dataclasses.field(default_factory=list)
    bootstrap_converged_fraction: float | None = None
    bootstrap_unit: str = "row"  # what a refit resamples: rows, or the runs of this column
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FitResult":
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str) -> "FitResult":
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------------------------------------
# Input handling

def _resolve_columns(law: Law, columns: Mapping[str, str] | None) -> dict[str, str]:
    mapping = {name: name for name in law.variable_names}
    mapping[LOSS_KEY] = LOSS_KEY
    for key, column in (columns or {}).items():
        if key not in mapping:
            raise FitInputError(f"column mapping names {key!r}, which is not a variable of law "
                                f"{law.name!r} (variables: {', '.join(law.variable_names)}, and 'loss')")
        mapping[key] = column
    return mapping


def _extract(points: pd.DataFrame, law: Law, mapping: Mapping[str, str]):
    missing = [f"{key} (column {col!r})" for key, col in mapping.items() if col not in points.columns]
    if missing:
        raise FitInputError(f"law {law.name!r} needs columns missing from the points: {', '.join(missing)}; "
                            f"available: {', '.join(map(str, points.columns))}. Map them with columns=")
    arrays = {}
    for key, column in mapping.items():
        try:
            values = points[column].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise FitInputError(f"column {column!r} ({key}) is not numeric: {err}") from None
        n_bad = int(np.sum(~np.isfinite(values)))
        if n_bad:
            raise FitInputError(f"column {column!r} ({key}) has {n_bad} NaN or infinite values")
        arrays[key] = values
    if np.any(arrays[LOSS_KEY] <= 0):
        raise FitInputError(f"loss column {mapping[LOSS_KEY]!r} has {int(np.sum(arrays[LOSS_KEY] <= 0))} "
                            "non-positive values; the laws are fitted on ln L")
    for name in law.variable_names:
        values = arrays[name]
        if name == "S":
            bad = (values < 0) | (values >= 1)
            rule = "in [0, 1)"
        elif name == "E":
            bad, rule = values < 1, ">= 1"
        else:
            bad, rule = values <= 0, "> 0"
        if np.any(bad):
            raise FitInputError(f"variable {name} (column {mapping[name]!r}) must be {rule}; "
                                f"{int(np.sum(bad))} rows are not")
    return arrays


def _holdout_mask(holdout, law: Law, loss: np.ndarray) -> np.ndarray:
    """Boolean mask of held-out runs. holdout: None, "paper", int k or "lowest:k" (the k lowest-loss
    runs), a fraction in (0, 1) of lowest-loss runs, or a boolean array."""
    n = loss.shape[0]
    if holdout is None:
        return np.zeros(n, dtype=bool)
    if isinstance(holdout, str):
        if holdout == "paper":
            if law.default_holdout is None:
                return np.zeros(n, dtype=bool)
            holdout = law.default_holdout
        elif holdout.startswith("lowest:"):
            holdout = int(holdout.split(":", 1)[1])
        elif holdout in ("", "none"):
            return np.zeros(n, dtype=bool)
        else:
            raise FitInputError(f"holdout {holdout!r}: use 'paper', 'lowest:K', an int, a fraction or a mask")
    if isinstance(holdout, (bool, np.bool_)):
        raise FitInputError("holdout must be an int, a fraction, 'paper', 'lowest:K' or a boolean mask")
    if isinstance(holdout, (int, np.integer, float)) and np.ndim(holdout) == 0:
        k = int(round(holdout * n)) if isinstance(holdout, float) and 0 < holdout < 1 else int(holdout)
        if not 0 <= k < n:
            raise FitInputError(f"holdout of {k} runs out of {n} leaves nothing to fit")
        mask = np.zeros(n, dtype=bool)
        mask[np.argsort(loss, kind="stable")[:k]] = True
        return mask
    mask = np.asarray(holdout, dtype=bool)
    if mask.shape != (n,):
        raise FitInputError(f"holdout mask has shape {mask.shape}, expected ({n},)")
    return mask


def _validate_identifiable(law: Law, train: Mapping[str, np.ndarray], mapping) -> None:
    n = train[LOSS_KEY].shape[0]
    if n <= law.n_parameters:
        raise FitInputError(f"law {law.name!r} has {law.n_parameters} parameters but only {n} training "
                            f"points; need more than {law.n_parameters}")
    for name in law.variable_names:
        if np.unique(train[name]).size < 2:
            raise FitInputError(f"variable {name} (column {mapping[name]!r}) never varies in the training "
                                f"points (always {train[name][0]:g}); law {law.name!r} cannot be fitted "
                                "(use a law without it, or add runs that vary it)")


# ---------------------------------------------------------------------------------------------
# Jitted kernels, one set per law (cached: refits with the same shapes reuse the compilation)

@functools.lru_cache(maxsize=None)
def _kernels(law: Law):
    delta = law.huber_delta

    def pointwise_loss(residual):
        if delta is None:
            return 0.5 * residual * residual
        magnitude = jnp.abs(residual)
        return jnp.where(magnitude <= delta, 0.5 * residual * residual, delta * (magnitude - 0.5 * delta))

    def objective(theta, data, log_loss, weights):
        residual = law.log_loss(theta, data) - log_loss
        value = jnp.sum(weights * pointwise_loss(residual))
        return jnp.where(jnp.isfinite(value), value, jnp.inf)

    def rmse(theta, data, log_loss, weights):
        residual = law.log_loss(theta, data) - log_loss
        return jnp.sqrt(jnp.sum(weights * residual**2) / jnp.maximum(jnp.sum(weights), 1.0))

    gradient = jax.grad(objective)
    hessian = jax.hessian(objective)

    def damped_newton_step(theta, damping, stalled, data, log_loss, weights):
        value = objective(theta, data, log_loss, weights)
        grad = gradient(theta, data, log_loss, weights)
        hess = hessian(theta, data, log_loss, weights)
        diag = jnp.abs(jnp.diagonal(hess))
        scale = jnp.maximum(diag, 1e-10 * jnp.max(diag) + 1e-300)  # Marquardt: damp relative to curvature
        step = -jnp.linalg.solve(hess + damping * jnp.diag(scale), grad)
        is_descent = jnp.all(jnp.isfinite(step)) & (jnp.dot(step, grad) < 0)
        trial = jnp.where(is_descent, theta + step, theta)
        trial_value = objective(trial, data, log_loss, weights)
        accept = is_descent & (trial_value <= value)
        new_theta = jnp.where(accept, trial, theta)
        new_value = jnp.where(accept, trial_value, value)
        new_damping = jnp.where(accept, jnp.maximum(damping / 5.0, 1e-12), jnp.minimum(damping * 4.0, 1e16))
        # A member has converged once `patience` consecutive steps (accepted or not) gain nothing
        # measurable: with damping x4 per rejection that also means the trust region has collapsed.
        negligible = (value - new_value) <= 1e-14 * jnp.abs(value)
        new_stalled = jnp.where(negligible, stalled + 1, 0)
        return new_theta, new_damping, new_stalled, new_value

    batch = dict(in_axes=(0, None, None, 0))
    return {
        "objective_batch": jax.jit(jax.vmap(objective, in_axes=(0, None, None, None))),
        "rmse_batch": jax.jit(jax.vmap(rmse, in_axes=(0, None, None, None))),
        "newton_batch": jax.jit(jax.vmap(damped_newton_step, in_axes=(0, 0, 0, None, None, 0))),
        "value_and_grad": jax.jit(jax.value_and_grad(objective)),
        "rmse": jax.jit(rmse),
        "objective_weights_batch": jax.jit(jax.vmap(objective, **batch)),
    }


def _evaluate_all_starts(kernels, starts, data, log_loss, weights) -> np.ndarray:
    """Objective at every start, shape (n_starts,). Evaluated in float32: it only ranks the starts
    (differences between grid starts are far above float32 rounding) and runs ~2x faster on CPU."""
    n_starts, n_points = starts.shape[0], log_loss.shape[0]
    chunk = max(1, min(n_starts, _MAX_ELEMENTS_PER_CHUNK // max(n_points, 1)))
    data32 = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in data.items()}
    log_loss32, weights32 = jnp.asarray(log_loss, dtype=jnp.float32), jnp.asarray(weights, dtype=jnp.float32)
    values = np.empty(n_starts)
    for begin in range(0, n_starts, chunk):
        block = starts[begin:begin + chunk]
        if block.shape[0] < chunk:  # pad so every call has one shape (one compilation)
            block = np.concatenate([block, np.repeat(block[-1:], chunk - block.shape[0], axis=0)])
        out = np.asarray(kernels["objective_batch"](jnp.asarray(block, dtype=jnp.float32), data32, log_loss32,
                                                    weights32))
        values[begin:begin + chunk] = out[: min(chunk, n_starts - begin)]
    values[~np.isfinite(values)] = np.inf
    return values


def _newton_batch(kernels, thetas, data, log_loss, weights_batch, max_iterations=120, patience=8,
                  stop_when_best_settles=False):
    """Batched damped Newton until every member has converged (``patience`` consecutive steps with
    relative decrease < 1e-14) or ``max_iterations``; with ``stop_when_best_settles``, also once the
    batch's best value has not moved (relative 1e-12) for 10 steps and at least 3 members have
    converged: members still crawling along flat valleys by then are far from the best. Members
    not converged are finished by L-BFGS-B if they are picked. Returns thetas, values, converged
    flags and the number of iterations run."""
    thetas = jnp.asarray(thetas)
    damping = jnp.full((thetas.shape[0],), 1e-3)
    stalled = jnp.zeros((thetas.shape[0],), dtype=jnp.int32)
    weights_batch = jnp.asarray(weights_batch)
    values = None
    iteration = 0
    previous_best = np.inf
    for iteration in range(1, max_iterations + 1):
        thetas, damping, stalled, values = kernels["newton_batch"](thetas, damping, stalled, data, log_loss,
                                                                   weights_batch)
        if iteration % 10 == 0:
            converged = np.asarray(stalled) >= patience
            if converged.all():
                break
            best = float(np.min(np.asarray(values)))
            if stop_when_best_settles and converged.sum() >= min(3, len(converged)) and \
                    best >= previous_best * (1 - 1e-12):
                break
            previous_best = best
    return np.asarray(thetas), np.asarray(values), np.asarray(stalled) >= patience, iteration


def _polish(kernels, theta, data, log_loss, weights, bounds=None):
    """L-BFGS-B with the exact float64 gradient and tight tolerances."""

    def value_and_grad(x):
        value, grad = kernels["value_and_grad"](jnp.asarray(x), data, log_loss, weights)
        return float(value), np.asarray(grad, dtype=np.float64)

    result = scipy.optimize.minimize(value_and_grad, np.asarray(theta, dtype=np.float64), jac=True,
                                     method="L-BFGS-B", bounds=bounds,
                                     options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 20_000, "maxcor": 30})
    return result


def _start_array(law: Law, starts) -> np.ndarray:
    if starts is None:
        return law.start_grid()
    if isinstance(starts, Mapping):
        keys = set(starts)
        if keys == set(law.parameter_names) and not keys <= set(law.fit_parameter_names):
            return law.from_parameters(starts)[None, :]
        return np.asarray([[float(starts[k]) for k in law.fit_parameter_names]])
    array = np.atleast_2d(np.asarray(starts, dtype=np.float64))
    if array.shape[1] != law.n_parameters:
        raise FitInputError(f"starts have {array.shape[1]} columns, law {law.name!r} has {law.n_parameters}")
    return array


# ---------------------------------------------------------------------------------------------
# Public API

def fit(points: pd.DataFrame, law: str | Law = "chinchilla", columns: Mapping[str, str] | None = None,
        holdout=None, bootstrap: int = 0, *, starts=None, n_optimised: int = 128,
        max_newton_iterations: int = 120, n_polished: int = 3, confidence: float = 0.95, seed: int = 0,
        run_column: str | None = None, progress: bool = False) -> FitResult:
    """Fit ``law`` to ``points``.

    points: DataFrame, one row per run. columns: {law variable or "loss": column name}; defaults to
    the variable names themselves and "loss". holdout: see ``_holdout_mask`` ("paper" applies the
    law's protocol, e.g. Joint MoE's 30 lowest-loss runs). bootstrap: number of refits on runs
    resampled with replacement (rows, or groups of ``run_column``). starts: None for the paper's
    grid, or an array (n, P) in fit coordinates, or one dict of parameters. n_optimised: how many of
    the best-evaluated starts are optimised to convergence; the best ``n_polished`` distinct ones
    are polished with L-BFGS-B. confidence: level of the bootstrap intervals.
    Raises ``FitInputError`` on degenerate input.
    """
    from tqdm.auto import tqdm

    law = get_law(law)
    began = time.perf_counter()
    mapping = _resolve_columns(law, columns)
    arrays = _extract(points, law, mapping)
    held_out = _holdout_mask(holdout, law, arrays[LOSS_KEY])
    train = {k: v[~held_out] for k, v in arrays.items()}
    test = {k: v[held_out] for k, v in arrays.items()}
    _validate_identifiable(law, train, mapping)
    start_grid = _start_array(law, starts)

    with jax.enable_x64(True):
        kernels = _kernels(law)
        data = {k: jnp.asarray(train[k]) for k in law.variable_names}
        log_loss = jnp.asarray(np.log(train[LOSS_KEY]))
        ones = jnp.ones_like(log_loss)
        test_data = {k: jnp.asarray(test[k]) for k in law.variable_names}
        test_log_loss = jnp.asarray(np.log(test[LOSS_KEY])) if held_out.any() else None

        bar = tqdm(total=3 + bootstrap, desc=f"fit {law.name}", disable=not progress, leave=False)
        # Stage 1: every start, one vectorised evaluation.
        start_values = _evaluate_all_starts(kernels, start_grid, data, log_loss, ones)
        if not np.isfinite(start_values).any():
            raise FitInputError(f"the objective is not finite at any of {len(start_grid)} starts")
        stage_seconds = {"evaluate": time.perf_counter() - began}
        bar.update(1)
        # Stage 2: the best starts to convergence, batched.
        order = np.argsort(start_values, kind="stable")
        chosen = start_grid[order[: min(n_optimised, int(np.isfinite(start_values).sum()))]]
        saturation_columns = [law.fit_parameter_names.index(name) for name in law.saturation_coordinates]
        polish_bounds = [(_SATURATION_COORDINATE_BOUNDS if i in saturation_columns else (None, None))
                         for i in range(law.n_parameters)] if saturation_columns else None
        thetas, values, stage2_converged, stage2_iterations = _newton_batch(
            kernels, chosen, data, log_loss, jnp.broadcast_to(ones, (len(chosen), ones.shape[0])),
            max_iterations=max_newton_iterations, stop_when_best_settles=True)
        stage_seconds["optimise"] = time.perf_counter() - began - sum(stage_seconds.values())
        bar.update(1)

        def criterion(candidate_thetas, candidate_values):
            if test_log_loss is None:
                return candidate_values
            train_rmse = np.asarray(kernels["rmse_batch"](jnp.asarray(candidate_thetas), data, log_loss, ones))
            test_rmse = np.asarray(kernels["rmse_batch"](jnp.asarray(candidate_thetas), test_data,
                                                         test_log_loss, jnp.ones_like(test_log_loss)))
            score = train_rmse + test_rmse
            return np.where(np.isfinite(candidate_values) & np.isfinite(score), score, np.inf)

        scores = criterion(thetas, values)
        # Stage 3: polish the best few distinct candidates with L-BFGS-B.
        picked, polished = [], []
        for index in np.argsort(scores, kind="stable"):
            if len(picked) >= n_polished or not np.isfinite(scores[index]):
                break
            if any(np.allclose(thetas[index], thetas[j], rtol=1e-6, atol=1e-8) for j in picked):
                continue
            picked.append(index)
            polished.append(_polish(kernels, thetas[index], data, log_loss, ones, polish_bounds))
        polished_thetas = np.stack([r.x for r in polished])
        polished_values = np.asarray([r.fun for r in polished])
        polished_scores = criterion(polished_thetas, polished_values)
        best = int(np.argmin(polished_scores))
        best_result = polished[best]
        theta = polished_thetas[best]
        stage_seconds["polish"] = time.perf_counter() - began - sum(stage_seconds.values())
        bar.update(1)

        best_value = float(best_result.fun)
        near_best = np.abs(values - best_value) <= 1e-8 * max(abs(best_value), 1e-300) + 1e-300
        gradient = np.asarray(best_result.jac, dtype=np.float64)
        # L-BFGS-B often stops with "ABNORMAL" in the line search at an optimum that float64 cannot
        # improve: count that as converged when the damped-Newton stage had converged there too,
        # or when the gradient there is at the rounding-noise level (seen on Clark's law with
        # scipy 1.17: max |gradient| 1.2e-12 against gtol 1e-12, after Newton stopped early
        # because the batch's best had settled).
        newton_here = bool(stage2_converged[picked[best]])
        gradient_max_abs = float(np.max(np.abs(gradient)))
        gradient_is_noise = gradient_max_abs <= _NOISE_GRADIENT * max(abs(best_value), 1.0)
        converged = bool(best_result.success) or gradient_is_noise or (
            newton_here and float(best_result.fun) <= float(values[picked[best]]) * (1 + 1e-12))
        convergence = {
            "method": "grid evaluation -> batched damped Newton (exact Hessian) -> L-BFGS-B (exact gradient)",
            "n_starts": int(len(start_grid)),
            "n_starts_optimised": int(len(chosen)),
            "n_starts_converged": int(stage2_converged.sum()),
            "n_starts_at_best": int(near_best.sum()),
            "newton_iterations": int(stage2_iterations),
            "lbfgs_success": bool(best_result.success),
            "lbfgs_message": str(best_result.message),
            "lbfgs_iterations": int(best_result.nit),
            "lbfgs_evaluations": int(best_result.nfev),
            "gradient_max_abs": gradient_max_abs,
            "stage_seconds": stage_seconds,
            "selection": "train RMSE + held-out RMSE" if test_log_loss is not None else "objective",
        }
        train_rmse = float(kernels["rmse"](jnp.asarray(theta), data, log_loss, ones))
        holdout_rmse = (float(kernels["rmse"](jnp.asarray(theta), test_data, test_log_loss,
                                              jnp.ones_like(test_log_loss)))
                        if test_log_loss is not None else None)

        result = FitResult(
            law=law.name, parameters=law.to_parameters(theta),
            fit_coordinates=dict(zip(law.fit_parameter_names, map(float, theta))),
            objective=best_value, train_rmse=train_rmse, holdout_rmse=holdout_rmse,
            n_train=int((~held_out).sum()), n_holdout=int(held_out.sum()), converged=converged,
            convergence=convergence, columns=dict(mapping), huber_delta=law.huber_delta,
            confidence=confidence)

        if bootstrap > 0:
            groups = (points.loc[~held_out, run_column].to_numpy() if run_column is not None
                      else np.arange(result.n_train))
            unique_groups, group_index = np.unique(groups, return_inverse=True)
            rng = np.random.default_rng(seed)
            draws = rng.integers(0, len(unique_groups), size=(bootstrap, len(unique_groups)))
            group_counts = np.stack([np.bincount(d, minlength=len(unique_groups)) for d in draws])
            weights = group_counts[:, group_index].astype(np.float64)
            boot_thetas, _, boot_converged, _ = _newton_batch(
                kernels, np.repeat(theta[None, :], bootstrap, axis=0), data, log_loss, weights)
            bar.update(bootstrap)
            samples = [law.to_parameters(t) for t in boot_thetas]
            result.bootstrap_parameters = samples
            result.bootstrap_coordinates = [dict(zip(law.fit_parameter_names, map(float, t)))
                                            for t in boot_thetas]
            result.bootstrap_converged_fraction = float(np.mean(boot_converged))
            result.bootstrap_unit = run_column or "row"
            tail = 100 * (1 - confidence) / 2
            for name in law.parameter_names:
                column = np.asarray([s[name] for s in samples])
                result.intervals[name] = [float(np.percentile(column, tail)),
                                          float(np.percentile(column, 100 - tail))]
        bar.close()
    result.seconds = time.perf_counter() - began
    return result


def predict(result: FitResult, points: pd.DataFrame | Mapping[str, Any], columns: Mapping[str, str] | None = None,
            ) -> pd.DataFrame:
    """Predicted loss for each row of ``points``: column ``loss_pred`` and, when the result has
    bootstrap samples, ``loss_lower`` / ``loss_upper`` (percentile band at ``result.confidence``)."""
    law = get_law(result.law)
    mapping = dict(result.columns)
    mapping.update(columns or {})
    frame = points if isinstance(points, pd.DataFrame) else pd.DataFrame(points)
    missing = [f"{name} (column {mapping[name]!r})" for name in law.variable_names if mapping[name] not in frame]
    if missing:
        raise FitInputError(f"cannot predict law {law.name!r}: missing {', '.join(missing)}")
    variables = {name: frame[mapping[name]].to_numpy(dtype=np.float64) for name in law.variable_names}
    with jax.enable_x64(True):
        out = pd.DataFrame({"loss_pred": law.predict_at(_coordinates(law, result.fit_coordinates),
                                                        variables)}, index=frame.index)
        if result.bootstrap_parameters:
            if result.bootstrap_coordinates:
                thetas = [_coordinates(law, c) for c in result.bootstrap_coordinates]
            else:  # saved before bootstrap_coordinates existed: from the parameters
                thetas = [law.from_parameters(p) for p in result.bootstrap_parameters]
            draws = np.stack([law.predict_at(theta, variables) for theta in thetas])
            tail = 100 * (1 - result.confidence) / 2
            out["loss_lower"] = np.percentile(draws, tail, axis=0)
            out["loss_upper"] = np.percentile(draws, 100 - tail, axis=0)
    return out


def _coordinates(law: Law, coordinates: Mapping[str, float]) -> np.ndarray:
    return np.asarray([coordinates[name] for name in law.fit_parameter_names], dtype=np.float64)

"""Scaling-law forms: one small ``Law`` object per paper, and a registry by name.

In: nothing at import time. Out: ``Law`` objects, each holding
  * the variables it reads (N, D, E, G, S ...) and which accounting quantity each is under that
    paper's convention (see ``/work/shared/reference/LAWS.md``, "Conventions differ"),
  * its parameters under the paper's names, and the unconstrained "fit coordinates" the optimiser
    moves in (log-scale amplitudes, log(E_start - 1) ...), with the maps between the two,
  * ``log_loss(theta, variables)``: the natural log of the predicted loss, a pure JAX function,
  * the paper's initialisation grid (in fit coordinates), Huber delta and published coefficients.

Every form returns ln L. Amplitudes that the paper fits in log space enter through logsumexp, so
a term like A/N^alpha is ``exp(log_A - alpha * ln N)``. Clark's law is stated in log10; since
ln L = ln(10) * log10 L, a squared-error fit on ln L has the same optimum as their fit on log10 L.

To add a form: write its ``log_loss``, describe its variables and parameters, and call
``register_law(Law(...))``. Nothing else in ``moejax.laws`` needs to change.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from moejax.laws.saturation import saturating_expert_count


@dataclasses.dataclass(frozen=True)
class Variable:
    """One input of a law: its symbol and the accounting quantity it stands for."""

    name: str
    meaning: str


@dataclasses.dataclass(frozen=True, eq=False)
class Law:
    """A scaling-law form. Parameters are dicts keyed by the paper's names.

    ``log_loss(theta, variables)`` takes ``theta`` (shape (P,), fit coordinates in the order of
    ``fit_parameter_names``) and a dict of variable arrays (raw values, e.g. N in parameters, D in
    tokens) and returns ln L with the variables' shape.
    """

    name: str
    description: str
    reference: str
    variables: tuple[Variable, ...]
    parameter_names: tuple[str, ...]
    fit_parameter_names: tuple[str, ...]
    log_loss: Callable
    to_parameters: Callable[[np.ndarray], dict]
    from_parameters: Callable[[Mapping[str, float]], np.ndarray]
    init_grid: Mapping[str, tuple[float, ...]]
    huber_delta: float | None  # None: squared error (Clark's MSE on log10 L)
    published: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    default_holdout: int | None = None  # paper's protocol: hold out the k lowest-loss runs
    # Fit coordinates of Ê's E_start, E_max (bounded during the final polish).
    saturation_coordinates: tuple[str, ...] = ()
    notes: str = ""

    @property
    def variable_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables)

    @property
    def n_parameters(self) -> int:
        return len(self.fit_parameter_names)

    def start_grid(self) -> np.ndarray:
        """Every start of the initialisation grid, shape (n_starts, P), in fit coordinates."""
        axes = [np.asarray(self.init_grid[name], dtype=np.float64) for name in self.fit_parameter_names]
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=1)

    def predict(self, parameters: Mapping[str, float], variables: Mapping[str, np.ndarray]) -> np.ndarray:
        """Predicted loss (nats/token, or whatever the fitted loss is) for paper-named parameters."""
        return self.predict_at(self.from_parameters(parameters), variables)

    def predict_at(self, theta, variables: Mapping[str, np.ndarray]) -> np.ndarray:
        """Predicted loss at fit coordinates ``theta`` (exact where a paper-named parameter
        underflowed, e.g. A = exp(log_A) = 0.0 for a log_A of -800)."""
        with jax.enable_x64(True):
            theta = jnp.asarray(np.asarray(theta, dtype=np.float64))
            arrays = {k: jnp.asarray(np.asarray(variables[k], dtype=np.float64)) for k in self.variable_names}
            return np.exp(np.asarray(self.log_loss(theta, arrays), dtype=np.float64))


_REGISTRY: dict[str, Law] = {}


def register_law(law: Law) -> Law:
    """Add ``law`` to the registry under ``law.name`` (replacing any law of that name)."""
    if set(law.init_grid) != set(law.fit_parameter_names):
        raise ValueError(f"law {law.name!r}: init_grid keys {sorted(law.init_grid)} must equal fit "
                         f"parameters {sorted(law.fit_parameter_names)}")
    _REGISTRY[law.name] = law
    return law


def get_law(name: str | Law) -> Law:
    """The registered law called ``name`` (a ``Law`` passes through)."""
    if isinstance(name, Law):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown law {name!r}; known laws: {', '.join(sorted(_REGISTRY))}") from None


def list_laws() -> list[str]:
    return sorted(_REGISTRY)


# ---------------------------------------------------------------------------------------------
# Shared pieces: paper parameter <-> fit coordinate maps.
# Each law lists, for each paper parameter, how it is stored: "log" (amplitude fitted as its log),
# "id" (as is), or the pair E_start/E_max stored as log(E_start - 1), log(E_max - E_start), which
# keeps 1 < E_start < E_max without bounds.

def _log_of_exp(name: str, value: float) -> float:
    """The fit coordinate of a parameter stored as exp(coordinate): its log, and -inf at 0, where
    the exponential of a very negative coordinate underflowed (a degenerate bootstrap refit gives
    A = 0.0, say). -inf is the limit; the refit's own predictions need its coordinates
    (``Law.predict_at``), which ``FitResult`` keeps. Below 0 no coordinate maps there."""
    if value > 0.0:
        return math.log(value)
    if value == 0.0:
        return -math.inf
    raise ValueError(f"parameter {name} = {value!r}: must be positive for this law")


def _make_maps(spec: Sequence[tuple[str, str, str]]):
    """spec: (paper name, fit name, kind) with kind in {"log", "id", "e_start", "e_max"}."""

    def to_parameters(theta) -> dict:
        theta = np.asarray(theta, dtype=np.float64)
        out: dict[str, float] = {}
        for i, (paper, _fit, kind) in enumerate(spec):
            if kind == "log":
                out[paper] = float(np.exp(theta[i]))
            elif kind == "e_start":
                out[paper] = float(1.0 + np.exp(theta[i]))
            elif kind == "e_max":
                continue  # needs E_start first
            else:
                out[paper] = float(theta[i])
        for i, (paper, _fit, kind) in enumerate(spec):
            if kind == "e_max":
                out[paper] = float(out["E_start"] + np.exp(theta[i]))
        return out

    def from_parameters(params: Mapping[str, float]) -> np.ndarray:
        theta = []
        for paper, _fit, kind in spec:
            value = float(params[paper])
            if kind == "log":
                theta.append(_log_of_exp(paper, value))
            elif kind == "e_start":
                theta.append(_log_of_exp(paper, value - 1.0))
            elif kind == "e_max":
                theta.append(_log_of_exp(paper, value - float(params["E_start"])))
            else:
                theta.append(value)
        return np.asarray(theta, dtype=np.float64)

    return to_parameters, from_parameters


# Ê's constants are in no paper's grid. From a single (E_start, E_max) start the optimiser can drift
# to the degenerate edge E_start -> 1, E_max -> inf and stay there (seen on Yun's form), so every law
# with Ê also crosses its grid with E_start in {1.5, 2, 4} and E_max - E_start in {50, 300, 2000}.
_E_START_GRID = tuple(math.log(x - 1.0) for x in (1.5, 2.0, 4.0))
_E_MAX_GRID = tuple(math.log(x) for x in (50.0, 300.0, 2000.0))



def _e_hat(log_e_start_minus_1, log_e_max_minus_e_start, num_experts):
    e_start = 1.0 + jnp.exp(log_e_start_minus_1)
    e_max = e_start + jnp.exp(log_e_max_minus_e_start)
    return saturating_expert_count(num_experts, e_start, e_max)


def _law(name, description, reference, variables, spec, log_loss, init_grid, huber_delta,
         published=None, default_holdout=None, notes=""):
    to_p, from_p = _make_maps(spec)
    saturation = tuple(fit for _paper, fit, kind in spec if kind in ("e_start", "e_max"))
    return register_law(Law(
        name=name, description=description, reference=reference,
        variables=tuple(Variable(*v) for v in variables),
        parameter_names=tuple(s[0] for s in spec), fit_parameter_names=tuple(s[1] for s in spec),
        log_loss=log_loss, to_parameters=to_p, from_parameters=from_p,
        init_grid={k: tuple(float(x) for x in v) for k, v in init_grid.items()},
        huber_delta=huber_delta, published=published or {}, default_holdout=default_holdout,
        saturation_coordinates=saturation, notes=notes))


def _arange(start, stop, step):
    return tuple(np.round(np.arange(start, stop + step / 2, step), 12))


# ---------------------------------------------------------------------------------------------
# Chinchilla approach 3 (Hoffmann et al. 2022): L = E + A/N^alpha + B/D^beta.

def _chinchilla_log_loss(theta, v):
    log_a, log_b, log_e, alpha, beta = theta
    log_n, log_d = jnp.log(v["N"]), jnp.log(v["D"])
    terms = jnp.stack([log_a - alpha * log_n, log_b - beta * log_d, jnp.broadcast_to(log_e, log_n.shape)])
    return logsumexp(terms, axis=0)


CHINCHILLA = _law(
    "chinchilla", "L = E + A/N^alpha + B/D^beta (approach 3)", "Hoffmann et al. 2022, arXiv 2203.15556",
    [("N", "model parameters (Chinchilla counts non-embedding + embedding as reported)"),
     ("D", "training tokens")],
    [("A", "log_A", "log"), ("B", "log_B", "log"), ("E", "log_E", "log"),
     ("alpha", "alpha", "id"), ("beta", "beta", "id")],
    _chinchilla_log_loss,
    {"log_A": _arange(0, 25, 5), "log_B": _arange(0, 25, 5), "log_E": _arange(-1, 1, 0.5),
     "alpha": _arange(0, 2, 0.5), "beta": _arange(0, 2, 0.5)},
    huber_delta=1e-3,
    published={"hoffmann2022": {"A": 406.4, "B": 410.7, "E": 1.69, "alpha": 0.34, "beta": 0.28}},
)


# ---------------------------------------------------------------------------------------------
# Joint MoE (Ludziejewski et al. 2025): exponents are negative in this convention.

def _joint_moe_log_loss(theta, v):
    log_a, alpha, delta, gamma, log_b, beta, omega, zeta, log_e_start, log_e_max, log_c = theta
    log_e_hat = jnp.log(_e_hat(log_e_start, log_e_max, v["E"]))
    log_n, log_d = jnp.log(v["N"]), jnp.log(v["D"])
    model_term = log_a + delta * log_e_hat + (alpha + gamma * log_e_hat) * log_n
    data_term = log_b + omega * log_e_hat + (beta + zeta * log_e_hat) * log_d
    return logsumexp(jnp.stack([model_term, data_term, jnp.broadcast_to(log_c, log_n.shape)]), axis=0)


JOINT_MOE = _law(
    "joint_moe", "L = a Ê^delta N^(alpha + gamma ln Ê) + b Ê^omega D^(beta + zeta ln Ê) + c",
    "Ludziejewski et al. 2025, Joint MoE scaling laws, arXiv 2502.05172",
    [("N", "active parameters INCLUDING embeddings (N_act, App. A counting)"),
     ("D", "training tokens"),
     ("E", "number of experts (expert = full FFN, top-1 style granularity G = 1; dense = 1)")],
    [("a", "log_a", "log"), ("alpha", "alpha", "id"), ("delta", "delta", "id"), ("gamma", "gamma", "id"),
     ("b", "log_b", "log"), ("beta", "beta", "id"), ("omega", "omega", "id"), ("zeta", "zeta", "id"),
     ("E_start", "log_E_start_minus_1", "e_start"), ("E_max", "log_E_max_minus_E_start", "e_max"),
     ("c", "log_c", "log")],
    _joint_moe_log_loss,
    # App. B grid; alpha, beta listed there as magnitudes, negative in this convention.
    # E_start, E_max: not in the paper's grid; the shared Ê grid.
    {"log_a": tuple(math.log(x) for x in (30, 100, 300)), "alpha": (-0.05, -0.25, -0.5),
     "delta": (-0.5, 0.0, 0.5), "gamma": (-0.5, 0.0, 0.5),
     "log_b": tuple(math.log(x) for x in (30, 100, 300)), "beta": (-0.05, -0.25, -0.5),
     "omega": (-0.5, 0.0, 0.5), "zeta": (-0.5, 0.0, 0.5),
     "log_E_start_minus_1": _E_START_GRID, "log_E_max_minus_E_start": _E_MAX_GRID,
     "log_c": tuple(math.log(x) for x in (0.5, 1, 2))},
    huber_delta=1e-2, default_holdout=30,
    published={"table3": {"a": 35.91, "alpha": -0.1889, "delta": -0.2285, "gamma": 0.0098, "b": 35.98,
                          "beta": -0.1775, "omega": 0.5529, "zeta": -0.0259, "E_start": 2.0732,
                          "E_max": 290.4521, "c": 1.3637}},
    notes="Start selection (App. B): lowest train RMSE + held-out RMSE, holding out the 30 lowest-loss runs.",
)


# ---------------------------------------------------------------------------------------------
# Yun et al. 2024: log L = log(A/N^alpha + B/Ê^beta + C/D^gamma + F) + d log N log Ê.

def _yun_log_loss(theta, v):
    log_a, alpha, log_b, beta, log_c, gamma, log_f, d, log_e_start, log_e_max = theta
    log_e_hat = jnp.log(_e_hat(log_e_start, log_e_max, v["E"]))
    log_n, log_d = jnp.log(v["N"]), jnp.log(v["D"])
    terms = jnp.stack([log_a - alpha * log_n, log_b - beta * log_e_hat + 0.0 * log_n,
                       log_c - gamma * log_d, jnp.broadcast_to(log_f, log_n.shape)])
    return logsumexp(terms, axis=0) + d * log_n * log_e_hat


YUN = _law(
    "yun", "log L = log(A/N^alpha + B/Ê^beta + C/D^gamma + F) + d log N log Ê",
    "Yun et al. 2024, Toward inference-optimal MoE LLMs, arXiv 2404.02852",
    [("N", "NON-embedding parameters of the corresponding dense model (N_MoE = (1 + (E-1)/3) N)"),
     ("D", "training tokens"), ("E", "number of experts (MoE every other layer, top-2)")],
    [("A", "log_A", "log"), ("alpha", "alpha", "id"), ("B", "log_B", "log"), ("beta", "beta", "id"),
     ("C", "log_C", "log"), ("gamma", "gamma", "id"), ("F", "log_F", "log"), ("d", "d", "id"),
     ("E_start", "log_E_start_minus_1", "e_start"), ("E_max", "log_E_max_minus_E_start", "e_max")],
    _yun_log_loss,
    # Paper grid for alpha, beta, gamma, log A, log B, log C, log F. LAWS.md lists d "as a log" in
    # {0..25}, which cannot be meant (d multiplies ln N ln Ê); d starts at 0. E_start, E_max: Ê grid.
    {"log_A": _arange(0, 25, 5), "alpha": _arange(0, 2, 0.5), "log_B": _arange(0, 25, 5),
     "beta": _arange(0, 2, 0.5), "log_C": _arange(0, 25, 5), "gamma": _arange(0, 2, 0.5),
     "log_F": _arange(-1, 1, 0.5), "d": (0.0,), "log_E_start_minus_1": _E_START_GRID,
     "log_E_max_minus_E_start": _E_MAX_GRID},
    huber_delta=1e-3,
    notes="No coefficients were published.",
)


# ---------------------------------------------------------------------------------------------
# Krajewski et al. 2024, fine-grained MoE: L = c + (g/G^gamma + a)/N^alpha + b/D^beta.

def _krajewski_log_loss(theta, v):
    log_a, alpha, log_b, beta, log_g, gamma, log_c = theta
    log_n, log_d, log_granularity = jnp.log(v["N"]), jnp.log(v["D"]), jnp.log(v["G"])
    terms = jnp.stack([log_g - gamma * log_granularity - alpha * log_n, log_a - alpha * log_n,
                       log_b - beta * log_d, jnp.broadcast_to(log_c, log_n.shape)])
    return logsumexp(terms, axis=0)


KRAJEWSKI = _law(
    "krajewski", "L = c + (g/G^gamma + a)/N^alpha + b/D^beta",
    "Krajewski et al. 2024, Scaling laws for fine-grained MoE, arXiv 2402.07871",
    [("N", "TOTAL NON-embedding parameters, d^2 (8E + 4) n_blocks"), ("D", "training tokens"),
     ("G", "granularity d_ff / d_expert (1 = experts as wide as the dense FFN)")],
    [("a", "log_a", "log"), ("alpha", "alpha", "id"), ("b", "log_b", "log"), ("beta", "beta", "id"),
     ("g", "log_g", "log"), ("gamma", "gamma", "id"), ("c", "log_c", "log")],
    _krajewski_log_loss,
    # The paper gives no grid; a Chinchilla-style one around plausible values.
    {"log_a": (0.0, 2.5, 5.0), "alpha": (0.05, 0.15, 0.4), "log_b": (0.0, 2.5, 5.0),
     "beta": (0.05, 0.15, 0.4), "log_g": (-1.0, 1.0, 3.0), "gamma": (0.25, 0.6, 1.0),
     "log_c": (-1.0, 0.0)},
    huber_delta=0.1,
    published={"table1": {"a": 18.1, "alpha": 0.115, "b": 30.8, "beta": 0.147, "g": 2.1, "gamma": 0.58,
                          "c": 0.47}},
    notes="Dense fit (no g term): a 16.3, alpha 0.126, b 26.7, beta 0.127, c 0.47.",
)
KRAJEWSKI_DENSE_PUBLISHED = {"a": 16.3, "alpha": 0.126, "b": 26.7, "beta": 0.127, "c": 0.47}


# ---------------------------------------------------------------------------------------------
# Clark et al. 2022: log10 L = a log10 N + b log10 Ê + c log10 N log10 Ê + d; dense (N_c/N)^alpha_N.

_LN10 = math.log(10.0)


def _clark_log_loss(theta, v):
    a, b, c, d, log_e_start, log_e_max = theta
    log10_e_hat = jnp.log10(_e_hat(log_e_start, log_e_max, v["E"]))
    log10_n = jnp.log10(v["N"])
    return _LN10 * (a * log10_n + b * log10_e_hat + c * log10_n * log10_e_hat + d)


CLARK = _law(
    "clark", "log10 L = a log10 N + b log10 Ê + c log10 N log10 Ê + d",
    "Clark et al. 2022, Unified scaling laws for routed language models, arXiv 2202.01169",
    [("N", "'dense' parameters seen per token (dense_parameter_count)"),
     ("E", "number of experts (dense = 1)")],
    [("a", "a", "id"), ("b", "b", "id"), ("c", "c", "id"), ("d", "d", "id"),
     ("E_start", "log_E_start_minus_1", "e_start"), ("E_max", "log_E_max_minus_E_start", "e_max")],
    _clark_log_loss,
    # The paper used many random starts; a small grid covers the same region.
    {"a": (-0.1, -0.05), "b": (-0.2, -0.05, 0.05), "c": (0.0, 0.02), "d": (1.0, 1.5),
     "log_E_start_minus_1": _E_START_GRID, "log_E_max_minus_E_start": _E_MAX_GRID},
    huber_delta=None,
    published={"s_base": {"a": -0.082, "c": 0.009}, "rl_r": {"a": -0.083, "c": 0.012},
               "hash": {"a": -0.087, "c": 0.012}},
    notes="Fitted with mean squared error on log10 L (huber_delta None).",
)


def _clark_dense_log_loss(theta, v):
    alpha_n, log_n_c = theta
    return alpha_n * (log_n_c - jnp.log(v["N"]))


CLARK_DENSE = _law(
    "clark_dense", "L = (N_c / N)^alpha_N", "Clark et al. 2022 (dense baseline, Kaplan form)",
    [("N", "'dense' parameters seen per token (dense_parameter_count)")],
    [("alpha_N", "alpha_N", "id"), ("N_c", "log_N_c", "log")],
    _clark_dense_log_loss,
    {"alpha_N": (0.03, 0.08, 0.2), "log_N_c": (20.0, 30.0, 40.0)},
    huber_delta=None,
    published={"clark2022": {"alpha_N": 0.078, "N_c": 3.6e13}},
)


# ---------------------------------------------------------------------------------------------
# Abnar et al. 2025: L = a/N^alpha + b/D^beta + c/(1-S)^lambda + d/((1-S)^delta N^gamma) + e.

def _abnar_log_loss(theta, v):
    log_a, alpha, log_b, beta, log_c, lam, log_d, delta, gamma, log_e = theta
    log_n, log_d_tokens = jnp.log(v["N"]), jnp.log(v["D"])
    log_density = jnp.log1p(-v["S"]) + 0.0 * log_n  # ln(1 - S), S = (E - K)/E
    terms = jnp.stack([log_a - alpha * log_n, log_b - beta * log_d_tokens, log_c - lam * log_density,
                       log_d - delta * log_density - gamma * log_n, jnp.broadcast_to(log_e, log_n.shape)])
    return logsumexp(terms, axis=0)


ABNAR = _law(
    "abnar", "L = a/N^alpha + b/D^beta + c/(1-S)^lambda + d/((1-S)^delta N^gamma) + e",
    "Abnar et al. 2025, Parameters vs FLOPs: optimal sparsity for MoE LMs, arXiv 2501.12370",
    [("N", "TOTAL parameters"), ("D", "training tokens"), ("S", "sparsity (E - K)/E, 0 for dense")],
    [("a", "log_a", "log"), ("alpha", "alpha", "id"), ("b", "log_b", "log"), ("beta", "beta", "id"),
     ("c", "log_c", "log"), ("lambda", "lambda", "id"), ("d", "log_d", "log"), ("delta", "delta", "id"),
     ("gamma", "gamma", "id"), ("e", "log_e", "log")],
    _abnar_log_loss,
    # No grid published; two values per parameter around the reported magnitudes (1,024 starts).
    {"log_a": (5.0, 10.0), "alpha": (0.3, 0.6), "log_b": (5.0, 10.0), "beta": (0.2, 0.5),
     "log_c": (-2.0, 0.0), "lambda": (-0.3, 0.3), "log_d": (1.0, 3.0), "delta": (-0.2, 0.2),
     "gamma": (0.1, 0.3), "log_e": (-0.5, 0.0)},
    huber_delta=1e-3,
    published={"abnar2025": {"a": 16612.50, "alpha": 0.5962, "b": 5455.67, "beta": 0.3954, "c": 0.4598,
                             "lambda": -0.1666, "d": 17.26, "delta": 0.1603, "gamma": 0.1595,
                             "e": 0.94}},
    notes="Coefficients from secondary sources.",
)


def sparsity(num_experts, top_k):
    """Abnar's sparsity S = (E - K)/E; 0 for a dense model (E = K = 1)."""
    return (np.asarray(num_experts, dtype=np.float64) - top_k) / np.asarray(num_experts, dtype=np.float64)

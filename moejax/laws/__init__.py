"""Scaling laws: law forms, fits with uncertainty, and the embedded Clark et al. 2022 data.

In: scored points (a DataFrame with one row per run: parameter counts, tokens, expert counts and a
final loss), from ``moejax eval``, the Clark data or any CSV with a column mapping. Out: a fitted
law (``FitResult``: paper-named parameters, RMSE, convergence, bootstrap intervals) and
predictions with bands, which ``moejax.plan`` turns into recommended configurations.

    from moejax import laws
    points = laws.clark_fit_subset(laws.load_dataset("clark2022"), router="S-Base")
    result = laws.fit(points, law="clark", bootstrap=100)
    laws.predict(result, points)
"""

from moejax.laws.datasets import clark_fit_subset, load_dataset
from moejax.laws.fitting import FitInputError, FitResult, fit, predict
from moejax.laws.forms import Law, Variable, get_law, list_laws, register_law, sparsity
from moejax.laws.saturation import saturating_expert_count

__all__ = [
    "FitInputError", "FitResult", "Law", "Variable", "clark_fit_subset", "fit", "get_law", "list_laws",
    "load_dataset", "predict", "register_law", "saturating_expert_count", "sparsity",
]

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.laws import get_law, list_laws


def test_registry_has_every_paper_form():
    assert {"chinchilla", "joint_moe", "yun", "krajewski", "clark", "clark_dense", "abnar"} <= set(list_laws())
    with pytest.raises(KeyError, match="unknown law"):
        get_law("nope")


@pytest.mark.parametrize("name", ["chinchilla", "joint_moe", "yun", "krajewski", "clark", "clark_dense", "abnar"])
def test_parameter_maps_round_trip(name):
    law = get_law(name)
    theta = law.start_grid()[len(law.start_grid()) // 2]
    back = law.from_parameters(law.to_parameters(theta))
    np.testing.assert_allclose(back, theta, rtol=1e-12, atol=1e-12)
    assert tuple(law.to_parameters(theta)) == law.parameter_names or set(law.to_parameters(theta)) == set(
        law.parameter_names)


def test_chinchilla_published_prediction():
    law = get_law("chinchilla")
    p = law.published["hoffmann2022"]
    loss = law.predict(p, {"N": np.array([70e9]), "D": np.array([1.4e12])})[0]
    assert loss == pytest.approx(1.69 + 406.4 / 70e9**0.34 + 410.7 / 1.4e12**0.28, rel=1e-12)


def test_grid_sizes_match_papers():
    assert len(get_law("chinchilla").start_grid()) == 4500  # 5 * 5 * 5 * 6 * 6
    assert len(get_law("joint_moe").start_grid()) == 3**9 * 9  # paper grid x the Ê grid


def test_joint_moe_published_dense_loss_matches_per_expert_form():
    law = get_law("joint_moe")
    p = law.published["table3"]
    n, d = 1e9, 2e10
    loss = law.predict(p, {"N": np.array([n]), "D": np.array([d]), "E": np.array([1.0])})[0]
    # Table 4, E = 1: m 30.3640, mu -0.1817, n 53.9838, nu -0.1965 (rounded) -> agree to ~0.5 %.
    assert loss == pytest.approx(30.364 * n**-0.1817 + 53.9838 * d**-0.1965 + 1.3637, rel=5e-3)


@pytest.mark.parametrize("name", ["chinchilla", "joint_moe", "yun", "krajewski", "clark",
                                  "clark_dense", "abnar"])
def test_an_underflowed_parameter_predicts_its_limit(name):
    """A degenerate bootstrap refit can drive a coordinate stored as exp(coordinate) so low that
    its parameter is 0.0 (A = 0.0 from a chinchilla refit): predicting from those parameters
    gives the law at that coordinate's limit, -inf, instead of failing on log(0)."""
    law = get_law(name)
    theta = law.start_grid()[len(law.start_grid()) // 2]
    values = {"N": [2e8, 3e9], "D": [4e9, 6e10], "E": [8.0, 64.0], "G": [2.0, 8.0],
              "S": [0.5, 0.875]}
    variables = {v: np.array(values[v]) for v in law.variable_names}
    underflowed = 0
    for i, fit_name in enumerate(law.fit_parameter_names):
        low = theta.copy()
        low[i] = -800.0  # exp(-800) == 0.0 in float64
        params = law.to_parameters(low)
        if law.from_parameters(params)[i] != -np.inf:
            continue  # a coordinate stored as is
        underflowed += 1
        limit = low.copy()
        limit[i] = -np.inf
        with jax.enable_x64(True):
            expected = np.exp(np.asarray(law.log_loss(jnp.asarray(limit), {
                k: jnp.asarray(v, dtype=jnp.float64) for k, v in variables.items()})))
        got = law.predict(params, variables)
        assert np.all(np.isfinite(got)), (fit_name, got)
        np.testing.assert_array_equal(got, expected, err_msg=fit_name)
    assert underflowed >= 1


def test_a_negative_amplitude_is_named():
    law = get_law("chinchilla")
    params = dict(law.published["hoffmann2022"], A=-1.0)
    with pytest.raises(ValueError, match="parameter A = -1.0"):
        law.from_parameters(params)

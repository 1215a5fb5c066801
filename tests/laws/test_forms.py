import math

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


# Each paper's form typed out from its paper (../shared/reference/LAWS.md) in plain Python, apart
# from the law's own code, and evaluated at points the recovery tests cannot tell apart: a fit of
# points a law itself generated recovers its parameters whatever its formula says.

def _e_hat_by_hand(e, e_start, e_max):
    """Clark 2022's saturating expert count: 1/Ê = 1/(E − 1 + (1/E_start − 1/E_max)^−1) + 1/E_max."""
    return 1.0 / (1.0 / (e - 1.0 + 1.0 / (1.0 / e_start - 1.0 / e_max)) + 1.0 / e_max)


POINTS = [(1e8, 2e9), (1e9, 2e10), (7e10, 1.4e12)]


@pytest.mark.parametrize("n, d", POINTS)
@pytest.mark.parametrize("granularity", [1.0, 8.0, 32.0])
def test_krajewski_table1_against_the_paper_form(n, d, granularity):
    p = get_law("krajewski").published["table1"]
    assert p == {"a": 18.1, "alpha": 0.115, "b": 30.8, "beta": 0.147, "g": 2.1, "gamma": 0.58, "c": 0.47}
    by_hand = 0.47 + (2.1 / granularity**0.58 + 18.1) / n**0.115 + 30.8 / d**0.147
    got = get_law("krajewski").predict(p, {"N": np.array([n]), "D": np.array([d]),
                                           "G": np.array([granularity])})[0]
    assert got == pytest.approx(by_hand, rel=1e-12)


def test_krajewski_one_value_worked_out():
    # 0.47 + (2.1/8^0.58 + 18.1)/1e9^0.115 + 30.8/2e10^0.147, computed apart from this file
    got = get_law("krajewski").predict(get_law("krajewski").published["table1"], {
        "N": np.array([1e9]), "D": np.array([2e10]), "G": np.array([8.0])})[0]
    assert got == pytest.approx(3.14039, abs=1e-5)


@pytest.mark.parametrize("n, d", POINTS)
@pytest.mark.parametrize("experts, top_k", [(1, 1), (8, 2), (64, 1)])
def test_abnar_published_against_the_paper_form(n, d, experts, top_k):
    p = get_law("abnar").published["abnar2025"]
    s = (experts - top_k) / experts
    density = 1.0 - s
    by_hand = (16612.50 / n**0.5962 + 5455.67 / d**0.3954 + 0.4598 / density**-0.1666
               + 17.26 / (density**0.1603 * n**0.1595) + 0.94)
    got = get_law("abnar").predict(p, {"N": np.array([n]), "D": np.array([d]), "S": np.array([s])})[0]
    assert got == pytest.approx(by_hand, rel=1e-12)


def test_abnar_one_value_worked_out():
    got = get_law("abnar").predict(get_law("abnar").published["abnar2025"], {
        "N": np.array([1e9]), "D": np.array([2e10]), "S": np.array([0.875])})[0]
    assert got == pytest.approx(2.68156, abs=1e-5)


YUN_PARAMETERS = {"A": 420.0, "alpha": 0.31, "B": 0.8, "beta": 0.45, "C": 390.0, "gamma": 0.27,
                  "F": 1.2, "d": -0.004, "E_start": 1.8, "E_max": 120.0}


@pytest.mark.parametrize("n, d", POINTS)
@pytest.mark.parametrize("experts", [1.0, 4.0, 32.0])
def test_yun_against_the_paper_form(n, d, experts):
    """No coefficients were published: arbitrary ones, every term of the size that matters."""
    p = YUN_PARAMETERS
    e_hat = _e_hat_by_hand(experts, p["E_start"], p["E_max"])
    by_hand = math.exp(math.log(420.0 / n**0.31 + 0.8 / e_hat**0.45 + 390.0 / d**0.27 + 1.2)
                       + -0.004 * math.log(n) * math.log(e_hat))
    got = get_law("yun").predict(p, {"N": np.array([n]), "D": np.array([d]),
                                     "E": np.array([experts])})[0]
    assert got == pytest.approx(by_hand, rel=1e-10)


def test_the_saturating_expert_count_starts_at_e_start_and_saturates_at_e_max():
    assert _e_hat_by_hand(1.0, 2.0732, 290.4521) == pytest.approx(2.0732, rel=1e-12)
    # the law's own Ê, read back through the Joint MoE form at D → ∞ with c = 0 and delta = 1:
    # L = a Ê N^0 → Ê itself
    law = get_law("joint_moe")
    p = {"a": 1.0, "alpha": 0.0, "delta": 1.0, "gamma": 0.0, "b": 1e-300, "beta": -1.0,
         "omega": 0.0, "zeta": 0.0, "E_start": 2.0732, "E_max": 290.4521, "c": 1e-300}
    for e in [1.0, 2.0, 16.0, 1e4]:
        got = law.predict(p, {"N": np.array([1e9]), "D": np.array([1e300]), "E": np.array([e])})[0]
        assert got == pytest.approx(_e_hat_by_hand(e, 2.0732, 290.4521), rel=1e-9)
    assert _e_hat_by_hand(1e9, 2.0732, 290.4521) == pytest.approx(290.4521, rel=1e-6)


@pytest.mark.parametrize("n", [1e7, 1.3e9, 2e11])
@pytest.mark.parametrize("experts", [1.0, 8.0, 512.0])
def test_clark_against_the_paper_form(n, experts):
    p = {"a": -0.082, "b": -0.108, "c": 0.009, "d": 1.104, "E_start": 1.847, "E_max": 314.0}
    e_hat = _e_hat_by_hand(experts, p["E_start"], p["E_max"])
    log10_loss = (-0.082 * math.log10(n) - 0.108 * math.log10(e_hat)
                  + 0.009 * math.log10(n) * math.log10(e_hat) + 1.104)
    got = get_law("clark").predict(p, {"N": np.array([n]), "E": np.array([experts])})[0]
    assert got == pytest.approx(10.0**log10_loss, rel=1e-10)

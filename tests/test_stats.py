"""p-values, null calibration and the Verdict type."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from pixmark.errors import PixmarkError
from pixmark.stats import (
    Verdict,
    ber_p_value,
    binomial_tail,
    calibrate_threshold,
    decide,
    empirical_p_value,
    false_positive_rate,
    passes,
    pooled_success_test,
    predictive_p_value,
    trigger_p_value,
    trigger_threshold,
)


def _brute_binomial_tail(k: int, n: int, p: Fraction) -> float:
    """Exact P[X >= k] by summing the probability mass function in rational arithmetic."""
    total = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(max(k, 0), n + 1))
    return float(total)


# --------------------------------------------------------------------------- trigger (Quan)


def test_trigger_threshold_reproduces_the_papers_eta():
    # Quan et al.: 40x40 verification image, sigma = 1/4, p = 0.05 -> eta = 6.07e-3
    eta = trigger_threshold(40, 40, p=0.05, sigma=0.25)
    assert float(f"{eta:.3g}") == 6.07e-3


def test_trigger_threshold_is_the_p_quantile_of_simulated_null_distances():
    # Simulate the paper's null directly: i.i.d. N(0, (1/4)^2) errors on a 20x20 image.
    rng = np.random.default_rng(0)
    m = n = 20
    errors = rng.normal(0.0, 0.25, size=(20000, m * n))
    distances = np.linalg.norm(errors, axis=1) / (m * n)
    for p in (0.05, 0.2):
        eta = trigger_threshold(m, n, p=p)
        assert np.mean(distances <= eta) == pytest.approx(p, abs=0.01)
    d = float(np.quantile(distances, 0.5))
    assert trigger_p_value(d, m, n) == pytest.approx(0.5, abs=0.01)


def test_trigger_p_value_inverts_threshold_and_is_monotone():
    for m, n, p in [(40, 40, 0.05), (20, 20, 1e-3), (32, 96, 1e-6)]:
        assert trigger_p_value(trigger_threshold(m, n, p), m, n) == pytest.approx(p, rel=1e-6)
    eta = trigger_threshold(40, 40)
    values = [trigger_p_value(d, 40, 40) for d in (0.5 * eta, 0.9 * eta, eta, 1.1 * eta)]
    assert values == sorted(values)
    assert values[0] < 1e-12 and values[-1] > 0.5
    with pytest.raises(PixmarkError, match="distance"):
        trigger_p_value(-1.0, 40, 40)
    with pytest.raises(PixmarkError, match="sigma"):
        trigger_threshold(40, 40, sigma=0.0)


# --------------------------------------------------------------------------- binomial


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(0, 10, "1/2"), (3, 10, "1/2"), (7, 10, "1/3"), (10, 10, "9/10"), (40, 64, "1/2"),
     (5, 200, "1/100"), (60, 200, "1/100"), (11, 10, "1/2"), (-2, 10, "1/2")],
)  # fmt: skip
def test_binomial_tail_matches_brute_force_sum(k, n, p):
    expected = _brute_binomial_tail(k, n, Fraction(p))
    assert binomial_tail(k, n, float(Fraction(p))) == pytest.approx(expected, rel=1e-9, abs=0)


def test_binomial_tail_edge_cases_and_deep_tail():
    assert binomial_tail(0, 5, 0.3) == 1.0
    assert binomial_tail(6, 5, 0.3) == 0.0
    assert binomial_tail(1, 5, 0.0) == 0.0
    assert binomial_tail(5, 5, 1.0) == 1.0
    # all 1000 fair bits right: 2**-1000, far below where 1 - cdf would be 0
    assert binomial_tail(1000, 1000, 0.5) == pytest.approx(2.0**-1000, rel=1e-9)
    with pytest.raises(PixmarkError, match="p must lie in"):
        binomial_tail(1, 5, 1.5)


def test_ber_p_value_is_the_chance_of_guessing_that_well():
    assert ber_p_value(0, 64) == pytest.approx(2.0**-64, rel=1e-9)
    expected = _brute_binomial_tail(64 - 20, 64, Fraction(1, 2))  # at most 20 errors
    assert ber_p_value(20, 64) == pytest.approx(expected, rel=1e-9)
    assert ber_p_value(32, 64) > 0.5
    with pytest.raises(PixmarkError, match="cannot exceed"):
        ber_p_value(65, 64)


# --------------------------------------------------------------------------- empirical nulls


def test_empirical_p_value_uses_the_plus_one_correction():
    nulls = np.random.default_rng(1).uniform(0.3, 0.7, size=99)
    assert empirical_p_value(0.9, nulls) == pytest.approx(0.01)
    assert empirical_p_value(0.0, nulls) == pytest.approx(1.0)
    # smaller-is-evidence (distances): the mirror image
    assert empirical_p_value(0.1, nulls, greater_is_evidence=False) == pytest.approx(0.01)
    # ties count as at least as extreme
    assert empirical_p_value(0.5, [0.5, 0.1, 0.2]) == pytest.approx(2 / 4)
    with pytest.raises(PixmarkError, match="empty"):
        empirical_p_value(0.5, [])
    with pytest.raises(PixmarkError, match="NaN"):
        empirical_p_value(0.5, [0.1, float("nan")])


@pytest.mark.parametrize("greater_is_evidence", [True, False])
def test_calibrated_threshold_keeps_false_positives_below_target(greater_is_evidence):
    rng = np.random.default_rng(2)
    fpr = 0.01
    nulls = rng.normal(size=999)
    threshold = calibrate_threshold(nulls, fpr, greater_is_evidence)
    assert false_positive_rate(nulls, threshold, greater_is_evidence) <= fpr
    # fresh nulls from the same distribution: rate at most fpr, up to sampling error
    fresh = rng.normal(size=200_000)
    assert false_positive_rate(fresh, threshold, greater_is_evidence) <= fpr + 0.005
    # any passing score is significant at fpr by the empirical p-value
    sign = 1.0 if greater_is_evidence else -1.0
    just_beyond = threshold + sign * 1e-9
    assert passes(just_beyond, threshold, greater_is_evidence)
    assert empirical_p_value(just_beyond, nulls, greater_is_evidence) <= fpr


def test_calibrated_threshold_over_the_exchangeable_null_is_valid_on_average():
    # Repeat calibration on many small null sets: the rate on fresh nulls averages <= fpr.
    rng = np.random.default_rng(3)
    rates = []
    for _ in range(400):
        threshold = calibrate_threshold(rng.uniform(size=19), 0.05)
        rates.append(1.0 - threshold)  # exact rate for uniform nulls
    assert np.mean(rates) <= 0.05 + 0.005


def test_calibrate_threshold_refuses_too_few_nulls():
    with pytest.raises(PixmarkError, match="at least 99 null scores"):
        calibrate_threshold(np.linspace(0, 1, 50), 0.01)
    assert calibrate_threshold(np.arange(99.0), 0.01) == 98.0


def test_false_positive_rate_counts_scores_strictly_beyond():
    nulls = [0.1, 0.2, 0.3, 0.4]
    assert false_positive_rate(nulls, 0.2) == 0.5
    assert false_positive_rate(nulls, 0.2, greater_is_evidence=False) == 0.25


# --------------------------------------------------------------------------- decisions


def test_predictive_p_value_is_calibrated_for_a_fresh_gaussian_draw():
    # Fit on 12 nulls, test a 13th draw from the same Gaussian: P(p <= a) should be a.
    rng = np.random.default_rng(0)
    ps = np.array([predictive_p_value(rng.normal(3, 2), rng.normal(3, 2, size=12))
                   for _ in range(4000)])  # fmt: skip
    for a in (0.01, 0.05, 0.2):
        assert abs(float((ps <= a).mean()) - a) < 0.25 * a + 0.004
    # A plug-in z-test (mean and sd taken as exact) would call this p ~ 2e-11; a score
    # 6.6 sd above 4 nulls is not that sure.
    assert predictive_p_value(10.0, [0, 1, 2, 3]) > 1e-3


def test_predictive_p_value_orders_scores_and_refuses_bad_nulls():
    nulls = [0.01, -0.02, 0.03, 0.0, 0.015]
    assert predictive_p_value(0.5, nulls) < predictive_p_value(0.05, nulls) < 0.5
    assert predictive_p_value(-0.5, nulls) > 0.99
    with pytest.raises(PixmarkError, match="at least 3"):
        predictive_p_value(0.1, [0.0, 0.1])
    with pytest.raises(PixmarkError, match="all equal"):
        predictive_p_value(0.1, [0.2, 0.2, 0.2])
    with pytest.raises(PixmarkError, match="finite"):
        predictive_p_value(float("nan"), nulls)


def test_decide_compares_p_with_alpha():
    assert decide(1e-4) == "match"
    assert decide(1e-3) == "match"
    assert decide(2e-3) == "no match"
    assert decide(0.04, alpha=0.05) == "match"
    assert decide(float("nan")) == "inconclusive"
    with pytest.raises(PixmarkError, match="alpha"):
        decide(0.01, alpha=0.0)
    with pytest.raises(PixmarkError, match="p_value"):
        decide(1.5)


def test_pooled_success_test_floors_an_unmeasured_null_rate():
    # 0 of 10 null queries succeeded: the rate is taken as 1/12, not 0
    assert pooled_success_test(8, 20, 0.0, 10) == pytest.approx(
        _brute_binomial_tail(8, 20, Fraction(1, 12)), rel=1e-9
    )
    assert pooled_success_test(8, 20, 0.0, 10) > 1e-6
    # 300 of 1000: the floor 301/1002 is barely above the measured rate
    assert pooled_success_test(8, 20, 0.3, 1000) == pytest.approx(
        _brute_binomial_tail(8, 20, Fraction(301, 1002)), rel=1e-9
    )
    # a rate above the floor (above 1/2) is used as measured
    assert pooled_success_test(15, 20, 0.6, 1000) == pytest.approx(
        _brute_binomial_tail(15, 20, Fraction(3, 5)), rel=1e-9
    )
    # more null queries -> tighter floor -> stronger evidence for the same successes
    assert pooled_success_test(8, 20, 0.0, 1000) < pooled_success_test(8, 20, 0.0, 10)
    with pytest.raises(PixmarkError, match="n_null_queries"):
        pooled_success_test(8, 20, 0.0, 0)


# --------------------------------------------------------------------------- Verdict


def _verdict(**overrides) -> Verdict:
    fields = dict(
        scheme="output",
        statistic=0.4321,
        threshold=0.1234,
        p_value=1e-300,
        decision="match",
        n_queries=64,
        evidence={"recovered_logo": "out/logo.png", "reference": "key/logo.png"},
        details={
            "statistic_name": "mean centred NC",
            "alpha": 1e-3,
            "null_fpr": 0.0,
            "n_null_models": 5,
            "per_query": [0.41, 0.45, float("inf"), 5e-324],
            "nested": {"worst": float("nan"), "labels": ["a", "NaN-free"]},
        },
    )
    fields.update(overrides)
    return Verdict(**fields)


def test_verdict_json_round_trip_is_exact():
    verdict = _verdict(statistic=float("inf"), p_value=float("nan"))
    text = verdict.to_json()
    # strict JSON: no NaN / Infinity literals
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard {name}"))
    back = Verdict.from_json(text)
    assert back.to_dict() == verdict.to_dict()
    assert math.isinf(back.statistic) and math.isnan(back.p_value)
    assert math.isnan(back.details["nested"]["worst"])
    assert back.details["per_query"][2] == math.inf
    assert back.details["per_query"][3] == 5e-324
    assert back.evidence == verdict.evidence

    finite = _verdict(details={"alpha": 1e-3, "per_query": [0.1, 0.2]})
    assert Verdict.from_json(finite.to_json()) == finite
    assert Verdict.from_dict(finite.to_dict()).p_value == 1e-300


def test_verdict_normalises_numpy_details_and_validates_fields():
    verdict = _verdict(details={"n": np.int64(3), "scores": np.array([0.5, 0.25]), "t": (1, 2)})
    assert verdict.details == {"n": 3, "scores": [0.5, 0.25], "t": [1, 2]}
    assert type(verdict.details["n"]) is int
    with pytest.raises(PixmarkError, match="decision must be one of"):
        _verdict(decision="yes")
    with pytest.raises(PixmarkError, match="p_value"):
        _verdict(p_value=1.5)
    with pytest.raises(PixmarkError, match="JSON cannot store"):
        _verdict(details={"model": object()})
    with pytest.raises(PixmarkError, match="missing p_value"):
        Verdict.from_dict({k: v for k, v in _verdict().to_dict().items() if k != "p_value"})
    with pytest.raises(PixmarkError, match="not valid JSON"):
        Verdict.from_json("{not json")


def test_verdict_summary_and_matched():
    verdict = _verdict(p_value=2.5e-7)
    line = verdict.summary()
    assert "\n" not in line
    for part in ("output", "match", "mean centred NC", "0.4321", "2.5e-07", "64 queries", "5 null"):
        assert part in line
    assert verdict.matched
    assert not _verdict(decision="no match").matched
    assert not _verdict(decision="inconclusive").matched

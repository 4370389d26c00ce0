"""Temperature scaling, NLL, ECE and reliability data on inputs whose answers are known."""

import math

import numpy as np
import pytest

from clustering import (
    CalibrationError,
    DimeePolicy,
    Group,
    TemperatureScaler,
    ThresholdPolicy,
    calibration_report,
    expected_calibration_error,
    make_exit_logits,
    negative_log_likelihood,
    reliability_curve,
)
from tiers import TierPlan

TRUE_T = np.array([0.7, 1.5, 3.0])


def calibrated_then_scaled(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a calibrated model (labels drawn from its own softmax) with exit i's logits multiplied by
    TRUE_T[i]: dividing by TRUE_T[i] restores calibration, so the fitted temperature should be TRUE_T[i]."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, size=(n, 4))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    logits = np.stack([z * t for t in TRUE_T], axis=1)
    return logits, labels


def test_temperature_recovery():
    logits, labels = calibrated_then_scaled()
    scaler = TemperatureScaler().fit(logits, labels)
    np.testing.assert_allclose(scaler.temperatures_, TRUE_T, rtol=0.04)
    report = calibration_report(logits, labels, scaler.temperatures_)
    assert all(after <= before + 1e-9 for before, after in zip(report["nll_before"], report["nll_after"]))
    assert report["ece_after"][2] < report["ece_before"][2] / 3  # the most over-confident exit gains most
    restored = TemperatureScaler.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(restored.temperatures_, scaler.temperatures_)


def test_fit_on_exiting_samples_with_fallback():
    logits, labels = calibrated_then_scaled(6000, seed=1)
    exits = np.where(np.arange(6000) < 3000, 1, 2)  # nobody exits at 3
    scaler = TemperatureScaler(fit_on="exiting", min_samples=50).fit(logits, labels, exits=exits)
    assert scaler.n_samples_ == [3000, 3000, 6000]
    assert scaler.fallback_exits_ == [3]
    np.testing.assert_allclose(scaler.temperatures_, TRUE_T, rtol=0.08)
    with pytest.raises(CalibrationError, match="exits"):
        TemperatureScaler(fit_on="exiting").fit(logits, labels)


def test_ece_on_a_hand_made_input():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right): two bins, each gap 0.4
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.4)
    curve = reliability_curve(probs, labels, n_bins=10)
    assert curve["count"].tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 2, 0]
    assert curve["accuracy"][8] == pytest.approx(0.5) and curve["confidence"][5] == pytest.approx(0.6)
    assert np.isnan(curve["accuracy"][0])
    per_exit = expected_calibration_error(np.stack([probs, probs], axis=1), labels, n_bins=10)
    np.testing.assert_allclose(per_exit, [0.4, 0.4])
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1])) == pytest.approx(0.0)


def test_nll_by_hand():
    assert negative_log_likelihood(np.zeros((3, 2)), np.array([0, 1, 0])) == pytest.approx(math.log(2))
    logits = np.array([[[math.log(3.0), 0.0]]])
    assert negative_log_likelihood(logits, np.array([0]))[0] == pytest.approx(-math.log(0.75))
    assert negative_log_likelihood(logits * 2, np.array([0]), [2.0])[0] == pytest.approx(-math.log(0.75))


def test_errors():
    logits, labels = calibrated_then_scaled(100)
    with pytest.raises(CalibrationError, match="not fitted"):
        TemperatureScaler().apply(logits)
    scaler = TemperatureScaler().fit(logits, labels)
    with pytest.raises(CalibrationError, match="3 exits"):
        scaler.apply(logits[:, :2])
    with pytest.raises(CalibrationError, match="regression"):
        TemperatureScaler().fit(np.ones((4, 3, 1)), np.ones(4))
    for bad in ([1.0, -1.0, 1.0], [1.0, 0.0, 1.0], [1.0, np.inf, 1.0]):
        with pytest.raises(CalibrationError, match="finite and > 0"):
            negative_log_likelihood(logits, labels, bad)
        with pytest.raises(CalibrationError):
            TemperatureScaler.from_dict({"params": {}, "temperatures": bad})
    with pytest.raises(CalibrationError):
        TemperatureScaler(init_temperature=0.0).fit(logits, labels)
    with pytest.raises(CalibrationError):
        expected_calibration_error(np.array([[1.5, -0.5]]), np.array([0]))


def test_policies_use_the_temperatures():
    data = make_exit_logits([Group(100, 1, 0.3), Group(100, 6, 0.0)], seed=0)
    plan = TierPlan(2, 4, 6)
    plain = ThresholdPolicy(plan=plan, threshold=0.9).fit(data.logits, data.labels)
    hot = ThresholdPolicy(plan=plan, threshold=0.9, temperatures=[4.0] * 6).fit(data.logits, data.labels)
    # softened confidences pass the same threshold less often: later exits
    assert hot.predict(data.logits).mean() > plain.predict(data.logits).mean()
    dimee = DimeePolicy(plan=plan, k_grid=(2, 3), temperatures=[2.0] * 6).fit(data.logits, data.labels)
    assert dimee.temperatures_.tolist() == [2.0] * 6

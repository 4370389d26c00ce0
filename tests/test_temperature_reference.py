"""Temperature scaling against references that do not share its code: closed-form NLL minima and torch's
softmax. (tests/test_clustering_calibration.py checks `apply` against its own formula; these replace that.)

Binary logits (+a, -a) for the predicted class, right on a share q of the samples: the NLL as a function of the
temperature, -(q log s(2a/T) + (1 - q) log s(-2a/T)) with s the logistic function, is smallest where
s(2a/T) = q, i.e. T* = 2a / ln(q / (1 - q)); there the confidence equals the accuracy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clustering import TemperatureScaler, negative_log_likelihood, softmax

# (a, q) per exit and the NLL minimum worked out by hand
EXITS = [(1.0, 0.8), (3.0, 0.9), (2.0, 0.75)]
T_STAR = [2 / math.log(4), 6 / math.log(9), 4 / math.log(3)]  # 1.4427, 2.7307, 3.6410


def binary_logits(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % 2
    logits = np.zeros((n, len(EXITS), 2))
    for j, (a, q) in enumerate(EXITS):
        right = np.arange(n) < round(q * n)
        predicted = np.where(right, labels, 1 - labels)
        logits[np.arange(n), j, predicted] = a
        logits[np.arange(n), j, 1 - predicted] = -a
    return logits, labels


def test_fitted_temperatures_are_the_closed_form_nll_minima():
    logits, labels = binary_logits()
    scaler = TemperatureScaler().fit(logits, labels)
    np.testing.assert_allclose(scaler.temperatures_, T_STAR, rtol=1e-4)  # measured: within 1.6e-5
    confidence = scaler.predict_proba(logits).max(axis=2).mean(axis=0)
    np.testing.assert_allclose(confidence, [q for _, q in EXITS], atol=1e-4)  # calibrated: confidence = accuracy


def test_nll_matches_torch_cross_entropy_and_is_smallest_at_t_star():
    logits, labels = binary_logits()
    for j, t_star in enumerate(T_STAR):
        reference = [
            torch.nn.functional.cross_entropy(torch.tensor(logits[:, j] / t), torch.tensor(labels)).item()
            for t in (0.8 * t_star, t_star, 1.25 * t_star)
        ]
        assert reference[1] < reference[0] and reference[1] < reference[2]
        ours = negative_log_likelihood(logits[:, j : j + 1], labels, [t_star])
        assert float(np.ravel(ours)[0]) == pytest.approx(reference[1], rel=1e-9)


def test_apply_and_probabilities_agree_with_torch_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(50, 3, 4))
    temps = np.array([0.5, 1.0, 2.5])
    scaler = TemperatureScaler().fit(logits, rng.integers(0, 4, 50))
    scaler.temperatures_ = temps  # a known setting
    want = torch.softmax(torch.tensor(logits) / torch.tensor(temps)[None, :, None], dim=-1).numpy()
    np.testing.assert_allclose(scaler.predict_proba(logits), want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(softmax(logits, temps), want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(softmax(scaler.apply(logits)), want, rtol=1e-12, atol=1e-15)


def test_a_hand_case():
    # logits (2 ln 3, 0) at T = 2 are (ln 3, 0): probabilities 3/4 and 1/4
    logits = np.array([[[2 * math.log(3), 0.0]]])
    np.testing.assert_allclose(softmax(logits, [2.0])[0, 0], [0.75, 0.25], rtol=1e-12)

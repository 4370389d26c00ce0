"""Profiles on hand-made logits: probabilities, confidence/entropy/margin, regression analogues, correctness."""

import math

import numpy as np
import pytest

from clustering import (
    CalibrationError,
    exit_scores,
    PolicyError,
    confidence,
    entropy,
    exit_profile,
    margin,
    per_exit_correct,
    predictions,
    softmax,
)

LN3 = math.log(3.0)


def two_exit_logits() -> np.ndarray:
    # exit 1: uniform over 2 classes; exit 2: probabilities 0.75 / 0.25
    return np.array([[[0.0, 0.0], [LN3, 0.0]], [[1.0, 1.0], [0.0, LN3]]])


def test_scores_on_hand_made_logits():
    logits = two_exit_logits()
    np.testing.assert_allclose(softmax(logits)[0, 1], [0.75, 0.25])
    np.testing.assert_allclose(confidence(logits), [[0.5, 0.75], [0.5, 0.75]])
    np.testing.assert_allclose(margin(logits), [[0.0, 0.5], [0.0, 0.5]], atol=1e-12)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    np.testing.assert_allclose(entropy(logits), [[1.0, h], [1.0, h]])
    np.testing.assert_array_equal(predictions(logits)[:, 1], [0, 1])


def test_temperatures_divide_each_exit():
    logits = two_exit_logits()
    doubled = logits.copy()
    doubled[:, 1] *= 2.0
    np.testing.assert_allclose(confidence(doubled, temperatures=[1.0, 2.0]), confidence(logits))


def test_profile_shape_order_and_selection():
    logits = two_exit_logits()
    full = exit_profile(logits)
    assert full.shape == (2, 2 * 3)
    # exit-major columns: exit 1 (conf, entropy, margin), then exit 2
    np.testing.assert_allclose(full[0, :3], [0.5, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(exit_profile(logits, exits=1), full[:, :3])
    np.testing.assert_allclose(exit_profile(logits, exits=slice(1, 2)), full[:, 3:])
    np.testing.assert_allclose(exit_profile(logits, exits=2, features=("confidence",)), [[0.5, 0.75]] * 2)


def test_profile_of_first_exits_ignores_later_exits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 6, 3))
    changed = logits.copy()
    changed[:, 2:] = rng.normal(size=(20, 4, 3)) * 5
    np.testing.assert_array_equal(exit_profile(logits, exits=2), exit_profile(changed, exits=2))


def test_regression_confidence_is_agreement_with_previous_exit():
    values = np.array([[1.0, 1.5, 1.5, 4.0]])[:, :, None]
    conf = confidence(values)
    np.testing.assert_allclose(conf, [[0.0, math.exp(-0.5), 1.0, math.exp(-2.5)]])
    np.testing.assert_allclose(entropy(values), 1.0 - conf)
    np.testing.assert_allclose(margin(values), conf)
    np.testing.assert_allclose(confidence(values, temperatures=[1, 0.5, 1, 2.5])[0, 1], math.exp(-1.0))
    # a profile of exits 3..4 still uses exit 2 for exit 3's agreement
    np.testing.assert_allclose(exit_profile(values, slice(2, 4), ("confidence",)), conf[:, 2:])


def test_per_exit_correct_classification_and_regression():
    logits = two_exit_logits()
    np.testing.assert_array_equal(per_exit_correct(logits, [0, 0]), [[True, True], [True, False]])
    values = np.array([[2.0, 2.4, 3.0]])[:, :, None]
    np.testing.assert_array_equal(per_exit_correct(values, [2.5]), [[True, True, True]])
    np.testing.assert_array_equal(per_exit_correct(values, [2.5], regression_tolerance=0.2), [[False, True, False]])


@pytest.mark.parametrize(
    "bad",
    [np.zeros((3, 2)), np.zeros((3, 2, 2, 1)), np.array([[[np.nan, 0.0]]]), np.array([[[np.inf, 0.0]]])],
)
def test_bad_logits_are_policy_errors(bad):
    with pytest.raises(PolicyError):
        confidence(bad)


def test_bad_labels_and_temperatures():
    logits = two_exit_logits()
    with pytest.raises(PolicyError, match="integers in 0..1"):
        per_exit_correct(logits, [0, 2])
    with pytest.raises(PolicyError, match="1-d array of 2"):
        per_exit_correct(logits, [0])
    for temps in ([1.0, 0.0], [1.0, -2.0], [1.0, np.nan], [1.0]):
        with pytest.raises(CalibrationError):
            confidence(logits, temperatures=temps)
    assert issubclass(CalibrationError, PolicyError) and issubclass(PolicyError, ValueError)


def test_agreement_is_the_probability_of_the_previous_exits_class():
    logits = two_exit_logits()  # both samples: exit 1 predicts class 0 (a tie -> the first class)
    np.testing.assert_allclose(exit_scores(logits, "agreement"), [[0.0, 0.75], [0.0, 0.25]])
    assert exit_profile(logits, features=("confidence", "agreement")).shape == (2, 4)
    values = np.array([[[1.0], [1.5], [1.5]]])  # regression: agreement is the confidence
    np.testing.assert_allclose(exit_scores(values, "agreement"), exit_scores(values, "confidence"))

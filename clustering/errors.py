"""Errors raised by the clustering layer (kept apart so every module can import them without cycles)."""

from __future__ import annotations

from sklearn.exceptions import NotFittedError


class PolicyError(ValueError):
    """Inputs that do not fit a policy: wrong logits shape or layer count, a plan other than the one it was
    fitted on, use before fit, non-finite values, or a malformed serialised policy."""


class PolicyNotFittedError(PolicyError, NotFittedError):
    """A policy used (predict, step, predict_outcome, score, ...) before fit. It is both a PolicyError (so
    ``except PolicyError`` still catches it) and scikit-learn's NotFittedError (what
    ``sklearn.utils.validation.check_is_fitted`` raises and scikit-learn users catch)."""


class CalibrationError(PolicyError):
    """Temperatures that are not positive and finite, or calibration asked of inputs it cannot handle."""

"""Errors raised by the clustering layer (kept apart so every module can import them without cycles)."""

from __future__ import annotations


class PolicyError(ValueError):
    """Inputs that do not fit a policy: wrong logits shape or layer count, a plan other than the one it was
    fitted on, use before fit, non-finite values, or a malformed serialised policy."""


class CalibrationError(PolicyError):
    """Temperatures that are not positive and finite, or calibration asked of inputs it cannot handle."""

"""Errors shared by the tiers modules (kept apart so that the model and its layer adapters both use them)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A folder that is not an early-exit checkpoint, or one that is damaged."""

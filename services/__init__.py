"""Tier services: one FastAPI app per tier (mobile, edge, cloud), the binary handoff between them over
HTTP, micro-batching, cost accounting per answer, and launch helpers.

Imports `tiers` and `clustering` only (never the evaluation package): a run folder holds all it needs.
"""

from .app import create_app
from .batching import MicroBatcher
from .engine import TierEngine
from .launch import TierGroup, TierProcess, serve_tier, start_all
from .policy import PolicyLoadError, ThresholdPolicy, load_policy, read_temperatures
from .schemas import (
    Answer,
    ClassifyRequest,
    ClassifyResponse,
    CostReport,
    HandoffMeta,
    HandoffResponse,
    Prediction,
)
from .settings import TierSettings

__all__ = [
    "Answer",
    "ClassifyRequest",
    "ClassifyResponse",
    "CostReport",
    "HandoffMeta",
    "HandoffResponse",
    "MicroBatcher",
    "PolicyLoadError",
    "Prediction",
    "ThresholdPolicy",
    "TierEngine",
    "TierGroup",
    "TierProcess",
    "TierSettings",
    "create_app",
    "load_policy",
    "read_temperatures",
    "serve_tier",
    "start_all",
]

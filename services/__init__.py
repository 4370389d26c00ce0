"""Tier services: one FastAPI app per tier (mobile, edge, cloud), the binary handoff between them over
HTTP, micro-batching, cost accounting per answer, and launch helpers.

Imports `tiers` and `clustering` only (never the evaluation package): a run folder holds all it needs.

A `degraded` answer (the tier that answered meant to hand the sample on and could not, so it answered from its
deepest exit computed so far) carries one of these `degraded_reason` codes, also the `reason` label of
`dimee_degraded_total` and the failed `outcome`s of `dimee_handoffs_total` (`services.schemas.DEGRADED_REASONS`);
the specifics are logged by that tier with the request id, never put in the answer:

    next_tier_not_configured  no URL is configured for the tier the sample was to go to
    deadline_exceeded         too little of the request's deadline was left to hand the sample on
    next_tier_timeout         the next tier did not answer within its share of the deadline
    next_tier_unreachable     the next tier could not be reached (connection refused, reset, name not resolved)
    next_tier_error           the next tier answered with an error status
    next_tier_bad_answer      the next tier's answer was malformed or did not fit the handoff
    link_lost                 the simulated link lost a packet beyond its retransmission limit
    handoff_failed            the handoff failed inside this tier (a bug: see its log)
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

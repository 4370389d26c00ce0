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

Names are imported on first use (PEP 562), so that `services.policy`, `services.schemas`, `services.handoff` and
`services.device` (the ONNX mobile client) load without torch; `from services import start_all` works as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "create_app": "app",
    "MicroBatcher": "batching",
    "TierEngine": "engine",
    "TierGroup": "launch",
    "TierProcess": "launch",
    "serve_tier": "launch",
    "start_all": "launch",
    "PolicyLoadError": "policy",
    "ThresholdPolicy": "policy",
    "load_policy": "policy",
    "read_temperatures": "policy",
    "Answer": "schemas",
    "ClassifyRequest": "schemas",
    "ClassifyResponse": "schemas",
    "CostReport": "schemas",
    "HandoffMeta": "schemas",
    "HandoffResponse": "schemas",
    "Prediction": "schemas",
    "TierSettings": "settings",
}

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .app import create_app  # noqa: F401
    from .batching import MicroBatcher  # noqa: F401
    from .engine import TierEngine  # noqa: F401
    from .launch import TierGroup, TierProcess, serve_tier, start_all  # noqa: F401
    from .policy import PolicyLoadError, ThresholdPolicy, load_policy, read_temperatures  # noqa: F401
    from .schemas import Answer, ClassifyRequest, ClassifyResponse, CostReport, HandoffMeta, HandoffResponse, Prediction  # noqa: F401
    from .settings import TierSettings  # noqa: F401

__all__ = sorted(_EXPORTS)


from tiers.lazy import lazy_exports  # noqa: E402

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

"""Bottom layer: the early-exit model, tier plan and slicing, the hidden-state codec, the cost model."""

from .channel import Channel, ChannelError, TransmissionOutcome, add_awgn, measured_snr_db, signal_power
from .codec import CONTENT_TYPE, ENCODINGS, Handoff, HandoffFormatError, decode_handoff, encode_handoff, payload_size
from .cost import CostModel, CostModelError
from .model import (
    OFFLINE_ENCODER,
    CheckpointError,
    EarlyExitModel,
    ExitConfig,
    ExitHead,
    read_exit_config,
    resolve_encoder,
)
from .plan import TIERS, TierPlan, TierPlanError, default_plan
from .run import (
    CachedSplit,
    RunInfo,
    cached_splits,
    read_cached_split,
    read_run_info,
    write_cached_split,
    write_run_info,
)
from .text import TextInputError, tokenize_for_inference
from .slicing import TierOutput, TierPart, load_tier_part, run_three_tiers, slice_model

__all__ = [
    "Channel",
    "ChannelError",
    "TransmissionOutcome",
    "add_awgn",
    "measured_snr_db",
    "signal_power",
    "TextInputError",
    "tokenize_for_inference",
    "OFFLINE_ENCODER",
    "resolve_encoder",
    "CachedSplit",
    "RunInfo",
    "cached_splits",
    "read_cached_split",
    "read_run_info",
    "write_cached_split",
    "write_run_info",
    "CONTENT_TYPE",
    "ENCODINGS",
    "TIERS",
    "CheckpointError",
    "CostModel",
    "CostModelError",
    "EarlyExitModel",
    "ExitConfig",
    "ExitHead",
    "Handoff",
    "HandoffFormatError",
    "TierOutput",
    "TierPart",
    "TierPlan",
    "TierPlanError",
    "decode_handoff",
    "default_plan",
    "encode_handoff",
    "load_tier_part",
    "payload_size",
    "read_exit_config",
    "run_three_tiers",
    "slice_model",
]

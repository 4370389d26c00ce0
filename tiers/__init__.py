"""Bottom layer: the early-exit model, tier plan and slicing, the hidden-state codec, the cost model.

Names are imported on first use (PEP 562), so that `import tiers.codec` (or `from tiers import encode_hidden_message`)
does not load torch: a client without torch (the ONNX mobile client) encodes handoffs with the same codec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "Channel": "channel",
    "ChannelError": "channel",
    "TransmissionOutcome": "channel",
    "add_awgn": "channel",
    "measured_snr_db": "channel",
    "signal_power": "channel",
    "CONTENT_TYPE": "codec",
    "ENCODINGS": "codec",
    "Handoff": "codec",
    "HandoffFormatError": "codec",
    "HandoffMeta": "codec",
    "TOKENS_CONTENT_TYPE": "codec",
    "TokenBatch": "codec",
    "decode_handoff": "codec",
    "decode_hidden_message": "codec",
    "decode_meta": "codec",
    "decode_token_message": "codec",
    "decode_tokens": "codec",
    "encode_handoff": "codec",
    "encode_hidden_message": "codec",
    "encode_meta": "codec",
    "encode_token_message": "codec",
    "encode_tokens": "codec",
    "hop_payload_size": "codec",
    "meta_size": "codec",
    "handoff_group_size": "codec",
    "MAX_BUDGET_MS": "codec",
    "payload_size": "codec",
    "token_payload_size": "codec",
    "CostModel": "cost",
    "CostModelError": "cost",
    "HOPS": "cost",
    "LINEAR_FIELDS": "cost",
    "path_costs_many": "cost",
    "normalised_exit_costs_many": "cost",
    "CheckpointError": "model",
    "EarlyExitModel": "model",
    "ExitConfig": "model",
    "ExitHead": "model",
    "read_exit_config": "model",
    "LayerAdapter": "arch",
    "UnsupportedArchitectureError": "arch",
    "adapter_for": "arch",
    "supported_model_types": "arch",
    "MPNET_DIR_ENV": "encoders",
    "MPNET_OFFLINE": "encoders",
    "ModelInstallError": "encoders",
    "OFFLINE_ENCODER": "encoders",
    "check_mpnet_folder": "encoders",
    "install_mpnet": "encoders",
    "mpnet_dir": "encoders",
    "resolve_encoder": "encoders",
    "TIERS": "plan",
    "TierPlan": "plan",
    "TierPlanError": "plan",
    "default_plan": "plan",
    "CONTINUE": "routes",
    "HANDOFF_CLOUD": "routes",
    "HANDOFF_EDGE": "routes",
    "Path": "routes",
    "RouteError": "routes",
    "Stop": "routes",
    "chain_path": "routes",
    "check_actions": "routes",
    "enumerate_paths": "routes",
    "exit_span": "routes",
    "final_tier_index": "routes",
    "handoff_action": "routes",
    "handoff_target": "routes",
    "path_label": "routes",
    "path_stops": "routes",
    "reference_path": "routes",
    "run_segment": "routes",
    "CachedSplit": "run",
    "RunInfo": "run",
    "cached_splits": "run",
    "read_cached_split": "run",
    "read_run_info": "run",
    "write_cached_split": "run",
    "write_run_info": "run",
    "RoutedAnswer": "segment",
    "SegmentInput": "segment",
    "SegmentResult": "segment",
    "run_routed": "segment",
    "run_tier_segment": "segment",
    "TierOutput": "slicing",
    "TierPart": "slicing",
    "load_tier_part": "slicing",
    "run_three_tiers": "slicing",
    "slice_model": "slicing",
    "TextInputError": "text",
    "tokenize_for_inference": "text",
}

if TYPE_CHECKING:  # static tools see the eager imports
    from .channel import Channel, ChannelError, TransmissionOutcome, add_awgn, measured_snr_db, signal_power  # noqa: F401
    from .codec import CONTENT_TYPE, ENCODINGS, Handoff, HandoffFormatError, HandoffMeta, TOKENS_CONTENT_TYPE, TokenBatch, decode_handoff, decode_hidden_message, decode_meta, decode_token_message, decode_tokens, encode_handoff, encode_hidden_message, encode_meta, encode_token_message, encode_tokens, handoff_group_size, hop_payload_size, meta_size, payload_size, token_payload_size, MAX_BUDGET_MS  # noqa: F401
    from .cost import CostModel, CostModelError, HOPS, LINEAR_FIELDS, normalised_exit_costs_many, path_costs_many  # noqa: F401
    from .arch import LayerAdapter, UnsupportedArchitectureError, adapter_for, supported_model_types  # noqa: F401
    from .encoders import MPNET_DIR_ENV, MPNET_OFFLINE, OFFLINE_ENCODER, ModelInstallError, check_mpnet_folder, install_mpnet, mpnet_dir, resolve_encoder  # noqa: F401
    from .model import CheckpointError, EarlyExitModel, ExitConfig, ExitHead, read_exit_config  # noqa: F401
    from .plan import TIERS, TierPlan, TierPlanError, default_plan  # noqa: F401
    from .routes import CONTINUE, HANDOFF_CLOUD, HANDOFF_EDGE, Path, RouteError, Stop, chain_path, check_actions, enumerate_paths, exit_span, final_tier_index, handoff_action, handoff_target, path_label, path_stops, reference_path, run_segment  # noqa: F401
    from .run import CachedSplit, RunInfo, cached_splits, read_cached_split, read_run_info, write_cached_split, write_run_info  # noqa: F401
    from .segment import RoutedAnswer, SegmentInput, SegmentResult, run_routed, run_tier_segment  # noqa: F401
    from .slicing import TierOutput, TierPart, load_tier_part, run_three_tiers, slice_model  # noqa: F401
    from .text import TextInputError, tokenize_for_inference  # noqa: F401

__all__ = sorted(_EXPORTS)


from .lazy import lazy_exports  # noqa: E402

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

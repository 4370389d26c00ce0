"""Per-architecture layer adapters: what one transformer layer takes besides the hidden state, and how to call it.

Slicing runs the encoder's own layer modules one at a time (no re-implemented attention). BERT-style layers
(BERT, MiniLM, RoBERTa, XLM-R, CamemBERT, ELECTRA) take the hidden state and the 4-D attention mask that
transformers builds. MPNet layers also take a relative position bias, which `MPNetEncoder.forward` computes
once from the sequence length with the encoder's `relative_attention_bias` table (12 heads x 32 buckets) and
hands to every layer. The bias depends only on the padded length (relative positions j - i; padding is
masked), so each tier recomputes it from the hidden state it receives: the handoff between tiers stays
"hidden states + mask", and a tier only needs the small table, which :meth:`LayerAdapter.extras` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

from .errors import CheckpointError


class UnsupportedArchitectureError(CheckpointError):
    """An encoder whose layers the adapters do not know how to call one at a time."""


def attention_bias(config: PretrainedConfig, hidden: torch.Tensor, attention_mask: torch.Tensor):
    """The 4-D mask the encoder's attention implementation expects, built by transformers itself."""
    return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask)


@dataclass(frozen=True)
class LayerInputs:
    """What every layer of one forward pass takes besides the hidden state (built once per padded batch)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class LayerAdapter:
    """BERT-style encoders: `layer(hidden, mask)`; in transformers v5 the layer returns a tensor."""

    name = "bert"
    model_types: tuple[str, ...] = ("bert", "roberta", "xlm-roberta", "camembert", "electra")

    def extras(self, encoder: PreTrainedModel) -> dict[str, nn.Module]:
        """Modules outside the layer stack and embeddings that every tier running layers needs (none here)."""
        return {}

    def extras_prefix(self) -> str:
        """Prefix of the extras' weight names in the encoder checkpoint (their state_dict keys follow it)."""
        return ""

    def prepare(
        self, config: PretrainedConfig, extras: nn.ModuleDict | dict, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> LayerInputs:
        return LayerInputs((attention_bias(config, hidden, attention_mask),), {})

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, inputs: LayerInputs) -> torch.Tensor:
        out = layer(hidden, *inputs.args, **inputs.kwargs)
        return out[0] if isinstance(out, tuple) else out  # older layer classes return (hidden, ...)


class MPNetPositionBias(nn.Module):
    """The relative position bias of an MPNet encoder, computed by transformers' own
    `MPNetEncoder.compute_position_bias` from this module's `relative_attention_bias` table."""

    def __init__(self, relative_attention_bias: nn.Embedding) -> None:
        super().__init__()
        self.relative_attention_bias = relative_attention_bias

    @staticmethod
    def relative_position_bucket(*args, **kwargs):
        from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

        return MPNetEncoder.relative_position_bucket(*args, **kwargs)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

        # As MPNetEncoder.forward: positions 0..seq-1 of the padded batch, the default 32 buckets.
        return MPNetEncoder.compute_position_bias(self, hidden)


class MPNetAdapter(LayerAdapter):
    """MPNet: `layer(hidden, mask, position_bias=...)[0]`, the bias recomputed on each tier."""

    name = "mpnet"
    model_types = ("mpnet",)

    def extras(self, encoder: PreTrainedModel) -> dict[str, nn.Module]:
        table = getattr(getattr(encoder, "encoder", None), "relative_attention_bias", None)
        if not isinstance(table, nn.Embedding):
            raise UnsupportedArchitectureError(
                f"{type(encoder).__name__} has no encoder.relative_attention_bias; it is not an MPNet encoder"
            )
        return {"position_bias": MPNetPositionBias(table)}

    def extras_prefix(self) -> str:
        return "encoder."  # MPNetPositionBias's 'relative_attention_bias.weight' is 'encoder.relative_attention_bias.weight'

    def prepare(self, config, extras, hidden, attention_mask) -> LayerInputs:
        if "position_bias" not in extras:
            raise UnsupportedArchitectureError("an MPNet tier needs its position-bias table; rebuild the part with slice_model")
        mask = attention_bias(config, hidden, attention_mask)
        return LayerInputs((mask,), {"position_bias": extras["position_bias"](hidden)})


ADAPTERS: tuple[LayerAdapter, ...] = (LayerAdapter(), MPNetAdapter())


def supported_model_types() -> list[str]:
    return sorted(t for adapter in ADAPTERS for t in adapter.model_types)


def adapter_for(config: PretrainedConfig) -> LayerAdapter:
    """The adapter of an encoder config's `model_type`; an unknown architecture is one clear error."""
    model_type = str(getattr(config, "model_type", "") or "")
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    name = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    raise UnsupportedArchitectureError(
        f"encoder architecture {model_type or '?'!r} ({name}) is not supported: its layers cannot be run one at a "
        f"time by a known adapter (supported model types: {', '.join(supported_model_types())}); pass --model with "
        "a BERT, RoBERTa or MPNet checkpoint, or add a LayerAdapter in tiers/arch.py"
    )


__all__ = [
    "ADAPTERS",
    "LayerAdapter",
    "LayerInputs",
    "MPNetAdapter",
    "MPNetPositionBias",
    "UnsupportedArchitectureError",
    "adapter_for",
    "attention_bias",
    "supported_model_types",
]

"""One tier's share of the model and the padding that lets samples of any length share a forward pass.

Samples travel between the batcher and the model one by one, without padding: token ids (mobile, and edge or
cloud at boundary 0) or the hidden states of the real tokens after the handoff boundary. The serving path is
:meth:`TierEngine.run_segment`: `tiers.run_tier_segment` runs the tier's layers one at a time, asks the
policy (the step protocol) before the first layer and after each one, and drops answered and handed-off
samples from the batch (the survivors are re-padded on the right; right padding is exact because the
attention mask hides it and positions are fixed at embedding time).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tiers import SegmentInput, SegmentResult, TierPart, TierPlan, load_tier_part, run_tier_segment
from tiers.experts import CLEAN, ExpertExits, load_experts, run_mobile, run_part
from tiers.segment import SegmentDecide


@dataclass(frozen=True)
class TokenSample:
    """Mobile input: one tokenised text (or text pair), special tokens included."""

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...] | None = None
    distortion: str | None = None  # expert exits of this type (None / "clean": standard exits)


@dataclass(frozen=True)
class StateSample:
    """Edge and cloud input: one sample's hidden states [tokens, hidden] and its distortion type."""

    hidden: torch.Tensor
    distortion: str | None = None


@dataclass
class SampleOutput:
    """One sample after a tier's layers: its real tokens' hidden states and its exits' logits."""

    hidden: torch.Tensor  # [tokens, hidden], fp32
    exit_logits: np.ndarray  # [exits of this tier, num_labels], fp32
    feature: np.ndarray | None = None  # mobile only: mean-pooled embedding-layer output [hidden]

    @property
    def token_count(self) -> int:
        return int(self.hidden.shape[0])


def pad_tokens(samples: list[TokenSample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Right-pad token ids (and token type ids) to the longest sample; returns ids, mask, type ids."""
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    with_types = all(s.token_type_ids is not None for s in samples)
    types = torch.zeros((len(samples), width), dtype=torch.long) if with_types else None
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        ids[row, :n] = torch.tensor(sample.input_ids, dtype=torch.long)
        mask[row, :n] = 1
        if types is not None and sample.token_type_ids is not None:
            types[row, :n] = torch.tensor(sample.token_type_ids, dtype=torch.long)
    return ids, mask, types


def pad_hidden(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-sample hidden states [tokens, hidden] with zeros; returns hidden [B, T, H] and mask."""
    width = max(int(s.shape[0]) for s in states)
    size = int(states[0].shape[1])
    hidden = torch.zeros((len(states), width, size), dtype=torch.float32)
    mask = torch.zeros((len(states), width), dtype=torch.long)
    for row, state in enumerate(states):
        hidden[row, : state.shape[0]] = state
        mask[row, : state.shape[0]] = 1
    return hidden, mask


class TierEngine:
    """The tier's part of the model (only its own weights) and its batched forward pass; with `experts`, each
    sample's exits are those of its distortion type (`tiers.experts.run_part`)."""

    def __init__(self, part: TierPart, pad_id: int = 0, experts: ExpertExits | None = None) -> None:
        self.part = part
        self.pad_id = pad_id
        self.experts = experts

    @classmethod
    def load(
        cls, run_dir: str | Path, plan: TierPlan, tier: str, pad_id: int = 0, with_experts: bool = False
    ) -> "TierEngine":
        part = load_tier_part(run_dir, plan, tier)
        experts = None
        if with_experts:
            experts = load_experts(run_dir, exits=range(part.first_layer, part.last_layer + 1))
        return cls(part, pad_id, experts)

    @property
    def tier(self) -> str:
        return self.part.tier

    @property
    def hidden_size(self) -> int:
        return self.part.hidden_size

    @property
    def first_layer(self) -> int:
        return int(self.part.first_layer)

    @property
    def last_layer(self) -> int:
        return int(self.part.last_layer)

    @property
    def vocab_size(self) -> int:
        return int(self.part.config.vocab_size)

    @property
    def type_vocab_size(self) -> int:
        return int(getattr(self.part.config, "type_vocab_size", 0) or 0)

    @property
    def accepts_tokens(self) -> bool:
        return self.part.embeddings is not None

    def run_segment(self, samples: list[SegmentInput], decide: SegmentDecide) -> list[SegmentResult]:
        """The tier's stay for a batch of samples (any entry boundaries it holds), with early exit inside the
        tier: one result per sample (answer or handoff, the depth it was taken at, logits of exits 1..depth)."""
        return run_tier_segment(self.part, samples, decide, self.pad_id, self.experts)

    @property
    def max_positions(self) -> int | None:
        value = getattr(self.part.config, "max_position_embeddings", None)
        return int(value) if value else None

    def run_tokens(self, samples: list[TokenSample]) -> list[SampleOutput]:
        """Mobile: embed and run layers 1..m on a padded batch, no early exit (every exit computed); one output
        per sample."""
        ids, mask, types = pad_tokens(samples, self.pad_id)
        kinds = self._kinds([s.distortion for s in samples])
        with torch.no_grad():
            if kinds is None:
                out = self.part.run_from_ids(ids, mask, types)
            else:
                out = run_mobile(self.part, ids, mask, types, self.experts, kinds)
        feature = out.embedding_feature.float().numpy() if out.embedding_feature is not None else None
        return self._split(out.hidden, mask, out.exit_logits, feature)

    def run_states(self, states: list[torch.Tensor | StateSample]) -> list[SampleOutput]:
        """Edge and cloud: continue from hidden states after the previous tier of the linear route (m, e) on a
        padded batch, no early exit."""
        samples = [s if isinstance(s, StateSample) else StateSample(s) for s in states]
        hidden, mask = pad_hidden([s.hidden for s in samples])
        kinds = self._kinds([s.distortion for s in samples])
        with torch.no_grad():
            if kinds is None:
                out = self.part.run_hidden(hidden, mask)
            else:
                out = run_part(self.part, hidden, mask, self.experts, kinds)
        return self._split(out.hidden, mask, out.exit_logits, None)

    def _kinds(self, distortions: list[str | None]) -> list[str | None] | None:
        """Per-sample types for the expert forward pass, or None for the standard one (experts off, or every
        sample clean: then the logits are exactly those of a service without experts)."""
        if self.experts is None or all(d is None or d == CLEAN for d in distortions):
            return None
        return distortions

    @staticmethod
    def _split(
        hidden: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor, feature: np.ndarray | None
    ) -> list[SampleOutput]:
        counts = mask.sum(dim=1).tolist()
        logits_np = logits.float().numpy()
        return [
            SampleOutput(
                hidden=hidden[row, :count].float().clone(),
                exit_logits=logits_np[row].copy(),
                feature=None if feature is None else feature[row].copy(),
            )
            for row, count in enumerate(counts)
        ]

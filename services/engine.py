"""One tier's share of the model and the padding that lets samples of any length share a forward pass.

Samples travel between the batcher and the model one by one, without padding: token ids on mobile, the
hidden states of the real tokens on edge and cloud. A batch is padded on the right just before the forward
pass and split again right after it; right padding is exact because the attention mask hides the padding
and positions are fixed at embedding time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tiers import TierPart, TierPlan, load_tier_part


@dataclass(frozen=True)
class TokenSample:
    """Mobile input: one tokenised text (or text pair), special tokens included."""

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...] | None = None


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
    """The tier's part of the model (only its own weights) and its batched forward pass."""

    def __init__(self, part: TierPart, pad_id: int = 0) -> None:
        self.part = part
        self.pad_id = pad_id

    @classmethod
    def load(cls, run_dir: str | Path, plan: TierPlan, tier: str, pad_id: int = 0) -> "TierEngine":
        return cls(load_tier_part(run_dir, plan, tier), pad_id)

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
    def max_positions(self) -> int | None:
        value = getattr(self.part.config, "max_position_embeddings", None)
        return int(value) if value else None

    def run_tokens(self, samples: list[TokenSample]) -> list[SampleOutput]:
        """Mobile: embed and run layers 1..m on a padded batch; one output per sample."""
        ids, mask, types = pad_tokens(samples, self.pad_id)
        with torch.no_grad():
            out = self.part.run_from_ids(ids, mask, types)
        feature = out.embedding_feature.float().numpy() if out.embedding_feature is not None else None
        return self._split(out.hidden, mask, out.exit_logits, feature)

    def run_states(self, states: list[torch.Tensor]) -> list[SampleOutput]:
        """Edge and cloud: continue from handed-over hidden states on a padded batch."""
        hidden, mask = pad_hidden(states)
        with torch.no_grad():
            out = self.part.run_hidden(hidden, mask)
        return self._split(out.hidden, mask, out.exit_logits, None)

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

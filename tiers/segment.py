"""One tier's stay, with early exit inside the tier: layers run one at a time on the samples still there.

:func:`run_tier_segment` is what a tier does with a batch (the services call it on each micro-batch); it
drives :func:`tiers.run_segment` with a real forward pass: before each layer the samples that answered or were
handed off leave the batch and the survivors are re-padded to their own longest length (no padding rows for
answered samples). :func:`run_routed` chains the three tiers in one process with the same function, so
offline evaluation (same driver over cached logits), in-process inference and the services agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .experts import CLEAN, ExpertExits
from .model import pool_hidden
from .plan import TIERS
from .routes import CONTINUE, Stop, final_tier_index, handoff_target, run_segment
from .slicing import TierPart


@dataclass
class SegmentInput:
    """A sample arriving at a tier: token ids at boundary 0, or its real tokens' hidden states after layer
    `entry`, with the logits of exits 1..entry computed before and its routing feature (if any)."""

    entry: int
    input_ids: Sequence[int] | None = None
    token_type_ids: Sequence[int] | None = None
    hidden: torch.Tensor | None = None  # [tokens, hidden]
    prior_logits: np.ndarray | None = None  # [entry, num_labels]
    feature: np.ndarray | None = None  # embedding-layer feature [hidden]
    distortion: str | None = None

    @property
    def token_count(self) -> int:
        return len(self.input_ids) if self.input_ids is not None else int(self.hidden.shape[0])


@dataclass
class SegmentResult:
    """How a sample left the tier: `action` (exit > 0 answered, < 0 handed off) after layer `depth`."""

    action: int
    depth: int
    logits: np.ndarray  # exits 1..depth, [depth, num_labels]
    hidden: torch.Tensor | None  # [tokens, hidden] after layer depth (None when handed off as token ids)
    feature: np.ndarray | None
    token_count: int
    input_ids: Sequence[int] | None = None  # kept for a handoff at boundary 0
    token_type_ids: Sequence[int] | None = None


#: (sample indices in the batch, their logits of exits 1..k [r, k, C], their features [r, d] or None, k)
SegmentDecide = Callable[[np.ndarray, np.ndarray, np.ndarray | None, int], np.ndarray]


@dataclass
class _State:
    hidden: list[torch.Tensor | None] = field(default_factory=list)
    logits: list[list[np.ndarray]] = field(default_factory=list)


def _pad(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(int(s.shape[0]) for s in states)
    size = int(states[0].shape[1])
    hidden = torch.zeros((len(states), width, size), dtype=states[0].dtype)
    mask = torch.zeros((len(states), width), dtype=torch.long)
    for row, state in enumerate(states):
        hidden[row, : state.shape[0]] = state
        mask[row, : state.shape[0]] = 1
    return hidden, mask


def _embed(part: TierPart, samples: list[SegmentInput], rows: np.ndarray, pad_id: int) -> tuple[list, list]:
    """Embed the token-id samples `rows`; returns their per-sample states and mean-pooled features."""
    width = max(len(samples[i].input_ids) for i in rows)
    ids = torch.full((rows.size, width), pad_id, dtype=torch.long)
    types = torch.zeros((rows.size, width), dtype=torch.long)
    mask = torch.zeros((rows.size, width), dtype=torch.long)
    for r, i in enumerate(rows):
        seq = samples[i].input_ids
        ids[r, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[r, : len(seq)] = 1
        if samples[i].token_type_ids is not None:
            types[r, : len(seq)] = torch.tensor(list(samples[i].token_type_ids), dtype=torch.long)
    with_types = getattr(part.config, "type_vocab_size", 0) and int(part.config.type_vocab_size) > 0
    hidden = part.embed(ids, types if with_types else None)
    features = pool_hidden(hidden, mask, "mean").float().numpy()
    counts = mask.sum(dim=1).tolist()
    return [hidden[r, :c] for r, c in enumerate(counts)], [features[r].copy() for r in range(rows.size)]


def _exit_logits(
    part: TierPart,
    layer_index: int,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    kinds: list[str | None],
    experts: ExpertExits | None,
) -> torch.Tensor:
    """Exit `layer_index` on a padded batch; samples of a distortion type use its expert head if it has one."""
    _, head = part.layer(layer_index)
    out = head(hidden, mask)
    if experts is None:
        return out
    for kind in sorted({k for k in kinds if k is not None and k != CLEAN}):
        expert = experts.head(kind, layer_index)
        if expert is None:
            continue
        rows = torch.tensor([b for b, k in enumerate(kinds) if k == kind], dtype=torch.long)
        out = out.index_copy(0, rows, expert(hidden[rows], mask[rows]))
    return out


@torch.no_grad()
def run_tier_segment(
    part: TierPart,
    samples: list[SegmentInput],
    decide: SegmentDecide,
    pad_id: int = 0,
    experts: ExpertExits | None = None,
) -> list[SegmentResult]:
    """Run `part`'s tier over `samples` with the step protocol; one result per sample, in order."""
    n = len(samples)
    if n == 0:
        return []
    entries = np.array([s.entry for s in samples], dtype=np.int64)
    state = _State([s.hidden for s in samples], [[] for _ in samples])
    features: list[np.ndarray | None] = [s.feature for s in samples]
    for i, sample in enumerate(samples):
        if sample.prior_logits is not None and len(sample.prior_logits):
            state.logits[i] = [np.asarray(row, dtype=np.float32) for row in sample.prior_logits]
    token_rows = np.flatnonzero(entries == 0)
    if token_rows.size:
        embedded, pooled = _embed(part, samples, token_rows, pad_id)
        for i, h, f in zip(token_rows, embedded, pooled):
            state.hidden[i] = h
            if features[i] is None:
                features[i] = f
    kinds = [s.distortion for s in samples]

    def step(local: np.ndarray, k: int) -> np.ndarray:
        if k == 0:
            seen = np.zeros((local.size, 0, part.num_labels), dtype=np.float32)
        else:
            seen = np.stack([np.stack(state.logits[i][:k]) for i in local])
        feats = None
        if all(features[i] is not None for i in local):
            feats = np.stack([features[i] for i in local]).astype(np.float64)
        return decide(local, seen, feats, k)

    def advance(rows: np.ndarray, k: int) -> None:
        hidden, mask = _pad([state.hidden[i] for i in rows])
        out = part.run_one_layer(k + 1, hidden, part.layer_inputs(hidden, mask))
        logits = _exit_logits(part, k + 1, out, mask, [kinds[i] for i in rows], experts).float().numpy()
        counts = mask.sum(dim=1).tolist()
        for r, i in enumerate(rows):
            state.hidden[i] = out[r, : counts[r]]
            state.logits[i].append(logits[r].copy())

    actions, depths = run_segment(part.plan, part.tier, entries, step, advance)
    results = []
    for i, sample in enumerate(samples):
        depth = int(depths[i])
        logits = np.stack(state.logits[i][:depth]) if depth else np.zeros((0, part.num_labels), dtype=np.float32)
        handed_tokens = actions[i] < 0 and depth == 0
        results.append(
            SegmentResult(
                action=int(actions[i]),
                depth=depth,
                logits=logits,
                hidden=None if handed_tokens else state.hidden[i].float().clone(),
                feature=features[i],
                token_count=sample.token_count,
                input_ids=sample.input_ids if handed_tokens else None,
                token_type_ids=sample.token_type_ids if handed_tokens else None,
            )
        )
    return results


@dataclass
class RoutedAnswer:
    """An answer of :func:`run_routed`: exit, its logits, and the route's stops."""

    exit: int
    logits: np.ndarray  # [num_labels] at the answering exit
    stops: list[Stop]

    @property
    def tier(self) -> str:
        return self.stops[-1].tier


def run_routed(
    parts: dict[str, TierPart],
    decide: Callable[[np.ndarray, str, int, np.ndarray | None], np.ndarray],
    input_ids: Sequence[Sequence[int]],
    token_type_ids: Sequence[Sequence[int]] | None = None,
    pad_id: int = 0,
) -> list[RoutedAnswer]:
    """Batched early-exit inference through the three tiers in one process. `decide(logits_seen, tier,
    depth, features)` is the policy's step (e.g. ``policy.step``); samples are unpadded token-id lists."""
    plan = parts["mobile"].plan
    n = len(input_ids)
    waiting: dict[int, list[tuple[int, SegmentInput]]] = {
        0: [
            (i, SegmentInput(0, tuple(ids), None if token_type_ids is None else tuple(token_type_ids[i])))
            for i, ids in enumerate(input_ids)
        ]
    }
    trails: list[list[tuple[str, int]]] = [[("mobile", 0)] for _ in range(n)]
    answers: list[RoutedAnswer | None] = [None] * n
    for tier in range(final_tier_index(plan) + 1):
        queue = waiting.get(tier, [])
        if not queue:
            continue
        name = TIERS[tier]
        results = run_tier_segment(
            parts[name],
            [sample for _, sample in queue],
            lambda local, seen, feats, k, name=name: decide(seen, name, k, feats),
            pad_id,
        )
        for (i, _), result in zip(queue, results):
            if result.action > 0:
                stops = [
                    Stop(t, entry, trails[i][p + 1][1] if p + 1 < len(trails[i]) else result.depth)
                    for p, (t, entry) in enumerate(trails[i])
                ]
                answers[i] = RoutedAnswer(result.action, result.logits[result.action - 1], stops)
                continue
            target = handoff_target(result.action)
            trails[i].append((TIERS[target], result.depth))
            waiting.setdefault(target, []).append(
                (
                    i,
                    SegmentInput(
                        result.depth,
                        result.input_ids,
                        result.token_type_ids,
                        result.hidden,
                        result.logits,
                        result.feature,
                    ),
                )
            )
    return [a for a in answers if a is not None]


__all__ = ["CONTINUE", "RoutedAnswer", "SegmentInput", "SegmentResult", "run_routed", "run_tier_segment"]

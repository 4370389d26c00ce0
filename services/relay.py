"""What a tier does with its samples after its layers: answer here, or hand them on to a next tier.

`TierRelay` is a mixin of `services.tier.TierService`: it reads the service's settings, run info, plan,
policy features, engine, client, channel and metrics. Samples the policy answered get their answer here;
the others are grouped by (target tier, boundary), each group sent as one handoff (token ids or encoded hidden
states, with the simulated link if any) under a share of the deadline left. The next tier's answers are
checked to fit the handoff; whatever fails is answered here, degraded. Every answer carries its route (stops
'tier@entry'), the depth its answering tier ran to and the exact bytes per hop it caused; mobile turns them
into the cost breakdown of the response with `tiers.CostModel.route_breakdown`, the accounting the offline
evaluation uses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from tiers import (
    CONTENT_TYPE,
    MAX_BUDGET_MS,
    TIERS,
    TOKENS_CONTENT_TYPE,
    SegmentInput,
    SegmentResult,
    Stop,
    HandoffMeta,
    encode_meta,
    encode_tokens,
    handoff_group_size,
    handoff_target,
    hop_payload_size,
    token_payload_size,
)
from tiers.channel import send_hidden_states
from tiers.experts import CLEAN

from .engine import pad_hidden
from .handoff import HandoffFailed, InputError, post_handoff
from .policy import exit_answer
from .schemas import Answer, CostReport, HandoffResponse, Prediction

log = logging.getLogger("services.tier")  # the tier's logger: one name for all of a tier's messages

#: Below this much time left, a tier answers locally instead of starting a handoff.
MIN_HANDOFF_BUDGET_S = 0.02
#: Share of the time left that a tier waits for the next one; the rest is its margin to answer locally.
#: The next tier gets the same share of that wait as its own budget, so deadlines nest hop by hop.
WAIT_SHARE = 0.9
#: Hidden states of at most this many values (tokens x hidden) are encoded on the event loop, not in a thread.
INLINE_ENCODE_VALUES = 64 * 1024


@dataclass
class _Item:
    """One sample queued for this tier's batcher: where it enters, and the tier it is forced to (if any)."""

    sample: SegmentInput
    force: str | None = None


@dataclass
class _Batch:
    """The samples of one request (or handoff) at one tier, after their stay here."""

    items: list[_Item]
    results: list[SegmentResult]
    force: str | None
    start: float
    deadline: float
    request_id: str
    local_ms: float = 0.0
    distortions: list[str] | None = None  # each sample's detected type, sent on (experts on)


def parse_stop(label: str) -> tuple[str, int]:
    """'cloud@4' -> ('cloud', 4)."""
    tier, _, entry = label.partition("@")
    if tier not in TIERS or not entry.isdigit():
        raise ValueError(f"route stop {label!r} is not of the form 'tier@boundary'")
    return tier, int(entry)


def route_stops(route: list[str], depth: int) -> list[Stop]:
    """The stops of a route given as labels, the answering stop having run to layer `depth`."""
    parsed = [parse_stop(label) for label in route]
    return [
        Stop(tier, entry, parsed[p + 1][1] if p + 1 < len(parsed) else depth) for p, (tier, entry) in enumerate(parsed)
    ]


class TierRelay:
    """Answers, handoffs to the next tiers (with the degraded fallback) and the cost of each answer."""

    # ---- answer here, or hand off -------------------------------------------------------------------------
    def _entry(self, batch: _Batch, i: int) -> int:
        return int(batch.items[i].sample.entry)

    async def _route(self, batch: _Batch) -> list[Answer]:
        """Answers of the samples that answered here; the others are handed off, grouped by (tier, boundary)."""
        batch.local_ms = (time.perf_counter() - batch.start) * 1000
        answers: list[Answer | None] = [None] * len(batch.results)
        groups: dict[tuple[str, int], list[int]] = {}
        for i, result in enumerate(batch.results):
            if result.action > 0:
                answers[i] = self._answer(
                    result.logits, result.action, result.depth, self._entry(batch, i), {self.tier: batch.local_ms}
                )
            else:
                groups.setdefault((TIERS[handoff_target(result.action)], result.depth), []).append(i)
        jobs = []
        for (target, boundary), members in sorted(groups.items()):
            size = self._handoff_group_size(batch, members, boundary)
            for first in range(0, len(members), size):
                jobs.append((target, boundary, np.array(members[first : first + size], dtype=np.int64)))
        if jobs:
            results = await asyncio.gather(*(self._forward(batch, t, b, g) for t, b, g in jobs))
            for (_, _, group), forwarded in zip(jobs, results):
                for i, answer in zip(group, forwarded):
                    answers[i] = answer
        return [answer for answer in answers if answer is not None]

    def _answer(
        self,
        logits_seen: np.ndarray,
        exit_index: int,
        depth: int,
        entry: int,
        wall_ms: dict[str, float],
        reason: str | None = None,
    ) -> Answer:
        """The answer at `exit_index` (1-based) from one sample's logits of exits 1..depth, given here after
        entering at boundary `entry` and running to layer `depth`."""
        return exit_answer(
            logits_seen, exit_index, self.tier, [f"{self.tier}@{entry}"], depth, self.info.label_names,
            self.temperatures, reason, wall_ms=wall_ms,
        )  # fmt: skip

    def _handoff_group_size(self, batch: _Batch, members: list[int], boundary: int) -> int:
        """Most samples per handoff request (`tiers.codec.handoff_group_size` under this tier's limits)."""
        width = 0
        if self.policy_features and members and batch.results[members[0]].feature is not None:
            width = int(np.asarray(batch.results[members[0]].feature).shape[0])
        longest = None if batch.distortions is None else max(len(kind) for kind in batch.distortions)
        return handoff_group_size(
            self.settings.max_meta_bytes, self.settings.max_texts, boundary, int(self.info.num_labels), width, longest
        )

    async def _forward(self, batch: _Batch, target: str, boundary: int, group: np.ndarray) -> list[Answer]:
        """Hand the `group` samples to `target` at `boundary`; on any failure answer them here, degraded: at
        the deepest exit computed, or (handed off before any layer) after running this tier's own layers."""
        assert self.engine is not None
        hop = f"{self.tier}_{target}"
        sent = time.perf_counter()
        try:
            response, rtt_ms = await self._send(batch, target, boundary, group, batch.deadline - sent)
        except Exception as err:  # noqa: BLE001 - whatever went wrong, the samples are answered here
            if isinstance(err, HandoffFailed):
                failure = err
            else:
                log.exception("handoff to %s failed unexpectedly", target)
                failure = HandoffFailed("handoff_failed", f"{type(err).__name__}: {err}")
            return await self._degrade(batch, group, target, hop, sent, failure)
        bad = self._check_relayed(response.answers, target, boundary)
        if bad is not None:
            return await self._degrade(batch, group, target, hop, sent, HandoffFailed("next_tier_bad_answer", bad))
        self.metrics.handoffs.inc(hop, "ok")
        hop_ms = max(0.0, rtt_ms - response.server_ms)
        encoding = self.settings.handoff_encoding
        hidden = self.engine.hidden_size
        forwarded = []
        for i, answer in zip(group, response.answers):
            result = batch.results[i]
            sample_bytes = hop_payload_size([result.token_count], boundary, hidden, encoding)
            forwarded.append(
                answer.model_copy(
                    update={
                        "route": [f"{self.tier}@{self._entry(batch, i)}", *answer.route],
                        "bytes_per_hop": {hop: sample_bytes, **answer.bytes_per_hop},
                        "wall_ms": {self.tier: batch.local_ms, hop: hop_ms, **answer.wall_ms},
                    }
                )
            )
        return forwarded

    async def _degrade(
        self, batch: _Batch, group: np.ndarray, target: str, hop: str, sent: float, failure: HandoffFailed
    ) -> list[Answer]:
        """Count and log a failed handoff (the details go to the log only) and answer its samples here, with the
        failure's code as their degraded_reason."""
        self.metrics.handoffs.inc(hop, failure.category)
        self.metrics.degraded.inc(failure.category, amount=len(group))
        log.warning(
            "%d sample(s) answered at %s, degraded (%s): %s tier: %s",
            len(group), self.tier, failure.category, target, failure.detail,
        )  # fmt: skip
        return await self._answer_here(batch, group, hop, sent, failure.category)

    @staticmethod
    def _check_relayed(answers: list[Answer], target: str, boundary: int) -> str | None:
        """Why the next tier's answers do not fit the handoff (route starting elsewhere, bad stops, an exit
        deeper than the layers run), or None when they do."""
        for answer in answers:
            try:
                stops = route_stops(answer.route, answer.depth)
            except ValueError as err:
                return f"its answer's route is malformed ({err})"
            if not stops or (stops[0].tier, stops[0].entry) != (target, boundary):
                return f"its answer's route {answer.route} does not start at {target}@{boundary}"
            if any(stop.layers < 1 for stop in stops) or not 1 <= answer.exit <= answer.depth:
                return f"its answer (exit {answer.exit}, route {answer.route}, depth {answer.depth}) is inconsistent"
            if answer.tier != stops[-1].tier:
                return f"its answer names tier {answer.tier} but its route ends at {stops[-1].tier}"
        return None

    async def _answer_here(
        self, batch: _Batch, group: np.ndarray, hop: str, sent: float, reason: str
    ) -> list[Answer]:
        """Degraded answers of a group whose handoff failed."""
        answers: dict[int, Answer] = {}
        rerun = [int(i) for i in group if batch.results[i].depth == 0]  # no exit computed yet
        for i in group:
            result = batch.results[i]
            if result.depth > 0:
                wall = {self.tier: batch.local_ms, hop: (time.perf_counter() - sent) * 1000}
                answers[int(i)] = self._answer(
                    result.logits, result.depth, result.depth, self._entry(batch, int(i)), wall, reason
                )
        if rerun:
            items = [replace(batch.items[i], force=self.tier) for i in rerun]
            try:
                results = await self._require_batcher().submit(items)
            except Exception as err:  # noqa: BLE001
                log.exception("the %s tier could not answer after a failed handoff", self.tier)
                raise InputError(
                    503, f"the {self.tier} tier could not answer after a failed handoff; see its log"
                ) from err
            wall = {self.tier: (time.perf_counter() - batch.start) * 1000, hop: (time.perf_counter() - sent) * 1000}
            for i, result in zip(rerun, results):
                answers[i] = self._answer(
                    result.logits, result.action, result.depth, self._entry(batch, i), wall, reason
                )
        return [answers[int(i)] for i in group]

    async def _send(
        self, batch: _Batch, target: str, boundary: int, group: np.ndarray, remaining_s: float
    ) -> tuple[HandoffResponse, float]:
        """Encode and POST one group; HandoffFailed when there is no URL for `target` or no time left."""
        url = self.settings.url_for(target)
        if not url or self.client is None:
            setting = "next_url" if (self.tier == "edge" or target == "edge") else "cloud_url"
            raise HandoffFailed("next_tier_not_configured", f"no next tier configured for {target} ({setting})")
        if remaining_s < MIN_HANDOFF_BUDGET_S:
            raise HandoffFailed("deadline_exceeded", "request deadline reached before the handoff")
        wait_s = remaining_s * WAIT_SHARE
        hop = f"{self.tier}_{target}"
        results = [batch.results[i] for i in group]
        if boundary == 0:
            payload = encode_tokens(
                [r.input_ids for r in results],
                None if any(r.token_type_ids is None for r in results) else [r.token_type_ids for r in results],
                self.engine.vocab_size,
            )
            content_type = TOKENS_CONTENT_TYPE
        else:
            states = [r.hidden for r in results]
            encoding = self.settings.handoff_encoding
            if sum(int(state.shape[0]) for state in states) * self.engine.hidden_size <= INLINE_ENCODE_VALUES:
                payload = self._encode(states, encoding, boundary)  # small: a thread hand-off costs more
            else:
                payload = await asyncio.to_thread(self._encode, states, encoding, boundary)
            content_type = CONTENT_TYPE
        kinds = None if batch.distortions is None else [batch.distortions[i] for i in group]
        features = None
        if self.policy_features and all(r.feature is not None for r in results):
            features = np.stack([np.asarray(r.feature) for r in results])
        num_labels = int(self.info.num_labels)
        prior = np.stack([r.logits[:boundary] for r in results]) if boundary else np.zeros((len(group), 0, num_labels))
        meta = HandoffMeta.build(
            prior,
            budget_ms=min(wait_s * WAIT_SHARE * 1000, MAX_BUDGET_MS),
            force_tier=batch.force,
            features=features,
            distortions=None if kinds is None or all(kind == CLEAN for kind in kinds) else kinds,  # absent: clean
        )
        body = encode_meta(meta) + payload  # the whole message: tiers.encode_hidden_message / _token_message
        self.metrics.handoff_bytes.inc(hop, amount=len(body))
        if self.channel is not None and self.settings.channel_rate_bps is not None:
            with self._channel_lock:
                # the payload's air time, as the cost model and the offline channel experiment charge it
                outcome = self.channel.simulate_transmission(len(payload), self._channel_rng)
            if wait_s - outcome.seconds < MIN_HANDOFF_BUDGET_S:
                detail = f"simulated link needs {outcome.seconds:.3f} s, more than the time left"
                raise HandoffFailed("deadline_exceeded", detail)
            await asyncio.sleep(outcome.seconds)
            wait_s -= outcome.seconds  # the air time comes out of this hop's share of the deadline
            if not outcome.delivered:
                raise HandoffFailed("link_lost", "simulated link lost a packet beyond its retransmission limit")
        return await post_handoff(
            self.client,
            url,
            self.settings.token,
            batch.request_id,
            body,
            wait_s,
            len(group),
            content_type=content_type,
        )

    def _encode(self, states: list[torch.Tensor], encoding: str, boundary: int | None = None) -> bytes:
        """Hidden states after layer `boundary` (default: this tier's last) as they leave this tier: with the
        simulated link's noise, if any, then the codec (`tiers.channel.send_hidden_states`)."""
        hidden, mask = pad_hidden(states)
        boundary = self.last_layer if boundary is None else int(boundary)
        snr = None if self.channel is None else self.channel.snr_db
        with self._channel_lock:  # one noise stream per tier, drawn in handoff order
            return send_hidden_states(hidden, mask, boundary + 1, encoding, snr, self._channel_noise)

    # ---- cost ----------------------------------------------------------------------------------------------
    def _prediction(self, answer: Answer, token_count: int, distortion: str | None = None) -> Prediction:
        """The response entry: the answer with its cost, `tiers.CostModel.route_breakdown` of its route (every
        layer each stop ran, the exact bytes of each hop), normalised by the all-cloud reference route carrying
        this sample's token ids."""
        stops = route_stops(answer.route, answer.depth)
        breakdown = self.info.cost_model.route_breakdown(
            self.plan, stops, answer.bytes_per_hop, reference_bytes=token_payload_size([token_count])
        )
        cost = CostReport(
            layers=breakdown["layers"],
            bytes_per_hop=answer.bytes_per_hop,
            compute_units=breakdown["compute_units"],
            offload_units=breakdown["offload_units"],
            total_units=breakdown["total_units"],
            normalised=breakdown["normalised"],
            wall_ms=answer.wall_ms,
        )
        return Prediction(
            label=answer.label,
            label_name=answer.label_name,
            probabilities=answer.probabilities,
            score=answer.score,
            exit=answer.exit,
            tier=answer.tier,
            route=answer.route,
            degraded=answer.degraded,
            degraded_reason=answer.degraded_reason,
            distortion=distortion,
            cost=cost,
        )

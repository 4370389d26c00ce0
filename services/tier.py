"""What one tier does with a request: run its layers (batched), ask the policy, answer or hand off.

The same class serves mobile (texts in), edge and cloud (hidden states in); `services.app` only wires it to
HTTP. Every answer a tier produces or relays carries the bytes it caused per hop and the measured time per
tier and hop; mobile turns them into the cost breakdown of the response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np
import torch
from pydantic import ValidationError

from clustering.detector import DetectorError, DistortionDetector
from tiers import (
    Channel,
    TIERS,
    HandoffFormatError,
    TierPlan,
    decode_handoff,
    encode_handoff,
    payload_size,
    read_run_info,
)
from tiers.experts import CLEAN, DETECTOR_FILE, EXPERTS_DIR, ExpertError, experts_dir, read_expert_info

from .batching import MicroBatcher, chunked
from .engine import SampleOutput, StateSample, TierEngine, TokenSample, pad_hidden
from .handoff import HandoffFailed, InputError, make_client, post_handoff
from .metrics import ServiceMetrics
from .policy import ThresholdPolicy, check_decisions, load_policy, read_temperatures, softmax, wants_features
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

log = logging.getLogger("services.tier")

#: Below this much time left, a tier answers locally instead of starting a handoff.
MIN_HANDOFF_BUDGET_S = 0.02
#: Share of the time left that a tier waits for the next one; the rest is its margin to answer locally.
#: The next tier gets the same share of that wait as its own budget, so deadlines nest hop by hop.
WAIT_SHARE = 0.9
MAX_BUDGET_MS = 3_600_000.0  # HandoffMeta's upper bound


@dataclass
class _Batch:
    """The samples of one request (or handoff) at one tier, after its layers ran."""

    outputs: list[SampleOutput]
    seen: np.ndarray  # logits of exits 1..k (this tier's last), [n, k, C]
    features: np.ndarray | None  # routing features [n, d] for a policy fitted on them, else None
    force: str | None
    start: float
    deadline: float
    request_id: str
    local_ms: float = 0.0
    distortions: list[str] | None = None  # mobile with experts on: each sample's detected type, sent to edge


class TierService:
    """One tier's model, policy, batcher, client and metrics; `start`/`stop` bracket the app's lifespan."""

    def __init__(self, settings: TierSettings) -> None:
        self.settings = settings
        self.tier: str = settings.tier
        self.run_dir = Path(settings.run_dir)
        self.info = read_run_info(self.run_dir)
        num_layers = self.info.plan.num_layers
        self.plan: TierPlan = TierPlan.parse(settings.plan, num_layers) if settings.plan else self.info.plan
        self.first_layer, self.last_layer = self.plan.layer_range(self.tier)
        # The tier holding exit L answers everything (cloud, or edge when e = L and cloud holds no layers).
        self.is_final = self.last_layer >= num_layers or self.tier == "cloud"
        self.hop = {"mobile": "mobile_edge", "edge": "edge_cloud"}.get(self.tier)
        self.next_tier = None if self.is_final else TIERS[TIERS.index(self.tier) + 1]
        self.max_tokens = settings.max_tokens or self.info.max_length
        self.temperatures = read_temperatures(self.run_dir, num_layers)
        self.policy, self.policy_name = load_policy(
            self.run_dir, self.plan, settings.policy, settings.threshold, self.temperatures
        )
        self.fallback_policy = ThresholdPolicy(self.plan, settings.threshold, self.temperatures)
        self.metrics = ServiceMetrics(self.tier)
        self.tokenizer = self._load_tokenizer() if self.tier == "mobile" else None
        # Expert exits (settings.experts): mobile and edge use the experts of each sample's distortion type,
        # which mobile's detector names; cloud holds no expert exits and ignores the setting.
        self.use_experts = settings.experts and self.tier != "cloud"
        self.expert_types: frozenset[str] = frozenset()
        self.detector: DistortionDetector | None = None
        if self.use_experts:
            self.expert_types = frozenset([CLEAN, *read_expert_info(self.run_dir).types])  # ExpertError if none
            if self.tier == "mobile":
                self.detector = self._load_detector()
        self._tokenizer_lock = threading.Lock()
        self.engine: TierEngine | None = None
        self.batcher: MicroBatcher | None = None
        self.client: httpx.AsyncClient | None = None
        # Simulated link towards the next tier (noise on what leaves this tier; air time, loss, retransmission).
        self.channel: Channel | None = None
        if settings.channel_rate_bps is not None or settings.channel_snr_db is not None:
            self.channel = Channel(
                rate_bps=settings.channel_rate_bps or 1e300,  # noise only: air time negligible
                latency_s=settings.channel_latency_s,
                snr_db=settings.channel_snr_db,
                packet_loss=settings.channel_packet_loss,
                packet_bytes=settings.channel_packet_bytes,
                max_retransmissions=settings.channel_max_retransmissions,
            )
        self._channel_lock = threading.Lock()
        self._channel_noise = torch.Generator().manual_seed(settings.channel_seed)
        self._channel_rng = np.random.default_rng(settings.channel_seed)

    # ---- lifecycle -------------------------------------------------------------------------------------
    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.run_dir / "encoder")
        tokenizer.model_max_length = 10**9  # lengths are checked here, against max_tokens, with a clear error
        return tokenizer

    def _load_detector(self) -> DistortionDetector:
        """The run's distortion detector (<run>/experts/detector.json); it must read the text alone."""
        path = experts_dir(self.run_dir) / DETECTOR_FILE
        if not path.is_file():
            raise ExpertError(
                f"{self.run_dir} has expert exits but no {EXPERTS_DIR}/{DETECTOR_FILE}, which mobile needs to pick "
                "them; rerun `dimee experts train`, or serve without experts"
            )
        try:
            saved = json.loads(path.read_text())
            features = saved.get("features", "text")
            detector = DistortionDetector.from_dict(saved["detector"])
        except (ValueError, KeyError, TypeError, AttributeError, DetectorError) as err:
            raise ExpertError(f"{path} is damaged ({err}); rerun `dimee experts train`") from err
        if features != "text" or detector.n_hidden_:
            raise ExpertError(
                f"{path} was fitted on {features!r} features; the services' detector reads the text only: "
                "retrain with `dimee experts train --detector-features text`"
            )
        unknown = sorted(set(map(str, detector.classes_)) - self.expert_types)
        if unknown:
            raise ExpertError(f"{path} names types {unknown} that have no expert exits in {self.run_dir}")
        return detector

    async def start(self) -> None:
        pad_id = int(getattr(self.tokenizer, "pad_token_id", None) or 0) if self.tokenizer is not None else 0
        self.engine = await asyncio.to_thread(
            TierEngine.load, self.run_dir, self.plan, self.tier, pad_id, self.use_experts
        )
        positions = self.engine.max_positions
        if positions is not None and self.max_tokens > positions:
            raise ValueError(
                f"max_tokens {self.max_tokens} exceeds the encoder's {positions} positions; lower DIMEE_MAX_TOKENS"
            )
        run = self.engine.run_tokens if self.tier == "mobile" else self.engine.run_states
        self.batcher = MicroBatcher(
            chunked(run, self.settings.max_batch_size),
            window_s=self.settings.batch_window_ms / 1000,
            max_batch=self.settings.max_batch_size,
            on_batch=lambda size: self.metrics.batch_size.observe(size),
        )
        await self.batcher.start()
        if self.next_tier is not None and self.settings.next_url:
            self.client = make_client(self.settings.request_timeout_s, self.settings.connect_timeout_s)
        log.info(
            "%s tier ready: layers %d..%d of %d (plan %s), policy: %s, experts: %s, next: %s",
            self.tier, self.first_layer, self.last_layer, self.plan.num_layers, self.plan.spec, self.policy_name,
            ", ".join(sorted(self.expert_types - {CLEAN})) if self.use_experts else "off",
            self.settings.next_url if self.next_tier else "none (final tier)",
        )  # fmt: skip

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
            self.batcher = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    @property
    def loaded(self) -> bool:
        return self.engine is not None and self.batcher is not None

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Model loaded and, where there is a next tier, its /healthz answering."""
        checks = {"model": "loaded" if self.loaded else "not loaded", "policy": self.policy_name}
        ready = self.loaded
        if self.next_tier is None:
            checks["next_tier"] = "none (final tier)"
        elif not self.settings.next_url or self.client is None:
            checks["next_tier"] = "not configured: samples the policy hands off are answered here, degraded"
        else:
            try:
                response = await self.client.get(
                    f"{self.settings.next_url}/healthz", timeout=self.settings.readiness_timeout_s
                )
                ok = response.status_code == 200
                checks["next_tier"] = "reachable" if ok else f"answered {response.status_code}"
            except httpx.HTTPError as err:
                ok = False
                checks["next_tier"] = f"unreachable ({type(err).__name__})"
            ready = ready and ok
        return ready, checks

    def _require_batcher(self) -> MicroBatcher:
        if self.batcher is None or self.engine is None:
            raise InputError(503, f"the {self.tier} tier is not ready (model not loaded)")
        return self.batcher

    # ---- mobile: texts in --------------------------------------------------------------------------------
    async def classify(self, payload: dict, request_id: str) -> ClassifyResponse:
        start = time.perf_counter()
        deadline = start + self.settings.request_timeout_s
        batcher = self._require_batcher()
        texts, pairs, force = self.parse_inputs(payload)
        samples = await asyncio.to_thread(self._tokenize, texts, pairs)
        distortions = None
        if self.detector is not None:
            distortions = await asyncio.to_thread(self._detect, texts, pairs)
            samples = [replace(sample, distortion=kind) for sample, kind in zip(samples, distortions)]
        outputs = await batcher.submit(samples)
        own = np.stack([out.exit_logits for out in outputs])
        features = np.stack([out.feature for out in outputs]).astype(np.float64)
        routing = features if wants_features(self.policy, features.shape[1]) else None
        batch = _Batch(outputs, own, routing, force, start, deadline, request_id, distortions=distortions)
        answers = await self._decide_and_route(batch)
        predictions = [
            self._prediction(answer, None if distortions is None else distortions[i])
            for i, answer in enumerate(answers)
        ]
        for answer in answers:
            self.metrics.answers.inc(answer.tier, answer.exit, str(answer.degraded).lower())
        total_ms = (time.perf_counter() - start) * 1000
        tiers_used = ",".join(f"{a.tier}:{a.exit}{'*' if a.degraded else ''}" for a in answers)
        log.info("classified %d sample(s) [%s] in %.1f ms", len(answers), tiers_used, total_ms)
        return ClassifyResponse(
            request_id=request_id,
            task=self.info.task,
            plan=self.plan.spec,
            policy=self.policy_name,
            predictions=predictions,
            wall_ms=total_ms,
        )

    def parse_inputs(self, payload: dict) -> tuple[list[str], list[str] | None, str | None]:
        """Texts (and second texts of a pair task) from the request, with every limit checked."""
        try:
            request = ClassifyRequest.model_validate(payload)
        except ValidationError as err:
            reasons = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors(include_input=False)
            )
            raise InputError(422, f"invalid request: {reasons}") from err
        fields = list(self.info.text_fields) or ["text"]
        pair_task = len(fields) >= 2
        extras = dict(request.model_extra or {})
        accepted_extra = {f for f in fields[:2] if f not in ClassifyRequest.model_fields}
        unknown = sorted(set(extras) - accepted_extra)
        if unknown:
            names = ["text", "texts"] + (["text_pair", "text_pairs"] if pair_task else []) + ["force_tier"]
            names += sorted(accepted_extra)
            raise InputError(422, f"unknown field(s) {unknown}; this {self.info.task} service accepts {names}")
        first = self._one_source({"text": request.text, "texts": request.texts, fields[0]: extras.get(fields[0])})
        if first is None:
            raise InputError(422, f"give the input as 'text' (one) or 'texts' (several) or '{fields[0]}'")
        second = None
        if pair_task:
            second = self._one_source(
                {"text_pair": request.text_pair, "text_pairs": request.text_pairs, fields[1]: extras.get(fields[1])}
            )
            if second is None:
                raise InputError(
                    422, f"{self.info.task} is a pair task: also give 'text_pair'/'text_pairs' (or '{fields[1]}')"
                )
            if len(second) != len(first):
                raise InputError(422, f"{len(first)} text(s) but {len(second)} second text(s); give one per text")
        elif request.text_pair is not None or request.text_pairs is not None:
            raise InputError(422, f"{self.info.task} takes one text per sample; drop 'text_pair'/'text_pairs'")
        if len(first) > self.settings.max_texts:
            limit = self.settings.max_texts
            raise InputError(422, f"{len(first)} texts in one request; this service accepts at most {limit}")
        for group in (first, second or []):
            for i, text in enumerate(group):
                self._check_text(i, text)
        return first, second, request.force_tier

    @staticmethod
    def _one_source(sources: dict[str, object]) -> list[str] | None:
        given = {name: value for name, value in sources.items() if value is not None}
        if len(given) > 1:
            raise InputError(422, f"give only one of {sorted(given)}")
        if not given:
            return None
        name, value = next(iter(given.items()))
        values = value if isinstance(value, list) else [value]
        if not values:
            raise InputError(422, f"'{name}' is empty: give at least one text")
        if not all(isinstance(v, str) for v in values):
            raise InputError(422, f"'{name}' must be a string or a list of strings")
        return list(values)

    def _check_text(self, index: int, text: str) -> None:
        if not text.strip():
            raise InputError(422, f"text {index} is empty")
        if len(text) > self.settings.max_text_chars:
            limit = self.settings.max_text_chars
            raise InputError(422, f"text {index} has {len(text)} characters; this service accepts at most {limit}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InputError(422, f"text {index} is not valid Unicode (unpaired surrogate at {err.start})") from err

    def _tokenize(self, texts: list[str], pairs: list[str] | None) -> list[TokenSample]:
        """Token ids with special tokens, never truncated: a text that is too long is refused (422)."""
        with self._tokenizer_lock:
            encoded = self.tokenizer(
                texts, pairs, add_special_tokens=True, truncation=False, padding=False, return_attention_mask=False
            )
        ids = encoded["input_ids"]
        types = encoded.get("token_type_ids")
        too_long = [(i, len(seq)) for i, seq in enumerate(ids) if len(seq) > self.max_tokens]
        if too_long:
            listed = ", ".join(f"text {i}: {n} tokens" for i, n in too_long[:5])
            raise InputError(
                422,
                f"input too long ({listed}); this service accepts at most {self.max_tokens} tokens per sample "
                "(special tokens included) and does not truncate: shorten or split the text",
            )
        return [
            TokenSample(tuple(seq), tuple(types[i]) if types is not None else None) for i, seq in enumerate(ids)
        ]

    def _detect(self, texts: list[str], pairs: list[str] | None) -> list[str]:
        """Each text's distortion type ("clean": standard exits), by the run's detector."""
        assert self.detector is not None
        return [str(kind) for kind in self.detector.predict(texts, text_pairs=pairs)]

    # ---- edge and cloud: hidden states in -------------------------------------------------------------
    async def handoff(
        self, meta: HandoffMeta, body: bytes, request_id: str, start: float
    ) -> tuple[list[Answer], float]:
        """Continue a handed-off batch from this tier's first layer; returns answers and ms spent here."""
        batcher = self._require_batcher()
        engine = self.engine
        assert engine is not None
        try:
            handoff = await asyncio.to_thread(
                decode_handoff,
                body,
                engine.hidden_size,
                self.first_layer,
                self.settings.max_texts,
                self.max_tokens,
                tuple(self.settings.accepted_encodings),
            )
        except HandoffFormatError as err:
            raise InputError(400, f"invalid handoff body: {err}") from err
        size = int(handoff.hidden.shape[0])
        if meta.n != size:
            raise InputError(422, f"X-DIMEE-Meta declares {meta.n} samples but the body holds {size}")
        if meta.prior_exits != self.first_layer - 1:
            detail = f"X-DIMEE-Meta carries {meta.prior_exits} prior exits; this tier starts at layer "
            detail += str(self.first_layer)
            raise InputError(422, detail)
        if meta.num_labels != self.info.num_labels:
            raise InputError(
                422, f"X-DIMEE-Meta has {meta.num_labels} labels per exit; this model has {self.info.num_labels}"
            )
        try:
            prior = meta.logits()
            features = meta.feature_array()
        except ValueError as err:
            raise InputError(400, f"invalid X-DIMEE-Meta: {err}") from err
        distortions = self._check_distortions(meta.distortions, size)
        self.metrics.received_bytes.inc(amount=len(body))
        counts = handoff.attention_mask.sum(dim=1).tolist()
        states = [StateSample(handoff.hidden[i, :count], distortions[i]) for i, count in enumerate(counts)]
        deadline = start + min(self.settings.request_timeout_s, meta.budget_ms / 1000)
        outputs = await batcher.submit(states)
        seen = np.concatenate([prior, np.stack([out.exit_logits for out in outputs])], axis=1)
        batch = _Batch(outputs, seen, features, meta.force_tier, start, deadline, request_id)
        answers = await self._decide_and_route(batch)
        for answer in answers:
            self.metrics.answers.inc(answer.tier, answer.exit, str(answer.degraded).lower())
        server_ms = (time.perf_counter() - start) * 1000
        log.info("handoff of %d sample(s) from layer %d answered in %.1f ms", size, self.first_layer, server_ms)
        return answers, server_ms

    def _check_distortions(self, distortions: list[str] | None, n: int) -> list[str | None]:
        """Per-sample types of a handoff: those of the sender where this tier serves experts (each must have
        experts here), else none (standard exits; cloud holds no expert exits)."""
        if distortions is None or not self.use_experts:
            return [None] * n
        unknown = sorted(set(distortions) - self.expert_types)
        if unknown:
            known = ", ".join(sorted(self.expert_types))
            raise InputError(422, f"X-DIMEE-Meta names distortion type(s) {unknown}; this tier knows: {known}")
        return list(distortions)

    # ---- shared: decide, answer, hand off -------------------------------------------------------------
    async def _decide_and_route(self, batch: _Batch) -> list[Answer]:
        batch.local_ms = (time.perf_counter() - batch.start) * 1000
        decisions = self._decide(batch)
        answers: list[Answer | None] = [None] * len(batch.outputs)
        for i in np.flatnonzero(decisions):
            answers[i] = self._answer(batch.seen[i], int(decisions[i]), wall_ms={self.tier: batch.local_ms})
        pending = np.flatnonzero(decisions == 0)
        if pending.size:
            size = self._handoff_group_size(batch)
            groups = [pending[i : i + size] for i in range(0, pending.size, size)]
            results = await asyncio.gather(*(self._forward(batch, group) for group in groups))
            for group, forwarded in zip(groups, results):
                for i, answer in zip(group, forwarded):
                    answers[i] = answer
        return [answer for answer in answers if answer is not None]

    def _decide(self, batch: _Batch) -> np.ndarray:
        """Exit per sample (0 = hand off): forced, or the policy's (validated; built-in rule if it fails)."""
        seen, force = batch.seen, batch.force
        n, k, _ = seen.shape
        if self.is_final:
            if force is not None:
                return np.full(n, k, dtype=np.int64)
        elif force is not None:
            answer_here = TIERS.index(force) <= TIERS.index(self.tier)
            return np.full(n, k if answer_here else 0, dtype=np.int64)
        try:
            raw = self.policy.decide(seen, self.tier, batch.features)
            decisions = check_decisions(raw, n, self.first_layer, self.last_layer)
        except Exception:  # noqa: BLE001 - a policy bug must not lose the request
            log.exception("policy %s failed at %s; using the built-in rule for this batch", self.policy_name, self.tier)
            self.metrics.policy_errors.inc()
            decisions = self.fallback_policy.decide(seen, self.tier)
        if self.is_final:
            decisions = np.where(decisions == 0, k, decisions)
        return decisions

    def _answer(
        self, logits_seen: np.ndarray, exit_index: int, wall_ms: dict[str, float], reason: str | None = None
    ) -> Answer:
        """The answer at `exit_index` (1-based) from one sample's logits of exits 1..k."""
        row = logits_seen[exit_index - 1]
        common = dict(
            exit=exit_index, tier=self.tier, degraded=reason is not None, degraded_reason=reason, wall_ms=wall_ms
        )
        if self.info.num_labels == 1:
            return Answer(label=None, label_name=None, probabilities=None, score=float(row[0]), **common)
        temperature = 1.0 if self.temperatures is None else float(self.temperatures[exit_index - 1])
        label = int(np.argmax(row))
        names = self.info.label_names
        return Answer(
            label=label,
            label_name=names[label] if label < len(names) else str(label),
            probabilities=softmax(row, temperature).tolist(),
            **common,
        )

    def _handoff_group_size(self, batch: _Batch) -> int:
        """Most samples per handoff request such that X-DIMEE-Meta stays under max_meta_bytes (prior logits
        and routing features grow with the batch) and the receiver's max_texts is respected."""
        _, k, classes = batch.seen.shape
        width = 0 if batch.features is None else int(batch.features.shape[1])
        per_sample = 4 * (4 * (k * classes + width)) // 3 + 8  # base64 of float32
        if batch.distortions is not None:
            per_sample += 4 + max(len(kind) for kind in batch.distortions)  # a quoted name and a comma
        room = max(1, (self.settings.max_meta_bytes - 1024) // per_sample)
        return int(min(room, self.settings.max_texts))

    async def _forward(self, batch: _Batch, group: np.ndarray) -> list[Answer]:
        """Hand the `group` samples to the next tier; on any failure answer them here, at the deepest exit."""
        assert self.hop is not None and self.next_tier is not None and self.engine is not None
        hop, engine = self.hop, self.engine
        encoding = self.settings.handoff_encoding
        sent = time.perf_counter()
        try:
            response, rtt_ms = await self._send(batch, group, batch.deadline - sent)
        except Exception as err:  # noqa: BLE001 - whatever went wrong, the samples are answered here
            if isinstance(err, HandoffFailed):
                failure = err
            else:
                log.exception("handoff to %s failed unexpectedly", self.next_tier)
                failure = HandoffFailed("internal", f"{type(err).__name__}: {err}")
            self.metrics.handoffs.inc(hop, failure.category)
            self.metrics.degraded.inc(failure.category, amount=len(group))
            log.warning("%d sample(s) answered at %s, degraded: %s", len(group), self.tier, failure.detail)
            waited_ms = (time.perf_counter() - sent) * 1000
            reason = f"{self.next_tier} tier failed: {failure.detail}"
            wall = {self.tier: batch.local_ms, hop: waited_ms}
            return [self._answer(batch.seen[i], batch.seen.shape[1], wall, reason) for i in group]
        self.metrics.handoffs.inc(hop, "ok")
        hop_ms = max(0.0, rtt_ms - response.server_ms)
        forwarded = []
        for i, answer in zip(group, response.answers):
            sample_bytes = payload_size([batch.outputs[i].token_count], engine.hidden_size, encoding)
            forwarded.append(
                answer.model_copy(
                    update={
                        "bytes_per_hop": {hop: sample_bytes, **answer.bytes_per_hop},
                        "wall_ms": {self.tier: batch.local_ms, hop: hop_ms, **answer.wall_ms},
                    }
                )
            )
        return forwarded

    async def _send(self, batch: _Batch, group: np.ndarray, remaining_s: float) -> tuple[HandoffResponse, float]:
        """Encode and POST one group; HandoffFailed when there is no next tier or no time left."""
        assert self.hop is not None
        if not self.settings.next_url or self.client is None:
            raise HandoffFailed("no_next_tier", "no next tier configured (next_url)")
        if remaining_s < MIN_HANDOFF_BUDGET_S:
            raise HandoffFailed("deadline", "request deadline reached before the handoff")
        wait_s = remaining_s * WAIT_SHARE
        encoding = self.settings.handoff_encoding
        body = await asyncio.to_thread(self._encode, [batch.outputs[i].hidden for i in group], encoding)
        kinds = None if batch.distortions is None else [batch.distortions[i] for i in group]
        meta = HandoffMeta.build(
            batch.seen[group],
            budget_ms=min(wait_s * WAIT_SHARE * 1000, MAX_BUDGET_MS),
            force_tier=batch.force,
            features=None if batch.features is None else batch.features[group],
            distortions=None if kinds is None or all(kind == CLEAN for kind in kinds) else kinds,  # absent: clean
        )
        self.metrics.handoff_bytes.inc(self.hop, amount=len(body))
        if self.channel is not None and self.settings.channel_rate_bps is not None:
            with self._channel_lock:
                outcome = self.channel.simulate_transmission(len(body), self._channel_rng)
            if wait_s - outcome.seconds < MIN_HANDOFF_BUDGET_S:
                detail = f"simulated link needs {outcome.seconds:.3f} s, more than the time left"
                raise HandoffFailed("deadline", detail)
            await asyncio.sleep(outcome.seconds)
            wait_s -= outcome.seconds  # the air time comes out of this hop's share of the deadline
            if not outcome.delivered:
                raise HandoffFailed("channel", "simulated link lost a packet beyond its retransmission limit")
        return await post_handoff(
            self.client, self.settings.next_url, self.settings.token, batch.request_id, body, meta, wait_s, len(group)
        )

    def _encode(self, states: list[torch.Tensor], encoding: str) -> bytes:
        hidden, mask = pad_hidden(states)
        if self.channel is not None and self.channel.snr_db is not None:
            with self._channel_lock:  # noise acts on what leaves this tier, right before it is encoded
                hidden = self.channel.apply_noise(hidden, mask, self._channel_noise)
        return encode_handoff(hidden, mask, self.last_layer + 1, encoding)

    # ---- cost ----------------------------------------------------------------------------------------------
    def _prediction(self, answer: Answer, distortion: str | None = None) -> Prediction:
        """The response entry: the answer with its cost, charged for every layer the path actually ran
        (a tier runs all its layers before the policy decides, so that is the answering tier's last layer)."""
        deepest = self.plan.layer_range(answer.tier)[1]
        breakdown = self.info.cost_model.breakdown(self.plan, deepest, answer.bytes_per_hop)
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
            degraded=answer.degraded,
            degraded_reason=answer.degraded_reason,
            distortion=distortion,
            cost=cost,
        )

"""What one tier does with a request: run its layers with early exit (batched), answer or hand off.

The same class serves mobile (texts in) and edge and cloud (token ids or hidden states in, at any layer
boundary the plan lets them accept); `services.app` only wires it to HTTP. A tier drives its micro-batches
through `tiers.run_tier_segment` with the policy's `step` (the step protocol of `tiers.routes`), so it runs
only the layers the policy needs: answered samples leave the batch after the exit that answers them, handed
off samples after the boundary they leave at (mobile may send token ids straight to edge or cloud before
any layer). Every answer carries its route (stops 'tier@entry'), the depth its answering tier ran to and
the exact bytes per hop it caused; mobile turns them into the cost breakdown of the response with
`tiers.CostModel.route_breakdown`, the accounting the offline evaluation uses.
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
    CONTENT_TYPE,
    TIERS,
    TOKENS_CONTENT_TYPE,
    Channel,
    HandoffFormatError,
    RouteError,
    SegmentInput,
    SegmentResult,
    Stop,
    TierPlan,
    check_actions,
    decode_handoff,
    decode_tokens,
    encode_tokens,
    final_tier_index,
    handoff_target,
    hop_payload_size,
    read_run_info,
    token_payload_size,
)
from tiers.channel import send_hidden_states
from tiers.experts import CLEAN, DETECTOR_FILE, EXPERTS_DIR, ExpertError, experts_dir, read_expert_info

from .batching import MicroBatcher, chunked
from .engine import TierEngine, TokenSample, pad_hidden
from .handoff import HandoffFailed, InputError, make_client, post_handoff
from .metrics import ServiceMetrics
from .policy import ThresholdPolicy, forced_actions, load_policy, read_temperatures, softmax, wants_features
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


class TierService:
    """One tier's model, policy, batcher, client and metrics; `start`/`stop` bracket the app's lifespan."""

    def __init__(self, settings: TierSettings) -> None:
        self.settings = settings
        self.tier: str = settings.tier
        self.run_dir = Path(settings.run_dir)
        self.info = read_run_info(self.run_dir)
        num_layers = self.info.plan.num_layers
        self.plan: TierPlan = self._resolve_plan(settings.plan, self.info.plan)
        # layers whose weights this tier holds (edge 1..e, cloud 1..L by default) and the last one it runs
        self.first_layer, self.last_layer = self.plan.held_range(self.tier)
        self.index = TIERS.index(self.tier)
        # The tier holding exit L answers everything (cloud, or edge when e = L and cloud holds no layers).
        self.is_final = self.index >= final_tier_index(self.plan)
        self.targets: tuple[str, ...] = tuple(
            TIERS[t] for t in range(self.index + 1, final_tier_index(self.plan) + 1) if self._can_send(TIERS[t])
        )
        self.max_tokens = settings.max_tokens or self.info.max_length
        self.temperatures = read_temperatures(self.run_dir, num_layers)
        self.policy, self.policy_name = load_policy(
            self.run_dir, self.plan, settings.policy, settings.threshold, self.temperatures
        )
        self.fallback_policy = ThresholdPolicy(self.plan, settings.threshold, self.temperatures)
        fitted_costs = getattr(self.policy, "cost_model_", None)
        if fitted_costs is not None and fitted_costs != self.info.cost_model:
            log.warning(
                "the policy was fitted with another cost model than run.json's; answers are costed with run.json's, "
                "so served costs differ from the policy's own evaluation"
            )
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
        # Simulated link towards the next tiers (noise on what leaves this tier; air time, loss, retransmission).
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

    @staticmethod
    def _resolve_plan(spec: str | None, run_plan: TierPlan) -> TierPlan:
        """run.json's plan (with its accepted boundaries), or the override 'm,e' (default deployment unless it
        names run.json's own boundaries)."""
        if not spec:
            return run_plan
        parsed = TierPlan.parse(spec, run_plan.num_layers)
        return run_plan if parsed.spec == run_plan.spec else parsed

    def _can_send(self, target: str) -> bool:
        """Whether some action of this tier hands a sample to `target` (a boundary it accepts that this tier
        can hand on at)."""
        last = self.plan.held_range(self.tier)[1]
        lowest = 0 if self.tier == "mobile" else last
        target_last = self.plan.held_range(target)[1]
        return any(lowest <= b <= last and b < target_last for b in self.plan.accepts(target))

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
        if self.tokenizer is None:
            pad_id = self._encoder_pad_id()
        self.engine = await asyncio.to_thread(
            TierEngine.load, self.run_dir, self.plan, self.tier, pad_id, self.use_experts
        )
        positions = self.engine.max_positions
        if positions is not None and self.max_tokens > positions:
            raise ValueError(
                f"max_tokens {self.max_tokens} exceeds the encoder's {positions} positions; lower DIMEE_MAX_TOKENS"
            )
        self.policy_features = wants_features(self.policy, self.engine.hidden_size)
        self.batcher = MicroBatcher(
            chunked(self._run_items, self.settings.max_batch_size),
            window_s=self.settings.batch_window_ms / 1000,
            max_batch=self.settings.max_batch_size,
            on_batch=lambda size: self.metrics.batch_size.observe(size),
        )
        await self.batcher.start()
        if any(self.settings.url_for(target) for target in self.targets):
            self.client = make_client(self.settings.request_timeout_s, self.settings.connect_timeout_s)
        links = ", ".join(f"{t}: {self.settings.url_for(t) or 'not configured'}" for t in self.targets)
        accepts = "texts" if self.tier == "mobile" else f"boundaries {list(self.plan.accepts(self.tier))}"
        log.info(
            "%s tier ready: holds layers %d..%d of %d (plan %s), accepts %s, policy: %s, experts: %s, sends to: %s",
            self.tier, self.first_layer, self.last_layer, self.plan.num_layers, self.plan.spec, accepts,
            self.policy_name, ", ".join(sorted(self.expert_types - {CLEAN})) if self.use_experts else "off",
            links or "none (final tier)",
        )  # fmt: skip

    def _encoder_pad_id(self) -> int:
        """The pad id of the run's encoder config (edge and cloud embed token ids without a tokenizer)."""
        try:
            config = json.loads((self.run_dir / "encoder" / "config.json").read_text())
            return int(config.get("pad_token_id") or 0)
        except (OSError, ValueError, TypeError):
            return 0

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
        """Model loaded and, for every tier this one sends samples to and has a URL for, its /healthz answering."""
        checks = {"model": "loaded" if self.loaded else "not loaded", "policy": self.policy_name}
        ready = self.loaded
        if not self.targets:
            checks["next_tier"] = "none (final tier)"
        for target in self.targets:
            url = self.settings.url_for(target)
            key = f"{target}_tier"
            if not url or self.client is None:
                checks[key] = f"not configured: samples the policy sends to {target} are answered here, degraded"
                continue
            try:
                response = await self.client.get(f"{url}/healthz", timeout=self.settings.readiness_timeout_s)
                ok = response.status_code == 200
                checks[key] = "reachable" if ok else f"answered {response.status_code}"
            except httpx.HTTPError as err:
                ok = False
                checks[key] = f"unreachable ({type(err).__name__})"
            ready = ready and ok
        return ready, checks

    def _require_batcher(self) -> MicroBatcher:
        if self.batcher is None or self.engine is None:
            raise InputError(503, f"the {self.tier} tier is not ready (model not loaded)")
        return self.batcher

    # ---- the tier's stay: layers one at a time, the policy asked at each depth ---------------------------
    def _run_items(self, items: list[_Item]) -> list[SegmentResult]:
        """One micro-batch through `tiers.run_tier_segment` (worker thread): forced samples follow their forced
        route, the others the policy's step (the built-in rule where the policy fails)."""
        assert self.engine is not None
        forces = [item.force for item in items]

        def decide(local: np.ndarray, seen: np.ndarray, feats: np.ndarray | None, depth: int) -> np.ndarray:
            actions = np.zeros(local.size, dtype=np.int64)
            kinds = np.array([forces[i] or "" for i in local])
            for force in sorted(set(kinds.tolist()) - {""}):
                rows = np.flatnonzero(kinds == force)
                actions[rows] = forced_actions(self.plan, force, self.tier, depth, rows.size)
            rows = np.flatnonzero(kinds == "")
            if rows.size:
                actions[rows] = self._policy_step(seen[rows], depth, None if feats is None else feats[rows])
            return actions

        return self.engine.run_segment([item.sample for item in items], decide)

    def _policy_step(self, seen: np.ndarray, depth: int, features: np.ndarray | None) -> np.ndarray:
        """The policy's actions at this depth (validated); the built-in rule if the policy fails."""
        try:
            raw = self.policy.step(seen, self.tier, depth, features if self.policy_features else None)
            actions = check_actions(np.asarray(raw), self.plan, self.tier, depth)
            if actions.shape != (seen.shape[0],):
                raise RouteError(f"policy returned {actions.shape[0]} actions for {seen.shape[0]} samples")
            return actions
        except Exception:  # noqa: BLE001 - a policy bug must not lose the request
            log.exception(
                "policy %s failed at %s after layer %d; using the built-in rule", self.policy_name, self.tier, depth
            )
            self.metrics.policy_errors.inc()
            return self.fallback_policy.step(seen, self.tier, depth)

    # ---- mobile: texts in --------------------------------------------------------------------------------
    async def classify(self, payload: dict, request_id: str) -> ClassifyResponse:
        start = time.perf_counter()
        deadline = start + self.settings.request_timeout_s
        batcher = self._require_batcher()
        texts, pairs, force = self.parse_inputs(payload)
        tokens = await asyncio.to_thread(self._tokenize, texts, pairs)
        distortions = None
        if self.detector is not None:
            distortions = await asyncio.to_thread(self._detect, texts, pairs)
        items = [
            _Item(
                SegmentInput(
                    0, token.input_ids, token.token_type_ids, distortion=None if distortions is None else distortions[i]
                ),
                force,
            )
            for i, token in enumerate(tokens)
        ]
        results = await batcher.submit(items)
        batch = _Batch(items, results, force, start, deadline, request_id, distortions=distortions)
        answers = await self._route(batch)
        predictions = [
            self._prediction(answer, len(tokens[i].input_ids), None if distortions is None else distortions[i])
            for i, answer in enumerate(answers)
        ]
        for answer in answers:
            self.metrics.answers.inc(answer.tier, answer.exit, str(answer.degraded).lower())
        total_ms = (time.perf_counter() - start) * 1000
        routes = ",".join(f"{'>'.join(a.route)}:{a.exit}{'*' if a.degraded else ''}" for a in answers)
        log.info("classified %d sample(s) [%s] in %.1f ms", len(answers), routes, total_ms)
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

    # ---- edge and cloud: token ids or hidden states in ------------------------------------------------
    async def handoff(
        self, meta: HandoffMeta, body: bytes, content_type: str, request_id: str, start: float
    ) -> tuple[list[Answer], float]:
        """Continue a handed-off batch from its boundary (token ids: 0; hidden states after layer j: j);
        returns the answers (routes from this tier on) and the ms spent here."""
        batcher = self._require_batcher()
        engine = self.engine
        assert engine is not None
        accepted = self.plan.accepts(self.tier)
        if content_type == TOKENS_CONTENT_TYPE:
            if 0 not in accepted or not engine.accepts_tokens:
                raise InputError(
                    422, f"the {self.tier} tier does not accept token ids (boundary 0); it accepts boundaries {list(accepted)}"
                )
            try:
                tokens = await asyncio.to_thread(
                    decode_tokens, body, engine.vocab_size, self.settings.max_texts, self.max_tokens
                )
            except HandoffFormatError as err:
                raise InputError(400, f"invalid token-id body: {err}") from err
            types = engine.type_vocab_size
            if types and any(t >= types for seq in tokens.token_type_ids for t in seq):
                raise InputError(400, f"invalid token-id body: token type ids must lie in 0..{types - 1}")
            boundary, size = 0, len(tokens.input_ids)
        else:
            try:
                handoff = await asyncio.to_thread(
                    decode_handoff,
                    body,
                    engine.hidden_size,
                    None,
                    self.settings.max_texts,
                    self.max_tokens,
                    tuple(self.settings.accepted_encodings),
                )
            except HandoffFormatError as err:
                raise InputError(400, f"invalid handoff body: {err}") from err
            boundary, size = handoff.next_layer - 1, int(handoff.hidden.shape[0])
        if boundary not in accepted or boundary >= self.last_layer:
            raise InputError(
                422,
                f"the {self.tier} tier does not accept samples at boundary {boundary} (body continues at layer "
                f"{boundary + 1}); it accepts boundaries {list(accepted)} (0 = token ids, j = hidden states after layer j)",
            )
        if meta.n != size:
            raise InputError(422, f"X-DIMEE-Meta declares {meta.n} samples but the body holds {size}")
        if meta.prior_exits != boundary:
            raise InputError(
                422, f"X-DIMEE-Meta carries {meta.prior_exits} prior exits; a body at boundary {boundary} needs {boundary}"
            )
        if meta.num_labels != self.info.num_labels:
            raise InputError(
                422, f"X-DIMEE-Meta has {meta.num_labels} labels per exit; this model has {self.info.num_labels}"
            )
        try:
            prior = meta.logits()
            features = meta.feature_array()
        except ValueError as err:
            raise InputError(400, f"invalid X-DIMEE-Meta: {err}") from err
        if features is not None and features.shape[1] != engine.hidden_size:
            raise InputError(
                422, f"X-DIMEE-Meta features have width {features.shape[1]}; this model's is {engine.hidden_size}"
            )
        distortions = self._check_distortions(meta.distortions, size)
        self.metrics.received_bytes.inc(amount=len(body))
        samples = []
        for i in range(size):
            feature = None if features is None else features[i].astype(np.float32)
            if boundary == 0:
                sample = SegmentInput(
                    0, tokens.input_ids[i], tokens.token_type_ids[i], feature=feature, distortion=distortions[i]
                )
            else:
                count = int(handoff.attention_mask[i].sum())
                sample = SegmentInput(
                    boundary,
                    hidden=handoff.hidden[i, :count],
                    prior_logits=prior[i],
                    feature=feature,
                    distortion=distortions[i],
                )
            samples.append(sample)
        items = [_Item(sample, meta.force_tier) for sample in samples]
        deadline = start + min(self.settings.request_timeout_s, meta.budget_ms / 1000)
        results = await batcher.submit(items)
        relayed = None if meta.distortions is None else list(meta.distortions)
        batch = _Batch(items, results, meta.force_tier, start, deadline, request_id, distortions=relayed)
        answers = await self._route(batch)
        for answer in answers:
            self.metrics.answers.inc(answer.tier, answer.exit, str(answer.degraded).lower())
        server_ms = (time.perf_counter() - start) * 1000
        log.info("handoff of %d sample(s) at boundary %d answered in %.1f ms", size, boundary, server_ms)
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

    # ---- shared: answer, hand off -----------------------------------------------------------------------
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
        row = logits_seen[exit_index - 1]
        common = dict(
            exit=exit_index,
            tier=self.tier,
            degraded=reason is not None,
            degraded_reason=reason,
            route=[f"{self.tier}@{entry}"],
            depth=int(depth),
            wall_ms=wall_ms,
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

    def _handoff_group_size(self, batch: _Batch, members: list[int], boundary: int) -> int:
        """Most samples per handoff request such that X-DIMEE-Meta stays under max_meta_bytes (prior logits
        and routing features grow with the batch) and the receiver's max_texts is respected."""
        classes = int(self.info.num_labels)
        width = 0
        if self.policy_features and members and batch.results[members[0]].feature is not None:
            width = int(np.asarray(batch.results[members[0]].feature).shape[0])
        per_sample = 4 * (4 * (boundary * classes + width)) // 3 + 8  # base64 of float32
        if batch.distortions is not None:
            per_sample += 4 + max(len(kind) for kind in batch.distortions)  # a quoted name and a comma
        room = max(1, (self.settings.max_meta_bytes - 1024) // per_sample)
        return int(min(room, self.settings.max_texts))

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
                failure = HandoffFailed("internal", f"{type(err).__name__}: {err}")
            self.metrics.handoffs.inc(hop, failure.category)
            self.metrics.degraded.inc(failure.category, amount=len(group))
            log.warning("%d sample(s) answered at %s, degraded: %s", len(group), self.tier, failure.detail)
            reason = f"{target} tier failed: {failure.detail}"
            return await self._answer_here(batch, group, hop, sent, reason)
        bad = self._check_relayed(response.answers, target, boundary)
        if bad is not None:
            self.metrics.handoffs.inc(hop, "bad_response")
            self.metrics.degraded.inc("bad_response", amount=len(group))
            log.warning("%d sample(s) answered at %s, degraded: %s", len(group), self.tier, bad)
            return await self._answer_here(batch, group, hop, sent, f"{target} tier failed: {bad}")
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
                raise InputError(503, f"the {self.tier} tier could not answer after a failed handoff: {err}") from err
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
            raise HandoffFailed("no_next_tier", f"no next tier configured for {target} ({setting})")
        if remaining_s < MIN_HANDOFF_BUDGET_S:
            raise HandoffFailed("deadline", "request deadline reached before the handoff")
        wait_s = remaining_s * WAIT_SHARE
        hop = f"{self.tier}_{target}"
        results = [batch.results[i] for i in group]
        if boundary == 0:
            body = encode_tokens(
                [r.input_ids for r in results],
                None if any(r.token_type_ids is None for r in results) else [r.token_type_ids for r in results],
                self.engine.vocab_size,
            )
            content_type = TOKENS_CONTENT_TYPE
        else:
            states = [r.hidden for r in results]
            body = await asyncio.to_thread(self._encode, states, self.settings.handoff_encoding, boundary)
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
        self.metrics.handoff_bytes.inc(hop, amount=len(body))
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
            self.client,
            url,
            self.settings.token,
            batch.request_id,
            body,
            meta,
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

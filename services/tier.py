"""One tier's service: its model, policy, batcher, client and metrics, and what it does with a request.

The same class serves mobile (texts in) and edge and cloud (token ids or hidden states in, at any layer
boundary the plan lets them accept); `services.app` only wires it to HTTP. A tier drives its micro-batches
through `tiers.run_tier_segment` with the policy's `step` (the step protocol of `tiers.routes`), so it runs
only the layers the policy needs: answered samples leave the batch after the exit that answers them, handed
off samples after the boundary they leave at (mobile may send token ids straight to edge or cloud before
any layer). Forced samples (force_tier) follow their forced route instead of the policy.

This module holds the service's set-up, lifecycle, its two entry points (`classify`, `handoff`) and the
segment run with its decisions; `services.inputs` checks what enters a tier, `services.relay` answers,
hands off and costs what leaves it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch

from clustering.detector import DetectorError, DistortionDetector
from tiers import (
    TIERS,
    Channel,
    SegmentInput,
    SegmentResult,
    TierPlan,
    final_tier_index,
    read_run_info,
)
from tiers.experts import CLEAN, DETECTOR_FILE, EXPERTS_DIR, ExpertError, experts_dir, read_expert_info

from .batching import MicroBatcher, chunked
from .engine import TierEngine
from .handoff import HandoffClient, InputError, make_client
from .inputs import TierInputs
from .metrics import ServiceMetrics
from .policy import ThresholdPolicy, forced_actions, load_policy, policy_actions, read_temperatures, wants_features
from .relay import TierRelay, _Batch, _Item, parse_stop
from .schemas import Answer, ClassifyResponse
from .settings import TierSettings

__all__ = ["TierService", "parse_stop"]  # parse_stop lives in services.relay; imported from here too

log = logging.getLogger("services.tier")
#: At most this many texts (and 4096 characters) are tokenised on the event loop instead of a worker thread.
INLINE_TOKENIZE_TEXTS = 8


class TierService(TierInputs, TierRelay):
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
        self.active = 0  # requests inside classify / handoff right now (event loop only): enter / leave
        self.last_done = 0.0  # perf_counter when the last of them left
        self.idle_before_s = 0.0  # how long the tier had been idle when the latest request entered
        self.client: HandoffClient | None = None
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
        """Model loaded and, for every tier this one sends samples to and has a URL for, its /healthz answering.

        Each `<tier>_tier` check is "reachable" or a stable code of `schemas.DEGRADED_REASONS` (never an
        exception's name): next_tier_not_configured (samples for it are answered here, degraded; not a reason to
        be unready), next_tier_timeout, next_tier_unreachable, next_tier_error (it answered another status)."""
        checks = {"model": "loaded" if self.loaded else "not loaded", "policy": self.policy_name}
        ready = self.loaded
        if not self.targets:
            checks["next_tier"] = "none (final tier)"
        for target in self.targets:
            url = self.settings.url_for(target)
            key = f"{target}_tier"
            if not url or self.client is None:
                checks[key] = "next_tier_not_configured"
                continue
            checks[key] = await self.client.probe(f"{url}/healthz", self.settings.readiness_timeout_s)
            ok = checks[key] == "reachable"
            ready = ready and ok
        return ready, checks

    def enter(self) -> None:
        """A request enters classify / handoff (`services.app` brackets each with enter / leave)."""
        now = time.perf_counter()
        self.idle_before_s = now - self.last_done if self.active == 0 else 0.0
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        self.last_done = time.perf_counter()

    def _alone(self, items: list) -> bool:
        """Whether this request may run its forward pass on the event loop: small, the tier's only request, and
        the tier was idle before it came (at least inline_idle_ms since the last request left: under load the
        next request arrives right away, and goes through the batcher, which batches)."""
        return (
            self.active <= 1
            and len(items) <= self.settings.inline_forward_max
            and self.idle_before_s * 1000 >= self.settings.inline_idle_ms
        )

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
                # A sample whose activations overflowed is refused after the segment (_check_finite); until it
                # leaves, the built-in rule routes it, so that the policy never sees NaN or infinity.
                actions[rows] = self._policy_step(seen[rows], depth, None if feats is None else feats[rows])
            return actions

        return self.engine.run_segment([item.sample for item in items], decide)

    @staticmethod
    def _non_finite(results: list[SegmentResult]) -> list[int]:
        """Samples whose logits (of every exit seen) or outgoing hidden states hold NaN or infinity."""
        bad = []
        for i, result in enumerate(results):
            finite = bool(np.isfinite(result.logits).all())
            if finite and result.hidden is not None:
                finite = bool(torch.isfinite(result.hidden).all())
            if not finite:
                bad.append(i)
        return bad

    def _policy_step(self, seen: np.ndarray, depth: int, features: np.ndarray | None) -> np.ndarray:
        """The policy's actions at this depth (validated; `services.policy.policy_actions`, as the device client
        decides); the built-in rule for non-finite logits and wherever the policy fails."""

        def failed(_err: Exception) -> None:
            log.exception(
                "policy %s failed at %s after layer %d; using the built-in rule", self.policy_name, self.tier, depth
            )
            self.metrics.policy_errors.inc()

        features = features if self.policy_features else None
        return policy_actions(
            self.policy, self.fallback_policy, self.plan, self.tier, seen, depth, features, on_error=failed
        )

    # ---- mobile: texts in --------------------------------------------------------------------------------
    async def classify(self, payload: dict, request_id: str) -> ClassifyResponse:
        start = time.perf_counter()
        deadline = start + self.settings.request_timeout_s
        batcher = self._require_batcher()
        texts, pairs, force = self.parse_inputs(payload)
        # a few short texts are tokenised on the event loop: a worker thread's hand-off costs more than that
        small = len(texts) <= INLINE_TOKENIZE_TEXTS and sum(map(len, texts)) + sum(map(len, pairs or [])) <= 4096
        tokens = self._tokenize(texts, pairs) if small else await asyncio.to_thread(self._tokenize, texts, pairs)
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
        results = await batcher.submit(items, inline=self._alone(items))
        overflowed = self._non_finite(results)
        if overflowed:  # token ids cannot cause this: the run's weights are broken
            log.error("the forward pass produced NaN or infinity for text(s) %s; check the run's weights", overflowed)
            raise InputError(
                500, f"the model produced non-finite values for text(s) {overflowed[:5]}; see the service log"
            )
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

    # ---- edge and cloud: token ids or hidden states in ------------------------------------------------
    async def handoff(
        self, body: bytes, content_type: str, request_id: str, start: float
    ) -> tuple[list[Answer], float]:
        """Continue a handed-off batch (a whole message: metadata section, then token ids, boundary 0, or hidden
        states after layer j) from its boundary; returns the answers (routes from this tier on) and the ms spent
        here."""
        batcher = self._require_batcher()
        meta, boundary, samples = await self._handoff_samples(body, content_type)
        size = len(samples)
        items = [_Item(sample, meta.force_tier) for sample in samples]
        deadline = start + min(self.settings.request_timeout_s, meta.budget_ms / 1000)
        results = await batcher.submit(items, inline=self._alone(items))
        overflowed = self._non_finite(results)
        if overflowed:
            raise InputError(
                422,
                f"the forward pass of sample(s) {overflowed[:5]} overflowed (NaN or infinity in this tier's "
                "activations or logits): their hidden states are outside what this model can continue from",
            )
        relayed = None if meta.distortions is None else list(meta.distortions)
        batch = _Batch(items, results, meta.force_tier, start, deadline, request_id, distortions=relayed)
        answers = await self._route(batch)
        for answer in answers:
            self.metrics.answers.inc(answer.tier, answer.exit, str(answer.degraded).lower())
        server_ms = (time.perf_counter() - start) * 1000
        log.info("handoff of %d sample(s) at boundary %d answered in %.1f ms", size, boundary, server_ms)
        return answers, server_ms

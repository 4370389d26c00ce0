"""What enters a tier, checked before any layer runs: texts from a client (mobile) and handoff bodies from
the tier before (edge and cloud).

`TierInputs` is a mixin of `services.tier.TierService`: it reads the service's settings, run info, plan,
tokenizer, detector, engine and metrics, and raises `InputError` (status and message for the client) on any
input the tier refuses. Mobile's texts are checked against every limit and tokenised without truncation;
a handoff body (its metadata section, then token ids, boundary 0, or hidden states after layer j) must match
the boundaries this tier accepts and its model, and becomes one `tiers.SegmentInput` per sample.

Values received from another tier must be finite (else 400) and within a documented range (else 422): hidden
states and routing features within +-MAX_HIDDEN_ABS, prior logits within +-MAX_LOGIT_ABS. Finite but huge
values would overflow the forward pass (squares in attention and LayerNorm pass float32's 3.4e38 from about
1e19) and come out as NaN probabilities.
"""

from __future__ import annotations

import asyncio

import numpy as np
from pydantic import ValidationError

from tiers import (
    TOKENS_CONTENT_TYPE,
    HandoffFormatError,
    HandoffMeta,
    SegmentInput,
    decode_hidden_message,
    decode_token_message,
)

from .engine import TokenSample
from .handoff import InputError
from .schemas import ClassifyRequest

#: Largest |value| a tier accepts in hidden states (and routing features) from another tier. The states a
#: LayerNorm'd encoder hands on stay small (a LayerNorm output is bounded by max|gamma| * sqrt(hidden) +
#: max|beta|): measured over every layer on a few hundred texts, at most 3.6 for the tests' tiny random-init
#: BERT and 10.5 for all-MiniLM-L6-v2 (runs/bench-sst2, runs/mrpc); a simulated link at -20 dB SNR adds noise of
#: ten times their RMS. 1e4 leaves three orders of magnitude above that, and fifteen below where the forward
#: pass overflows (about 1e19).
MAX_HIDDEN_ABS = 1e4
#: Largest |logit| a tier accepts among the prior exits' logits of a handoff's metadata (exit heads on LayerNorm'd
#: states give logits of a few units to a few tens).
MAX_LOGIT_ABS = 1e4


class TierInputs:
    """Request parsing and tokenisation (mobile), handoff decoding and checks (edge and cloud)."""

    # ---- mobile: texts in --------------------------------------------------------------------------------
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
    async def _handoff_samples(self, body: bytes, content_type: str) -> tuple[HandoffMeta, int, list[SegmentInput]]:
        """The metadata of a handoff, its boundary (token ids: 0; hidden states after layer j: j) and its
        samples, the whole message checked against this tier's accepted boundaries and model."""
        engine = self.engine
        assert engine is not None
        accepted = self.plan.accepts(self.tier)
        limits = dict(max_batch=self.settings.max_texts, max_seq_len=self.max_tokens)
        if content_type == TOKENS_CONTENT_TYPE:
            if 0 not in accepted or not engine.accepts_tokens:
                raise InputError(
                    422, f"the {self.tier} tier does not accept token ids (boundary 0); it accepts boundaries {list(accepted)}"
                )
            try:
                meta, tokens = await _decode_async(
                    body, decode_token_message, body, engine.vocab_size, max_meta_bytes=self.settings.max_meta_bytes, **limits
                )
            except HandoffFormatError as err:
                raise InputError(400, f"invalid token-id body: {err}") from err
            types = engine.type_vocab_size
            if types and any(t >= types for seq in tokens.token_type_ids for t in seq):
                raise InputError(400, f"invalid token-id body: token type ids must lie in 0..{types - 1}")
            boundary, size = 0, len(tokens.input_ids)
        else:
            try:
                meta, handoff = await _decode_async(
                    body,
                    decode_hidden_message,
                    body,
                    engine.hidden_size,
                    allowed_encodings=tuple(self.settings.accepted_encodings),
                    max_meta_bytes=self.settings.max_meta_bytes,
                    **limits,
                )
            except HandoffFormatError as err:
                raise InputError(400, f"invalid handoff body: {err}") from err
            boundary, size = handoff.next_layer - 1, int(handoff.hidden.shape[0])
            _check_range("hidden states", handoff.hidden.abs().amax(dim=(1, 2)).numpy(), MAX_HIDDEN_ABS)
        if boundary not in accepted or boundary >= self.last_layer:
            raise InputError(
                422,
                f"the {self.tier} tier does not accept samples at boundary {boundary} (body continues at layer "
                f"{boundary + 1}); it accepts boundaries {list(accepted)} (0 = token ids, j = hidden states after layer j)",
            )
        if meta.n != size:
            raise InputError(422, f"the metadata declares {meta.n} samples but the payload holds {size}")
        if meta.prior_exits != boundary:
            raise InputError(
                422, f"the metadata carries {meta.prior_exits} prior exits; a body at boundary {boundary} needs {boundary}"
            )
        if meta.num_labels != self.info.num_labels:
            raise InputError(
                422, f"the metadata has {meta.num_labels} labels per exit; this model has {self.info.num_labels}"
            )
        prior = meta.logits()
        features = meta.feature_array()
        if features is not None and features.shape[1] != engine.hidden_size:
            raise InputError(
                422, f"the metadata's features have width {features.shape[1]}; this model's is {engine.hidden_size}"
            )
        if prior.size:
            _check_range("prior logits", np.abs(prior).max(axis=(1, 2)), MAX_LOGIT_ABS)
        if features is not None:
            _check_range("the metadata's features", np.abs(features).max(axis=1), MAX_HIDDEN_ABS)
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
        return meta, boundary, samples

    def _check_distortions(self, distortions: list[str] | None, n: int) -> list[str | None]:
        """Per-sample types of a handoff: those of the sender where this tier serves experts (each must have
        experts here), else none (standard exits; cloud holds no expert exits)."""
        if distortions is None or not self.use_experts:
            return [None] * n
        unknown = sorted(set(distortions) - self.expert_types)
        if unknown:
            known = ", ".join(sorted(self.expert_types))
            raise InputError(422, f"the metadata names distortion type(s) {unknown}; this tier knows: {known}")
        return list(distortions)


#: Bodies up to this size are decoded on the event loop: a worker thread's hand-off costs more than decoding them
#: (a handoff of one SST-2 sentence in fp32 is ~40 KB, decoded in tens of microseconds).
INLINE_DECODE_BYTES = 256 * 1024


async def _decode_async(body: bytes, decode, *args, **kwargs):
    """`decode(*args, **kwargs)` inline for a small body, in a worker thread for a large one."""
    if len(body) <= INLINE_DECODE_BYTES:
        return decode(*args, **kwargs)
    return await asyncio.to_thread(decode, *args, **kwargs)


def _check_range(what: str, peaks: np.ndarray, limit: float) -> None:
    """422 naming the samples whose largest |value| (`peaks`, one per sample) exceeds `limit`."""
    over = np.flatnonzero(peaks > limit)
    if over.size:
        listed = ", ".join(f"sample {i}: {float(peaks[i]):.3g}" for i in over[:5])
        raise InputError(
            422,
            f"{what} out of range ({listed}); this tier accepts values within +-{limit:g} (a LayerNorm'd "
            "encoder's states stay within a few tens): the sender's model or encoding is broken",
        )

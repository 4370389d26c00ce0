"""Tier services in process (FastAPI TestClient): input validation, handoff security, deadlines, batching,
policy loading, metrics. No subprocesses; a tiny random-init run folder."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
import re
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from services import HandoffMeta, MicroBatcher, PolicyLoadError, ThresholdPolicy, TierSettings, create_app
from services.batching import chunked
from services.engine import TierEngine, TokenSample
from services.policy import load_policy, read_temperatures, softmax
from tests.factories import JsonHandler, metric_value, tiny_run_folder
from tiers import CONTENT_TYPE, EarlyExitModel, TierPlan, encode_handoff, encode_meta, meta_size

TOKEN = "test-token-0123456789abcdef"
HIDDEN = 32  # tiny_bert_config's hidden size


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run_folder(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def mobile(run_dir):
    """Mobile with no next tier: whatever the policy hands off is answered at mobile, degraded."""
    settings = TierSettings(
        run_dir=run_dir, tier="mobile", max_json_bytes=4096, max_text_chars=1000, batch_window_ms=1
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def edge(run_dir):
    settings = TierSettings(
        run_dir=run_dir,
        tier="edge",
        handoff_token=TOKEN,
        max_body_bytes=64 * 1024,
        accepted_encodings="fp32,fp16",
        batch_window_ms=1,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _handoff_parts(counts=(5, 3), hidden=HIDDEN, next_layer=3, encoding="fp32", prior_exits=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    width = max(counts)
    states = torch.randn((len(counts), width, hidden), generator=gen)
    mask = (torch.arange(width)[None, :] < torch.tensor(counts)[:, None]).long()
    body = encode_handoff(states * mask[..., None], mask, next_layer, encoding)
    prior = np.zeros((len(counts), prior_exits, 2), dtype=np.float32)
    meta = HandoffMeta.build(prior, budget_ms=5000, force_tier=None)
    return body, meta


def _message(payload: bytes, meta: HandoffMeta | None) -> bytes:
    """The handoff body: the codec's metadata section, then the payload (a bare payload when meta is None)."""
    return payload if meta is None else encode_meta(meta) + payload


def _handoff_headers(token: str | None = TOKEN, content_type: str = CONTENT_TYPE):
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["X-DIMEE-Token"] = token
    return headers


def _patched(raw: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


# ---- mobile: bad input is a 4xx with a reason ------------------------------------------------------------
BAD_CLASSIFY = {
    "not json": (b"this is not json", "application/json", 400),
    "non utf-8": (b'{"text": "caf\xe9 \xff"}', "application/json", 400),
    "json array": (b'["a good film"]', "application/json", 422),
    "empty text": (b'{"text": ""}', "application/json", 422),
    "blank text": (b'{"text": "   "}', "application/json", 422),
    "too long": (json.dumps({"text": "good " * 80}).encode(), "application/json", 422),
    "too many chars": (json.dumps({"text": "good " * 300}).encode(), "application/json", 422),
    "number text": (b'{"text": 5}', "application/json", 422),
    "list in texts of numbers": (b'{"texts": [1, 2]}', "application/json", 422),
    "unknown field": (b'{"txt": "good"}', "application/json", 422),
    "two sources": (b'{"text": "good", "texts": ["bad"]}', "application/json", 422),
    "empty texts": (b'{"texts": []}', "application/json", 422),
    "pair on single task": (b'{"text": "good", "text_pair": "bad"}', "application/json", 422),
    "lone surrogate": (b'{"text": "good \\ud800"}', "application/json", 400),  # orjson refuses it while parsing
    "bad force tier": (b'{"text": "good", "force_tier": "moon"}', "application/json", 422),
    "deep nesting": (b"[" * 3000, "application/json", 400),
    "form content type": (b"text=good", "application/x-www-form-urlencoded", 415),
    "oversized": (b'{"text": "' + b"a" * 5000 + b'"}', "application/json", 413),
}


@pytest.mark.parametrize("case", list(BAD_CLASSIFY), ids=list(BAD_CLASSIFY))
def test_bad_classify_requests_get_4xx_with_reason(mobile, case):
    body, content_type, status = BAD_CLASSIFY[case]
    response = mobile.post("/v1/classify", content=body, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert mobile.get("/healthz").status_code == 200


def test_too_long_text_names_the_token_limit(mobile):
    response = mobile.post("/v1/classify", json={"texts": ["good", "bad " * 70]})
    assert response.status_code == 422
    assert "text 1" in response.json()["detail"] and "64 tokens" in response.json()["detail"]


def test_mobile_without_next_tier_answers_locally_degraded(mobile):
    response = mobile.post("/v1/classify", json={"texts": ["a good film", "the plot was dull"]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["tier"] for p in predictions] == ["mobile", "mobile"]
    assert all(p["degraded"] and p["degraded_reason"] == "next_tier_not_configured" for p in predictions)
    forced = mobile.post("/v1/classify", json={"text": "a good film", "force_tier": "mobile"}).json()["predictions"][0]
    assert forced["exit"] == 2 and not forced["degraded"]
    assert abs(sum(forced["probabilities"]) - 1) < 1e-9
    assert forced["label_name"] in ("negative", "positive")


def test_request_id_travels_and_is_generated(mobile):
    given = mobile.post("/v1/classify", json={"text": "good"}, headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123" and given.json()["request_id"] == "abc-123"
    made = mobile.post("/v1/classify", json={"text": "good"}, headers={"X-Request-ID": "bad id\twith spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    error = mobile.post("/v1/classify", json={"text": ""}, headers={"X-Request-ID": "err-1"})
    assert error.json()["request_id"] == "err-1"


def test_metrics_are_prometheus_text(mobile):
    mobile.post("/v1/classify", json={"text": "good film"})
    response = mobile.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    sample = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+Inf-]+$')
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert metric_value(text, "dimee_requests_total", endpoint="/v1/classify", status="200", service="mobile") >= 1
    assert metric_value(text, "dimee_request_duration_seconds_bucket", endpoint="/v1/classify", le="+Inf") >= 1
    assert metric_value(text, "dimee_degraded_total", reason="next_tier_not_configured", service="mobile") >= 1
    assert metric_value(text, "dimee_answers_total", tier="mobile", exit="2", degraded="true", service="mobile") >= 1
    assert metric_value(text, "process_resident_memory_bytes") > 0  # the process metrics


def test_readyz_and_openapi(mobile, edge):
    ready = mobile.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"] == "loaded"
    spec = mobile.get("/openapi.json").json()
    assert "application/json" in spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    edge_spec = edge.get("/openapi.json").json()
    assert CONTENT_TYPE in edge_spec["paths"]["/v1/handoff"]["post"]["requestBody"]["content"]
    assert "/v1/classify" not in edge_spec["paths"]


# ---- edge: the handoff endpoint --------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["fp32", "fp16"])
def test_valid_handoff_is_answered(edge, encoding):
    body, meta = _handoff_parts(encoding=encoding)
    forced = dataclasses.replace(meta, force_tier="edge")
    response = edge.post("/v1/handoff", content=_message(body, forced), headers=_handoff_headers())
    assert response.status_code == 200, response.text
    answers = response.json()["answers"]
    assert [(a["tier"], a["exit"], a["degraded"]) for a in answers] == [("edge", 4, False)] * 2
    # not forced: the policy hands off, there is no cloud configured, so edge answers degraded at its last exit
    unforced = edge.post("/v1/handoff", content=_message(body, meta), headers=_handoff_headers()).json()["answers"]
    assert all(a["degraded"] and a["exit"] == 4 for a in unforced)


def test_handoff_groups_keep_the_metadata_section_small(mobile):
    from services.tier import _Batch
    from tiers import SegmentResult

    service = mobile.app.state.service

    def batch(width):
        feature = None if width is None else np.zeros(width, np.float32)
        results = [SegmentResult(-1, 2, np.zeros((2, 2), np.float32), None, feature, 5) for _ in range(200)]
        return _Batch([], results, None, 0.0, 1.0, "r")

    members = list(range(200))
    assert service._handoff_group_size(batch(None), members, 2) == service.settings.max_texts  # limited by max_texts
    service.policy_features = True  # a policy fitted on wide routing features: ~16 KB of float32 per sample
    try:
        size = service._handoff_group_size(batch(4096), members, 2)
    finally:
        service.policy_features = False
    assert size >= 1 and meta_size(size, 2, 2, 4096) <= service.settings.max_meta_bytes < meta_size(size + 1, 2, 2, 4096)


def _bad_handoffs():
    payload, meta = _handoff_parts()
    body = _message(payload, meta)
    headers = _handoff_headers()
    cases = {
        "missing token": (body, _handoff_headers(token=None), 401),
        "wrong token": (body, _handoff_headers(token=TOKEN + "x"), 403),
        "wrong content type": (body, _handoff_headers(content_type="application/octet-stream"), 415),
        "missing metadata (bare payload)": (payload, headers, 400),
        "metadata garbage": (b"DMMD" + b"\x07" * 60 + payload, headers, 400),
        "metadata version": (_patched(body, 4, "<B", 9), headers, 400),
        "metadata budget not finite": (_patched(body, 8, "<d", float("inf")), headers, 400),
        "metadata logits not finite": (_patched(body, 36, "<f", float("nan")), headers, 400),
        "garbage body": (b"\x00" * 64, headers, 400),
        "empty body": (b"", headers, 400),
        "truncated body": (body[:-7], headers, 400),
        "wrong hidden size": (_message(_handoff_parts(hidden=16)[0], meta), headers, 400),
        "boundary not accepted": (_message(*_handoff_parts(next_layer=5, prior_exits=4)), headers, 422),
        "encoding not accepted": (_message(_handoff_parts(encoding="int8")[0], meta), headers, 400),
        "meta count mismatch": (_message(_handoff_parts(counts=(4, 4, 4))[0], meta), headers, 400),
        "meta prior exits mismatch": (_message(payload, _handoff_parts(prior_exits=3)[1]), headers, 422),
        "oversized body": (b"\x00" * (80 * 1024), headers, 413),
        "oversized metadata": (_patched(body, 32, "<I", 70 * 1024), headers, 400),
    }
    return cases


BAD_HANDOFFS = _bad_handoffs()


@pytest.mark.parametrize("case", list(BAD_HANDOFFS), ids=list(BAD_HANDOFFS))
def test_bad_handoffs_get_4xx_with_reason(edge, case):
    body, headers, status = BAD_HANDOFFS[case]
    response = edge.post("/v1/handoff", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert edge.get("/healthz").status_code == 200


def test_oversized_chunked_body_is_cut_off_while_streaming(edge):
    chunks = (b"\x00" * 16 * 1024 for _ in range(10))  # no Content-Length: sent chunked
    response = edge.post("/v1/handoff", content=chunks, headers=_handoff_headers())
    assert response.status_code == 413
    assert edge.post("/v1/handoff", content=_message(*_handoff_parts()), headers=_handoff_headers()).status_code == 200


def test_settings_refuse_edge_without_token(run_dir):
    with pytest.raises(ValueError, match="DIMEE_HANDOFF_TOKEN"):
        TierSettings(run_dir=run_dir, tier="edge")
    with pytest.raises(ValueError, match="DIMEE_HANDOFF_TOKEN"):
        TierSettings(run_dir=run_dir, tier="mobile", next_url="http://127.0.0.1:1")
    with pytest.raises(ValueError):
        TierSettings(run_dir=run_dir, tier="edge", handoff_token=TOKEN, accepted_encodings="fp64")


def test_settings_from_environment(run_dir, monkeypatch):
    monkeypatch.setenv("DIMEE_RUN_DIR", str(run_dir))
    monkeypatch.setenv("DIMEE_TIER", "cloud")
    monkeypatch.setenv("DIMEE_HANDOFF_TOKEN", TOKEN)
    monkeypatch.setenv("DIMEE_ACCEPTED_ENCODINGS", "fp16, int8")
    monkeypatch.setenv("DIMEE_PLAN", "1,3")
    settings = TierSettings()
    assert settings.tier == "cloud" and settings.token == TOKEN and settings.accepted_encodings == ("fp16", "int8")
    assert settings.host == "127.0.0.1" and settings.bind_port == 8702 and settings.plan == "1,3"


# ---- deadlines and failing next tiers ----------------------------------------------------------------------
class _FakeNextTier(JsonHandler):
    """A next tier that hangs ('hang') or fails ('error'); /healthz always answers."""

    mode = "hang"
    release = threading.Event()

    def do_GET(self):  # noqa: N802
        self._reply(200, b'{"status": "ok"}')

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.mode == "hang":
            self.release.wait(10)
            return
        self._reply(500, b'{"detail": "boom"}')


@pytest.fixture
def fake_next():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeNextTier)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    _FakeNextTier.release.set()
    server.shutdown()
    server.server_close()
    _FakeNextTier.release.clear()


@pytest.mark.parametrize("mode", ["hang", "error"])
def test_slow_or_failing_next_tier_gives_degraded_answer_within_deadline(run_dir, fake_next, mode):
    _FakeNextTier.mode = mode
    url = f"http://127.0.0.1:{fake_next.server_address[1]}"
    settings = TierSettings(run_dir=run_dir, tier="mobile", next_url=url, handoff_token=TOKEN, request_timeout_s=0.8)
    with TestClient(create_app(settings)) as client:
        start = time.monotonic()
        # forced to edge: the token ids go straight to the (fake) edge; when it fails, mobile runs its layers
        response = client.post("/v1/classify", json={"texts": ["good", "bad film"], "force_tier": "edge"})
        elapsed = time.monotonic() - start
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert all(p["degraded"] and p["tier"] == "mobile" and p["exit"] == 2 for p in predictions)
    assert all(p["route"] == ["mobile@0"] and p["cost"]["layers"]["mobile"] == 2 for p in predictions)
    reason = predictions[0]["degraded_reason"]
    assert reason == ("next_tier_timeout" if mode == "hang" else "next_tier_error")
    assert elapsed < 0.8 + 1.0  # the deadline, plus generous slack for a loaded 2-core machine


# ---- batching and exact re-padding -------------------------------------------------------------------------
def test_micro_batcher_groups_concurrent_requests_and_splits_results():
    calls: list[int] = []

    def run_batch(items: list[int]) -> list[int]:
        calls.append(len(items))
        time.sleep(0.01)
        return [item * 10 for item in items]

    async def scenario():
        batcher = MicroBatcher(run_batch, window_s=0.05, max_batch=8)
        await batcher.start()
        try:
            jobs = [[1], [2, 3], [4], [5, 6, 7]]
            results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(job) for job in jobs)), 5)
            overflow = await asyncio.wait_for(asyncio.gather(*(batcher.submit([i] * 3) for i in range(4))), 5)
        finally:
            await batcher.stop()
        return results, overflow

    results, overflow = asyncio.run(scenario())
    assert results == [[10], [20, 30], [40], [50, 60, 70]]
    assert overflow == [[i * 10] * 3 for i in range(4)]
    assert calls[0] == 7  # the first four requests shared one forward pass
    assert max(calls) <= 8  # 4 x 3 samples need two passes of at most 8


def test_chunked_never_exceeds_its_size():
    seen: list[int] = []

    def run(items: list[int]) -> list[int]:
        seen.append(len(items))
        return [-item for item in items]

    assert chunked(run, 4)(list(range(10))) == [-i for i in range(10)]
    assert seen == [4, 4, 2]


def test_micro_batcher_passes_errors_and_skips_cancelled():
    def run_batch(items: list[int]) -> list[int]:
        if 0 in items:
            raise ValueError("bad sample")
        return items

    async def scenario():
        batcher = MicroBatcher(run_batch, window_s=0.02, max_batch=4)
        await batcher.start()
        try:
            with pytest.raises(ValueError, match="bad sample"):
                await asyncio.wait_for(batcher.submit([0]), 5)
            waiting = asyncio.create_task(batcher.submit([1]))
            await asyncio.sleep(0)
            waiting.cancel()
            return await asyncio.wait_for(batcher.submit([2, 3]), 5)
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == [2, 3]


def test_padded_batch_equals_samples_alone(run_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "encoder")
    texts = ["good", "the acting was brilliant but the plot was dull and the ending sad", "a funny film"]
    encoded = tokenizer(texts)
    pairs = zip(encoded["input_ids"], encoded["token_type_ids"])
    samples = [TokenSample(tuple(ids), tuple(types)) for ids, types in pairs]
    engine = TierEngine.load(run_dir, TierPlan(2, 4, 6), "mobile", tokenizer.pad_token_id)
    together = engine.run_tokens(samples)
    for sample, joint in zip(samples, together):
        alone = engine.run_tokens([sample])[0]
        assert joint.hidden.shape == alone.hidden.shape == (len(sample.input_ids), HIDDEN)
        assert np.abs(joint.exit_logits - alone.exit_logits).max() < 1e-5
        assert (joint.hidden - alone.hidden).abs().max().item() < 1e-4


# ---- policy and temperatures -------------------------------------------------------------------------------
def test_threshold_policy():
    from tiers import HANDOFF_EDGE

    plan = TierPlan(2, 4, 6)
    policy = ThresholdPolicy(plan, threshold=0.8)
    seen = np.zeros((3, 2, 2))
    seen[0, -1] = [0.0, 5.0]  # confident at exit 2
    seen[1, -1] = [0.0, 0.1]
    seen[2, 0] = [0.0, 9.0]  # confident at exit 1 only: the rule looks at the tier's last exit
    assert policy.step(seen, "mobile", 2).tolist() == [2, HANDOFF_EDGE, HANDOFF_EDGE]
    assert policy.step(np.zeros((2, 6, 2)), "cloud", 6).tolist() == [6, 6]
    assert policy.step(np.zeros((2, 2, 1)), "mobile", 2).tolist() == [HANDOFF_EDGE] * 2  # regression: go on
    cooled = ThresholdPolicy(plan, threshold=0.8, temperatures=np.full(6, 10.0))
    assert cooled.step(seen, "mobile", 2).tolist() == [HANDOFF_EDGE] * 3


def test_load_policy_uses_the_runs_fitted_policy(tmp_path, monkeypatch):
    plan = TierPlan(2, 4, 6)
    policy, name = load_policy(tmp_path, plan, "auto", 0.9, None)
    assert isinstance(policy, ThresholdPolicy) and "built-in" in name
    (tmp_path / "policy.json").write_text(json.dumps({"policy": "Fake"}))

    class Fake:
        def step(self, logits_seen, tier, depth, features=None):
            return np.full(logits_seen.shape[0], depth)

        def check_plan(self, other):
            if other != plan:
                raise ValueError("fitted for another plan")

    monkeypatch.setattr("services.policy.policy_from_dict", lambda data: Fake())
    policy, name = load_policy(tmp_path, plan, "auto", 0.9, None)
    assert isinstance(policy, Fake) and "policy.json" in name
    assert isinstance(load_policy(tmp_path, plan, "threshold", 0.9, None)[0], ThresholdPolicy)
    with pytest.raises(PolicyLoadError, match="another plan"):
        load_policy(tmp_path, TierPlan(1, 4, 6), "auto", 0.9, None)


def test_load_policy_refuses_an_unfitted_or_damaged_policy(tmp_path):
    import clustering

    plan = TierPlan(2, 4, 6)
    (tmp_path / "policy.json").write_text(json.dumps(clustering.DimeePolicy(plan=plan).to_dict()))
    with pytest.raises(PolicyLoadError, match="unfitted"):
        load_policy(tmp_path, plan, "auto", 0.9, None)
    (tmp_path / "policy.json").write_text('{"policy": "NoSuchPolicy", "params": {}}')
    with pytest.raises(PolicyLoadError, match="NoSuchPolicy"):
        load_policy(tmp_path, plan, "auto", 0.9, None)


def test_temperatures_scale_reported_probabilities(tmp_path):
    run = tiny_run_folder(tmp_path / "run")
    temperatures = [1.0, 3.0, 1.0, 1.0, 1.0, 1.0]
    (run / "temperatures.json").write_text(json.dumps({"temperatures": temperatures}))
    assert read_temperatures(run, 6).tolist() == temperatures
    settings = TierSettings(run_dir=run, tier="mobile")
    with TestClient(create_app(settings)) as client:
        got = client.post("/v1/classify", json={"text": "a good film", "force_tier": "mobile"}).json()
    from transformers import AutoTokenizer

    encoded = AutoTokenizer.from_pretrained(run / "encoder")(["a good film"], return_tensors="pt")
    with torch.no_grad():
        logits = EarlyExitModel.from_pretrained(run)(**encoded)[0, 1].numpy()
    assert np.allclose(got["predictions"][0]["probabilities"], softmax(logits, 3.0), atol=1e-5)
    (run / "temperatures.json").write_text(json.dumps({"temperatures": [1.0, -1.0]}))
    with pytest.raises(PolicyLoadError):
        read_temperatures(run, 6)


def _reference_logits(run: Path, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
    from transformers import AutoTokenizer

    encoded = AutoTokenizer.from_pretrained(run / "encoder")(texts, pairs, return_tensors="pt", padding=True)
    with torch.no_grad():
        return EarlyExitModel.from_pretrained(run)(**encoded).numpy()


def test_pair_task_accepts_generic_and_run_field_names(tmp_path):
    run = tiny_run_folder(tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "task": "mrpc", "text_fields": ["sentence1", "sentence2"]}))
    first, second = ["a good film", "the plot"], ["a great movie", "was dull and sad"]
    expected = softmax(_reference_logits(run, first, second)[:, 1])
    with TestClient(create_app(TierSettings(run_dir=run, tier="mobile"))) as client:
        generic = client.post("/v1/classify", json={"texts": first, "text_pairs": second, "force_tier": "mobile"})
        named = client.post("/v1/classify", json={"sentence1": first, "sentence2": second, "force_tier": "mobile"})
        single = client.post("/v1/classify", json={"text": first[0], "text_pair": second[0], "force_tier": "mobile"})
        missing = client.post("/v1/classify", json={"texts": first})
        uneven = client.post("/v1/classify", json={"texts": first, "text_pairs": second[:1]})
    for response in (generic, named):
        got = np.array([p["probabilities"] for p in response.json()["predictions"]])
        assert np.abs(got - expected).max() <= 1e-5
    assert np.abs(np.array(single.json()["predictions"][0]["probabilities"]) - expected[0]).max() <= 1e-5
    assert missing.status_code == 422 and "pair task" in missing.json()["detail"]
    assert uneven.status_code == 422


def test_regression_run_reports_a_score(tmp_path):
    run = tiny_run_folder(tmp_path / "run", num_labels=1)
    expected = _reference_logits(run, ["a good film"])[0, 1, 0]
    with TestClient(create_app(TierSettings(run_dir=run, tier="mobile"))) as client:
        prediction = client.post("/v1/classify", json={"text": "a good film", "force_tier": "mobile"}).json()
    prediction = prediction["predictions"][0]
    assert prediction["label"] is None and prediction["probabilities"] is None
    assert abs(prediction["score"] - float(expected)) <= 1e-5

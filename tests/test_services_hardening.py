"""Issue 14: what a tier does with hostile or unlucky traffic, in process (FastAPI TestClient or one uvicorn server
in a thread) on a tiny random-init run: finite but huge hidden states, a client hanging up mid-body, the OpenAPI
schema against what the server accepts, stable degraded-reason codes.

(The `dimee serve-all` signal tests start real processes: tests/test_serve_all_signals.py.)"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import threading
import time
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services import Answer, HandoffMeta, HandoffResponse, Prediction, TierSettings, create_app
from tests.factories import JsonHandler, metric_value, tiny_run_folder
from tiers import CONTENT_TYPE, encode_handoff, encode_hidden_message

TOKEN = "hardening-token-0123456789"
HIDDEN = 32  # tiny_bert_config's hidden size
#: next layer of a body each receiver accepts on the tiny run's plan (2, 4) of 6 layers
NEXT_LAYER = {"edge": 3, "cloud": 5}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run_folder(tmp_path_factory.mktemp("run"))


def _receiver(run_dir: Path, tier: str) -> TestClient:
    settings = TierSettings(run_dir=run_dir, tier=tier, handoff_token=TOKEN, batch_window_ms=1)
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def receivers(run_dir):
    with _receiver(run_dir, "edge") as edge, _receiver(run_dir, "cloud") as cloud:
        yield {"edge": edge, "cloud": cloud}


def _post_parts(next_layer: int = 3, n: int = 2) -> tuple[bytes, bytes]:
    """A valid fp32 handoff of `n` samples of 5 tokens continuing at `next_layer`: the whole message (metadata
    section, then the hidden states) and the bare payload."""
    states = torch.randn((n, 5, HIDDEN), generator=torch.Generator().manual_seed(0))
    meta = HandoffMeta.build(np.zeros((n, next_layer - 1, 2), np.float32), budget_ms=5000, force_tier=None)
    mask = torch.ones((n, 5), dtype=torch.long)
    return encode_hidden_message(states, mask, next_layer, meta), encode_handoff(states, mask, next_layer)


def _post_states(client: TestClient, states: torch.Tensor, next_layer: int, force: str | None, prior_scale=0.0):
    n, width = states.shape[:2]
    mask = torch.ones((n, width), dtype=torch.long)
    prior = np.full((n, next_layer - 1, 2), prior_scale, dtype=np.float32)
    meta = HandoffMeta.build(prior, budget_ms=5000, force_tier=force)
    body = encode_hidden_message(states, mask, next_layer, meta, "fp32")
    headers = {"Content-Type": CONTENT_TYPE, "X-DIMEE-Token": TOKEN}
    return client.post("/v1/handoff", content=body, headers=headers)


def _all_numbers_finite(value) -> bool:
    """No NaN, no infinity and no null where a number belongs, anywhere in a JSON answer."""
    if isinstance(value, dict):
        return all(_all_numbers_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_all_numbers_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def _huge(scale: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn((2, 5, HIDDEN), generator=gen) * scale).clamp(-3e38, 3e38)


# ---- 2. finite but huge hidden states ------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e20, 1e30, 3e38])
@pytest.mark.parametrize("force", ["self", None])
@pytest.mark.parametrize("tier", ["edge", "cloud"])
def test_finite_but_huge_hidden_states_are_refused_with_422(receivers, tier, force, scale, caplog):
    client = receivers[tier]
    caplog.set_level(logging.WARNING)
    policy_errors = client.app.state.service.metrics.policy_errors.get()
    response = _post_states(client, _huge(scale), NEXT_LAYER[tier], tier if force == "self" else None)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "hidden states out of range" in detail and "+-10000" in detail and "sample 0" in detail
    assert "null" not in response.text
    assert client.app.state.service.metrics.policy_errors.get() == policy_errors
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("tier", ["edge", "cloud"])
def test_states_at_the_bound_are_answered_with_finite_numbers(receivers, tier):
    """The bound is far below overflow: states at +-MAX_HIDDEN_ABS run through every layer and answer finitely."""
    from services.inputs import MAX_HIDDEN_ABS

    states = torch.sign(torch.randn((2, 5, HIDDEN), generator=torch.Generator().manual_seed(1))) * MAX_HIDDEN_ABS
    for force in (tier, None):
        response = _post_states(receivers[tier], states, NEXT_LAYER[tier], force)
        assert response.status_code == 200, response.text
        answers = response.json()["answers"]
        assert _all_numbers_finite(answers)
        assert all(a["probabilities"] is not None and abs(sum(a["probabilities"]) - 1) < 1e-9 for a in answers)


def test_huge_prior_logits_are_refused_with_422(receivers):
    response = _post_states(receivers["edge"], _huge(1.0), NEXT_LAYER["edge"], None, prior_scale=1e30)
    assert response.status_code == 422, response.text
    assert "prior logits out of range" in response.json()["detail"]


def test_overflow_inside_the_forward_pass_is_a_422_not_a_null(receivers, monkeypatch, caplog):
    """Behind the range check: should activations still overflow (here: the bound lifted), the sample is
    refused after the forward pass, and the policy never sees NaN (no policy error, no traceback)."""
    monkeypatch.setattr("services.inputs.MAX_HIDDEN_ABS", math.inf)
    caplog.set_level(logging.WARNING)
    for tier in ("edge", "cloud"):
        client = receivers[tier]
        policy_errors = client.app.state.service.metrics.policy_errors.get()
        for force in (tier, None):
            response = _post_states(client, _huge(1e30), NEXT_LAYER[tier], force)
            assert response.status_code == 422, response.text
            assert "overflowed" in response.json()["detail"] and "null" not in response.text
        assert client.app.state.service.metrics.policy_errors.get() == policy_errors
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_answers_never_hold_non_finite_numbers():
    common = dict(label=0, label_name="negative", exit=2, tier="edge", degraded=False)
    with pytest.raises(ValidationError):
        Answer(probabilities=[float("nan"), 0.5], **common)
    with pytest.raises(ValidationError):
        Answer(probabilities=[0.5, 0.5], wall_ms={"edge": float("inf")}, **common)
    answer = Answer(probabilities=[0.5, 0.5], **common).model_dump_json()
    good = '{"request_id": "r", "server_ms": 1.0, "answers": [%s]}' % answer
    assert HandoffResponse.model_validate_json(good).answers[0].probabilities == [0.5, 0.5]
    with pytest.raises(ValidationError):  # a next tier answering NaN is a bad answer, never relayed
        HandoffResponse.model_validate_json(good.replace("0.5,", "NaN,", 1))


# ---- 3. a client hanging up mid-body ---------------------------------------------------------------------------
@contextmanager
def _uvicorn_in_thread(settings: TierSettings):
    """One tier served by a real uvicorn server on a free loopback port, in a thread of this process (its log
    records reach caplog: log_config=None leaves logging alone)."""
    import uvicorn

    from services.launch import free_port

    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, log_level="info")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def _hang_up_mid_body(port: int, path: str, headers: dict[str, str], part: bytes, declared: int) -> None:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {declared}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + part)
        time.sleep(0.2)  # the server is reading the body when the client goes


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name + "{") and all(w in line for w in wanted)]  # fmt: skip
    return sum(values)


@pytest.mark.parametrize("tier", ["mobile", "edge"])
def test_client_hanging_up_mid_body_is_counted_as_a_disconnect_not_a_500(run_dir, tier, caplog):
    token = {} if tier == "mobile" else {"handoff_token": TOKEN}
    settings = TierSettings(run_dir=run_dir, tier=tier, batch_window_ms=1, **token)
    if tier == "mobile":  # mobile without a token (it has no next tier)
        path, headers, part = "/v1/classify", {"Content-Type": "application/json"}, b'{"text": "a go'
    else:
        path = "/v1/handoff"
        headers = {"Content-Type": CONTENT_TYPE, "X-DIMEE-Token": TOKEN}
        part = b"DMMD" + b"\x00" * 60
    caplog.set_level(logging.INFO)
    with _uvicorn_in_thread(settings) as port:
        for _ in range(3):
            _hang_up_mid_body(port, path, headers, part, declared=4096)
        deadline = time.monotonic() + 10
        while True:
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
            if _metric(metrics, "dimee_client_disconnects_total") >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        still_serving = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5, trust_env=False).status_code
    assert still_serving == 200
    assert _metric(metrics, "dimee_client_disconnects_total", endpoint=path) == 3
    assert _metric(metrics, "dimee_requests_total", endpoint=path, status="499") == 3  # client closed request
    assert _metric(metrics, "dimee_requests_total", status="500") == 0
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    mentions = [r for r in caplog.records if "disconnect" in r.getMessage().lower()]
    assert len(mentions) == 3  # one line per request


# ---- 4. the OpenAPI schema says what the server accepts ------------------------------------------------------
def _valid(schema: dict, value) -> bool:
    """A JSON-schema check of the keywords the services' schemas use (no third-party validator needed)."""
    kinds = {"object": dict, "array": list, "string": str, "null": type(None), "integer": int, "number": (int, float)}
    kind = schema.get("type")
    if kind is not None and (not isinstance(value, kinds[kind]) or (kind != "null" and isinstance(value, bool))):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "not" in schema and _valid(schema["not"], value):
        return False
    if "anyOf" in schema and not any(_valid(s, value) for s in schema["anyOf"]):
        return False
    if "oneOf" in schema and sum(_valid(s, value) for s in schema["oneOf"]) != 1:
        return False
    if not all(_valid(s, value) for s in schema.get("allOf", [])):
        return False
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", math.inf):
            return False
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return False
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", math.inf):
            return False
        if "items" in schema and not all(_valid(schema["items"], item) for item in value):
            return False
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        if any(name not in value for name in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and set(value) - set(properties):
            return False
        if not all(_valid(properties[name], item) for name, item in value.items() if name in properties):
            return False
    return True


SINGLE_BODIES = [
    {"text": "a good film"},
    {"texts": ["good", "bad"]},
    {"sentence": "a good film"},
    {"sentence": ["good", "bad"]},
    {"text": None, "texts": ["good"]},
    {"text": "good", "force_tier": "mobile"},
    {"text": "good", "force_tier": None},
    {"text": "good", "texts": ["bad"]},
    {"text": "good", "sentence": "bad"},
    {"texts": ["good"], "sentence": ["bad"]},
    {},
    {"text": None},
    {"text": ""},
    {"text": "   "},
    {"texts": []},
    {"texts": ["good", "bad", "dull", "fun"]},  # over max_texts=3
    {"text": "good " * 12},  # over max_text_chars=50
    {"texts": ["good", ""]},
    {"text": 5},
    {"texts": ["good", 5]},
    {"txt": "good"},
    {"text": "good", "text_pair": "bad"},
    {"text": "good", "force_tier": "moon"},
]
PAIR_BODIES = [
    {"text": "good", "text_pair": "bad"},
    {"texts": ["good", "dull"], "text_pairs": ["bad", "fun"]},
    {"sentence1": "good", "sentence2": "bad"},
    {"sentence1": ["good"], "text_pairs": ["bad"]},
    {"text": "good", "text_pair": "bad", "force_tier": "mobile"},
    {"text": "good"},
    {"text": "good", "text_pair": "bad", "text_pairs": ["bad"]},
    {"text": "good", "sentence1": "good", "text_pair": "bad"},
    {"text": "good", "text_pair": ""},
    {"text": "good", "text_pair": None},
    {"text": "good", "sentence2": "bad", "sentence": "x"},
]


@pytest.mark.parametrize("task", ["single", "pair"])
def test_openapi_classify_body_schema_accepts_exactly_what_the_server_accepts(run_dir, tmp_path, task):
    run = run_dir
    if task == "pair":
        run = tiny_run_folder(tmp_path / "pair")
        info = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**info, "task": "mrpc", "text_fields": ["sentence1", "sentence2"]}))
    settings = TierSettings(run_dir=run, tier="mobile", max_texts=3, max_text_chars=50, batch_window_ms=1)
    app = create_app(settings)
    schema = app.openapi()["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    bodies = SINGLE_BODIES if task == "single" else PAIR_BODIES
    with TestClient(app) as client:
        served = {json.dumps(body): client.post("/v1/classify", json=body).status_code for body in bodies}
    verdicts = {json.dumps(body): _valid(schema, body) for body in bodies}
    assert set(served.values()) <= {200, 422}
    assert {body: status == 200 for body, status in served.items()} == verdicts
    assert sum(verdicts.values()) >= 4 and not all(verdicts.values())  # both verdicts covered
    for example in schema["examples"]:
        assert _valid(schema, example)


def test_classify_request_model_refuses_both_forms_and_its_schema_says_so():
    from services import ClassifyRequest

    with pytest.raises(ValidationError, match="only one of"):
        ClassifyRequest.model_validate({"text": "good", "texts": ["bad"]})
    assert ClassifyRequest.model_validate({"text": None, "texts": ["bad"]}).texts == ["bad"]
    schema = ClassifyRequest.model_json_schema()
    assert not _valid(schema, {"text": "good", "texts": ["bad"]})
    assert not _valid(schema, {"text": "good", "text_pair": "bad", "text_pairs": ["worse"]})
    assert _valid(schema, {"text": None, "texts": ["bad"]}) and _valid(schema, {"text": "good"})


def test_openapi_handoff_says_what_the_server_accepts(receivers):
    """The metadata travels in the body (no X-DIMEE-Meta parameter, and the header is not read); the body is a
    binary message within max_body_bytes; the token is required and non-empty."""
    client = receivers["edge"]
    operation = client.app.openapi()["paths"]["/v1/handoff"]["post"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert set(parameters) == {"X-DIMEE-Token", "X-Request-ID"}
    token = parameters["X-DIMEE-Token"]
    assert token["required"] and not parameters["X-Request-ID"]["required"]
    settings = client.app.state.service.settings
    schema = operation["requestBody"]["content"][CONTENT_TYPE]["schema"]
    assert schema["format"] == "binary" and schema["maxLength"] == settings.max_body_bytes
    message, payload = _post_parts()
    assert schema["minLength"] <= len(message) <= schema["maxLength"]
    headers = {"Content-Type": CONTENT_TYPE, "X-DIMEE-Token": TOKEN}
    assert client.post("/v1/handoff", content=message, headers=headers).status_code == 200
    old_style = {**headers, "X-DIMEE-Meta": '{"v": 1}'}  # the format before the metadata moved into the body
    refused = client.post("/v1/handoff", content=payload, headers=old_style)
    assert refused.status_code == 400 and "metadata section" in refused.json()["detail"]
    assert not _valid(token["schema"], "")
    assert client.post("/v1/handoff", content=message, headers={**headers, "X-DIMEE-Token": ""}).status_code == 401


# ---- 5. degraded answers carry a documented reason code, never an exception's text ---------------------------
class _FailingNextTier(JsonHandler):
    """A next tier whose /healthz answers and whose handoffs fail with a revealing message."""

    def do_GET(self):  # noqa: N802
        self._reply(200, b'{"status": "ok"}')

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._reply(500, b'{"detail": "internal error (KeyError): secret-detail at /srv/model.py:12"}')


@contextmanager
def _failing_next_tier():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingNextTier)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _degraded_through(run_dir: Path, next_url: str | None, monkeypatch=None, raise_in_send: bool = False):
    """Two texts forced to edge through a mobile whose link to edge fails in some way: its answer and metrics."""
    settings = TierSettings(
        run_dir=run_dir, tier="mobile", next_url=next_url, handoff_token=TOKEN, batch_window_ms=1, request_timeout_s=5
    )
    if raise_in_send:
        async def broken(*_args, **_kwargs):
            raise RuntimeError("secret-detail in TierRelay")

        monkeypatch.setattr("services.relay.post_handoff", broken)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.post("/v1/classify", json={"texts": ["good", "bad film"], "force_tier": "edge"})
        metrics = client.get("/metrics").text
    assert response.status_code == 200, response.text
    return response, metrics


def test_degraded_reasons_are_stable_codes_without_internals(run_dir, monkeypatch):
    from services.launch import free_port

    with _failing_next_tier() as failing:
        cases = {
            "next_tier_not_configured": _degraded_through(run_dir, None),
            "next_tier_unreachable": _degraded_through(run_dir, f"http://127.0.0.1:{free_port()}"),  # nobody listens
            "next_tier_error": _degraded_through(run_dir, failing),
            "handoff_failed": _degraded_through(run_dir, failing, monkeypatch, raise_in_send=True),
        }
    for code, (response, metrics) in cases.items():
        predictions = response.json()["predictions"]
        assert [(p["degraded"], p["degraded_reason"]) for p in predictions] == [(True, code)] * 2
        for leak in ("Error", "secret-detail", "Traceback", "/srv/"):
            assert leak not in response.text, (code, leak)
        assert metric_value(metrics, "dimee_degraded_total", reason=code, service="mobile") == 2
    from services.schemas import DEGRADED_REASONS

    assert set(cases) <= set(DEGRADED_REASONS)


def test_degraded_reason_codes_are_in_the_schema_and_documented():
    import services
    from services.schemas import DEGRADED_REASONS

    for model in (Answer, Prediction):
        field = model.model_json_schema()["properties"]["degraded_reason"]
        (codes,) = [s["enum"] for s in field["anyOf"] if s.get("type") == "string"]
        assert codes == list(DEGRADED_REASONS) and all(code in field["description"] for code in codes)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for code in DEGRADED_REASONS:
        assert code in services.__doc__, code
        assert f"`{code}`" in readme, code
    with pytest.raises(ValidationError):  # a next tier's free-text reason is not a reason
        Answer(label=0, label_name="x", probabilities=[1.0, 0.0], exit=2, tier="edge", degraded=True,
               degraded_reason="cloud tier failed: ConnectError")  # fmt: skip


def test_readyz_names_the_reason_codes_not_exception_names(run_dir):
    """/readyz says why a next tier is not usable with the degraded_reason codes (issue 14.7)."""
    from services.launch import free_port
    from services.schemas import DEGRADED_REASONS

    settings = TierSettings(
        run_dir=run_dir, tier="mobile", next_url=f"http://127.0.0.1:{free_port()}", handoff_token=TOKEN, batch_window_ms=1
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503 and not body["ready"]
    assert (body["edge_tier"], body["cloud_tier"]) == ("next_tier_unreachable", "next_tier_not_configured")
    assert {body["edge_tier"], body["cloud_tier"]} <= set(DEGRADED_REASONS)
    assert "Error" not in response.text

"""The FastAPI app of one tier: `create_app(settings)` serves mobile, edge or cloud.

Mobile:  POST /v1/classify (JSON texts) -> answers; the policy may hand a sample to edge or cloud, as token ids
         before any layer or as hidden states at a boundary the receiver accepts.
Edge:    POST /v1/handoff (token ids or hidden states) -> continues from the boundary (0 or m by default),
         answers or hands off to cloud after its last layer e.
Cloud:   POST /v1/handoff (token ids or hidden states at 0, m or e by default) -> answers by layer L.
All:     GET /healthz, /readyz, /metrics (Prometheus text, prometheus_client, with the process metrics).

JSON answers are serialised once: a pydantic answer by pydantic-core (`model_dump_json`, no re-validation of
what the service built itself), any other JSON by orjson (`JsonAnswer`); request bodies are parsed by orjson.

Bad input is always a 4xx with a reason (JSON {"detail": ...}), never a 5xx. A client that hangs up before its
body has arrived is no server error: it is logged in one line and counted as status 499 (nginx's "client
closed request") and in dimee_client_disconnects_total.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from tiers import CONTENT_TYPE, TOKENS_CONTENT_TYPE

from .batching import BatcherClosed
from .handoff import REQUEST_ID_HEADER, TOKEN_HEADER, InputError, check_content_type, check_token, read_body
from .metrics import PROMETHEUS_CONTENT_TYPE, ServiceMetrics
from .schemas import DEGRADED_REASONS, ClassifyResponse, ErrorResponse, HandoffResponse, classify_request_schema
from .settings import MIN_TOKEN_CHARS, TierSettings
from .tier import TierService

log = logging.getLogger("services.app")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("dimee_request_id", default="-")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
KNOWN_PATHS = frozenset({"/v1/classify", "/v1/handoff", "/healthz", "/readyz", "/metrics"})
#: Status recorded for a request whose client hung up before its body arrived (nobody reads the answer).
CLIENT_CLOSED_REQUEST = 499


class JsonAnswer(Response):
    """A JSON answer serialised once: pydantic models by pydantic-core, anything else by orjson (which refuses
    NaN and infinity instead of writing them)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, BaseModel):
            return content.model_dump_json().encode("utf-8")
        return orjson.dumps(content)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record, so a log format can print it (`%(request_id)s`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def current_request_id() -> str:
    return request_id_var.get()


class RequestContextMiddleware:
    """Pure ASGI middleware: request id in (X-Request-ID, or a new one) and out, per-endpoint metrics.

    Written without BaseHTTPMiddleware so that the request body stream reaches the endpoint untouched
    (the handoff endpoint caps it while reading).
    """

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        path = scope.get("path", "")
        endpoint = path if path in KNOWN_PATHS else "other"
        status = {"code": 500}
        start = time.perf_counter()

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.requests.inc(endpoint, status["code"])
            if status["code"] == CLIENT_CLOSED_REQUEST:
                self.metrics.client_disconnects.inc(endpoint)
            self.metrics.latency.observe(time.perf_counter() - start, endpoint)
            request_id_var.reset(token)


def _error(status: int, detail: str) -> JsonAnswer:
    return JsonAnswer({"detail": detail, "request_id": current_request_id()}, status_code=status)


_ERRORS = {
    400: {"model": ErrorResponse, "description": "malformed body or header"},
    413: {"model": ErrorResponse, "description": "body larger than the configured limit"},
    415: {"model": ErrorResponse, "description": "wrong Content-Type"},
    422: {"model": ErrorResponse, "description": "well-formed but unusable input (empty or too long text, ...)"},
}


def create_app(settings: TierSettings) -> FastAPI:
    """The app of `settings.tier`; it loads only that tier's weights (at startup, in the lifespan)."""
    service = TierService(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title=f"DIMEE {settings.tier} tier",
        version="1",
        description=(
            f"{settings.tier.capitalize()} tier of a three-tier early-exit classifier "
            f"({service.info.task}, plan {service.plan.spec}: layers {service.first_layer}..{service.last_layer} "
            f"of {service.plan.num_layers} run here)."
        ),
        lifespan=lifespan,
        default_response_class=JsonAnswer,
    )
    app.state.service = service
    app.add_middleware(RequestContextMiddleware, metrics=service.metrics)
    _add_error_handlers(app)
    _add_operations(app, service)
    if settings.tier == "mobile":
        _add_classify(app, service)
    else:
        _add_handoff(app, service)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def input_error(_request: Request, err: InputError) -> JsonAnswer:
        return _error(err.status, err.detail)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _err: ClientDisconnect) -> Response:
        log.info("client disconnected before its request body arrived (%s %s)", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # the server drops it: the connection is gone

    @app.exception_handler(BatcherClosed)
    async def closing(_request: Request, err: BatcherClosed) -> JsonAnswer:
        return _error(503, str(err))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, err: Exception) -> JsonAnswer:
        log.exception("unexpected error")
        rid = current_request_id()
        return _error(500, f"internal error; see the service log for request {rid}")


def _add_operations(app: FastAPI, service: TierService) -> None:
    @app.get("/healthz", tags=["operations"], summary="Process alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "tier": service.tier}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Model loaded and next tier reachable",
        description=(
            "200 when ready, else 503. `<tier>_tier` per tier this one sends samples to: `reachable`, or why not as "
            "a stable code: " + ", ".join(sorted(DEGRADED_REASONS)) + " (the degraded_reason codes)."
        ),
    )
    async def readyz() -> JsonAnswer:
        ready, checks = await service.readiness()
        body = {"ready": ready, "tier": service.tier, "plan": service.plan.spec, **checks}
        return JsonAnswer(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)  # type: ignore[arg-type]


def _add_classify(app: FastAPI, service: TierService) -> None:
    fields = service.info.text_fields
    schema = classify_request_schema(list(fields), service.settings.max_texts, service.settings.max_text_chars)

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=_ERRORS,
        tags=["inference"],
        summary="Classify texts",
        description=(
            f"Classify one or several texts ({service.info.task}; text fields {fields}). Mobile holds layers "
            f"1..{service.last_layer} and runs them one at a time; the policy answers at an exit, or hands the "
            "sample to edge or cloud (token ids before any layer, or hidden states). Texts are never truncated: "
            "a text over the token limit gets 422. Each prediction carries the tier, exit and route that "
            "answered, a degraded flag (next tier down or late), and its cost breakdown."
        ),
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}},
    )
    async def classify(request: Request) -> JsonAnswer:
        media = request.headers.get("content-type", "application/json").split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise InputError(415, f"Content-Type must be application/json, got {media}")
        raw = await read_body(request, service.settings.max_json_bytes)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(400, f"body is not valid UTF-8 (byte {err.start})") from err
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError as err:
            raise InputError(400, f"body is not valid JSON ({str(err)[:200]})") from err
        if not isinstance(payload, dict):
            raise InputError(422, "body must be a JSON object such as {\"text\": \"...\"}")
        service.enter()
        try:
            return JsonAnswer(await service.classify(payload, current_request_id()))
        finally:
            service.leave()


def _add_handoff(app: FastAPI, service: TierService) -> None:
    settings = service.settings
    binary = {
        "type": "string",
        "format": "binary",
        "minLength": 36 + 16,  # the metadata header and the smallest payload header
        "maxLength": settings.max_body_bytes,
    }

    @app.post(
        "/v1/handoff",
        response_model=HandoffResponse,
        responses={
            401: {"model": ErrorResponse, "description": f"missing {TOKEN_HEADER}"},
            403: {"model": ErrorResponse, "description": f"wrong {TOKEN_HEADER}"},
            **_ERRORS,
        },
        tags=["inference"],
        summary="Continue a handed-over sample from its layer boundary (tier to tier)",
        description=(
            "Body: one handoff message of the codec (`tiers.codec`): a metadata section (magic DMMD, version 1: "
            "the logits of exits 1..j, the sender's deadline budget, forcing, routing features, distortion types; "
            f"at most {settings.max_meta_bytes} bytes), then the payload: token ids (Content-Type "
            f"{TOKENS_CONTENT_TYPE}, boundary 0; `tiers.encode_token_message`) or hidden states of the real tokens "
            f"after layer j (Content-Type {CONTENT_TYPE}, the payload's next layer is j + 1; "
            f"`tiers.encode_hidden_message`); at most {settings.max_body_bytes} bytes in all. This tier accepts "
            f"boundaries {list(service.plan.accepts(service.tier))}. Requires {TOKEN_HEADER}. No metadata header "
            "is read (X-DIMEE-Meta, the format before the metadata moved into the body, is refused with 400)."
        ),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {CONTENT_TYPE: {"schema": binary}, TOKENS_CONTENT_TYPE: {"schema": binary}},
            },
            "parameters": [
                {
                    "name": TOKEN_HEADER,
                    "in": "header",
                    "required": True,
                    "description": "the tiers' shared secret (DIMEE_HANDOFF_TOKEN)",
                    "schema": {"type": "string", "minLength": MIN_TOKEN_CHARS},
                },
                {
                    "name": REQUEST_ID_HEADER,
                    "in": "header",
                    "required": False,
                    "description": f"kept if it matches {_REQUEST_ID.pattern}, else replaced by a generated id",
                    "schema": {"type": "string"},
                },
            ],
        },
    )
    async def handoff(request: Request) -> JsonAnswer:
        start = time.perf_counter()
        check_token(request, settings.token)
        media = check_content_type(request, (CONTENT_TYPE, TOKENS_CONTENT_TYPE))
        body = await read_body(request, settings.max_body_bytes)
        service.enter()
        try:
            answers, server_ms = await service.handoff(body, media, current_request_id(), start)
        finally:
            service.leave()
        return JsonAnswer(HandoffResponse(request_id=current_request_id(), server_ms=server_ms, answers=answers))

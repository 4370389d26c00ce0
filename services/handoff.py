"""Both ends of a handoff over HTTP: checks on the receiving side, the pooled client on the sending side.

Wire format: POST <target>/v1/handoff with either Content-Type tiers.CONTENT_TYPE, body =
tiers.encode_hidden_message bytes (the metadata section, then the hidden states after the boundary layer j; the
payload's next layer is j + 1), or Content-Type tiers.TOKENS_CONTENT_TYPE, body = tiers.encode_token_message
bytes (the metadata section, then the token ids: boundary 0); headers X-DIMEE-Token (shared secret) and
X-Request-ID. The answer is a HandoffResponse in JSON. Nothing is ever unpickled; the body is parsed only by
tiers.decode_hidden_message / tiers.decode_token_message (the one codec).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time

import httpx
from pydantic import ValidationError
from starlette.requests import Request

from tiers import CONTENT_TYPE

from .schemas import HandoffResponse

TOKEN_HEADER = "X-DIMEE-Token"
REQUEST_ID_HEADER = "X-Request-ID"


class InputError(Exception):
    """A request this service refuses, with the HTTP status and a reason for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class HandoffFailed(Exception):
    """The next tier did not answer usefully: `category` is one of `schemas.DEGRADED_REASONS` (the answer's
    degraded_reason and the metrics' label), `detail` the specifics for the log."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(detail)
        self.category = category
        self.detail = detail


# ---- receiving side ----------------------------------------------------------------------------------------
def check_token(request: Request, expected: str) -> None:
    """401 without a token, 403 with a wrong one; constant-time comparison."""
    given = request.headers.get(TOKEN_HEADER)
    if not given:
        raise InputError(401, f"missing {TOKEN_HEADER} header: handoffs need the shared token")
    if not expected or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8")):
        raise InputError(403, f"wrong {TOKEN_HEADER}")


def check_content_type(request: Request, expected: str | tuple[str, ...]) -> str:
    """The request's media type if it is one of `expected`; 415 otherwise."""
    allowed = (expected,) if isinstance(expected, str) else tuple(expected)
    given = request.headers.get("content-type", "")
    media = given.split(";", 1)[0].strip().lower()
    if media not in allowed:
        raise InputError(415, f"Content-Type must be {' or '.join(allowed)}, got {given or 'none'}")
    return media


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes.

    Content-Length is checked before reading anything; the stream is also capped, so a body sent without
    a length (chunked) or with a false one never grows past the limit in memory.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise InputError(400, f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise InputError(413, f"body of {int(declared)} bytes exceeds this tier's limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(413, f"body exceeds this tier's limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# ---- sending side ------------------------------------------------------------------------------------------
def make_client(request_timeout_s: float, connect_timeout_s: float) -> httpx.AsyncClient:
    """One pooled client per service. trust_env=False: a proxy from the environment must never see the
    hidden states or the token (and loopback traffic must not be routed through one)."""
    timeout = httpx.Timeout(request_timeout_s, connect=min(connect_timeout_s, request_timeout_s))
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
    return httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False, follow_redirects=False)


async def post_handoff(
    client: httpx.AsyncClient,
    base_url: str,
    token: str,
    request_id: str,
    body: bytes,
    timeout_s: float,
    expected_answers: int,
    content_type: str = CONTENT_TYPE,
) -> tuple[HandoffResponse, float]:
    """Send one handoff (`body`: a whole message, metadata section included); return the next tier's response
    and the round-trip time in ms.

    `timeout_s` bounds the whole exchange (asyncio.wait_for), not only each socket operation.
    """
    headers = {
        "Content-Type": content_type,
        TOKEN_HEADER: token,
        REQUEST_ID_HEADER: request_id,
    }
    start = time.perf_counter()
    try:
        response = await asyncio.wait_for(
            client.post(f"{base_url}/v1/handoff", content=body, headers=headers, timeout=timeout_s), timeout_s
        )
    except (asyncio.TimeoutError, httpx.TimeoutException) as err:
        raise HandoffFailed("next_tier_timeout", f"next tier did not answer within {timeout_s * 1000:.0f} ms") from err
    except httpx.HTTPError as err:
        raise HandoffFailed("next_tier_unreachable", f"next tier unreachable ({type(err).__name__}: {err})") from err
    rtt_ms = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise HandoffFailed("next_tier_error", f"next tier answered {response.status_code}: {_error_detail(response)}")
    try:
        parsed = HandoffResponse.model_validate_json(response.content)
    except ValidationError as err:
        detail = f"next tier's answer is not a handoff response ({err.error_count()} errors)"
        raise HandoffFailed("next_tier_bad_answer", detail) from err
    if len(parsed.answers) != expected_answers:
        raise HandoffFailed(
            "next_tier_bad_answer", f"next tier returned {len(parsed.answers)} answers for {expected_answers} samples"
        )
    return parsed, rtt_ms


def _error_detail(response: httpx.Response) -> str:
    try:
        return str(json.loads(response.content).get("detail", ""))[:300]
    except (ValueError, AttributeError):
        return response.text[:300]

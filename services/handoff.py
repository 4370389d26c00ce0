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
import logging
import time

import aiohttp
import orjson
from pydantic import ValidationError
from starlette.requests import Request

from tiers import CONTENT_TYPE

from .schemas import HandoffResponse

TOKEN_HEADER = "X-DIMEE-Token"
REQUEST_ID_HEADER = "X-Request-ID"

log = logging.getLogger("services.handoff")


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
class HandoffClient:
    """The pooled HTTP client a tier (or the device client) sends handoffs and readiness probes with.

    aiohttp: on loopback a 40 KB handoff round trip costs ~0.4 ms of client and server CPU with it against ~1.7 ms
    with httpx (measured on this machine for issue 14), most of a hop's overhead. trust_env=False: a proxy from the
    environment must never see the hidden states or the token (nor loopback traffic be routed through one);
    redirects are never followed. The session is opened on first use, inside the running event loop.
    """

    def __init__(self, request_timeout_s: float, connect_timeout_s: float, max_connections: int = 64) -> None:
        self.timeout = aiohttp.ClientTimeout(total=request_timeout_s, connect=min(connect_timeout_s, request_timeout_s))
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, trust_env=False)
        return self._session

    async def request(
        self, method: str, url: str, timeout_s: float, data: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        """Status and body of one request; `timeout_s` bounds the whole exchange (connect, send, read).
        Raises TimeoutError or aiohttp.ClientError (see `failure_code`)."""
        async with self._open().request(
            method, url, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False
        ) as response:
            return response.status, await response.read()

    async def probe(self, url: str, timeout_s: float) -> str:
        """'reachable' when GET `url` answers 200, else a `schemas.DEGRADED_REASONS` code (details logged)."""
        try:
            status, _ = await self.request("GET", url, timeout_s)
        except Exception as err:  # noqa: BLE001 - any failure is a code
            code = failure_code(err)
            log.info("probe of %s failed: %s (%s: %s)", url, code, type(err).__name__, err)
            return code
        if status != 200:
            log.warning("probe of %s answered %d", url, status)
            return "next_tier_error"
        return "reachable"

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def failure_code(err: BaseException) -> str:
    """The degraded_reason code of a failed request: next_tier_timeout or next_tier_unreachable."""
    return "next_tier_timeout" if isinstance(err, (asyncio.TimeoutError, TimeoutError)) else "next_tier_unreachable"


def make_client(request_timeout_s: float, connect_timeout_s: float) -> HandoffClient:
    """One pooled client per service."""
    return HandoffClient(request_timeout_s, connect_timeout_s)


async def post_handoff(
    client: HandoffClient,
    base_url: str,
    token: str,
    request_id: str,
    body: bytes,
    timeout_s: float,
    expected_answers: int,
    content_type: str = CONTENT_TYPE,
) -> tuple[HandoffResponse, float]:
    """Send one handoff (`body`: a whole message, metadata section included); return the next tier's response
    and the round-trip time in ms. `timeout_s` bounds the whole exchange, not only each socket operation."""
    headers = {"Content-Type": content_type, TOKEN_HEADER: token, REQUEST_ID_HEADER: request_id}
    start = time.perf_counter()
    try:
        status, content = await client.request("POST", f"{base_url}/v1/handoff", timeout_s, data=body, headers=headers)
    except (asyncio.TimeoutError, TimeoutError) as err:
        raise HandoffFailed("next_tier_timeout", f"next tier did not answer within {timeout_s * 1000:.0f} ms") from err
    except aiohttp.ClientError as err:
        raise HandoffFailed("next_tier_unreachable", f"next tier unreachable ({type(err).__name__}: {err})") from err
    rtt_ms = (time.perf_counter() - start) * 1000
    if status != 200:
        raise HandoffFailed("next_tier_error", f"next tier answered {status}: {_error_detail(content)}")
    try:
        parsed = HandoffResponse.model_validate_json(content)
    except ValidationError as err:
        detail = f"next tier's answer is not a handoff response ({err.error_count()} errors)"
        raise HandoffFailed("next_tier_bad_answer", detail) from err
    if len(parsed.answers) != expected_answers:
        raise HandoffFailed(
            "next_tier_bad_answer", f"next tier returned {len(parsed.answers)} answers for {expected_answers} samples"
        )
    return parsed, rtt_ms


def _error_detail(content: bytes) -> str:
    try:
        return str(orjson.loads(content).get("detail", ""))[:300]
    except (ValueError, AttributeError):
        return content[:300].decode("utf-8", errors="replace")

"""Sending handoffs to a replicated tier behind a proxy (Ray Serve): a handoff whose replica died is resent once.

A replica killed with requests in flight leaves the proxy without an answer for them: it answers their senders
with a 5xx of its own. A handoff is a pure function of its body, so the sending tier may resend it; the proxy then
gives it to a live replica, and the sample is answered as if nothing had happened instead of degraded. Nothing here
imports ray: the uvicorn services never use it, `services.ray_serve` installs it in every replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
from prometheus_client import Counter

from .handoff import REQUEST_ID_HEADER, HandoffClient

log = logging.getLogger("services.tier")  # the tier's logger: its retries are logged with its other messages

#: Statuses Ray's proxy answers with when the replica that had a request died or was not there; a tier's own
#: error answers (JSON with a request_id) are never resent.
RETRY_STATUSES = frozenset({500, 502, 503, 504})
#: Below this much of its timeout left, a handoff is not resent (the sender answers degraded as before).
MIN_RETRY_S = 0.05


class ReplicaRetryClient(HandoffClient):
    """The tier's handoff client, resending a handoff once when the replica that had it died: Ray's proxy answers
    a 5xx of its own (not the receiving tier's JSON answer) or the connection drops. A handoff is a pure function
    of its body, so resending it is safe; the proxy sends it to a live replica, within what is left of the same
    timeout. Readiness probes (GET) are never resent. `on_resend(reason)` is called before each resend (reason:
    'status_<code>' or 'connection')."""

    def __init__(
        self, request_timeout_s: float, connect_timeout_s: float, on_resend: Callable[[str], None] | None = None
    ) -> None:
        super().__init__(request_timeout_s, connect_timeout_s)
        self.on_resend = on_resend

    async def request(
        self, method: str, url: str, timeout_s: float, data: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        start = time.perf_counter()
        try:
            status, content = await super().request(method, url, timeout_s, data, headers)
        except aiohttp.ClientConnectionError as err:
            if method != "POST" or isinstance(err, asyncio.TimeoutError) or not self._resend_time(start, timeout_s):
                raise
            why, reason = type(err).__name__, "connection"
        else:
            if method != "POST" or status not in RETRY_STATUSES or _tier_answer(content):
                return status, content
            if not self._resend_time(start, timeout_s):
                return status, content
            why, reason = f"status {status}", f"status_{status}"
        rid = (headers or {}).get(REQUEST_ID_HEADER, "-")
        log.warning("handoff to %s failed (%s, request %s): resending it once to another replica", url, why, rid)
        if self.on_resend is not None:
            self.on_resend(reason)
        return await super().request(method, url, timeout_s - (time.perf_counter() - start), data, headers)

    @staticmethod
    def _resend_time(start: float, timeout_s: float) -> bool:
        return timeout_s - (time.perf_counter() - start) >= MIN_RETRY_S


def _tier_answer(content: bytes) -> bool:
    """Whether an error body is a DIMEE tier's own answer (JSON with a request_id), not the proxy's."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and "request_id" in body


def with_retrying_client(app: Any) -> None:
    """Wrap the app's lifespan: once the tier has started, its handoff client is a ReplicaRetryClient with the
    same timeouts (`services.handoff.make_client`'s; the replaced client had opened no session yet). Resends are
    counted in the tier's registry: dimee_handoff_resends_total{service, reason}."""
    service = app.state.service
    resends = Counter(
        "dimee_handoff_resends_total",
        "handoffs resent once because the proxy answered for a replica that died (or the connection dropped)",
        ("service", "reason"),
        registry=service.metrics.registry,
    )
    startup = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(inner: Any):
        async with startup(inner) as state:
            old = service.client
            if isinstance(old, HandoffClient) and not isinstance(old, ReplicaRetryClient):
                settings = service.settings
                count = lambda reason: resends.labels(service.tier, reason).inc()  # noqa: E731
                service.client = ReplicaRetryClient(settings.request_timeout_s, settings.connect_timeout_s, count)
                await old.aclose()
            yield state

    app.router.lifespan_context = lifespan

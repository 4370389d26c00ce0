"""The services' fast path (issue 14): a request alone in an idle tier runs its small forward pass on the event
loop, everything else through the batcher's worker thread; the aiohttp handoff client's failure codes."""

from __future__ import annotations

import asyncio
import threading

from services import MicroBatcher
from services.handoff import HandoffClient, failure_code
from services.launch import free_port


def _thread_names(items: list[int]) -> list[str]:
    return [threading.current_thread().name for _ in items]


def test_inline_submit_runs_on_the_event_loop_only_when_the_batcher_is_idle():
    async def main() -> tuple[list[str], list[str], list[list[str]]]:
        batcher = MicroBatcher(_thread_names, window_s=0.0, max_batch=8)
        await batcher.start()
        try:
            loop_thread = threading.current_thread().name
            inline = await batcher.submit([1], inline=True)
            queued = await batcher.submit([1])
            # two at once: the second finds the first queued or running, so it never runs inline
            both = await asyncio.gather(batcher.submit([1]), batcher.submit([2], inline=True))
        finally:
            await batcher.stop()
        return [loop_thread, *inline], queued, both

    (loop_thread, inline), queued, both = asyncio.run(main())
    assert inline == loop_thread
    assert queued[0].startswith("dimee-forward") and all(names[0].startswith("dimee-forward") for names in both)


def test_tier_is_alone_only_when_idle_and_small():
    from types import SimpleNamespace

    from services.tier import TierService

    service = SimpleNamespace(active=0, last_done=0.0, idle_before_s=0.0,
                              settings=SimpleNamespace(inline_forward_max=1, inline_idle_ms=2.0))  # fmt: skip
    TierService.enter(service)  # idle for a long time before: alone
    assert TierService._alone(service, [1]) and not TierService._alone(service, [1, 2])
    TierService.leave(service)
    service.settings.inline_idle_ms = 60_000.0  # "right after" even on a loaded machine (the test must not race)
    TierService.enter(service)  # right after the last one left (under load): not alone
    assert not TierService._alone(service, [1])
    TierService.enter(service)  # a second request inside: not alone
    assert service.active == 2 and not TierService._alone(service, [1])


def test_handoff_client_failures_are_reason_codes():
    async def main() -> tuple[str, str]:
        client = HandoffClient(request_timeout_s=2.0, connect_timeout_s=1.0)
        try:
            probe = await client.probe(f"http://127.0.0.1:{free_port()}/healthz", 1.0)
            try:
                await client.request("GET", f"http://127.0.0.1:{free_port()}/healthz", 1.0)
            except Exception as err:  # noqa: BLE001
                code = failure_code(err)
            return probe, code
        finally:
            await client.aclose()

    assert asyncio.run(main()) == ("next_tier_unreachable", "next_tier_unreachable")
    assert failure_code(asyncio.TimeoutError()) == failure_code(TimeoutError()) == "next_tier_timeout"

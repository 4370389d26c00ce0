"""The floor of one hop's HTTP stack on this machine: the same client (aiohttp) posting a body of a handoff's size
to a trivial uvicorn + FastAPI app (uvloop, httptools) that reads it and answers a small JSON, in another process.
`services_bench.py` measures it in the same run as the services, so a hop's overhead can be read against it."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import numpy as np


def _serve(port: int) -> None:
    import orjson
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(orjson.dumps({"bytes": len(body)}), media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", loop="auto", http="auto")


async def _round_trips(url: str, body: bytes, requests: int, warmup: int) -> list[float]:
    import aiohttp

    times = []
    async with aiohttp.ClientSession(trust_env=False) as client:
        for i in range(warmup + requests):
            start = time.perf_counter()
            async with client.post(url, data=body, headers={"Content-Type": "application/octet-stream"}) as response:
                await response.read()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return times


def stack_floor(body_bytes: int, requests: int = 300, warmup: int = 30) -> dict:
    """p50 / p99 ms of `requests` sequential round trips with a `body_bytes` body to a trivial app."""
    from services.launch import free_port

    port = free_port()
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    process.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                times = asyncio.run(_round_trips(f"http://127.0.0.1:{port}/echo", b"\0" * body_bytes, requests, warmup))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        process.terminate()
        process.join(10)
    return {"body_bytes": body_bytes, "requests": len(times), "p50_ms": float(np.percentile(times, 50)),
            "p99_ms": float(np.percentile(times, 99))}  # fmt: skip


if __name__ == "__main__":
    print(stack_floor(37_700))

"""The three tiers on a local Ray Serve instance (`services.ray_serve`), two edge replicas: the same HTTP API,
token check, health and metrics as the uvicorn services, the same answers as the one-process model, and an edge
replica killed (ray.kill) in the middle of 200 requests loses none of them: no 5xx, nothing degraded, every
label as in one process.

Marked `ray` and skipped when ray is not installed (pip install -e .[ray]); run it with
`.venv/bin/python -m pytest -q -p no:cacheprovider -m ray tests/test_ray_serve.py`."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from services.launch import free_port
from services.policy import softmax
from tests.factories import metric_value, tiny_run_folder
from tiers import EarlyExitModel

ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e .[ray]")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install -e .[ray]")

pytestmark = pytest.mark.ray

TOKEN = "ray-test-token-0123456789abcdef"
TEXTS = [
    "a good film",
    "the acting was brilliant but the plot was dull , and the ending sad",
    "boring",
    "i love this movie !",
    "the cast is funny and the music great",
    "not very good , not very bad",
    "i hate the ending",
    "the director is brilliant",
]
REQUESTS, CLIENTS, KILL_AFTER = 200, 8, 60


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run_folder(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def reference(run_dir):
    """Per-exit logits [n, L, C] of the one-process model, one text at a time."""
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "encoder")
    model = EarlyExitModel.from_pretrained(run_dir)
    with torch.no_grad():
        return np.stack([model(**tokenizer([text], return_tensors="pt"))[0].numpy() for text in TEXTS])


@pytest.fixture(scope="module")
def tiers(run_dir):
    from services.ray_config import parse_replicas
    from services.ray_serve import local_tiers

    settings = {"batch_window_ms": "5", "request_timeout_s": "30"}
    with local_tiers(
        str(run_dir), parse_replicas("mobile=1,edge=2,cloud=1"), TOKEN, free_port(), settings=settings
    ) as urls:
        yield urls


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=60.0, trust_env=False) as http:
        yield http


def _expected(reference: np.ndarray, i: int) -> tuple[str, int, int]:
    """(tier, exit, label) of text i under the built-in rule (threshold 0.9 at each tier's last exit)."""
    for tier, exit_index in (("mobile", 2), ("edge", 4)):
        if softmax(reference[i, exit_index - 1]).max() >= 0.9:
            return tier, exit_index, int(np.argmax(reference[i, exit_index - 1]))
    return "cloud", 6, int(np.argmax(reference[i, 5]))


def test_same_api_health_token_and_metrics_behind_the_proxy(tiers, client):
    for tier, url in tiers.items():
        assert client.get(f"{url}/healthz").json() == {"status": "ok", "tier": tier}
        ready = client.get(f"{url}/readyz")
        assert ready.status_code == 200, ready.text
    assert client.get(f"{tiers['mobile']}/readyz").json()["edge_tier"] == "reachable"
    assert client.post(f"{tiers['edge']}/v1/handoff", content=b"x").status_code == 401
    wrong = client.post(f"{tiers['edge']}/v1/handoff", content=b"x", headers={"X-DIMEE-Token": "w" * 20})
    assert wrong.status_code == 403
    bad = client.post(f"{tiers['mobile']}/v1/classify", json={"text": ""})
    assert bad.status_code == 422, bad.text
    metrics = client.get(f"{tiers['mobile']}/metrics")  # one mobile replica: the one that answered the 422
    assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
    # the app sees its own paths (not /mobile/...): the 422 is counted under /v1/classify, not 'other'
    assert metric_value(metrics.text, "dimee_requests_total", endpoint="/v1/classify", status="422") == 1
    assert client.get(f"{tiers['edge']}/metrics").status_code == 200  # one of the two edge replicas answers


def test_answers_equal_the_one_process_model(tiers, client, reference):
    response = client.post(f"{tiers['mobile']}/v1/classify", json={"texts": TEXTS})
    assert response.status_code == 200, response.text
    for i, prediction in enumerate(response.json()["predictions"]):
        tier, exit_index, label = _expected(reference, i)
        assert (prediction["tier"], prediction["exit"], prediction["label"]) == (tier, exit_index, label)
        assert not prediction["degraded"]
        expected = softmax(reference[i, exit_index - 1])
        assert np.abs(np.asarray(prediction["probabilities"]) - expected).max() <= 1e-5
    assert any(_expected(reference, i)[0] != "mobile" for i in range(len(TEXTS)))  # edge is on the path


def test_killing_an_edge_replica_mid_run_loses_nothing(tiers, client, reference):
    """200 single-text requests from 8 clients; after 60 answers one of the two edge replicas is killed
    (ray.kill, no graceful shutdown). Every request is answered 200, none degraded, each label as in one process;
    Serve replaces the replica."""
    from services.ray_serve import replica_actors

    edges = replica_actors("edge")
    assert len(edges) == 2
    outcomes: list[tuple[int, int, dict | None]] = []
    lock = threading.Lock()

    def send(k: int) -> None:
        i = k % len(TEXTS)
        with httpx.Client(timeout=60.0, trust_env=False) as http:
            response = http.post(f"{tiers['mobile']}/v1/classify", json={"text": TEXTS[i]})
        body = response.json()["predictions"][0] if response.status_code == 200 else None
        with lock:
            outcomes.append((i, response.status_code, body))

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(send, k) for k in range(REQUESTS)]
        deadline = time.monotonic() + 120
        while len(outcomes) < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.01)
        ray.kill(edges[0], no_restart=True)
        killed_at = len(outcomes)
        for future in futures:
            future.result()
    statuses = Counter(status for _, status, _ in outcomes)
    assert len(outcomes) == REQUESTS and statuses == {200: REQUESTS}, statuses
    assert killed_at < REQUESTS - CLIENTS  # the kill happened with requests still to come
    degraded = Counter(body["degraded_reason"] for _, _, body in outcomes if body["degraded"])
    assert not degraded, degraded
    wrong = [
        (i, body) for i, _, body in outcomes if (body["tier"], body["exit"], body["label"]) != _expected(reference, i)
    ]
    assert not wrong, wrong[:3]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(replica_actors("edge")) < 2:
        time.sleep(0.5)
    assert len(replica_actors("edge")) == 2  # Serve started a replacement
    text = client.get(f"{tiers['mobile']}/metrics").text
    assert metric_value(text, "dimee_requests_total", endpoint="/v1/classify", status="200") >= REQUESTS
    resent = metric_value(text, "dimee_handoff_resends_total", service="mobile")
    print(f"kill after {killed_at} answers: {REQUESTS} answered 200, 0 degraded; mobile resent {resent:.0f} handoff(s)")

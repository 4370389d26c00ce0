"""The three tiers as real uvicorn processes on loopback: answers equal the one-process model, cost fields
add up, concurrent requests are batched and answered correctly, and a tier going down degrades, never fails.
A fitted DIMEE policy (clustering) served by real uvicorn servers routes every sample as its offline predict.

The fault tests stop tiers, so they run last (pytest keeps file order)."""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from services import TierSettings, create_app, start_all
from services.launch import free_port
from services.policy import softmax
from tests.factories import tiny_run_folder
from tiers import CostModel, EarlyExitModel, TierPlan, load_tier_part, payload_size

pytestmark = pytest.mark.services

PLAN = TierPlan(2, 4, 6)
HIDDEN = 32
TEXTS = [
    "a good film",
    "the acting was brilliant but the plot was dull , and the ending sad",
    "boring",
    "i love this movie !",
]
LAST_EXIT = {"mobile": 2, "edge": 4, "cloud": 6}
TOKEN = "e2e-test-token-0123456789"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run_folder(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def tiers_up(run_dir, tmp_path_factory):
    group = start_all(
        run_dir,
        log_dir=tmp_path_factory.mktemp("logs"),
        env={"DIMEE_BATCH_WINDOW_MS": "20", "DIMEE_REQUEST_TIMEOUT_S": "30"},
        ready_timeout_s=90,
    )
    with group:
        yield group


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=60.0, trust_env=False) as http:
        yield http


@pytest.fixture(scope="module")
def reference(run_dir):
    """Per-exit logits [n, L, C] and real-token counts from the one-process model, one text at a time."""
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "encoder")
    model = EarlyExitModel.from_pretrained(run_dir)
    logits, counts = [], []
    with torch.no_grad():
        for text in TEXTS:
            encoded = tokenizer([text], return_tensors="pt")
            logits.append(model(**encoded)[0].numpy())
            counts.append(int(encoded["attention_mask"].sum()))
    return np.stack(logits), counts


def _classify(client, group, body, **headers):
    response = client.post(f"{group.mobile_url}/v1/classify", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("tier", ["mobile", "edge", "cloud"])
def test_forced_tier_matches_one_process_model(tiers_up, client, reference, tier):
    logits, _ = reference
    result = _classify(client, tiers_up, {"texts": TEXTS, "force_tier": tier})
    exit_index = LAST_EXIT[tier]
    for i, prediction in enumerate(result["predictions"]):
        expected = softmax(logits[i, exit_index - 1])
        assert (prediction["tier"], prediction["exit"], prediction["degraded"]) == (tier, exit_index, False)
        assert prediction["label"] == int(np.argmax(expected))
        assert np.abs(np.asarray(prediction["probabilities"]) - expected).max() <= 1e-5


@pytest.mark.parametrize("tier", ["mobile", "edge", "cloud"])
def test_cost_fields_add_up(tiers_up, client, reference, tier):
    _, counts = reference
    cost_model = CostModel()  # tiny_run_folder's cost model
    result = _classify(client, tiers_up, {"texts": TEXTS, "force_tier": tier})
    hops = {"mobile": [], "edge": ["mobile_edge"], "cloud": ["mobile_edge", "edge_cloud"]}[tier]
    for count, prediction in zip(counts, result["predictions"]):
        cost = prediction["cost"]
        assert cost["bytes_per_hop"] == {hop: payload_size([count], HIDDEN, "fp32") for hop in hops}
        assert cost["layers"] == {t: (2 if LAST_EXIT[t] <= LAST_EXIT[tier] else 0) for t in LAST_EXIT}
        parts = sum(cost["compute_units"].values()) + sum(cost["offload_units"].values())
        assert cost["total_units"] == pytest.approx(parts, abs=1e-12)
        assert sorted(cost["offload_units"]) == sorted(hops)
        assert cost["normalised"] == pytest.approx(cost["total_units"] / cost_model.reference_cost(PLAN))
        expected_total = cost_model.exit_costs(PLAN)[LAST_EXIT[tier] - 1]  # constant hop costs: no rate set
        assert cost["total_units"] == pytest.approx(expected_total)
        wall_keys = {"mobile"} | set(hops) | {t for t in ("edge", "cloud") if LAST_EXIT[t] <= LAST_EXIT[tier]}
        assert set(cost["wall_ms"]) == wall_keys and all(v >= 0 for v in cost["wall_ms"].values())


def test_request_id_crosses_hops(tiers_up, client):
    result = _classify(client, tiers_up, {"text": "good", "force_tier": "cloud"}, **{"X-Request-ID": "trace-42"})
    assert result["request_id"] == "trace-42"
    cloud_log = (tiers_up.log_dir / "cloud.log").read_text()
    assert "rid=trace-42" in cloud_log


def test_concurrent_requests_are_batched_and_answered_correctly(tiers_up, client, reference):
    logits, _ = reference
    jobs = [(i % len(TEXTS), ("mobile", "edge", "cloud")[i % 3]) for i in range(12)]

    def one(job):
        index, tier = job
        return _classify(client, tiers_up, {"text": TEXTS[index], "force_tier": tier})["predictions"][0]

    with ThreadPoolExecutor(max_workers=12) as pool:
        predictions = list(pool.map(one, jobs))
    for (index, tier), prediction in zip(jobs, predictions):
        expected = softmax(logits[index, LAST_EXIT[tier] - 1])
        assert prediction["tier"] == tier and not prediction["degraded"]
        assert np.abs(np.asarray(prediction["probabilities"]) - expected).max() <= 1e-5
    metrics = client.get(f"{tiers_up.mobile_url}/metrics").text
    single = float(re.search(r'dimee_forward_batch_size_bucket\{service="mobile",le="1"\} (\S+)', metrics).group(1))
    total = float(re.search(r'dimee_forward_batch_size_count\{service="mobile"\} (\S+)', metrics).group(1))
    assert single < total  # at least one forward pass held more than one sample


def test_readiness_and_health(tiers_up, client):
    for url in tiers_up.urls.values():
        assert client.get(f"{url}/healthz").status_code == 200
        assert client.get(f"{url}/readyz").status_code == 200
    handoff = client.post(f"{tiers_up.urls['edge']}/v1/handoff", content=b"x")
    assert handoff.status_code == 401  # the real processes refuse handoffs without the token


# ---- a fitted DIMEE policy (clustering) routes the same way online as offline --------------------------------
def _reference_with_features(run: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-exit logits [n, L, C] and mean-pooled embedding features [n, d], one text at a time."""
    tokenizer = AutoTokenizer.from_pretrained(run / "encoder")
    model = EarlyExitModel.from_pretrained(run)
    mobile = load_tier_part(run, PLAN, "mobile")
    logits, features = [], []
    with torch.no_grad():
        for text in texts:
            encoded = tokenizer([text], return_tensors="pt")
            logits.append(model(**encoded)[0].numpy())
            out = mobile.run_from_ids(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])
            features.append(out.embedding_feature[0].numpy())
    return np.stack(logits), np.stack(features).astype(np.float64)


@contextmanager
def _uvicorn_in_thread(app):
    """Serve `app` on a free loopback port from a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "in-thread server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def test_fitted_dimee_policy_routes_as_offline(tmp_path):
    """policy.json with DIMEE on embedding features: mobile, edge and cloud consult it with the features mobile
    computed (they travel in X-DIMEE-Meta); every answer's exit equals the policy's offline `predict`.
    Mobile and edge decide on a whole request at once, so this also checks batched decisions."""
    clustering = pytest.importorskip("clustering")
    if not hasattr(clustering, "DimeePolicy"):
        pytest.skip("clustering.DimeePolicy not available")
    run = tiny_run_folder(tmp_path / "run")
    rng = np.random.default_rng(0)
    # Two vocabularies, so the embedding features form two clear groups. Group A is labelled by mobile's exit
    # (right at mobile); group B keeps texts where edge's exit disagrees with mobile's and is labelled by edge's
    # exit (wrong at mobile, right at edge): the fitted policy answers A at mobile and hands B off with features.
    vocab_a = ["good", "great", "brilliant", "fun", "funny", "love", "like", "music", "cast", "!"]
    vocab_b = ["bad", "awful", "boring", "dull", "sad", "hate", "not", "script", "ending", "?"]
    candidates = [
        " ".join(rng.choice(vocab, size=rng.integers(2, 10))) for vocab in (vocab_a, vocab_b) for _ in range(30)
    ]
    logits, features = _reference_with_features(run, candidates)
    votes = logits.argmax(-1)
    in_b = np.arange(len(candidates)) >= 30
    keep = ~in_b | (votes[:, 3] != votes[:, 1])
    texts = [text for text, kept in zip(candidates, keep) if kept]
    logits, features, votes, in_b = logits[keep], features[keep], votes[keep], in_b[keep]
    labels = np.where(in_b, votes[:, 3], votes[:, 1])
    policy = clustering.DimeePolicy(
        plan=PLAN, cost_model=CostModel(), feature="embedding", k_grid=(2, 3, 4), n_folds=2, mu=0.05
    ).fit(logits, labels, features)
    (run / "policy.json").write_text(json.dumps(policy.to_dict()))
    expected = policy.predict(logits, features)

    # Edge and cloud as uvicorn servers in threads of this process (cheaper than three more processes).
    common = {"run_dir": run, "handoff_token": TOKEN}
    with _uvicorn_in_thread(create_app(TierSettings(tier="cloud", **common))) as cloud_url:
        with _uvicorn_in_thread(create_app(TierSettings(tier="edge", next_url=cloud_url, **common))) as edge_url:
            mobile_app = create_app(TierSettings(tier="mobile", next_url=edge_url, **common))
            with TestClient(mobile_app) as mobile:
                response = mobile.post("/v1/classify", json={"texts": texts})
    assert response.status_code == 200, response.text
    result = response.json()
    assert "DimeePolicy" in result["policy"]
    for i, prediction in enumerate(result["predictions"]):
        assert not prediction["degraded"]
        assert (prediction["exit"], prediction["tier"]) == (expected[i], PLAN.tier_of_exit(int(expected[i])))
        probabilities = softmax(logits[i, expected[i] - 1])
        assert np.abs(np.asarray(prediction["probabilities"]) - probabilities).max() <= 1e-5
    assert len({p["tier"] for p in result["predictions"]}) > 1  # the check covered a handoff with features


# ---- faults (these stop tiers: keep them last) ---------------------------------------------------------------
def test_cloud_down_edge_answers_degraded(tiers_up, client, reference):
    logits, _ = reference
    tiers_up.stop("cloud")
    result = _classify(client, tiers_up, {"texts": TEXTS, "force_tier": "cloud"})
    for i, prediction in enumerate(result["predictions"]):
        assert (prediction["tier"], prediction["exit"], prediction["degraded"]) == ("edge", 4, True)
        assert "cloud tier failed" in prediction["degraded_reason"]
        assert np.abs(np.asarray(prediction["probabilities"]) - softmax(logits[i, 3])).max() <= 1e-5
    assert client.get(f"{tiers_up.urls['edge']}/readyz").status_code == 503


def test_edge_down_every_request_still_answers(tiers_up, client, reference):
    logits, _ = reference
    tiers_up.stop("edge")
    for body in ({"texts": TEXTS}, {"texts": TEXTS, "force_tier": "edge"}, {"text": TEXTS[0], "force_tier": "cloud"}):
        for i, prediction in enumerate(_classify(client, tiers_up, body)["predictions"]):
            assert (prediction["tier"], prediction["exit"], prediction["degraded"]) == ("mobile", 2, True)
            assert np.abs(np.asarray(prediction["probabilities"]) - softmax(logits[i, 1])).max() <= 1e-5
            assert prediction["cost"]["layers"] == {"mobile": 2, "edge": 0, "cloud": 0}
    forced_mobile = _classify(client, tiers_up, {"text": "good", "force_tier": "mobile"})["predictions"][0]
    assert not forced_mobile["degraded"]
    assert client.get(f"{tiers_up.mobile_url}/readyz").status_code == 503
    assert client.get(f"{tiers_up.mobile_url}/healthz").status_code == 200
    metrics = client.get(f"{tiers_up.mobile_url}/metrics").text
    assert re.search(r'dimee_degraded_total\{reason="unreachable",service="mobile"\} ([1-9]\d*)', metrics)

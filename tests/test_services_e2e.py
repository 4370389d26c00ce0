"""The three tiers as real uvicorn processes on loopback: answers equal the one-process model, cost fields
add up, concurrent requests are batched and answered correctly, and a tier going down degrades, never fails.
A fitted DIMEE policy (clustering) served by three real uvicorn processes routes and costs every sample as its
offline outcome, direct routes (token ids straight to cloud) included.

The fault tests stop tiers, so they run last (pytest keeps file order)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from services import start_all
from services.policy import softmax
from tests.factories import metric_value, tiny_run_folder
from services.tier import parse_stop
from tiers import CostModel, EarlyExitModel, TierPlan, token_payload_size

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


# ---- a fitted policy (clustering) routes the same way online as offline (its own three processes, started and
# stopped before the module's group starts: never six processes at once on a small machine) -------------------
def test_fitted_policy_routes_and_costs_as_offline_through_three_processes(tmp_path):
    """policy.json with DIMEE on embedding features, served by three real uvicorn processes: some samples go as
    token ids straight to cloud (or edge), some answer on mobile; every answer's route, exit, label and
    normalised cost equal the policy's offline outcome, costed by `CostModel.path_costs` (max abs difference
    <= 1e-9), for the whole request at once and for each text alone."""
    from clustering import DimeePolicy
    from tests.test_services_routes import _check_served, _group_b, _offline, _reference, _texts, biased_run

    run = biased_run(tmp_path / "run")
    fit_texts, texts = _texts(80, 1), _texts(16, 2)
    logits, features, _ = _reference(run, fit_texts)
    policy = DimeePolicy(
        plan=PLAN, cost_model=CostModel(), feature="embedding", k_grid=(2, 3), n_folds=2, n_init=2, mu=0.05
    ).fit(logits, np.where(_group_b(len(fit_texts)), 0, 1), features)
    (run / "policy.json").write_text(json.dumps(policy.to_dict()))
    eval_logits, eval_features, counts = _reference(run, texts)
    data = {"texts": texts, "logits": eval_logits, "features": eval_features, "counts": counts}
    expected = _offline(policy, data)
    assert ["mobile@0", "cloud@0"] in expected["routes"]  # the premise: a direct route to cloud is covered
    env = {"DIMEE_BATCH_WINDOW_MS": "5", "DIMEE_REQUEST_TIMEOUT_S": "30"}
    with start_all(run, log_dir=tmp_path / "logs", env=env, ready_timeout_s=90) as group:
        with httpx.Client(timeout=60.0, trust_env=False) as http:
            together = _classify(http, group, {"texts": texts})
            alone = [_classify(http, group, {"text": text})["predictions"][0] for text in texts]
    assert "DimeePolicy" in together["policy"]
    _check_served(together["predictions"], expected, data)
    _check_served(alone, expected, data)
    direct = [p for p in alone if p["route"] == ["mobile@0", "cloud@0"]]
    assert direct and all(p["cost"]["layers"] == {"mobile": 0, "edge": 0, "cloud": p["exit"]} for p in direct)
    assert all(set(p["cost"]["bytes_per_hop"]) == {"mobile_cloud"} for p in direct)


# ---- the module's three processes, no policy.json ------------------------------------------------------------
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
    """Forced to edge or cloud, a sample goes there as token ids (the direct route): all-cloud costs exactly 1."""
    _, counts = reference
    cost_model = CostModel()  # tiny_run_folder's cost model
    result = _classify(client, tiers_up, {"texts": TEXTS, "force_tier": tier})
    hops = {"mobile": [], "edge": ["mobile_edge"], "cloud": ["mobile_cloud"]}[tier]
    route = {"mobile": ["mobile@0"], "edge": ["mobile@0", "edge@0"], "cloud": ["mobile@0", "cloud@0"]}[tier]
    paths = cost_model.path_costs(PLAN, [tuple(parse_stop(s) for s in route)], token_counts=counts, hidden_size=HIDDEN)
    for i, (count, prediction) in enumerate(zip(counts, result["predictions"])):
        cost = prediction["cost"]
        assert prediction["route"] == route
        assert cost["bytes_per_hop"] == {hop: token_payload_size([count]) for hop in hops}
        assert cost["layers"] == {t: (LAST_EXIT[t] if t == tier else 0) for t in LAST_EXIT}
        parts = sum(cost["compute_units"].values()) + sum(cost["offload_units"].values())
        assert cost["total_units"] == pytest.approx(parts, abs=1e-12)
        assert sorted(cost["offload_units"]) == sorted(hops)
        reference_units = cost_model.reference_units(PLAN, token_payload_size([count]))
        assert cost["normalised"] == pytest.approx(cost["total_units"] / reference_units, abs=1e-12)
        assert abs(cost["normalised"] - paths[i, 0, LAST_EXIT[tier] - 1]) <= 1e-9  # the offline accounting
        if tier == "cloud":
            assert cost["normalised"] == 1.0
        wall_keys = {"mobile"} | set(hops) | ({tier} - {"mobile"})
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
    single = metric_value(metrics, "dimee_forward_batch_size_bucket", service="mobile", le="1.0")
    total = metric_value(metrics, "dimee_forward_batch_size_count", service="mobile")
    assert single < total  # at least one forward pass held more than one sample


def test_readiness_and_health(tiers_up, client):
    for url in tiers_up.urls.values():
        assert client.get(f"{url}/healthz").status_code == 200
        assert client.get(f"{url}/readyz").status_code == 200
    handoff = client.post(f"{tiers_up.urls['edge']}/v1/handoff", content=b"x")
    assert handoff.status_code == 401  # the real processes refuse handoffs without the token


# ---- faults (these stop tiers: keep them last) ---------------------------------------------------------------
def test_cloud_down_edge_answers_degraded(tiers_up, client, reference):
    logits, _ = reference
    tiers_up.stop("cloud")
    # the built-in rule hands these (unconfident) samples along the chain: edge answers them at its last exit
    result = _classify(client, tiers_up, {"texts": TEXTS})
    for i, prediction in enumerate(result["predictions"]):
        assert (prediction["tier"], prediction["exit"], prediction["degraded"]) == ("edge", 4, True)
        assert prediction["route"] == ["mobile@0", "edge@2"]
        assert prediction["degraded_reason"] == "next_tier_unreachable"
        assert np.abs(np.asarray(prediction["probabilities"]) - softmax(logits[i, 3])).max() <= 1e-5
    # forced to cloud: token ids straight there fail, so mobile runs its own layers and answers at m
    result = _classify(client, tiers_up, {"texts": TEXTS, "force_tier": "cloud"})
    for i, prediction in enumerate(result["predictions"]):
        assert (prediction["route"], prediction["exit"], prediction["degraded"]) == (["mobile@0"], 2, True)
        assert prediction["degraded_reason"] == "next_tier_unreachable"
        assert np.abs(np.asarray(prediction["probabilities"]) - softmax(logits[i, 1])).max() <= 1e-5
    assert client.get(f"{tiers_up.urls['edge']}/readyz").status_code == 503
    assert client.get(f"{tiers_up.mobile_url}/readyz").status_code == 503  # mobile's direct link is down too


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
    assert metric_value(metrics, "dimee_degraded_total", reason="next_tier_unreachable", service="mobile") >= 1

"""The services speak routes (in process): each tier runs only the layers the fitted policy needs, a policy may
send token ids straight to edge or cloud, every answer carries its route, and the served exit, route, label
and normalised cost of every sample equal the policy's offline outcome on the same texts' cached logits
(`ExitPolicy.predict_outcome`, costed with `CostModel.path_costs`), at batch 1 and batch 32 alike.

Edge and cloud are TestClients; mobile's (and edge's) handoffs reach them through a patched `post_handoff`,
so the bodies, headers and answers are the real wire format."""

from __future__ import annotations

import asyncio
import json
import shutil
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import services.relay as relay_module
from clustering import (
    AllCloudPolicy,
    AllEdgePolicy,
    AllMobilePolicy,
    DimeePolicy,
    PatiencePolicy,
    ThresholdPolicy,
)
from clustering.profiles import exit_scores
from services import HandoffMeta, HandoffResponse, PolicyLoadError, TierSettings, create_app
from services.policy import ThresholdPolicy as BuiltInThreshold
from services.policy import forced_actions, load_policy
from tests.factories import metric_value, tiny_run_folder, tiny_tokenizer
from tiers import (
    CONTENT_TYPE,
    CONTINUE,
    HANDOFF_CLOUD,
    HANDOFF_EDGE,
    TOKENS_CONTENT_TYPE,
    CostModel,
    EarlyExitModel,
    TierPlan,
    decode_meta,
    encode_handoff,
    encode_meta,
    encode_tokens,
    hop_payload_size,
    load_tier_part,
    run_routed,
    slice_model,
)
from tiers.model import pool_hidden

TOKEN = "routes-test-token-0123456789"
PLAN = TierPlan(2, 4, 6)
HIDDEN = 32
EDGE_URL, CLOUD_URL = "http://edge.test", "http://cloud.test"
N_EVAL = 32
TOL = 1e-9


VOCAB_A = ["good", "great", "brilliant", "fun", "funny", "love", "like", "music", "cast", "!"]
VOCAB_B = ["bad", "awful", "boring", "dull", "sad", "hate", "not", "script", "ending", "?"]


def _texts(n: int, seed: int) -> list[str]:
    """n/2 texts over vocabulary A, then n/2 over vocabulary B: two clear groups of embedding features."""
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(vocab, size=int(rng.integers(1, 12)))) for vocab in (VOCAB_A, VOCAB_B) for _ in range(n // 2)
    ]


def _group_b(n: int) -> np.ndarray:
    return np.arange(n) >= n // 2


def biased_run(folder: Path) -> Path:
    """A tiny random-init run whose mobile exits (1, 2) lean towards class 1, so that a sample labelled 0 is
    right only on edge or cloud (exits 3.. vary with the input): the fitted policies use every tier."""
    tiny_run_folder(folder)
    model = EarlyExitModel.from_pretrained(folder).eval()
    with torch.no_grad():
        for head in list(model.exits)[:2]:
            head.classifier.bias += torch.tensor([-0.7, 0.7])
    model.save_pretrained(folder, tokenizer=tiny_tokenizer())
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return biased_run(tmp_path_factory.mktemp("run"))


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _reference(run: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-exit logits [n, L, C] of the one-pass model, embedding features [n, d] and token counts, one text
    at a time (what a cached split holds)."""
    tokenizer = tiny_tokenizer()
    model = EarlyExitModel.from_pretrained(run).eval()
    mobile = load_tier_part(run, PLAN, "mobile").eval()
    logits, features, counts = [], [], []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer([text], return_tensors="pt")
            logits.append(model(**enc)[0].numpy())
            hidden = mobile.embed(enc["input_ids"], enc["token_type_ids"])
            features.append(pool_hidden(hidden, enc["attention_mask"], "mean")[0].numpy())
            counts.append(int(enc["attention_mask"].sum()))
    return np.stack(logits).astype(np.float64), np.stack(features).astype(np.float64), np.array(counts)


@pytest.fixture(scope="module")
def data(run_dir):
    fit_texts, eval_texts = _texts(80, 1), _texts(N_EVAL, 2)
    fit_logits, fit_features, _ = _reference(run_dir, fit_texts)
    logits, features, counts = _reference(run_dir, eval_texts)
    # group A labelled 1 (right on mobile), group B 0: right only where a deeper exit says so
    labels = np.where(_group_b(len(fit_texts)), 0, 1)
    return {
        "fit": (fit_logits, labels, fit_features),
        "texts": eval_texts,
        "logits": logits,
        "features": features,
        "counts": counts,
    }


def _safe_threshold(scores: np.ndarray, quantile: float) -> float:
    """A threshold near the `quantile` of the scores with no score within 1e-4 of it (tiny float differences
    between padded batch shapes must not flip a decision)."""
    values = np.unique(scores.ravel())
    gaps = np.diff(values)
    centre = np.quantile(values, quantile)
    candidates = np.flatnonzero(gaps > 4e-4)
    best = candidates[np.argmin(np.abs(values[candidates] - centre))]
    return float((values[best] + values[best + 1]) / 2)


def _policies(data) -> dict[str, object]:
    logits, labels, features = data["fit"]
    common = {"plan": PLAN, "cost_model": CostModel()}
    scores = exit_scores(np.concatenate([logits, data["logits"]]), "confidence", None)
    threshold = _safe_threshold(scores[:, :-1], 0.9)
    dimee = {"k_grid": (2, 3), "n_folds": 2, "n_init": 2, "mu": 0.05}
    return {
        "threshold": ThresholdPolicy(threshold=threshold, **common),
        "all-mobile": AllMobilePolicy(**common),
        "all-edge": AllEdgePolicy(**common),
        "all-cloud": AllCloudPolicy(**common),
        "patience": PatiencePolicy(patience=2, **common),
        "dimee-profile": DimeePolicy(feature="profile", **dimee, **common),
        "dimee-embedding": DimeePolicy(feature="embedding", **dimee, **common),
        "dimee-cascade": DimeePolicy(decision_exits="all", **dimee, **common),
        "dimee-entry-cascade": DimeePolicy(decision_exits="all", entry="embedding", **dimee, **common),
        "dimee-entry-threshold": DimeePolicy(
            decision_exits="all", entry="embedding", exit_threshold=threshold, **dimee, **common
        ),
    }


@contextmanager
def _three_tiers(run: Path, **mobile_extra):
    """Mobile, edge and cloud apps in process; handoffs go through the real endpoints."""
    with ExitStack() as stack:
        common = {"run_dir": run, "handoff_token": TOKEN, "batch_window_ms": 1}
        cloud = stack.enter_context(
            TestClient(create_app(TierSettings(tier="cloud", **common)), raise_server_exceptions=False)
        )
        edge = stack.enter_context(
            TestClient(create_app(TierSettings(tier="edge", next_url=CLOUD_URL, **common)), raise_server_exceptions=False)
        )
        targets = {EDGE_URL: edge, CLOUD_URL: cloud}
        sent: list[tuple[str, str, HandoffMeta, int]] = []

        async def post(client, base_url, token, request_id, body, timeout_s, expected, content_type=CONTENT_TYPE):
            sent.append((base_url, content_type, decode_meta(body)[0], len(body)))
            headers = {"Content-Type": content_type, "X-DIMEE-Token": token}
            response = await asyncio.to_thread(targets[base_url].post, "/v1/handoff", content=body, headers=headers)
            assert response.status_code == 200, response.text
            return HandoffResponse.model_validate_json(response.content), 1.0

        patch = pytest.MonkeyPatch()
        patch.setattr(relay_module, "post_handoff", post)
        stack.callback(patch.undo)
        mobile_settings = TierSettings(
            tier="mobile", next_url=EDGE_URL, cloud_url=CLOUD_URL, **{**common, **mobile_extra}
        )
        mobile = stack.enter_context(TestClient(create_app(mobile_settings), raise_server_exceptions=False))
        yield mobile, sent


def _offline(policy, data) -> dict[str, np.ndarray | list]:
    features = data["features"] if policy.n_features_ is not None else None
    outcome = policy.predict_outcome(data["logits"], features)
    n = len(data["texts"])
    table = policy.cost_model_.path_costs(
        policy.plan_, list(outcome.table.paths), token_counts=data["counts"], hidden_size=HIDDEN
    )
    costs = table[np.arange(n), outcome.routes, outcome.depths - 1]
    routes = [[f"{tier}@{entry}" for tier, entry in outcome.table.paths[r]] for r in outcome.routes]
    labels = data["logits"][np.arange(n), outcome.exits - 1].argmax(-1)
    return {"exits": outcome.exits, "routes": routes, "labels": labels, "costs": costs, "depths": outcome.depths}


def _check_served(predictions: list[dict], expected: dict, data) -> None:
    for i, p in enumerate(predictions):
        assert not p["degraded"], p["degraded_reason"]
        assert p["route"] == expected["routes"][i], i
        assert p["exit"] == expected["exits"][i], i
        assert p["label"] == expected["labels"][i], i
        assert abs(p["cost"]["normalised"] - expected["costs"][i]) <= TOL, (i, p["cost"], expected["costs"][i])
        assert p["tier"] == p["route"][-1].split("@")[0]
        # layers charged: each stop ran from its entry to where it left; the answering stop to its depth
        entries = [int(stop.split("@")[1]) for stop in p["route"]] + [int(expected["depths"][i])]
        layers = {t: 0 for t in ("mobile", "edge", "cloud")}
        for stop, (a, b) in zip(p["route"], zip(entries[:-1], entries[1:])):
            layers[stop.split("@")[0]] += b - a
        assert p["cost"]["layers"] == layers
        for hop, size in p["cost"]["bytes_per_hop"].items():
            target = hop.split("_")[1]
            boundary = next(int(s.split("@")[1]) for s in p["route"] if s.startswith(target))
            assert size == hop_payload_size([int(data["counts"][i])], boundary, HIDDEN, "fp32")
        probabilities = np.exp(data["logits"][i, p["exit"] - 1])
        assert np.abs(np.asarray(p["probabilities"]) - probabilities / probabilities.sum()).max() <= 1e-5


@pytest.mark.parametrize(
    "name",
    [
        "threshold",
        "all-mobile",
        "all-edge",
        "all-cloud",
        "patience",
        "dimee-profile",
        "dimee-embedding",
        "dimee-cascade",
        "dimee-entry-cascade",
        "dimee-entry-threshold",
    ],
)
def test_served_answers_equal_the_offline_outcome(run_dir, tmp_path, data, name):
    run = _copy(run_dir, tmp_path)
    logits, labels, features = data["fit"]
    policy = _policies(data)[name]
    policy.fit(logits, labels, features if name in ("dimee-embedding", "dimee-entry-cascade", "dimee-entry-threshold") else None)
    (run / "policy.json").write_text(json.dumps(policy.to_dict()))
    expected = _offline(policy, data)
    if name == "patience":  # the premise: no exit's top two logits nearly tie (a tie could flip an agreement)
        top2 = np.sort(data["logits"], axis=-1)[..., -2:]
        assert (np.abs(top2[..., 1] - top2[..., 0]) > 1e-4).all()
    with _three_tiers(run) as (mobile, sent):
        together = mobile.post("/v1/classify", json={"texts": data["texts"]})
        assert together.status_code == 200, together.text
        alone = []
        for text in data["texts"]:
            response = mobile.post("/v1/classify", json={"text": text})
            assert response.status_code == 200, response.text
            alone.append(response.json()["predictions"][0])
    assert type(policy).__name__ in together.json()["policy"]
    _check_served(together.json()["predictions"], expected, data)
    _check_served(alone, expected, data)
    strip = ("wall_ms",)
    for joint, single in zip(together.json()["predictions"], alone):
        assert {k: v for k, v in joint["cost"].items() if k not in strip} == {
            k: v for k, v in single["cost"].items() if k not in strip
        }
        assert (joint["route"], joint["exit"], joint["label"]) == (single["route"], single["exit"], single["label"])
    if name == "all-cloud":
        assert all(p["route"] == ["mobile@0", "cloud@0"] for p in alone)
        assert all(p["cost"]["normalised"] == 1.0 for p in alone)
        assert all(p["cost"]["layers"] == {"mobile": 0, "edge": 0, "cloud": 6} for p in alone)
        assert {content_type for _, content_type, _, _ in sent} == {TOKENS_CONTENT_TYPE}
    if name == "all-edge":
        assert all(p["route"] == ["mobile@0", "edge@0"] and p["exit"] == 4 for p in alone)
    routes = {tuple(p["route"]) for p in alone}
    if name == "dimee-profile":  # the premises: direct hops were covered (hidden states mobile -> cloud) ...
        assert ("mobile@0", "cloud@2") in routes
    if name == "dimee-embedding":  # ... and token ids straight to edge and to cloud
        assert {("mobile@0", "edge@0"), ("mobile@0", "cloud@0")} <= routes
    if name == "patience":
        assert "edge" in {p["tier"] for p in alone}
    if name == "threshold":  # the premise: the check covered answers on mobile and, through edge, on cloud
        assert {p["tier"] for p in alone} == {"mobile", "cloud"}
        assert {tuple(p["route"]) for p in alone} == {("mobile@0",), ("mobile@0", "edge@2", "cloud@4")}


def test_entry_cascade_sends_token_ids_straight_to_edge_or_cloud(run_dir, tmp_path, data):
    """The combination: DIMEE picks the entry tier from the embedding feature, then a cascade decides inside
    it. A sample sent at depth 0 costs no mobile layer, and its features travel to the receiving tier."""
    run = _copy(run_dir, tmp_path)
    logits, labels, features = data["fit"]
    policy = DimeePolicy(
        plan=PLAN, decision_exits="all", entry="embedding", k_grid=(2,), n_folds=2, n_init=2, mu=0.05
    ).fit(logits, labels, features)
    (run / "policy.json").write_text(json.dumps(policy.to_dict()))
    expected = _offline(policy, data)
    with _three_tiers(run) as (mobile, sent):
        response = mobile.post("/v1/classify", json={"texts": data["texts"]})
    assert response.status_code == 200, response.text
    _check_served(response.json()["predictions"], expected, data)
    direct = [p for p in response.json()["predictions"] if p["route"][1:2] in (["edge@0"], ["cloud@0"])]
    if not direct:
        pytest.skip("the fitted entry stage sends no sample straight on for this random model")
    assert all(p["cost"]["layers"]["mobile"] == 0 for p in direct)
    tokens = [meta for _, content_type, meta, _ in sent if content_type == TOKENS_CONTENT_TYPE]
    assert tokens and all(meta.prior_exits == 0 and meta.feature_dim == HIDDEN for meta in tokens)


def test_in_tier_early_exit_runs_only_the_layers_needed(run_dir, tmp_path, data):
    """A threshold policy answering at exit 1 runs one mobile layer (not m), and is charged one."""
    run = _copy(run_dir, tmp_path)
    logits, labels, _ = data["fit"]
    policy = ThresholdPolicy(plan=PLAN, threshold=0.0).fit(logits, labels)  # everything passes at exit 1
    (run / "policy.json").write_text(json.dumps(policy.to_dict()))
    with _three_tiers(run) as (mobile, sent):
        predictions = mobile.post("/v1/classify", json={"texts": data["texts"][:5]}).json()["predictions"]
    assert not sent
    for p in predictions:
        assert (p["exit"], p["route"], p["cost"]["layers"]["mobile"]) == (1, ["mobile@0"], 1)
        assert p["cost"]["total_units"] == pytest.approx(CostModel().mobile_layer)


def test_in_process_runner_agrees_with_the_services(run_dir, tmp_path, data):
    """tiers.run_routed (the in-process three-tier runner) and the services give the same answers."""
    run = _copy(run_dir, tmp_path)
    logits, labels, features = data["fit"]
    policy = _policies(data)["dimee-cascade"].fit(logits, labels)
    (run / "policy.json").write_text(json.dumps(policy.to_dict()))
    tokenizer = tiny_tokenizer()
    encoded = tokenizer(data["texts"])
    parts = slice_model(EarlyExitModel.from_pretrained(run).eval(), PLAN)
    routed = run_routed(parts, policy.step, encoded["input_ids"], encoded["token_type_ids"])
    with _three_tiers(run) as (mobile, _):
        predictions = mobile.post("/v1/classify", json={"texts": data["texts"]}).json()["predictions"]
    for answer, p in zip(routed, predictions):
        assert (answer.exit, [s.label() for s in answer.stops]) == (p["exit"], p["route"])


# ---- forcing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "force, route, exit_index",
    [("mobile", ["mobile@0"], 2), ("edge", ["mobile@0", "edge@0"], 4), ("cloud", ["mobile@0", "cloud@0"], 6)],
)
def test_force_tier_takes_the_direct_route(run_dir, data, force, route, exit_index):
    with _three_tiers(run_dir) as (mobile, _):
        response = mobile.post("/v1/classify", json={"texts": data["texts"][:4], "force_tier": force})
    assert response.status_code == 200, response.text
    for i, p in enumerate(response.json()["predictions"]):
        assert (p["route"], p["exit"], p["tier"], p["degraded"]) == (route, exit_index, force, False)
        assert p["label"] == int(data["logits"][i, exit_index - 1].argmax())
    if force == "cloud":
        assert all(p["cost"]["normalised"] == 1.0 for p in response.json()["predictions"])


def test_forced_actions_follow_the_forced_route():
    assert forced_actions(PLAN, "cloud", "mobile", 0, 2).tolist() == [HANDOFF_CLOUD] * 2
    assert forced_actions(PLAN, "edge", "mobile", 0, 1).tolist() == [HANDOFF_EDGE]
    assert forced_actions(PLAN, "mobile", "mobile", 1, 1).tolist() == [CONTINUE]
    assert forced_actions(PLAN, "mobile", "mobile", 2, 1).tolist() == [2]
    assert forced_actions(PLAN, "cloud", "cloud", 5, 1).tolist() == [CONTINUE]
    assert forced_actions(PLAN, "cloud", "cloud", 6, 1).tolist() == [6]
    chain_only = PLAN.with_accepts(edge=(2,), cloud=(4,))  # no direct routes: forced samples follow the chain
    assert forced_actions(chain_only, "cloud", "mobile", 0, 1).tolist() == [CONTINUE]
    assert forced_actions(chain_only, "cloud", "mobile", 2, 1).tolist() == [HANDOFF_EDGE]
    assert forced_actions(chain_only, "cloud", "edge", 4, 1).tolist() == [HANDOFF_CLOUD]


def test_built_in_threshold_steps_at_each_tiers_last_layer():
    policy = BuiltInThreshold(PLAN, threshold=0.8)
    seen = np.zeros((3, 2, 2))
    seen[0, -1] = [0.0, 5.0]  # confident at exit 2
    seen[1, -1] = [0.0, 0.1]
    seen[2, 0] = [0.0, 9.0]  # confident at exit 1 only: the rule looks at the tier's last layer
    assert policy.step(np.zeros((3, 0, 2)), "mobile", 0).tolist() == [CONTINUE] * 3
    assert policy.step(seen[:, :1], "mobile", 1).tolist() == [CONTINUE] * 3
    assert policy.step(seen, "mobile", 2).tolist() == [2, HANDOFF_EDGE, HANDOFF_EDGE]
    assert policy.step(np.zeros((2, 3, 2)), "edge", 3).tolist() == [CONTINUE] * 2
    assert policy.step(np.zeros((2, 4, 2)), "edge", 4).tolist() == [HANDOFF_CLOUD] * 2
    assert policy.step(np.zeros((2, 6, 2)), "cloud", 6).tolist() == [6, 6]
    assert policy.step(np.zeros((2, 2, 1)), "mobile", 2).tolist() == [HANDOFF_EDGE] * 2  # regression: go on
    cooled = BuiltInThreshold(PLAN, threshold=0.8, temperatures=np.full(6, 10.0))
    assert cooled.step(seen, "mobile", 2).tolist() == [HANDOFF_EDGE] * 3


# ---- bad input -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def receivers(run_dir):
    """Edge (accepts 0 and 2) and cloud (0, 2, 4) with no next tier, max_tokens 16."""
    common = {"run_dir": run_dir, "handoff_token": TOKEN, "batch_window_ms": 1, "max_tokens": 16}
    with TestClient(create_app(TierSettings(tier="edge", **common)), raise_server_exceptions=False) as edge:
        with TestClient(create_app(TierSettings(tier="cloud", **common)), raise_server_exceptions=False) as cloud:
            yield {"edge": edge, "cloud": cloud}


def _post(client, body: bytes, content_type: str, prior_exits: int, n: int = 1, force: str | None = None):
    meta = HandoffMeta.build(np.zeros((n, prior_exits, 2), np.float32), budget_ms=5000, force_tier=force)
    headers = {"Content-Type": content_type, "X-DIMEE-Token": TOKEN}
    return client.post("/v1/handoff", content=encode_meta(meta) + body, headers=headers)


def _states(boundary: int, counts=(5, 3)) -> bytes:
    width = max(counts)
    mask = (torch.arange(width)[None, :] < torch.tensor(counts)[:, None]).long()
    return encode_handoff(torch.randn(len(counts), width, HIDDEN) * mask[..., None], mask, boundary + 1)


VOCAB = len(tiny_tokenizer())


@pytest.mark.parametrize("tier, boundary", [("edge", 0), ("edge", 2), ("cloud", 0), ("cloud", 2), ("cloud", 4)])
def test_receivers_accept_every_boundary_of_the_plan(receivers, tier, boundary):
    if boundary == 0:
        body, content_type = encode_tokens([[2, 7, 9, 3], [2, 8, 3]], None, VOCAB), TOKENS_CONTENT_TYPE
    else:
        body, content_type = _states(boundary), CONTENT_TYPE
    response = _post(receivers[tier], body, content_type, boundary, n=2, force=tier)
    assert response.status_code == 200, response.text
    last = {"edge": 4, "cloud": 6}[tier]
    for answer in response.json()["answers"]:
        assert (answer["route"], answer["exit"], answer["depth"]) == ([f"{tier}@{boundary}"], last, last)


def test_token_ids_answered_at_edge_equal_the_one_pass_model(receivers, run_dir):
    tokenizer = tiny_tokenizer()
    enc = tokenizer(["a good film", "the plot was dull"])
    body = encode_tokens(enc["input_ids"], enc["token_type_ids"], VOCAB)
    response = _post(receivers["edge"], body, TOKENS_CONTENT_TYPE, 0, n=2, force="edge")
    reference, _, _ = _reference(run_dir, ["a good film", "the plot was dull"])
    for i, answer in enumerate(response.json()["answers"]):
        expected = np.exp(reference[i, 3]) / np.exp(reference[i, 3]).sum()
        assert np.abs(np.asarray(answer["probabilities"]) - expected).max() <= 1e-5


BAD = {
    "hidden states at a boundary edge does not accept": ("edge", lambda: _states(1), CONTENT_TYPE, 1, 422, "boundary 1"),
    "hidden states at edge's last layer": ("edge", lambda: _states(4), CONTENT_TYPE, 4, 422, "boundary 4"),
    "hidden states at a boundary cloud does not accept": ("cloud", lambda: _states(3), CONTENT_TYPE, 3, 422, "boundary 3"),
    "token ids out of the vocabulary": (
        "cloud", lambda: encode_tokens([[2, VOCAB + 5, 3]], None, VOCAB + 10)[:12] + VOCAB.to_bytes(4, "little")
        + encode_tokens([[2, VOCAB + 5, 3]], None, VOCAB + 10)[16:], TOKENS_CONTENT_TYPE, 0, 400, "vocabulary",
    ),
    "token ids made for another vocabulary": (
        "edge", lambda: encode_tokens([[2, 5, 3]], None, VOCAB + 1), TOKENS_CONTENT_TYPE, 0, 400, "vocabulary"
    ),
    "too many tokens": ("edge", lambda: encode_tokens([[2] + [7] * 20 + [3]], None, VOCAB), TOKENS_CONTENT_TYPE, 0, 400, "1..16"),
    "token type ids out of range": (
        "edge", lambda: encode_tokens([[2, 5, 3]], [[0, 9, 0]], VOCAB), TOKENS_CONTENT_TYPE, 0, 400, "type ids"
    ),
    "prior exits do not match the boundary": ("cloud", lambda: _states(2), CONTENT_TYPE, 1, 422, "prior exits"),
    "token ids with prior exits": ("cloud", lambda: encode_tokens([[2, 5, 3]], None, VOCAB), TOKENS_CONTENT_TYPE, 2, 422, "prior exits"),
    "truncated token ids": ("edge", lambda: encode_tokens([[2, 5, 3]], None, VOCAB)[:-2], TOKENS_CONTENT_TYPE, 0, 400, "bytes"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_handoffs_at_boundaries_get_4xx_with_reason(receivers, case):
    tier, make_body, content_type, prior, status, words = BAD[case]
    body = make_body()
    n = 2 if content_type == CONTENT_TYPE else 1
    response = _post(receivers[tier], body, content_type, prior, n=n)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"], response.json()["detail"]
    assert receivers[tier].get("/healthz").status_code == 200


def test_edge_that_does_not_accept_token_ids_refuses_them(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    info = json.loads((run / "run.json").read_text())
    info["plan"] = PLAN.with_accepts(edge=(2,), cloud=(2, 4)).to_dict()
    (run / "run.json").write_text(json.dumps(info))
    settings = TierSettings(run_dir=run, tier="edge", handoff_token=TOKEN)
    with TestClient(create_app(settings), raise_server_exceptions=False) as edge:
        assert edge.app.state.service.engine.part.embeddings is None  # it holds no embeddings
        response = _post(edge, encode_tokens([[2, 5, 3]], None, VOCAB), TOKENS_CONTENT_TYPE, 0)
        assert response.status_code == 422 and "does not accept token ids" in response.json()["detail"]
        assert _post(edge, _states(2), CONTENT_TYPE, 2, n=2).status_code == 200


def test_policy_whose_routes_the_plan_does_not_accept_is_refused_at_load_time(run_dir, tmp_path, data):
    logits, labels, _ = data["fit"]
    run = _copy(run_dir, tmp_path)
    restricted = PLAN.with_accepts(edge=(2,), cloud=(2, 4))  # no token ids at edge or cloud
    info = json.loads((run / "run.json").read_text())
    info["plan"] = restricted.to_dict()
    (run / "run.json").write_text(json.dumps(info))
    # fitted for the default deployment (direct routes): refused, naming the boundaries
    (run / "policy.json").write_text(json.dumps(AllCloudPolicy(plan=PLAN).fit(logits, labels).to_dict()))
    with pytest.raises(PolicyLoadError, match="accepts boundaries"):
        load_policy(run, restricted, "auto", 0.9, None)
    with pytest.raises(PolicyLoadError):
        create_app(TierSettings(run_dir=run, tier="mobile"))
    # fitted for the restricted plan itself, but its route (token ids to cloud) does not exist there
    (run / "policy.json").write_text(json.dumps(AllCloudPolicy(plan=restricted).fit(logits, labels).to_dict()))
    with pytest.raises(PolicyLoadError, match="cannot be served"):
        load_policy(run, restricted, "auto", 0.9, None)
    # a policy on the linear route serves fine there
    (run / "policy.json").write_text(json.dumps(AllMobilePolicy(plan=restricted).fit(logits, labels).to_dict()))
    assert load_policy(run, restricted, "auto", 0.9, None)[1].startswith("AllMobilePolicy")


def test_settings_wire_both_urls(run_dir):
    settings = TierSettings(
        run_dir=run_dir, tier="mobile", next_url="http://e:1/", cloud_url="http://c:2", handoff_token=TOKEN
    )
    assert (settings.url_for("edge"), settings.url_for("cloud")) == ("http://e:1", "http://c:2")
    edge = TierSettings(run_dir=run_dir, tier="edge", next_url="http://c:2", handoff_token=TOKEN)
    assert edge.url_for("cloud") == "http://c:2"
    with pytest.raises(ValueError, match="DIMEE_HANDOFF_TOKEN"):
        TierSettings(run_dir=run_dir, tier="mobile", cloud_url="http://c:2")
    with pytest.raises(ValueError, match="cloud_url"):
        TierSettings(run_dir=run_dir, tier="cloud", cloud_url="http://c:2", handoff_token=TOKEN)
    with pytest.raises(ValueError, match="http"):
        TierSettings(run_dir=run_dir, tier="mobile", cloud_url="ftp://c", handoff_token=TOKEN)


def test_failed_direct_handoff_runs_mobiles_layers_and_answers_degraded(run_dir, data):
    """Token ids sent straight to a cloud that is not configured: mobile runs its own layers and answers at m."""
    settings = TierSettings(run_dir=run_dir, tier="mobile", next_url=EDGE_URL, handoff_token=TOKEN, batch_window_ms=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as mobile:
        response = mobile.post("/v1/classify", json={"texts": data["texts"][:3], "force_tier": "cloud"})
    assert response.status_code == 200, response.text
    for i, p in enumerate(response.json()["predictions"]):
        assert (p["route"], p["exit"], p["tier"], p["degraded"]) == (["mobile@0"], 2, "mobile", True)
        assert p["degraded_reason"] == "next_tier_not_configured"
        assert p["cost"]["layers"] == {"mobile": 2, "edge": 0, "cloud": 0} and p["cost"]["bytes_per_hop"] == {}
        assert p["label"] == int(data["logits"][i, 1].argmax())


def test_answers_that_do_not_fit_the_handoff_are_refused(run_dir, data, monkeypatch):
    """A next tier whose answer claims another route (or an exit it cannot have) is treated as failed: the
    samples are answered on mobile, degraded, never costed with a route that was not taken."""
    from services import Answer

    async def liar(client, base_url, token, request_id, body, timeout_s, expected, content_type=CONTENT_TYPE):
        meta = decode_meta(body)[0]
        answer = Answer(
            label=0, label_name="negative", probabilities=[1.0, 0.0], exit=6, tier="cloud", degraded=False,
            route=["cloud@4"], depth=6,
        )  # fmt: skip
        return HandoffResponse(request_id=request_id, server_ms=1.0, answers=[answer] * meta.n), 2.0

    monkeypatch.setattr(relay_module, "post_handoff", liar)
    settings = TierSettings(
        run_dir=run_dir, tier="mobile", next_url=EDGE_URL, cloud_url=CLOUD_URL, handoff_token=TOKEN, batch_window_ms=1
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as mobile:
        response = mobile.post("/v1/classify", json={"texts": data["texts"][:2], "force_tier": "cloud"})
        metrics = mobile.get("/metrics").text
    assert response.status_code == 200, response.text
    for p in response.json()["predictions"]:
        assert (p["route"], p["exit"], p["degraded"]) == (["mobile@0"], 2, True)
        assert p["degraded_reason"] == "next_tier_bad_answer"
    assert metric_value(metrics, "dimee_degraded_total", reason="next_tier_bad_answer", service="mobile") == 2

"""Routes: deployment validation, the route list, action checks, the token codec, and the in-process
early-exit runner against the one-pass model (hand-made references, tiny random-init model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clustering import AllCloudPolicy, ThresholdPolicy
from tests.conftest import tiny_bert_config
from tiers import (
    CONTINUE,
    HANDOFF_CLOUD,
    HANDOFF_EDGE,
    CostModel,
    EarlyExitModel,
    ExitConfig,
    HandoffFormatError,
    RouteError,
    TierPlan,
    TierPlanError,
    check_actions,
    decode_tokens,
    encode_tokens,
    enumerate_paths,
    path_label,
    run_routed,
    slice_model,
    token_payload_size,
)

PLAN = TierPlan(2, 4, 6)


def test_default_deployment_routes():
    assert PLAN.accepts("edge") == (0, 2) and PLAN.accepts("cloud") == (0, 2, 4)
    assert PLAN.held_range("edge") == (1, 4) and PLAN.held_range("cloud") == (1, 6)
    assert [path_label(p) for p in enumerate_paths(PLAN)] == [
        "mobile@0",
        "mobile@0>edge@0",
        "mobile@0>edge@0>cloud@4",
        "mobile@0>edge@2",
        "mobile@0>edge@2>cloud@4",
        "mobile@0>cloud@0",
        "mobile@0>cloud@2",
    ]
    chain = TierPlan(2, 4, 6, edge_accepts=(2,), cloud_accepts=(4,))
    assert [path_label(p) for p in enumerate_paths(chain)] == ["mobile@0", "mobile@0>edge@2", "mobile@0>edge@2>cloud@4"]
    assert chain.held_range("edge") == (3, 4) and not chain.holds_embeddings("cloud")
    assert TierPlan.from_dict(chain.to_dict()) == chain
    # a run.json written before routes existed: the default deployment
    assert TierPlan.from_dict({"mobile_end": 2, "edge_end": 4, "num_layers": 6}) == PLAN


@pytest.mark.parametrize(
    "edge, cloud, match",
    [((3,), None, "cannot accept samples at boundaries \\[3\\]"), ((), None, "at least one"), (None, (5,), "boundaries \\[5\\]")],
)
def test_bad_deployments_are_refused(edge, cloud, match):
    with pytest.raises(TierPlanError, match=match):
        TierPlan(2, 4, 6, edge_accepts=edge, cloud_accepts=cloud)


def test_actions_are_checked_against_the_deployment():
    check_actions(np.array([CONTINUE, HANDOFF_EDGE, HANDOFF_CLOUD]), PLAN, "mobile", 0)
    check_actions(np.array([1, 2, HANDOFF_EDGE, HANDOFF_CLOUD]), PLAN, "mobile", 2)
    with pytest.raises(RouteError, match="does not accept samples at boundary 1"):
        check_actions(np.array([HANDOFF_EDGE]), PLAN, "mobile", 1)
    with pytest.raises(RouteError, match="no layer after 2"):
        check_actions(np.array([CONTINUE]), PLAN, "mobile", 2)
    with pytest.raises(RouteError, match="exits 1..3"):
        check_actions(np.array([4]), PLAN, "edge", 3)
    with pytest.raises(RouteError, match="only after its last layer"):
        check_actions(np.array([HANDOFF_CLOUD]), PLAN, "edge", 2)
    with pytest.raises(RouteError, match="cannot hand"):
        check_actions(np.array([HANDOFF_EDGE]), PLAN, "edge", 4)
    chain = TierPlan(2, 4, 6, edge_accepts=(2,), cloud_accepts=(4,))
    with pytest.raises(RouteError, match="does not accept samples at boundary 0"):
        check_actions(np.array([HANDOFF_CLOUD]), chain, "mobile", 0)


def test_token_codec_round_trip_and_refusals():
    ids = [(101, 7, 9, 102), (101, 5, 102)]
    types = [(0, 0, 1, 1), (0, 0, 0)]
    body = encode_tokens(ids, types, vocab_size=120)
    assert len(body) == token_payload_size([4, 3]) == 16 + 8 + 5 * 7
    back = decode_tokens(body, vocab_size=120)
    assert back.input_ids == ids and back.token_type_ids == types
    with pytest.raises(HandoffFormatError, match="vocabulary of 120"):
        decode_tokens(body, vocab_size=121)
    with pytest.raises(HandoffFormatError, match="counts must be within 1..3"):
        decode_tokens(body, vocab_size=120, max_seq_len=3)
    with pytest.raises(HandoffFormatError, match="declares"):
        decode_tokens(body[:-1], vocab_size=120)
    forged = bytearray(body)
    forged[24:28] = (5000).to_bytes(4, "little")  # first id of the first sample
    with pytest.raises(HandoffFormatError, match="outside this model's vocabulary"):
        decode_tokens(bytes(forged), vocab_size=120)
    with pytest.raises(HandoffFormatError, match="magic"):
        decode_tokens(b"XXXX" + body[4:], vocab_size=120)


def _tiny_model() -> EarlyExitModel:
    torch.manual_seed(0)
    return EarlyExitModel.from_config(tiny_bert_config(num_layers=6), ExitConfig(num_labels=2)).eval()


def _texts(n: int, seed: int = 0) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [tuple([101] + rng.integers(5, 119, size=int(rng.integers(3, 12))).tolist() + [102]) for _ in range(n)]


def test_run_routed_answers_with_the_one_pass_logits_and_runs_only_what_it_needs():
    model = _tiny_model()
    parts = slice_model(model, PLAN)
    texts = _texts(24)
    with torch.no_grad():
        one_pass = [model(torch.tensor([t]), torch.ones(1, len(t), dtype=torch.long))[0].numpy() for t in texts]
    fit_logits = np.stack(one_pass)
    labels = fit_logits[:, -1].argmax(axis=1)
    # a threshold in the middle of exit 1's confidences: some samples stop at exit 1, others go on
    conf = np.exp(fit_logits[:, 0]).max(axis=1) / np.exp(fit_logits[:, 0]).sum(axis=1)
    policy = ThresholdPolicy(PLAN, threshold=float(np.median(conf))).fit(fit_logits, labels)
    calls = {"n": 0}
    hooks = [layer.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1)) for layer in parts["mobile"].layers]
    answers = run_routed(parts, lambda seen, tier, depth, feats: policy.step(seen, tier, depth), texts)
    for hook in hooks:
        hook.remove()
    outcome = policy.predict_outcome(fit_logits)
    assert [a.exit for a in answers] == outcome.exits.tolist()
    assert [">".join(f"{s.tier}@{s.entry}" for s in a.stops) for a in answers] == outcome.route_labels()
    for a, reference in zip(answers, one_pass):
        np.testing.assert_allclose(a.logits, reference[a.exit - 1], atol=2e-5)
    # layer 1 ran for every sample, layer 2 only for those exit 1 did not answer (one batched call each)
    assert calls["n"] == 2 and (outcome.exits == 1).any() and (outcome.exits > 1).any()
    single = [run_routed(parts, lambda seen, tier, depth, feats: policy.step(seen, tier, depth), [t])[0] for t in texts]
    assert [a.exit for a in single] == [a.exit for a in answers]


def test_run_routed_direct_route_costs_the_reference():
    model = _tiny_model()
    parts = slice_model(model, PLAN)
    texts = _texts(5, seed=1)
    fake = np.zeros((5, 6, 2))
    policy = AllCloudPolicy(PLAN).fit(fake, None)
    answers = run_routed(parts, lambda seen, tier, depth, feats: policy.step(seen, tier, depth), texts)
    cost = CostModel()
    for a, t in zip(answers, texts):
        assert [(s.tier, s.entry, s.left) for s in a.stops] == [("mobile", 0, 0), ("cloud", 0, 6)]
        breakdown = cost.route_breakdown(PLAN, a.stops, {"mobile_cloud": token_payload_size([len(t)])},
                                         reference_bytes=token_payload_size([len(t)]))
        assert breakdown["normalised"] == 1.0 and breakdown["layers"] == {"mobile": 0, "edge": 0, "cloud": 6}

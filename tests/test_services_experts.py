"""Expert exits in the tier services (DIMEE_EXPERTS / --experts), in process: mobile's detector names each
text's distortion type, mobile and edge answer with that type's expert heads, the type travels in
X-DIMEE-Meta, and a run without experts refuses to start."""

from __future__ import annotations

import asyncio
import json
import random

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import services.relay as relay_module
from clustering.detector import DistortionDetector
from glue_eval.distortion import distort_texts
from glue_eval.experts import standard_heads
from services import HandoffMeta, HandoffResponse, TierSettings, create_app
from services.__main__ import main as services_main
from services.policy import softmax
from tests.factories import WORDS, add_perturbed_experts, tiny_run_folder, tiny_tokenizer
from tiers import CONTENT_TYPE, decode_meta, encode_handoff, encode_meta, load_tier_part, read_run_info
from tiers.experts import (
    DETECTOR_FILE,
    ExpertError,
    ExpertExits,
    ExpertInfo,
    load_experts,
    run_mobile,
    run_part,
    save_experts,
)

TOKEN = "test-token-0123456789abcdef"
TYPES = ["keyboard", "word_dropout"]
TOL = 1e-5
CLEAN_TEXT = "the acting was really good and the music was fun ."


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalpha()]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 14))) + " ." for _ in range(n)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Tiny 6-layer run (plan 2,4) with expert heads on exits 1..4 (unlike the standard ones) and a text
    detector that tells clean text from keyboard typos."""
    folder = tiny_run_folder(tmp_path_factory.mktemp("run"))
    add_perturbed_experts(folder, TYPES, [1, 2, 3, 4])
    clean = _sentences(60, 0)
    texts = clean + distort_texts(clean, "keyboard", 0.5, seed=0)
    labels = ["clean"] * len(clean) + ["keyboard"] * len(clean)
    detector = DistortionDetector().fit(texts, labels, lexicon=[w for w in WORDS if w.isalpha()])
    payload = {"features": "text", "mobile_slot": 1, "detector": detector.to_dict()}
    (folder / "experts" / DETECTOR_FILE).write_text(json.dumps(payload))
    return folder


@pytest.fixture(scope="module")
def texts(run_dir):
    distorted = distort_texts([CLEAN_TEXT], "keyboard", 0.8, seed=3)[0]
    saved = json.loads((run_dir / "experts" / DETECTOR_FILE).read_text())
    detected = list(DistortionDetector.from_dict(saved["detector"]).predict([CLEAN_TEXT, distorted]))
    assert detected == ["clean", "keyboard"]  # the premise of the tests below
    return [CLEAN_TEXT, distorted]


def _reference(run_dir, texts, kinds):
    """Logits of exits 1..4 per sample from the tiers' own code: run_mobile and run_part with `kinds`."""
    plan = read_run_info(run_dir).plan
    mobile, edge = (load_tier_part(run_dir, plan, t) for t in ("mobile", "edge"))
    enc = tiny_tokenizer()(texts, padding=True, return_tensors="pt")
    experts = load_experts(run_dir)
    with torch.no_grad():
        out = run_mobile(mobile, enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), experts, kinds)
        out_edge = run_part(edge, out.hidden, enc["attention_mask"], experts, kinds)
    return torch.cat([out.exit_logits, out_edge.exit_logits], dim=1).numpy()


def _mobile(run_dir, **extra):
    settings = TierSettings(run_dir=run_dir, tier="mobile", batch_window_ms=1, **extra)
    return TestClient(create_app(settings), raise_server_exceptions=False)


def _probabilities(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([p["probabilities"] for p in response.json()["predictions"]])


def test_mobile_uses_the_detected_types_experts(run_dir, texts):
    standard = _reference(run_dir, texts, None)
    expert = _reference(run_dir, texts, ["clean", "keyboard"])
    assert np.abs(expert[1, :2] - standard[1, :2]).max() > 1e-3  # the experts do change mobile's logits
    with _mobile(run_dir, experts=True) as client:
        assert client.app.state.service.temperatures is None
        response = client.post("/v1/classify", json={"texts": texts, "force_tier": "mobile"})
        got = _probabilities(response)
        predictions = response.json()["predictions"]
        assert [p["distortion"] for p in predictions] == ["clean", "keyboard"]
        assert all(p["tier"] == "mobile" and p["exit"] == 2 for p in predictions)
    assert np.abs(got[0] - softmax(standard[0, 1], 1.0)).max() <= TOL  # clean: standard exits
    assert np.abs(got[1] - softmax(expert[1, 1], 1.0)).max() <= TOL  # keyboard: its expert head
    with _mobile(run_dir) as client:  # flag off: standard exits for every text, no distortion reported
        response = client.post("/v1/classify", json={"texts": texts, "force_tier": "mobile"})
        off = _probabilities(response)
        assert all(p["distortion"] is None for p in response.json()["predictions"])
    assert np.abs(off - softmax(standard[:, 1], 1.0)).max() <= TOL


def test_type_travels_to_edge_and_edge_uses_its_experts(run_dir, texts, monkeypatch):
    expert = _reference(run_dir, texts, ["clean", "keyboard"])
    standard = _reference(run_dir, texts, None)
    sent: list[HandoffMeta] = []
    edge_settings = TierSettings(run_dir=run_dir, tier="edge", handoff_token=TOKEN, batch_window_ms=1, experts=True)
    with TestClient(create_app(edge_settings), raise_server_exceptions=False) as edge:

        async def to_edge(client, base_url, token, request_id, body, timeout_s, expected, content_type=CONTENT_TYPE):
            sent.append(decode_meta(body)[0])
            headers = {"Content-Type": content_type, "X-DIMEE-Token": token}
            response = await asyncio.to_thread(edge.post, "/v1/handoff", content=body, headers=headers)
            assert response.status_code == 200, response.text
            return HandoffResponse.model_validate_json(response.content), 1.0

        monkeypatch.setattr(relay_module, "post_handoff", to_edge)
        with _mobile(run_dir, experts=True, next_url="http://127.0.0.1:9", handoff_token=TOKEN) as mobile:
            response = mobile.post("/v1/classify", json={"texts": texts, "force_tier": "edge"})
            got = _probabilities(response)
        predictions = response.json()["predictions"]
        assert [p["tier"] for p in predictions] == ["edge", "edge"] and not any(p["degraded"] for p in predictions)
        assert [p["distortion"] for p in predictions] == ["clean", "keyboard"]
        assert sent[0].distortions == ("clean", "keyboard")
        assert np.abs(got[0] - softmax(standard[0, 3], 1.0)).max() <= TOL
        assert np.abs(got[1] - softmax(expert[1, 3], 1.0)).max() <= TOL
        assert np.abs(expert[1, 3] - standard[1, 3]).max() > 1e-3  # edge's expert head, not its standard one

        # a type edge has no experts for, or a type list that does not match the samples: 4xx with a reason
        body = encode_handoff(torch.randn(1, 4, 32), torch.ones(1, 4, dtype=torch.long), 3, "fp32")
        meta = HandoffMeta.build(np.zeros((1, 2, 2), np.float32), 5000, None, distortions=["blur"])
        headers = {"Content-Type": CONTENT_TYPE, "X-DIMEE-Token": TOKEN}
        response = edge.post("/v1/handoff", content=encode_meta(meta) + body, headers=headers)
        assert response.status_code == 422 and "['blur']" in response.json()["detail"]
        two = encode_meta(HandoffMeta.build(np.zeros((2, 2, 2), np.float32), 5000, None, distortions=["clean", "keyboard"]))
        response = edge.post("/v1/handoff", content=two + body, headers=headers)
        assert response.status_code == 400 and "declares 2 samples" in response.json()["detail"]


def test_experts_on_for_a_run_without_experts_refuses_to_start(tmp_path, capsys):
    bare = tiny_run_folder(tmp_path / "bare")
    for tier, extra in (("mobile", {}), ("edge", {"handoff_token": TOKEN})):
        with pytest.raises(ExpertError, match="has no expert exits.*dimee experts train"):
            create_app(TierSettings(run_dir=bare, tier=tier, experts=True, **extra))
    create_app(TierSettings(run_dir=bare, tier="cloud", handoff_token=TOKEN, experts=True))  # cloud ignores it
    before = torch.get_num_threads()
    try:
        assert services_main(["--tier", "mobile", "--run-dir", str(bare), "--experts"]) == 2
    finally:
        torch.set_num_threads(before)
    assert "has no expert exits" in capsys.readouterr().err


def test_experts_setting_from_environment_and_missing_detector(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DIMEE_EXPERTS", "1")
    assert TierSettings(run_dir=run_dir, tier="mobile").experts is True
    monkeypatch.delenv("DIMEE_EXPERTS")
    folder = tiny_run_folder(tmp_path / "run")
    heads, exit_config = standard_heads(folder, [1, 2])
    save_experts(folder, ExpertExits.from_standard(heads, exit_config, ExpertInfo(["keyboard"], [1, 2])))
    with pytest.raises(ExpertError, match="no experts/detector.json"):
        create_app(TierSettings(run_dir=folder, tier="mobile", experts=True))
    create_app(TierSettings(run_dir=folder, tier="edge", handoff_token=TOKEN, experts=True))  # edge needs none

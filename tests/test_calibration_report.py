"""Run-level calibration: temperatures.json written and read back, ECE/NLL report, refusals, reliability
diagrams, and the `dimee calibrate` command (glue_eval.calibration, dimee.calibrate_cli)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clustering.calibration import expected_calibration_error
from clustering.errors import CalibrationError
from clustering.profiles import softmax
from clustering.synthetic import Group, make_exit_logits
from dimee import cli
from dimee.calibrate_cli import register
from glue_eval.calibration import calibrate_run, calibration_table, plot_reliability, read_temperatures
from tests.factories import tiny_run_folder
from tiers import CachedSplit, RunInfo, TierPlan, read_run_info, write_cached_split, write_run_info
from tiers.run import TEMPERATURES_FILE

NUM_LAYERS = 6
OVERCONFIDENCE = 3.0  # logits scaled up by this ...
LABEL_NOISE = 0.15  # ... and this share of labels flipped: confident exits are wrong too, at every exit

GROUPS = (
    Group(150, 1, early_correct_prob=0.6),
    Group(150, 3, early_correct_prob=0.5),
    Group(100, 5, early_correct_prob=0.5),
)


def _split(seed: int, n_classes: int = 2, scale: float = OVERCONFIDENCE) -> CachedSplit:
    synth = make_exit_logits(GROUPS, num_layers=NUM_LAYERS, n_classes=n_classes, noise=0.8, seed=seed)
    n = synth.labels.shape[0]
    labels = synth.labels
    if n_classes > 1:
        flip = np.random.default_rng(seed + 100).random(n) < LABEL_NOISE
        labels = np.where(flip, (labels + 1) % n_classes, labels).astype(np.int64)
    return CachedSplit(
        logits=(scale * synth.logits).astype(np.float32),
        labels=labels.astype(np.int64 if n_classes > 1 else np.float32),
        token_counts=np.full(n, 12, dtype=np.int32),
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tiny_run_folder(tmp_path_factory.mktemp("calrun") / "run", num_layers=NUM_LAYERS)
    write_cached_split(folder, "calibration", _split(seed=1))
    write_cached_split(folder, "validation", _split(seed=2))
    return folder


@pytest.fixture(scope="module")
def calibrated(run_dir):
    return calibrate_run(run_dir)


def test_temperatures_written_and_read_back(run_dir, calibrated):
    stored = json.loads((run_dir / TEMPERATURES_FILE).read_text())
    assert stored["fit_split"] == "calibration" and stored["fit_on"] == "all"
    assert len(stored["temperatures"]) == NUM_LAYERS
    temps = read_temperatures(run_dir)
    np.testing.assert_allclose(temps, calibrated["temperatures"])
    assert (temps > 1.5).all()  # over-confident logits need cooling down at every exit


def test_ece_and_nll_drop_on_the_eval_split(run_dir, calibrated):
    rows = calibrated["report"]["exits"]
    assert calibrated["report"]["split"] == "validation" and calibrated["report"]["n_bins"] == 15
    assert [r["exit"] for r in rows] == list(range(1, NUM_LAYERS + 1))
    for row in rows:
        assert row["ece_after"] < row["ece_before"]
        assert row["nll_after"] < row["nll_before"]
    # the report agrees with the ECE computed by hand from the stored temperatures
    val = _split(seed=2)
    ece = expected_calibration_error(softmax(val.logits, read_temperatures(run_dir)), val.labels)
    np.testing.assert_allclose(ece, [r["ece_after"] for r in rows], atol=1e-9)
    table = calibration_table(calibrated)
    assert list(table["exit"]) == list(range(1, NUM_LAYERS + 1)) and "ece_before" in table


def _binary(a: float, right: int, wrong: int, first_label: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits (+a, -a) for the predicted class on `right` + `wrong` samples, labels alternating."""
    n = right + wrong
    labels = (np.arange(n) + first_label) % 2
    predicted = np.where(np.arange(n) < right, labels, 1 - labels)
    logits = np.zeros((n, 2))
    logits[np.arange(n), predicted], logits[np.arange(n), 1 - predicted] = a, -a
    return logits, labels


def test_fit_on_exiting_fits_each_exit_on_its_exiting_samples(tmp_path):
    """Three groups of 100, each exiting at one exit under the 0.9 confidence rule (logits +-3 pass it, +-1 do
    not; exit 3 is the last). On binary logits +-a right on a share q of the samples the NLL is smallest at
    T* = 2a / ln(q / (1 - q)) (test_temperature_reference.py), so fitted on the exiting samples only:
    exit 1 (a = 3, q = 0.8) 6 / ln 4, exit 2 (a = 3, q = 0.9) 6 / ln 9, exit 3 (a = 2, q = 0.75) 4 / ln 3."""
    folder = tmp_path / "run"
    write_run_info(
        folder,
        RunInfo(task="sst2", text_fields=["sentence"], label_names=["negative", "positive"], num_labels=2,
                max_length=64, plan=TierPlan(1, 2, 3)),
    )
    blocks, labels = [], []
    for exit_logits in (
        [_binary(3.0, 80, 20), _binary(3.0, 100, 0), _binary(3.0, 100, 0)],  # exits at 1
        [_binary(1.0, 50, 50), _binary(3.0, 90, 10), _binary(3.0, 100, 0)],  # exits at 2
        [_binary(1.0, 50, 50), _binary(1.0, 50, 50), _binary(2.0, 75, 25)],  # reaches 3
    ):
        blocks.append(np.stack([z for z, _ in exit_logits], axis=1))
        labels.append(exit_logits[0][1])
    logits, y = np.concatenate(blocks), np.concatenate(labels)
    split = CachedSplit(logits.astype(np.float32), y.astype(np.int64), np.full(len(y), 8, dtype=np.int32))
    write_cached_split(folder, "calibration", split)
    write_cached_split(folder, "validation", split)
    data = calibrate_run(folder, fit_on="exiting", write=False)
    assert data["fit_on"] == "exiting" and data["exit_threshold"] == 0.9
    assert data["n_fit_samples"] == [100, 100, 100] and data["fallback_exits"] == []
    np.testing.assert_allclose(data["temperatures"], [6 / np.log(4), 6 / np.log(9), 4 / np.log(3)], rtol=1e-4)
    everyone = calibrate_run(folder, fit_on="all", write=False)["temperatures"]
    assert abs(everyone[0] - 6 / np.log(4)) > 0.1  # fitted on all 300 samples, exit 1 gets another temperature
    with pytest.raises(CalibrationError, match="fit_on"):
        calibrate_run(folder, fit_on="sometimes", write=False)


@pytest.mark.parametrize(
    "values, message",
    [
        ([1.0, 2.0, 0.0, 1.0, 1.0, 1.0], "finite and > 0"),
        ([1.0, -2.0, 1.0, 1.0, 1.0, 1.0], "finite and > 0"),
        ([1.0, float("nan"), 1.0, 1.0, 1.0, 1.0], "finite and > 0"),
        ([1.0, float("inf"), 1.0, 1.0, 1.0, 1.0], "finite and > 0"),
        ([1.0, 1.0], "one temperature per exit"),
        ("hot", "list of numbers"),
    ],
)
def test_bad_temperatures_are_refused(tmp_path, run_dir, values, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "run.json").write_text((run_dir / "run.json").read_text())
    (folder / TEMPERATURES_FILE).write_text(json.dumps({"temperatures": values}))
    with pytest.raises(CalibrationError, match=message):
        read_temperatures(folder)


def test_damaged_or_missing_temperature_file(tmp_path):
    assert read_temperatures(tmp_path) is None
    (tmp_path / TEMPERATURES_FILE).write_text('{"temps": [1.0]}')
    with pytest.raises(CalibrationError, match="dimee calibrate"):
        read_temperatures(tmp_path)
    (tmp_path / TEMPERATURES_FILE).write_text("not json")
    with pytest.raises(CalibrationError):
        read_temperatures(tmp_path)


def test_regression_run_is_refused(tmp_path, run_dir):
    folder = tmp_path / "stsb"
    folder.mkdir()
    info = read_run_info(run_dir)
    info.task, info.num_labels, info.label_names = "stsb", 1, ["score"]
    write_run_info(folder, info)
    write_cached_split(folder, "calibration", _split(seed=1, n_classes=1, scale=1.0))
    with pytest.raises(CalibrationError, match="regression"):
        calibrate_run(folder)
    assert not (folder / TEMPERATURES_FILE).exists()


def test_reliability_plot_is_written(run_dir, calibrated, tmp_path):
    path = plot_reliability(run_dir, tmp_path / "plots" / "reliability.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(CalibrationError, match="finite and > 0"):
        plot_reliability(run_dir, tmp_path / "x.png", temperatures=[1.0, 1.0, 1.0, 1.0, 1.0, -1.0])


def _dimee(monkeypatch, argv):
    monkeypatch.setattr(cli, "SUBCOMMANDS", [register])
    return cli.main(argv)


def test_cli_prints_the_table_and_plots(run_dir, tmp_path, monkeypatch, capsys):
    png = tmp_path / "cli.png"
    assert _dimee(monkeypatch, ["calibrate", str(run_dir), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "ece_before" in line)
    for column in ("exit", "tier", "temperature", "ece_after", "nll_before", "nll_after"):
        assert column in header
    assert sum(line.split()[0].isdigit() for line in out.splitlines() if line.strip()) == NUM_LAYERS
    assert "temperatures.json" in out and png.exists()


def test_cli_errors_are_one_line(run_dir, tmp_path, monkeypatch, capsys):
    assert _dimee(monkeypatch, ["calibrate", str(run_dir), "--fit-split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dimee: error:") and "test" in err and len(err.splitlines()) == 1
    assert _dimee(monkeypatch, ["calibrate", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dimee: error:") and len(err.splitlines()) == 1

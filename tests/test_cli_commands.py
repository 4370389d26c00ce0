"""Every `dimee` command in a subprocess (`python -m dimee ...`), on a tiny random-init run trained on a toy
task: exit status 0 and its key output; bad input gives one line `dimee: error: ...` and exit status 2.

`dimee demo` fine-tunes the pretrained encoder on 4,000 SST-2 samples, too big for a test: its --help and a
clean refusal of bad input are checked instead. The services commands have their own tests (test_services_*).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.toy_task import write_tiny_encoder, write_toy_glue

REPO = Path(__file__).resolve().parent.parent
ENV = {
    **{k: v for k, v in os.environ.items() if k != "DIMEE_DEBUG"},  # DIMEE_DEBUG=1 would show tracebacks
    "PYTHONPATH": str(REPO),
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}


def dimee(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dimee", *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=240
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit status 2 and exactly one line on stderr, `dimee: error: ...` (no traceback)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("dimee: error: "), proc.stderr[-3000:]
    for word in words:
        assert word in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    write_toy_glue(root / "glue", n_train=300, n_validation=80)
    write_tiny_encoder(root / "encoder", num_layers=4)
    return root


@pytest.fixture(scope="module")
def trained(work) -> tuple[Path, str]:
    proc = dimee(
        work, "train", "--task", "sst2", "--model", work / "encoder", "--output", work / "run", "--epochs", "3",
        "--batch-size", "16", "--lr", "2e-3", "--max-length", "32", "--plan", "1,3", "--data-dir", work / "glue",
        "--source", "local", "--device", "cpu",
    )
    return work / "run", ok(proc)


def test_train(trained):
    run, out = trained
    assert f"run folder: {run}" in out
    header = next(line for line in out.splitlines() if "exit" in line and "tier" in line)
    assert header.split() == ["exit", "tier", "accuracy", "cumulative_cost"]
    assert (run / "run.json").exists() and (run / "logits" / "validation.npy").exists()
    info = json.loads((run / "run.json").read_text())
    assert info["plan"]["mobile_end"] == 1 and info["plan"]["edge_end"] == 3


def test_eval(trained, work):
    run, _ = trained
    out = ok(dimee(work, "eval", run, "--data-dir", work / "glue", "--source", "local", "--device", "cpu"))
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"] and [r[1] for r in rows] == ["mobile", "edge", "edge", "cloud"]
    assert float(rows[-1][2]) >= 90.0  # the toy task is learnt by the final exit


def test_predict(trained, work):
    run, _ = trained
    out = ok(dimee(work, "predict", run, "a great fun film", "the plot was dull and boring"))
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["label_name"] for a in answers] == ["positive", "negative"]
    assert all(len(a["exit_predictions"]) == 4 and sum(a["probabilities"]) == pytest.approx(1, abs=1e-3) for a in answers)


def test_calibrate(trained, work):
    run, _ = trained
    out = ok(dimee(work, "calibrate", run))
    assert f"temperatures written to {run}/temperatures.json" in out
    assert len(json.loads((run / "temperatures.json").read_text())["temperatures"]) == 4


def test_report(trained, work):
    run, _ = trained
    out = ok(dimee(work, "report", run, "--out", work / "results", "--policies", "threshold,patience"))
    assert f"wrote {work / 'results' / 'glue.md'}" in out
    rows = json.loads((work / "results" / "glue.json").read_text())
    assert {r["policy"] for r in rows} == {"all-mobile", "all-edge", "all-cloud", "threshold", "patience", "oracle"}
    assert all(isinstance(r["meets_target"], bool) for r in rows)
    assert (work / "results" / "glue_sst2_pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "--policies threshold,patience" in (work / "results" / "glue.md").read_text()


def test_sweep(trained, work):
    run, _ = trained
    target = work / "sweep.csv"
    out = ok(dimee(work, "sweep", run, "--policies", "dimee-cascade,threshold,oracle", "--grid", "mu=0.05,0.3",
                   "--out", target, "--quiet"))
    assert f"wrote 6 rows to {target}" in out
    with open(target) as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["policy"] for r in rows}) == ["dimee-cascade", "oracle", "threshold"]


def test_demo_help_and_bad_input(work):
    assert "--train-subset" in ok(dimee(work, "demo", "--help"))
    refused(dimee(work, "demo", "--train-subset", "1", "--output", work / "demo"), "train subset")
    refused(dimee(work, "demo", "--variant", "dimee-nope", "--output", work / "demo"), "unknown DIMEE variant 'dimee-nope'")
    refused(dimee(work, "demo", "--variant", "dimee-entry+oof", "--output", work / "demo"), "a fresh run has not cached")
    assert not (work / "demo").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (("train", "--task", "nope"), ("nope",)),
        (("eval", "not-a-run"), ("not a run folder",)),
        (("predict", "RUN", ""), ("empty",)),
        (("sweep", "RUN", "--policies", "nope"), ("unknown policy",)),
    ],
)
def test_bad_input_is_one_line_and_status_2(trained, work, args, words):
    run, _ = trained
    refused(dimee(work, *(str(run) if a == "RUN" else a for a in args)), *words)

"""Your own data (issue 13): a 3-class data set with string labels (JSON lines) and a regression one (CSV),
trained, evaluated, predicted, reported, swept and served in fresh processes from the run folder alone; `dimee
eval RUN` never overwrites a run's caches with other data; bad data is one line, exit 2, and no run folder.

A tiny random-init encoder over the toy words (tests.toy_task) learns the cue-word data sets in a few seconds.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli_commands import ENV, REPO, ok
from tests.toy_task import FILLER, write_tiny_encoder, write_toy_glue

CUES = {"praise": ("good", "great", "brilliant"), "complaint": ("bad", "awful", "dull"), "humour": ("funny", "fun", "jokes")}
TOPICS = sorted(CUES)  # label names: the sorted distinct values
TRAIN = ("--epochs", "8", "--batch-size", "16", "--lr", "2e-3", "--max-length", "32", "--plan", "1,3", "--device", "cpu")


def dimee(cwd: Path, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m dimee ...` in a fresh process (the CLI tests' environment, plus `env`)."""
    return subprocess.run([sys.executable, "-m", "dimee", *map(str, args)], cwd=cwd, env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=240)


def cli(capsys, *args) -> tuple[int, str, str]:
    """`dimee ...` in this process (for refusals and quick steps): (exit status, stdout, stderr)."""
    from dimee.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def refused_here(capsys, *args_and_words, words=()) -> str:
    rc, _, err = cli(capsys, *args_and_words)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("dimee: error: "), err[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def topic_rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = TOPICS[i % 3]
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 7))))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(CUES[label])))
        rows.append({"review": " ".join(words), "topic": label, "id": i})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_scores(path: Path, n: int, seed: int) -> Path:
    """Pairs scored 0..3.75 by how many times 'good' is in the first text (a regression target)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["first", "second", "score"])
        for _ in range(n):
            k = int(rng.integers(0, 4))
            first = " ".join([*rng.choice(FILLER, 3), *["good"] * k])
            out.writerow([first, " ".join(rng.choice(FILLER, 3)), f"{1.25 * k + rng.normal(0, 0.1):.3f}"])
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own")
    write_jsonl(root / "topics" / "train.jsonl", topic_rows(240, 1))
    write_jsonl(root / "topics" / "validation.jsonl", topic_rows(60, 2))
    write_scores(root / "scores_train.csv", 240, 3)
    write_scores(root / "scores_validation.csv", 60, 4)
    write_tiny_encoder(root / "encoder", num_layers=4)
    (root / "elsewhere").mkdir()
    return root


@pytest.fixture(scope="module")
def topics(work) -> Path:
    ok(dimee(work, "train", "--train-file", "topics/train.jsonl", "--validation-file", "topics/validation.jsonl",
             "--text-fields", "review", "--label-field", "topic", "--model", work / "encoder", "--output", "runs/topics",
             *TRAIN))
    return work / "runs" / "topics"


@pytest.fixture(scope="module")
def scores(work) -> Path:
    ok(dimee(work, "train", "--task", "scores", "--train-file", "scores_train.csv", "--validation-file",
             "scores_validation.csv", "--text-fields", "first,second", "--label-field", "score", "--model",
             work / "encoder", "--output", "runs/scores", *TRAIN))
    return work / "runs" / "scores"


def final_exit(run: Path, split: str = "validation") -> dict:
    return json.loads((run / "metrics.json").read_text())["splits"][split]["per_exit"][-1]


def test_classification_run_describes_its_task(topics):
    info = json.loads((topics / "run.json").read_text())
    assert info["task"] == "topics"  # the train file's folder (its stem is just 'train')
    assert info["label_names"] == TOPICS and info["num_labels"] == 3 and info["text_fields"] == ["review"]
    assert info["metric_names"] == ["accuracy", "macro_f1"] and info["primary_metric"] == "accuracy"
    data = info["data"]
    assert data["kind"] == "files" and data["label_field"] == "topic" and data["label_values"] == TOPICS
    assert Path(data["train_file"]).is_absolute() and set(data["sha256"]) == {"train", "validation"}
    assert data["splits"]["validation"]["n"] == 60 and data["splits"]["calibration"]["n"] == 24
    final = final_exit(topics)
    assert set(final) == {"exit", "accuracy", "macro_f1"}
    assert final["accuracy"] >= 0.9 and final["macro_f1"] >= 0.9
    assert not [p for p in topics.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_eval_and_predict_work_from_the_run_folder_alone(topics, work):
    before = np.load(topics / "logits" / "validation.npy")
    out = ok(dimee(work / "elsewhere", "eval", topics, "--device", "cpu"))  # another folder: stored absolute paths
    assert out.split()[:4] == ["exit", "tier", "accuracy", "cumulative_cost"]
    assert np.abs(np.load(topics / "logits" / "validation.npy") - before).max() < 1e-4
    assert final_exit(topics)["accuracy"] >= 0.9
    answers = [json.loads(line) for line in ok(dimee(work / "elsewhere", "predict", topics, "a funny film",
                                                      "the plot was awful", "a brilliant cast")).splitlines()]
    assert [a["label_name"] for a in answers] == ["humour", "complaint", "praise"]
    assert all(len(a["probabilities"]) == 3 for a in answers)


def test_report_sweep_and_calibrate(topics, work, capsys):
    assert cli(capsys, "calibrate", topics)[0] == 0
    out = ok(dimee(work, "report", topics, "--out", work / "results", "--policies", "threshold"))
    assert "wrote" in out and (work / "results" / "glue_topics_pareto.png").exists()
    rows = json.loads((work / "results" / "glue.json").read_text())
    assert {r["task"] for r in rows} == {"topics"} and {"threshold", "oracle"} <= {r["policy"] for r in rows}
    target = work / "topics_sweep.csv"
    ok(dimee(work, "sweep", topics, "--policies", "threshold,oracle", "--grid", "mobile_to_edge=0.1,0.3", "--out", target, "--quiet"))
    with open(target) as f:
        swept = list(csv.DictReader(f))
    assert len(swept) == 4 and {r["metric_name"] for r in swept} == {"accuracy"}


def test_regression_run(scores, work):
    info = json.loads((scores / "run.json").read_text())
    assert info["num_labels"] == 1 and info["label_names"] == ["score"] and info["text_fields"] == ["first", "second"]
    final = final_exit(scores)
    assert set(final) == {"exit", "pearson", "spearmanr"} and final["pearson"] > 0.8
    answer = json.loads(ok(dimee(work, "predict", scores, "good good good film", "--pair", "the plot")))
    assert isinstance(answer["score"], float) and len(answer["exit_predictions"]) == 4
    ok(dimee(work, "sweep", scores, "--policies", "all-cloud,oracle", "--out", work / "scores.csv", "--quiet"))


def _snapshot(run: Path) -> dict:
    return {p.name: p.read_bytes() for p in [run / "metrics.json", run / "run.json", *(run / "logits").iterdir()]}


def test_eval_refuses_to_overwrite_a_run_with_other_data(topics, work, capsys):
    other = write_jsonl(work / "other.jsonl", topic_rows(30, 7))
    before = _snapshot(topics)
    refused_here(capsys, "eval", topics, "--validation-file", other, words=("refusing to overwrite", "--split"))
    refused_here(capsys, "eval", topics, "--validation-file", other, "--split", "validation", words=("new name",))
    refused_here(capsys, "eval", topics, "--data-dir", work, words=("--validation-file",))
    assert _snapshot(topics) == before
    # the stored file changed since training: the default eval refuses too
    changed = shutil.copytree(topics, work / "runs" / "topics-changed")
    info = json.loads((changed / "run.json").read_text())
    info["training"]["validation_file"] = str(other)
    (changed / "run.json").write_text(json.dumps(info))
    refused_here(capsys, "eval", changed, words=("refusing to overwrite",))
    # other data goes under a new split name, the run's own splits untouched
    rc, out, _ = cli(capsys, "eval", topics, "--validation-file", other, "--split", "news", "--device", "cpu")
    assert rc == 0 and out.split()[:2] == ["exit", "tier"]
    after = _snapshot(topics)
    assert all(after[k] == before[k] for k in before if k.startswith(("validation", "calibration")))
    assert final_exit(topics, "news")["exit"] == 4
    assert json.loads((topics / "run.json").read_text())["data"]["splits"]["news"]["n"] == 30
    refused_here(capsys, "eval", topics, "--validation-file", work / "topics" / "validation.jsonl", "--split", "news",
                 words=("other rows",))


def test_eval_of_a_glue_run_reads_its_own_folder_not_the_default(work, capsys, monkeypatch):
    """The issue's data loss: `dimee eval RUN` re-cached a run on another GLUE folder and overwrote it."""
    write_toy_glue(work / "glue", n_train=120, n_validation=40)
    write_toy_glue(work / "glue-other", n_train=120, n_validation=50)
    run = work / "runs" / "sst2"
    monkeypatch.chdir(work)
    assert cli(capsys, "train", "--task", "sst2", "--data-dir", "glue", "--model", work / "encoder", "--output", run,
               "--epochs", "1", "--max-length", "32", "--device", "cpu")[0] == 0
    before = _snapshot(run)
    # a fresh process elsewhere, $DIMEE_GLUE_DIR set to other data: the run's stored folder is read
    ok(dimee(work / "elsewhere", "eval", run, "--device", "cpu", env={"DIMEE_GLUE_DIR": str(work / "glue-other")}))
    assert np.load(run / "logits" / "validation.labels.npy").shape == (40,)
    refused_here(capsys, "eval", run, "--data-dir", work / "glue-other", words=("refusing to overwrite", "n 50"))
    labels = {k: v for k, v in _snapshot(run).items() if k.endswith("labels.npy")}
    assert labels == {k: v for k, v in before.items() if k.endswith("labels.npy")}


@pytest.mark.parametrize(
    "make, extra, words",
    [
        (lambda d: write_jsonl(d / "t.jsonl", [{"body": "good", "topic": t} for t in TOPICS]), ("--text-fields", "review"),
         ("no column 'review'", "columns found: body, topic")),
        (lambda d: write_jsonl(d / "t.jsonl", topic_rows(9, 1)), ("--text-fields", "review", "--label-names", "praise,humour"),
         ("label 'complaint' in row 1", "praise, humour")),
        (lambda d: write_jsonl(d / "t.jsonl", []), (), ("empty",)),
        (lambda d: (d / "t.jsonl").write_text("review,topic\ngood,praise\n") and d / "t.jsonl", (), ("not a readable json file",)),
        (lambda d: write_jsonl(d / "t.jsonl", [{"review": 5, "topic": "praise"}, {"review": 6, "topic": "humour"}]),
         ("--text-fields", "review"), ("holds int64 values, not strings", "row 1")),
    ],
    ids=["missing-field", "label-outside-names", "empty", "not-json", "non-string-text"],
)
def test_bad_data_is_one_line_and_leaves_no_run(work, tmp_path, capsys, make, extra, words):
    path = make(tmp_path)
    out = tmp_path / "run"
    refused_here(capsys, "train", "--train-file", path, "--validation-file", path, "--label-field", "topic", *extra,
                 "--model", work / "encoder", "--output", out, "--device", "cpu", words=words)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_failed_train_leaves_no_run_folder(work, tmp_path, monkeypatch):
    """A failure after training (here: writing the caches) removes the half-built folder."""
    from glue_eval import training

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(training, "cache_run_splits", boom)
    config = training.TrainConfig(
        task="topics", train_file=str(work / "topics" / "train.jsonl"), validation_file=str(work / "topics" / "validation.jsonl"),
        text_fields="review", label_field="topic", model=str(work / "encoder"), output_dir=str(tmp_path / "run"),
        epochs=0.1, max_length=32, device="cpu",
    )
    with pytest.raises(RuntimeError, match="disk full"):
        training.train_run(config)
    assert list(tmp_path.iterdir()) == []


def test_unknown_task_names_the_way_to_own_data(work, capsys):
    refused_here(capsys, "train", "--task", "topics", "--data-dir", work, words=("unknown GLUE task", "--train-file"))


def test_readme_own_data_commands_run(tmp_path):
    """The README's "Your own data" block, command by command, in a copy of its example files; the train line
    also gets `--model <tiny encoder> --device cpu --epochs 1` (the README's pretrained encoder takes a minute)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Your own data\n.*?```bash\n(.*?)```", text, re.S).group(1)
    commands = [c.split("#")[0].strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    assert commands and all(c.startswith("dimee ") for c in commands)
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    write_tiny_encoder(tmp_path / "encoder", num_layers=4)
    outputs = []
    for command in commands:
        args = shlex.split(command)[1:]
        if args[0] == "train":
            args += ["--model", str(tmp_path / "encoder"), "--device", "cpu", "--epochs", "1"]
        outputs.append(ok(dimee(tmp_path, *args)))
    info = json.loads((tmp_path / "runs" / "topics" / "run.json").read_text())
    assert info["label_names"] == ["cooking", "sport", "weather"]
    predicted = [json.loads(line) for out in outputs for line in out.splitlines() if line.startswith("{")]
    assert predicted and all(p["label_name"] in info["label_names"] for p in predicted)


@pytest.mark.services
def test_readme_python_api_block_runs(tmp_path, monkeypatch):
    """The README's Python block of "Your own data" (the whole job from `from dimee import ...`, the three
    services included), with the tiny encoder and one epoch in place of the pretrained encoder's two."""
    text = (REPO / "README.md").read_text()
    code = re.search(r"## Your own data\n.*?```python\n(.*?)```", text, re.S).group(1)
    assert "from dimee import" in code and "glue_eval" not in code
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    write_tiny_encoder(tmp_path / "encoder", num_layers=4)
    assert "epochs=2, max_length=32)" in code
    code = code.replace("epochs=2, max_length=32)", f"epochs=1, max_length=32, model={str(tmp_path / 'encoder')!r}, device='cpu')")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "topics" / "policy.json").exists() and (tmp_path / "runs" / "topics" / "temperatures.json").exists()

"""Your own data (issue 13), each later command in a fresh `python -m dimee` process from the run folder alone:

- classification with string labels: the README's "Your own data" commands, extracted from README.md and run
  verbatim on `examples/topics` (train, eval, predict, report, sweep), then calibrate and experts; its Python
  block (the whole job from `from dimee import ...`, the three tiers as processes of their own) in another folder;
- regression: a CSV of scored pairs: train, eval, predict, report, sweep and `dimee serve-all` (all three tiers);
- `dimee eval RUN` never overwrites a run's caches with other data; `--dataset-name` reads a local folder
  offline; bad data is one line, exit 2 and no run folder.

The only substitution in the README's commands: a tiny random-init encoder whose vocabulary covers the data's
words (`--model`, `--device cpu`, and `--lr 2e-3 --batch-size 8`: a random-init encoder learns in two epochs) in
place of the default pretrained one. Independent command chains run two at a time (the machine's two cores).
"""

from __future__ import annotations

import ast
import csv
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.test_cli_commands import ENV, REPO, ok
from tests.test_serve_all_signals import _three_free_ports, _wait_ready
from tests.toy_task import FILLER, write_tiny_encoder, write_toy_glue

README = REPO / "README.md"
TINY = ("--device", "cpu", "--lr", "2e-3", "--batch-size", "8")  # with --model <tiny encoder>: beside the README's
TOPICS = ["cooking", "sport", "weather"]  # examples/topics: the sorted distinct string labels
SCORES = ("--task", "scores", "--train-file", "scores_train.csv", "--validation-file", "scores_validation.csv",
          "--text-fields", "first,second", "--label-field", "score", "--epochs", "3",
          "--max-length", "32", "--plan", "1,3", "--output", "runs/scores")  # fmt: skip


def dimee(cwd: Path, *args) -> subprocess.CompletedProcess:
    """`python -m dimee ...` in a fresh process (the CLI tests' environment)."""
    return subprocess.run([sys.executable, "-m", "dimee", *map(str, args)], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def chain(cwd: Path, commands: list[list]) -> list[str]:
    """Run `dimee` commands one after another in fresh processes; their stdouts (each must succeed)."""
    return [ok(dimee(cwd, *args)) for args in commands]


def side_by_side(*jobs):
    """Run the callables two at a time; their results in order (a failure is raised)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return [f.result() for f in [pool.submit(job) for job in jobs]]


def cli(capsys, *args) -> tuple[int, str, str]:
    """`dimee ...` in this process (refusals and quick checks): (exit status, stdout, stderr)."""
    from dimee.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def refused_here(capsys, *args, words=()) -> str:
    rc, _, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("dimee: error: "), err[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def readme_block(language: str) -> str:
    text = README.read_text()
    return re.search(rf"## Your own data\n.*?```{language}\n(.*?)```", text, re.S).group(1)


def readme_commands(encoder: Path) -> list[list[str]]:
    """The README's own-data bash block as argument lists (after `dimee`), the train line with the tiny encoder."""
    lines = [c.split("#")[0].strip() for c in readme_block("bash").replace("\\\n", " ").splitlines()]
    commands = [shlex.split(c) for c in lines if c]
    assert commands and all(c[0] == "dimee" for c in commands)
    return [c[1:] + (["--model", str(encoder), *TINY] if c[1] == "train" else []) for c in commands]


def data_words(folder: Path) -> list[str]:
    texts = [json.loads(line)["text"].lower() for f in folder.glob("*.jsonl") for line in f.open()]
    return sorted({w for text in texts for w in re.findall(r"\w+", text)})


def example_rows(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "examples" / "topics" / "train.jsonl").open()]


def topic_rows(n: int, seed: int) -> list[dict]:
    """Rows `review` / `topic` (string labels praise, complaint, humour) for the bad-data cases."""
    rng = np.random.default_rng(seed)
    labels = ("praise", "complaint", "humour")
    return [{"review": " ".join(rng.choice(FILLER, 4)), "topic": labels[i % 3]} for i in range(n)]


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
    shutil.copytree(REPO / "examples", root / "examples")
    write_scores(root / "scores_train.csv", 240, 3)
    write_scores(root / "scores_validation.csv", 60, 4)
    write_tiny_encoder(root / "encoder", num_layers=4, extra_words=data_words(root / "examples" / "topics"))
    (root / "elsewhere").mkdir()
    return root


@pytest.fixture(scope="module")
def chains(work) -> dict:
    """Side by side: the README's commands verbatim (classification, `runs/topics`) and the regression chain
    (`runs/scores`: train here, then eval, predict, report, sweep from another folder)."""
    scores = work / "runs" / "scores"
    regression = [
        ["eval", scores, "--device", "cpu"],
        ["predict", scores, "good good good film", "--pair", "the plot"],
        ["report", scores, "--out", work / "scores-report", "--policies", "threshold"],
        ["sweep", scores, "--policies", "all-cloud,oracle", "--out", work / "scores.csv", "--quiet"],
    ]
    readme, train_scores = side_by_side(
        lambda: chain(work, readme_commands(work / "encoder")),
        lambda: chain(work, [["train", *SCORES, "--model", work / "encoder", *TINY]])
        + chain(work / "elsewhere", regression),
    )
    return {"readme": readme, "scores": train_scores}


@pytest.fixture(scope="module")
def topics(work, chains) -> Path:
    return work / "runs" / "topics"


@pytest.fixture(scope="module")
def scores(work, chains) -> Path:
    return work / "runs" / "scores"


def final_exit(run: Path, split: str = "validation") -> dict:
    return json.loads((run / "metrics.json").read_text())["splits"][split]["per_exit"][-1]


def test_readme_commands_run_verbatim(topics, chains, work):
    train, evaluated, predicted, reported, swept = chains["readme"]
    info = json.loads((topics / "run.json").read_text())
    assert info["task"] == "topics" and info["label_names"] == TOPICS and info["text_fields"] == ["text"]
    assert info["metric_names"] == ["accuracy", "macro_f1"] and info["primary_metric"] == "accuracy"
    data = info["data"]
    assert data["kind"] == "files" and data["label_field"] == "label" and data["label_values"] == TOPICS
    assert Path(data["train_file"]).is_absolute() and set(data["sha256"]) == {"train", "validation"}
    assert data["splits"]["validation"]["n"] == 60 and data["splits"]["calibration"]["n"] == 24
    final = final_exit(topics)
    assert set(final) == {"exit", "accuracy", "macro_f1"} and final["accuracy"] >= 0.9 and final["macro_f1"] >= 0.9
    assert not [p for p in topics.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert evaluated.split()[:4] == ["exit", "tier", "accuracy", "cumulative_cost"]
    answers = [json.loads(line) for line in predicted.splitlines()]
    assert [a["label_name"] for a in answers] == ["weather", "sport"]
    assert all(len(a["probabilities"]) == 3 for a in answers)
    rows = json.loads((work / "runs" / "topics-report" / "glue.json").read_text())
    assert {r["task"] for r in rows} == {"topics"}
    assert {"threshold", "dimee", "all-cloud"} <= {r["policy"] for r in rows}
    cloud = next(r for r in rows if r["policy"] == "all-cloud")
    assert cloud["metric"] == pytest.approx(100 * final["accuracy"], abs=0.01)
    assert (work / "runs" / "topics-report" / "glue_topics_pareto.png").exists() and "wrote" in reported
    with open(work / "runs" / "topics-sweep.csv") as f:
        sweep = list(csv.DictReader(f))
    assert sweep and {r["metric_name"] for r in sweep} == {"accuracy"} and "wrote" in swept
    assert {r["mobile_to_edge"] for r in sweep} == {"0.1", "0.3"}


def test_regression_run(scores, chains, work):
    _, evaluated, predicted, reported, swept = chains["scores"]
    info = json.loads((scores / "run.json").read_text())
    assert info["num_labels"] == 1 and info["label_names"] == ["score"] and info["text_fields"] == ["first", "second"]
    assert info["metric_names"] == ["pearson", "spearmanr"] and info["data"]["label_field"] == "score"
    final = final_exit(scores)
    assert set(final) == {"exit", "pearson", "spearmanr"} and final["pearson"] > 0.8
    assert evaluated.split()[:4] == ["exit", "tier", "pearson", "cumulative_cost"]
    answer = json.loads(predicted)
    assert isinstance(answer["score"], float) and len(answer["exit_predictions"]) == 4 and "label_name" not in answer
    rows = json.loads((work / "scores-report" / "glue.json").read_text())
    cloud = next(r for r in rows if r["policy"] == "all-cloud")
    assert cloud["task"] == "scores" and cloud["metric"] == pytest.approx(100 * final["pearson"], abs=0.01)
    with open(work / "scores.csv") as f:
        assert {r["metric_name"] for r in csv.DictReader(f)} == {"pearson"}


def test_calibrate_experts_and_report_on_a_new_split(topics, work, capsys):
    """calibrate and experts in fresh processes from another folder; then other data under a new split name,
    reported with `--eval-split` (in this process)."""
    calibrated, experts = side_by_side(
        lambda: ok(dimee(work / "elsewhere", "calibrate", topics)),
        lambda: ok(dimee(work / "elsewhere", "experts", "train", topics, "--device", "cpu", "--train-subset", "60",
                         "--types", "keyboard", "--epochs", "2")),  # fmt: skip
    )
    assert "temperatures written" in calibrated and (topics / "temperatures.json").exists()
    assert "saved in" in experts and (topics / "experts" / "experts.json").exists()
    news = write_jsonl(work / "news.jsonl", example_rows(work)[:30])
    assert cli(capsys, "eval", topics, "--validation-file", news, "--split", "news", "--device", "cpu")[0] == 0
    refused_here(capsys, "report", topics, "--out", work / "no-report", "--eval-split", "nope",
                 words=("'nope'", "news"))  # fmt: skip
    assert not (work / "no-report").exists()
    rc, out, _ = cli(capsys, "report", topics, "--out", work / "news-report", "--policies", "threshold",
                     "--eval-split", "news")  # fmt: skip
    assert rc == 0 and "wrote" in out
    text = (work / "news-report" / "glue.md").read_text()
    assert "--eval-split news" in text and "scored once on news" in text
    cloud = next(r for r in json.loads((work / "news-report" / "glue.json").read_text()) if r["policy"] == "all-cloud")
    assert cloud["metric"] == pytest.approx(100 * final_exit(topics, "news")["accuracy"], abs=0.01)


@pytest.mark.services
def test_serve_all_on_the_regression_run(scores, chains, work, tmp_path):
    """`dimee serve-all RUN` in a fresh process: each tier answers with the score `dimee predict` gave at its exit."""
    base = _three_free_ports()
    log = tmp_path / "serve-all.out"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "dimee", "serve-all", str(scores), "--base-port", str(base),
                                    "--log-dir", str(tmp_path / "logs")], cwd=work / "elsewhere", stdout=out,
                                   stderr=subprocess.STDOUT, env={**ENV, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        _wait_ready([base, base + 1, base + 2], process, log)
        predicted = json.loads(chains["scores"][2])  # "good good good film" / "the plot"
        with httpx.Client(timeout=60, trust_env=False) as client:
            for tier in ("mobile", "edge", "cloud"):
                body = {"first": "good good good film", "second": "the plot", "force_tier": tier}
                reply = client.post(f"http://127.0.0.1:{base}/v1/classify", json=body)
                assert reply.status_code == 200, reply.text
                answer = reply.json()
                assert answer["task"] == "scores"
                (prediction,) = answer["predictions"]
                assert prediction["tier"] == tier and prediction["label_name"] is None
                at_exit = predicted["exit_predictions"][prediction["exit"] - 1]
                assert prediction["score"] == pytest.approx(at_exit, abs=1e-3)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.services
def test_readme_python_api_block_runs(tmp_path, work, monkeypatch, capsys):
    """The README's Python block (the whole job from `from dimee import ...`, the three tiers as processes of
    their own), with the tiny encoder (and its larger step) in place of the pretrained one."""
    code = readme_block("python")
    assert "from dimee import" in code and "glue_eval" not in code and "epochs=2, max_length=32)" in code
    tiny = f"model={str(work / 'encoder')!r}, device='cpu', learning_rate=2e-3, batch_size=8"
    code = code.replace("epochs=2, max_length=32)", f"epochs=2, max_length=32, {tiny})")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    run = tmp_path / "runs" / "topics"
    assert (run / "policy.json").exists() and (run / "temperatures.json").exists()
    assert printed[0] == "weather"  # predict
    served = ast.literal_eval(printed[-1])  # the block prints the service's JSON answer as a dict
    assert [p["label_name"] for p in served["predictions"]] == ["cooking"] and served["task"] == "topics"


def _snapshot(run: Path) -> dict:
    return {p.name: p.read_bytes() for p in [run / "metrics.json", run / "run.json", *(run / "logits").iterdir()]}


def test_eval_refuses_to_overwrite_a_run_with_other_data(topics, work, capsys):
    other = write_jsonl(work / "other.jsonl", example_rows(work)[30:60])
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
    rc, out, _ = cli(capsys, "eval", topics, "--validation-file", other, "--split", "other", "--device", "cpu")
    assert rc == 0 and out.split()[:2] == ["exit", "tier"]
    after = _snapshot(topics)
    assert all(after[k] == before[k] for k in before if k.startswith(("validation", "calibration")))
    assert final_exit(topics, "other")["exit"] == 4
    assert json.loads((topics / "run.json").read_text())["data"]["splits"]["other"]["n"] == 30
    refused_here(capsys, "eval", topics, "--validation-file", work / "examples/topics/validation.jsonl",
                 "--split", "other", words=("other rows",))  # fmt: skip


def test_eval_of_a_glue_run_reads_its_own_folder_not_the_default(work, capsys, monkeypatch):
    """The issue's data loss: `dimee eval RUN` re-cached a run on another GLUE folder and overwrote it."""
    write_toy_glue(work / "glue", n_train=120, n_validation=40)
    write_toy_glue(work / "glue-other", n_train=120, n_validation=50)
    run = work / "runs" / "sst2"
    monkeypatch.chdir(work)
    assert cli(capsys, "train", "--task", "sst2", "--data-dir", "glue", "--model", work / "encoder", "--output", run,
               "--epochs", "1", "--max-length", "32", "--device", "cpu")[0] == 0  # fmt: skip
    before = _snapshot(run)
    # from another folder, $DIMEE_GLUE_DIR set to other data: the run's stored folder is read
    monkeypatch.chdir(work / "elsewhere")
    monkeypatch.setenv("DIMEE_GLUE_DIR", str(work / "glue-other"))
    assert cli(capsys, "eval", run, "--device", "cpu")[0] == 0
    assert np.load(run / "logits" / "validation.labels.npy").shape == (40,)
    refused_here(capsys, "eval", run, "--data-dir", work / "glue-other", words=("refusing to overwrite", "n 50"))
    labels = {k: v for k, v in _snapshot(run).items() if k.endswith("labels.npy")}
    assert labels == {k: v for k, v in before.items() if k.endswith("labels.npy")}


def test_dataset_name_reads_a_local_folder_offline(work, tmp_path, capsys, monkeypatch):
    """`--dataset-name` goes through `datasets.load_dataset`: a local folder of train/validation files is a name
    it resolves offline; run.json keeps it absolute, so eval works from another folder."""
    folder = tmp_path / "mytopics"
    shutil.copytree(work / "examples" / "topics", folder, ignore=shutil.ignore_patterns("*.py"))
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, "train", "--dataset-name", "mytopics", "--model", work / "encoder", "--epochs", "1",
                       "--max-length", "32", *TINY)  # fmt: skip
    assert rc == 0, err[-3000:]
    run = tmp_path / "runs" / "mytopics"
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "mytopics" and info["label_names"] == TOPICS
    data = info["data"]
    assert data["kind"] == "dataset" and data["dataset_name"] == str(folder)
    assert data["validation_split"] == "validation"
    before = _snapshot(run)
    monkeypatch.chdir(work / "elsewhere")
    assert cli(capsys, "eval", run, "--device", "cpu")[0] == 0
    assert _snapshot(run)["validation.labels.npy"] == before["validation.labels.npy"]
    refused_here(capsys, "train", "--dataset-name", tmp_path / "nothing-here", "--model", work / "encoder",
                 "--output", tmp_path / "none", words=("load_dataset",))  # fmt: skip
    assert not (tmp_path / "none").exists()
    # training again into the run folder is said (the old run is replaced only once the new one is complete)
    rc, _, err = cli(capsys, "train", "--dataset-name", folder, "--model", work / "encoder", "--epochs", "0.2",
                     "--output", run, "--max-length", "32", *TINY)  # fmt: skip
    assert rc == 0 and f"note: {run} holds a run; it is replaced" in err


def _not_parquet(d: Path) -> Path:
    (d / "t.parquet").write_text("review,topic\ngood,praise\n")
    return d / "t.parquet"


def _header_only(d: Path) -> Path:
    (d / "t.csv").write_text("review,topic\n")
    return d / "t.csv"


@pytest.mark.parametrize(
    "make, extra, words",
    [
        (lambda d: write_jsonl(d / "t.jsonl", [{"body": "good", "topic": t} for t in ("a", "b")]), ("--text-fields", "review"),
         ("no column 'review'", "columns found: body, topic")),
        (lambda d: write_jsonl(d / "t.jsonl", topic_rows(9, 1)), ("--text-fields", "review", "--label-field", "kind"),
         ("no column 'kind'", "columns found: review, topic")),
        (lambda d: write_jsonl(d / "t.jsonl", topic_rows(9, 1)), ("--text-fields", "review", "--label-names", "praise,humour"),
         ("label 'complaint' in row 2", "praise, humour")),
        (lambda d: write_jsonl(d / "t.jsonl", []), ("--text-fields", "review"), ("empty",)),
        (_header_only, ("--text-fields", "review"), ("has no rows",)),
        (lambda d: (d / "t.jsonl").write_text("review,topic\ngood,praise\n") and d / "t.jsonl", (), ("not a readable json file",)),
        (_not_parquet, ("--text-fields", "review"), ("not a readable parquet file",)),
        (lambda d: write_jsonl(d / "t.jsonl", [{"review": 5, "topic": "praise"}, {"review": 6, "topic": "humour"}]),
         ("--text-fields", "review"), ("holds int64 values, not strings", "row 1")),
    ],
    ids=["missing-field", "missing-label-field", "label-outside-names", "empty", "header-only", "not-json",
         "not-parquet", "non-string-text"],
)  # fmt: skip
def test_bad_data_is_one_line_and_leaves_no_run(work, tmp_path, capsys, make, extra, words):
    path = make(tmp_path)
    out = tmp_path / "run"
    refused_here(capsys, "train", "--train-file", path, "--validation-file", path, "--label-field", "topic", *extra,
                 "--model", work / "encoder", "--output", out, "--device", "cpu", words=words)  # fmt: skip
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_validation_label_unseen_in_train_names_the_file_and_row(work, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", topic_rows(9, 1))
    rows = [*topic_rows(3, 2), {"review": "the plot", "topic": "spam"}]
    validation = write_jsonl(tmp_path / "validation.jsonl", rows)
    refused_here(capsys, "train", "--train-file", train, "--validation-file", validation, "--text-fields", "review",
                 "--label-field", "topic", "--model", work / "encoder", "--output", tmp_path / "run",
                 words=("validation file", "label 'spam' in row 4"))  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_a_failed_train_leaves_no_run_folder(work, tmp_path, monkeypatch):
    """A failure after training (here: writing the caches) removes the half-built folder."""
    from glue_eval import training

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(training, "cache_run_splits", boom)
    topics = work / "examples" / "topics"
    config = training.TrainConfig(
        task="topics", train_file=str(topics / "train.jsonl"), validation_file=str(topics / "validation.jsonl"),
        text_fields="text", label_field="label", model=str(work / "encoder"), output_dir=str(tmp_path / "run"),
        epochs=0.1, max_length=32, device="cpu",
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="disk full"):
        training.train_run(config)
    assert list(tmp_path.iterdir()) == []


def test_unknown_task_names_the_way_to_own_data(work, capsys):
    refused_here(capsys, "train", "--task", "topics", "--data-dir", work, words=("unknown GLUE task", "--train-file"))


def test_the_public_api_holds_the_whole_job():
    """`from dimee import ...` gives each step of the job (the issue: `from dimee import sweep` failed)."""
    import dimee
    from glue_eval.sweep import sweep

    for name in ("train", "evaluate", "predict", "compare_policies", "sweep", "calibrate", "fit_policy", "serve"):
        assert callable(getattr(dimee, name)) and name in dimee.__all__
    assert dimee.sweep is sweep


def test_label_names_from_a_classlabel_integers_or_floats(tmp_path):
    """Label names: a ClassLabel feature's (Parquet keeps it), the sorted distinct integers (or the declared
    names, by index), none for floats (regression); a TSV is read with its tab delimiter."""
    import datasets

    from glue_eval.owndata import load_own_data

    rows = {"text": ["good film", "bad film", "fun film", "good plot"], "label": [2, 0, 1, 2]}
    names = datasets.ClassLabel(names=["neg", "mid", "pos"])
    features = datasets.Features({"text": datasets.Value("string"), "label": names})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "t.parquet")
    own = load_own_data("p", str(tmp_path / "t.parquet"), str(tmp_path / "t.parquet"))
    assert own.task.label_names == ("neg", "mid", "pos") and list(own.validation["label"]) == [2, 0, 1, 2]
    write_jsonl(tmp_path / "i.jsonl", [{"text": t, "label": v} for t, v in zip(rows["text"], rows["label"])])
    own = load_own_data("i", str(tmp_path / "i.jsonl"), str(tmp_path / "i.jsonl"))
    assert own.task.label_names == ("0", "1", "2") and list(own.train["label"]) == [2, 0, 1, 2]
    own = load_own_data("i", str(tmp_path / "i.jsonl"), str(tmp_path / "i.jsonl"), label_names=["neg", "mid", "pos"])
    assert own.task.label_names == ("neg", "mid", "pos") and list(own.train["label"]) == [2, 0, 1, 2]
    (tmp_path / "f.tsv").write_text("text\tlabel\ngood film\t0.5\nbad film\t2.25\n")
    own = load_own_data("f", str(tmp_path / "f.tsv"), str(tmp_path / "f.tsv"))
    assert own.task.is_regression and own.task.metric_names == ("pearson", "spearmanr")
    assert list(own.validation["label"]) == [0.5, 2.25]

"""Each figure the README quotes from a results JSON is the JSON's value, rounded as the README prints it.

QUOTES lists them explicitly: the README phrase with `{}` where the figure(s) go, the results file, where the
value is (a row of glue.json picked by task and policy, or a key path), and the decimals printed. A README edit
that drops a phrase, or a regenerated results file whose figure moved, fails here until the other follows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = re.sub(r"\s+", " ", (ROOT / "README.md").read_text())  # phrases may wrap across lines


def glue(task: str, policy: str, key: str = "cost_reduction_%"):
    return ("glue.json", lambda rows: next(r[key] for r in rows if r["task"] == task and r["policy"] == policy))


def oracle(pick):
    return ("glue.json", lambda rows: pick(r["cost_reduction_%"] for r in rows if r["policy"] == "oracle"))


def key(path: str, *keys: str):
    def get(data):
        for k in keys:
            data = data[k]
        return data

    return (path, get)


def ablation(task: str, variant: str, column: str, negate: bool = False):
    sign = -1 if negate else 1
    return ("dimee_ablation.json",
            lambda d: sign * next(r[column] for r in d["rows"] if r["task"] == task and r["variant"] == variant))


ASKED_NO_WNLI = ("cola", "mnli", "mrpc", "qnli", "rte", "sst2")  # the tasks the "why 43%" bullet speaks of

# (README phrase, [(results file, value getter), ...], decimals)
def board(task: str, column: str):
    return ("glue_scoreboard.json", lambda d: next(r[column] for r in d["summary"] if r["task"] == task))


QUOTES = [
    ("in validation Pareto area on {} of {} tasks", [
        ("glue_scoreboard.json", lambda d: sum(bool(r["dimee_at_or_above"]) for r in d["summary"])),
        ("glue_scoreboard.json", lambda d: len(d["summary"]))], 0),
    ("(MRPC {} against the threshold's {}, QNLI {} against {})", [
        board("mrpc", "DIMEE val_area"), board("mrpc", "baseline val_area"),
        board("qnli", "DIMEE val_area"), board("qnli", "baseline val_area")], "raw"),
    ("cheaper than the threshold at the same threshold on {} of {} tasks", [
        ("glue.json", lambda rows: sum(r["cost_reduction_%"] > t["cost_reduction_%"] for r in rows for t in rows
                                       if r["policy"] == "dimee-entry-threshold" and t["policy"] == "threshold"
                                       and r["task"] == t["task"] and r["knob"] == t["knob"])),
        ("glue.json", lambda rows: sum(r["policy"] == "threshold" for r in rows))], 0),
    ("On SST-2 dimee-entry-threshold cuts {}% at a {}-point validation drop against the threshold's {}%", [
        glue("sst2", "dimee-entry-threshold"), glue("sst2", "dimee-entry-threshold", "drop"), glue("sst2", "threshold")], "raw"),
    ("on MRPC {}% at a {}-point drop against entropy's {}%; on CoLA {}% against the threshold's {}%", [
        glue("mrpc", "dimee-entry-threshold"), glue("mrpc", "dimee-entry-threshold", "drop"), glue("mrpc", "entropy"),
        glue("cola", "dimee-entry-threshold"), glue("cola", "threshold")], "raw"),
    ("and {}-{}% of them are answered in the cloud (MRPC: {}%;", [
        ("glue.json", lambda rows: 100 * min(r["cloud"] for r in rows if r["policy"] == "dimee-entry-threshold" and r["task"] in ASKED_NO_WNLI)),
        ("glue.json", lambda rows: 100 * max(r["cloud"] for r in rows if r["policy"] == "dimee-entry-threshold" and r["task"] in ASKED_NO_WNLI)),
        ("glue.json", lambda rows: 100 * next(r["cloud"] for r in rows if r["policy"] == "dimee-entry-threshold" and r["task"] == "mrpc"))], 1),
    ("All-edge, which answers every sample at exit 4 with no mobile layer, cuts {}%", [glue("mrpc", "all-edge")], 1),
    ("no sample of CoLA, MNLI, MRPC, QNLI or RTE answers on mobile (SST-2: {}%)", [
        ("glue.json", lambda rows: 100 * next(r["mobile"] for r in rows if r["task"] == "sst2" and r["policy"] == "dimee-entry-threshold"))], 1),
    ("whose dimee-embedding trails the threshold on STS-B ({} vs {})", [
        ("glue_scoreboard-mpnet.json", lambda d: next(r["DIMEE val_area"] for r in d["cross_task"]["rows"] if r["task"] == "stsb")),
        ("glue_scoreboard-mpnet.json", lambda d: next(r["baseline val_area"] for r in d["cross_task"]["rows"] if r["task"] == "stsb"))], "raw"),
    ("and on {} of {} under the one-choice rule", [
        ("glue_scoreboard-mpnet.json", lambda d: sum(bool(r["dimee_at_or_above"]) for r in d["cross_task"]["rows"])),
        ("glue_scoreboard-mpnet.json", lambda d: len(d["cross_task"]["rows"]))], 0),
    ("STS-B's threshold area went from -60.35 to {} points", [
        ("glue_scoreboard.json", lambda d: next(r["val_area"] for r in d["policies"] if r["task"] == "stsb" and r["policy"] == "threshold"))], "raw"),
    ("on {} of {} tasks; MRPC stays behind ({} vs {})", [
        ("glue_scoreboard.json", lambda d: sum(bool(r["dimee_at_or_above"]) for r in d["cross_task"]["rows"])),
        ("glue_scoreboard.json", lambda d: len(d["cross_task"]["rows"])),
        ("glue_scoreboard.json", lambda d: next(r["DIMEE val_area"] for r in d["cross_task"]["rows"] if r["task"] == "mrpc")),
        ("glue_scoreboard.json", lambda d: next(r["baseline val_area"] for r in d["cross_task"]["rows"] if r["task"] == "mrpc"))], "raw"),
    ("(MRPC among them: {} vs {} per task)", [
        ("glue_scoreboard-mpnet.json", lambda d: next(r["DIMEE val_area"] for r in d["summary"] if r["task"] == "mrpc")),
        ("glue_scoreboard-mpnet.json", lambda d: next(r["baseline val_area"] for r in d["summary"] if r["task"] == "mrpc"))], "raw"),
    ("entry+cascade gains {} points of calibration area and {} of validation area", [
        ablation("mrpc", "entry+cascade +oof", "cal_gain"), ablation("mrpc", "entry+cascade +oof", "val_gain")], 2),
    ("it loses {} and {} points of validation area", [
        ablation("qnli", "entry+cascade +oof", "val_gain", negate=True),
        ablation("sst2", "entry+cascade +oof", "val_gain", negate=True)], 2),
    ("it raises the threshold's calibration area on {} of {} tasks and its validation area on {} of {}", [
        ("dimee_ablation.json", lambda d: sum(r["cal_gain"] > 1e-9 for r in d["rows"] if r["variant"] == "entry+threshold")),
        ("dimee_ablation.json", lambda d: sum(r["variant"] == "entry+threshold" for r in d["rows"])),
        ("dimee_ablation.json", lambda d: sum(r["val_gain"] > 1e-9 for r in d["rows"] if r["variant"] == "entry+threshold")),
        ("dimee_ablation.json", lambda d: sum(r["variant"] == "entry+threshold" for r in d["rows"]))], 0),
    ("by {} points of validation area on average", [
        ("dimee_ablation.json", lambda d: sum(r["val_gain"] for r in d["rows"] if r["variant"] == "entry+threshold")
         / sum(r["variant"] == "entry+threshold" for r in d["rows"]))], 2),
    ("(mean validation gains {}, {} and {} points)", [
        ("dimee_ablation.json", lambda d, v=v: sum(r["val_gain"] for r in d["rows"] if r["variant"] == v)
         / sum(r["variant"] == v for r in d["rows"]))
        for v in ("entry+threshold shrinkage=10", "entry+threshold min cluster 20", "entry+threshold +oof")], 3),
    ("(dimee-paper {} vs {}), where both runs", [board("rte", "DIMEE val_area"), board("rte", "baseline val_area")], "raw"),
    ("in Pareto area on {} of {} tasks under the default, {} of {} under SplitEE's", [
        ("cost_presets.json", lambda d, p=p, f=f: f(r for r in d["scoreboard"] if r["preset"] == p))
        for p in ("default", "splitee")
        for f in (lambda rows: sum(bool(r["dimee_at_or_above"]) for r in rows), lambda rows: sum(1 for _ in rows))], 0),
    ("is met on {} of {} asked tasks, WNLI", [
        ("glue.md", lambda text: re.search(r"Met on (\d+) of (\d+) asked task", text).group(1)),
        ("glue.md", lambda text: re.search(r"Met on (\d+) of (\d+) asked task", text).group(2))], "raw"),
    ("{} settings with DIMEE refitted per setting", [key("sweep_speed.json", "settings")], "thousands"),
    ("refitted per setting in {} s (one run)", [key("sweep_speed.json", "seconds")], 3),
    ("(dimee-entry+oof) cuts {}% on SST-2 against the threshold's {}%", [glue("sst2", "dimee-entry+oof"), glue("sst2", "threshold")], 1),
    ("but its validation drop is {} points, past the target", [glue("sst2", "dimee-entry+oof", "drop")], 2),
    ("STS-B's entry+cascade DIMEE cuts {}% against all-edge's {}%", [glue("stsb", "dimee-entry"), glue("stsb", "all-edge")], 1),
    ("its validation drop is {} points", [glue("stsb", "dimee-entry", "drop")], 2),
    ("The oracle shows {}-{}% is there", [oracle(min), oracle(max)], 1),
    ("(STS-B {}%, SST-2 {}%)", [glue("stsb", "oracle"), glue("sst2", "oracle")], 1),
    ("reads -{}%", [("glue.json", lambda rows: -next(r["cost_reduction_%"] for r in rows
                                                     if r["task"] == "rte" and r["policy"] == "patience"))], 1),
    ("WNLI's final exit is below chance ({}%)", [glue("wnli", "all-cloud", "metric")], 1),
    ("entry+cascade DIMEE costs {} against the cascade's {}", [
        key("routing.json", "policies", "dimee-entry", "offline_cost"),
        key("routing.json", "policies", "dimee-cascade", "offline_cost")], 3),
    ("saves {}% of the layers the threshold rule ran", [
        ("routing.json", lambda d: 100 * d["policies"]["threshold"]["layers_per_1000"]["saved_share"])], 1),
    ("and {}% for entry+cascade DIMEE", [
        ("routing.json", lambda d: 100 * d["policies"]["dimee-entry"]["layers_per_1000"]["saved_share"])], 1),
    ("but only {}% for the cascade", [
        ("routing.json", lambda d: 100 * d["policies"]["dimee-cascade"]["layers_per_1000"]["saved_share"])], 1),
    ("equals the torch mobile part to {} in the exit logits", [
        ("deploy.json", lambda d: f"{max(v['exit_logits'] for v in d['max_abs_diff_onnx_fp32_vs_torch'].values()):.1e}")],
        "raw"),
    ("int8 runs the mobile part {}x faster than torch eager fp32 at batch 1 on one thread (ONNX fp32: {}x)", [
        key("deploy.json", "speedup", "batch_1", "onnx_int8_vs_torch"),
        key("deploy.json", "speedup", "batch_1", "onnx_fp32_vs_torch")], 2),
    ("at {}% on SST-2 validation at exit 2 against fp32's {}%", [
        key("deploy.json", "accuracy_validation", "int8", "exit_2"),
        key("deploy.json", "accuracy_validation", "fp32", "exit_2")], 2),
    ("in a {} MB file against {} MB", [
        ("deploy.json", lambda d: d["sizes_bytes"]["onnx_int8"] / 1e6),
        ("deploy.json", lambda d: d["sizes_bytes"]["onnx_fp32"] / 1e6)], 1),
    ("2 edge replicas give {}x the requests/s of one", [key("deploy_ray.json", "ratio_2_over_1")], 2),
    ("{} of {} requests answered 200, {} lost, {} degraded", [
        ("deploy_ray.json", lambda d: d["configurations"][2]["kill"]["statuses"]["200"]),
        ("deploy_ray.json", lambda d: d["configurations"][2]["kill"]["requests"]),
        ("deploy_ray.json", lambda d: d["configurations"][2]["kill"]["lost"]),
        ("deploy_ray.json", lambda d: d["configurations"][2]["kill"]["degraded"])], 0),
    ("(mobile resent {} handoffs)", [
        ("deploy_ray.json", lambda d: d["configurations"][2]["kill"]["handoffs_resent_by_mobile"])], 0),
]


def _printed(value, decimals) -> str:
    if decimals == "thousands":
        return f"{int(value):,}"
    if decimals == "raw":  # printed as stored (the scoreboard rounds to 3 decimals, trailing zeros dropped)
        return str(value)
    return f"{float(value):.{decimals}f}"


@pytest.mark.parametrize("phrase, sources, decimals", QUOTES, ids=[q[0] for q in QUOTES])
def test_readme_quotes_the_results(phrase, sources, decimals):
    values = []
    for path, get in sources:
        text = (ROOT / "results" / path).read_text()
        values.append(_printed(get(text if path.endswith(".md") else json.loads(text)), decimals))
    quoted = phrase.format(*values)
    assert quoted in README, f"README should say {quoted!r} (from results/{sources[0][0]})"


def test_all_cloud_figure_is_the_same_on_every_task():
    rows = json.loads((ROOT / "results" / "glue.json").read_text())
    assert len({r["cost_reduction_%"] for r in rows if r["policy"] == "all-cloud"}) == 1  # "all-cloud rows show"


def test_the_no_mobile_answers_claim_holds():
    """The "why 43%" bullet names the tasks whose dimee-entry-threshold operating point answers none on mobile."""
    rows = json.loads((ROOT / "results" / "glue.json").read_text())
    named = ("cola", "mnli", "mrpc", "qnli", "rte")
    assert "no sample of CoLA, MNLI, MRPC, QNLI or RTE answers on mobile" in README
    assert all(r["mobile"] == 0.0 for r in rows if r["policy"] == "dimee-entry-threshold" and r["task"] in named)

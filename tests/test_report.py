"""The GLUE report (glue_eval.report) against answers worked out by hand.

A synthetic run, 6 layers, plan 2,4 (mobile 1-2, edge 3-4, cloud 5-6), SST-2 (accuracy), whose per-exit logits
take four shapes only, so every policy's exit, metric and cost can be read off by hand:

    C  right, confidence 0.9975 (logits +-3)       M  right, confidence 0.8808 (logits +-1)
    u  wrong, confidence 0.5498 (logits -+0.1)     W  wrong, confidence 0.999994 (logits -+6)

Default cost model (README): layers cost 0.10 on mobile, 0.05 on edge, 0.02 on cloud, hops mobile->edge 0.20,
edge->cloud 0.30, mobile->cloud 0.50; the all-cloud reference (token ids straight to the cloud, 6 layers there)
0.50 + 6 * 0.02 = 0.62. Answering at exit 1..6 on the chain mobile -> edge -> cloud (threshold, patience)
costs 0.10, 0.20, 0.45, 0.50, 0.82, 0.84; the cheapest route to each exit (the oracle's; edge and cloud accept
token ids) costs 0.10, 0.20 (mobile), 0.35, 0.40 (tokens to edge: 0.20 + j * 0.05), 0.60, 0.62 (tokens to
cloud: 0.50 + j * 0.02). These are written out below, not computed by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clustering import DimeePolicy, ThresholdPolicy
from glue_eval import depth, glue_md, report
from glue_eval.report import Tunable, compare_policies, report_tables
from tiers import CachedSplit, CostModel, RunInfo, TierPlan, write_cached_split, write_run_info
from tiers.run import TEMPERATURES_FILE

PLAN = TierPlan(2, 4, 6)
# the validation samples: per-exit shape and label
PATTERNS = ["CCCCCC", "uuCCCC", "MMMCCC", "WWWWWC", "uuuuuC", "uMuuCC", "uuuMMC", "MCCCCC"]
LABELS = [0, 1, 0, 1, 0, 1, 0, 1]
SIGNED = {"C": 3.0, "M": 1.0, "u": -0.1, "W": -6.0}  # logit of the true class; the other class gets minus that

REFERENCE = 0.50 + 6 * 0.02  # send the input to the cloud, run all 6 layers there
CHAIN = {1: 0.10, 2: 0.20, 3: 0.45, 4: 0.50, 5: 0.82, 6: 0.84}  # exit j's cost via mobile -> edge -> cloud
CHEAPEST = {1: 0.10, 2: 0.20, 3: 0.35, 4: 0.40, 5: 0.60, 6: 0.62}  # exit j's cost by its cheapest route


def _split(repeat: int) -> CachedSplit:
    patterns, labels = PATTERNS * repeat, LABELS * repeat
    logits = np.zeros((len(patterns), 6, 2), dtype=np.float32)
    for i, (pattern, y) in enumerate(zip(patterns, labels)):
        for j, shape in enumerate(pattern):
            logits[i, j, y], logits[i, j, 1 - y] = SIGNED[shape], -SIGNED[shape]
    n = len(labels)
    return CachedSplit(logits, np.array(labels, dtype=np.int64), np.full(n, 10, dtype=np.int32))


def make_run(folder, base_model=""):
    write_run_info(
        folder,
        RunInfo(task="sst2", text_fields=["sentence"], label_names=["negative", "positive"], num_labels=2,
                max_length=64, plan=PLAN, cost_model=CostModel(), base_model=base_model),
    )
    write_cached_split(folder, "calibration", _split(repeat=5))  # the same 8 shapes, 40 samples
    write_cached_split(folder, "validation", _split(repeat=1))
    return folder


@pytest.fixture()
def run(tmp_path):
    return make_run(tmp_path / "run")


@pytest.fixture()
def table(run):
    return compare_policies(run, families=["threshold", "patience"]).set_index("policy")


def _cost(exits, costs=CHAIN) -> float:
    return sum(costs[e] for e in exits) / len(exits) / REFERENCE


# ---- knob-free policies ---------------------------------------------------------------------------------------
def test_all_mobile_by_hand(table):
    row = table.loc["all-mobile"]  # exit 2: right on CCCCCC, MMMCCC, uMuuCC, MCCCCC
    assert (row["metric"], row["drop"]) == (50.0, 50.0)
    assert row["normalised_cost"] == 0.3226 and row["cost_reduction_%"] == 67.7  # 0.20 / 0.62
    assert (row["mobile"], row["edge"], row["cloud"]) == (1.0, 0.0, 0.0)
    assert row["meets_target"] == False and row["cv_drop"] == 50.0  # noqa: E712 (numpy bool)


def test_all_edge_metric_by_hand(table):
    row = table.loc["all-edge"]  # exit 4: wrong on WWWWWC, uuuuuC, uMuuCC
    assert (row["metric"], row["drop"]) == (62.5, 37.5)
    assert (row["mobile"], row["edge"], row["cloud"]) == (0.0, 1.0, 0.0)
    assert row["meets_target"] == False  # noqa: E712


def test_all_edge_cost_is_the_direct_route(table):
    # tokens straight to edge: hop 0.20, then e = 4 edge layers
    assert table.loc["all-edge", "normalised_cost"] == round((0.20 + 4 * 0.05) / (0.50 + 6 * 0.02), 4)


def test_all_cloud_metric_by_hand(table):
    row = table.loc["all-cloud"]
    assert (row["metric"], row["drop"], row["cloud"]) == (100.0, 0.0, 1.0)
    assert row["meets_target"] == True and row["cv_drop"] == 0.0  # noqa: E712


def test_all_cloud_cost_is_the_reference(table):
    assert table.loc["all-cloud", "normalised_cost"] == 1.0


def test_oracle_by_hand(run, table):
    # first right exit per sample; none before the last for WWWWWC and uuuuuC
    exits = [1, 3, 1, 6, 6, 2, 4, 1]
    row = table.loc["oracle"]
    assert (row["metric"], row["drop"]) == (100.0, 0.0)
    # each by its cheapest route: (0.10 + 0.35 + 0.10 + 0.62 + 0.62 + 0.20 + 0.40 + 0.10) / 8 / 0.62 = 0.50202
    assert row["normalised_cost"] == 0.502
    assert (row["mobile"], row["edge"], row["cloud"]) == (0.5, 0.25, 0.25)
    assert _cost(exits, CHEAPEST) == pytest.approx(0.502016, abs=1e-6)
    from clustering import OraclePolicy

    scored = report._score(OraclePolicy(PLAN, CostModel()).fit(*_fit(run)), _validation(run), "sst2")
    assert scored["exits"].tolist() == exits


def _fit(run):
    from tiers import read_cached_split

    split = read_cached_split(run, "calibration")
    return split.logits, split.labels


def _validation(run):
    from tiers import read_cached_split

    return read_cached_split(run, "validation")


# ---- a fixed threshold rule -------------------------------------------------------------------------------------
def test_threshold_rule_by_hand(run):
    """Confidence >= 0.9 passes C and W only: first C/W exit, else the last."""
    policy = ThresholdPolicy(PLAN, CostModel(), criterion="confidence", threshold=0.9).fit(*_fit(run))
    scored = report._score(policy, _validation(run), "sst2")
    exits = [1, 3, 4, 1, 6, 5, 6, 2]
    assert scored["exits"].tolist() == exits
    assert scored["metric"] == 7 / 8 and scored["final_metric"] == 1.0  # only WWWWWC answered wrongly
    assert scored["normalised_cost"] == pytest.approx((0.10 + 0.45 + 0.50 + 0.10 + 0.84 + 0.82 + 0.84 + 0.20) / 8 / 0.62)
    assert scored["tier_shares"] == pytest.approx({"mobile": 3 / 8, "edge": 2 / 8, "cloud": 3 / 8})
    assert scored["predictions"].tolist() == [0, 1, 0, 0, 0, 1, 0, 1]  # WWWWWC: the wrong class at exit 1


# ---- the knob choice on calibration, and a missed target ---------------------------------------------------------
def test_threshold_misses_the_target_and_says_so(table):
    """W is wrong at exits 1-5 with confidence 0.999994 > every threshold in the grid (<= 0.999), so each
    threshold exits it at exit 1: drop 5/40 = 12.5 points on calibration for every knob that keeps u (0.5498)
    back. The fallback is the knob with the smallest drop, the first listed: the grid's first value above
    0.5498, 0.5507 (the 7th; 0.5 .. 0.5423 also let u pass)."""
    row = table.loc["threshold"]
    assert row["meets_target"] == False and row["cv_drop"] == 12.5  # noqa: E712
    assert row["knob"] == 0.5507
    # 0.5507 lets M pass too: oracle exits except WWWWWC at exit 1
    exits = [1, 3, 1, 1, 6, 2, 4, 1]
    assert row["metric"] == 87.5 and row["normalised_cost"] == round(_cost(exits), 4) == 0.4819


def test_patience_meets_the_target_only_at_k5(table):
    """k <= 4 exits WWWWWC / uuuuuC (five agreeing wrong exits) at exit 5; k = 5 answers everything at 6."""
    row = table.loc["patience"]
    assert row["knob"] == 5 and row["meets_target"] == True and row["cv_drop"] == 0.0  # noqa: E712
    assert row["cv_cost"] == row["normalised_cost"] == round(0.84 / 0.62, 4)
    assert (row["metric"], row["cloud"]) == (100.0, 1.0)


def test_every_row_says_whether_it_met_the_target(table):
    assert table["meets_target"].dtype == bool
    assert table["cv_drop"].notna().all() and table["cv_cost"].notna().all()


def test_summary_skips_missed_rows(table):
    summary = report._summary(table.reset_index())
    row = summary.iloc[0]
    assert row["best baseline"].startswith("patience:")  # threshold is cheaper on validation but missed
    assert row["best DIMEE"] == "none met the target on calibration"


def _summary_rows(**rows):
    base = {"task": "sst2", "knob": 0.1, "metric": 90.0, "mobile": 0.3, "edge": 0.3, "cloud": 0.4}
    return pd.DataFrame([{**base, "policy": name, **values} for name, values in rows.items()])


def test_summary_picks_by_calibration_cost_not_validation():
    combined = _summary_rows(
        **{
            # cheapest on validation and within the target there, but missed it on calibration
            "dimee": dict(cv_drop=0.5, cv_cost=0.30, meets_target=False, drop=0.0, normalised_cost=0.2, **{"cost_reduction_%": 80.0}),
            # met on calibration, dearer there than dimee-cascade, cheaper on validation
            "dimee-edge": dict(cv_drop=0.1, cv_cost=0.50, meets_target=True, drop=0.2, normalised_cost=0.3, **{"cost_reduction_%": 70.0}),
            "dimee-cascade": dict(cv_drop=0.2, cv_cost=0.40, meets_target=True, drop=0.9, normalised_cost=0.4, **{"cost_reduction_%": 60.0}),
            "threshold": dict(cv_drop=0.0, cv_cost=0.60, meets_target=True, drop=0.0, normalised_cost=0.5, **{"cost_reduction_%": 50.0}),
            "patience": dict(cv_drop=0.3, cv_cost=0.55, meets_target=True, drop=1.0, normalised_cost=0.6, **{"cost_reduction_%": 40.0}),
            "oracle": dict(cv_drop=-1.0, cv_cost=0.1, meets_target=True, drop=-1.0, normalised_cost=0.1, **{"cost_reduction_%": 90.0}),
        }
    )
    row = report._summary(combined).iloc[0]
    assert row["best DIMEE"] == "dimee-cascade: 60.0% (drop 0.9)"  # validation figures reported, not used
    assert row["best baseline"] == "patience: 40.0% (drop 1.0)"
    assert row["oracle"] == "90.0%"


def test_operating_target_reads_the_calibration_choice_on_validation_and_asks_only_where_the_oracle_allows():
    def task(name, oracle, dimee):
        rows = {"oracle": dict(cv_drop=-1.0, cv_cost=0.1, meets_target=True, drop=-1.0, **{"cost_reduction_%": oracle})}
        rows.update(dimee)
        return _summary_rows(**rows).assign(task=name)

    cheap = dict(cv_drop=0.1, cv_cost=0.50, meets_target=True)
    combined = pd.concat([
        task("met", 60.0, {"dimee-entry-threshold": dict(cheap, drop=0.3, **{"cost_reduction_%": 43.0})}),
        # the calibration choice (dimee-cascade, cheaper there) is read, not the better validation row beside it
        task("dropped", 70.0, {"dimee-cascade": dict(cheap, cv_cost=0.4, drop=0.31, **{"cost_reduction_%": 50.0}),
                               "dimee-edge": dict(cheap, drop=0.1, **{"cost_reduction_%": 48.0})}),
        task("short", 55.0, {"dimee": dict(cheap, drop=0.0, **{"cost_reduction_%": 42.9})}),
        task("none", 65.0, {"dimee": dict(cheap, meets_target=False, drop=0.0, **{"cost_reduction_%": 60.0})}),
        task("unasked", 54.9, {"dimee": dict(cheap, drop=0.0, **{"cost_reduction_%": 10.0})}),
    ], ignore_index=True)  # fmt: skip
    target = report.operating_target(combined, max_drop=0.003).set_index("task")
    assert target["met"].to_dict() == {"met": True, "dropped": False, "short": False, "none": False, "unasked": False}
    assert target["asked"].to_dict() == {"met": True, "dropped": True, "short": True, "none": True, "unasked": False}
    assert target.loc["dropped", "best DIMEE"] == "dimee-cascade" and pd.isna(target.loc["none", "best DIMEE"])


# ---- the written report: markdown, json and the Pareto plot from the same rows -----------------------------------
def _small_dimee(mu):
    return DimeePolicy(PLAN, CostModel(), mu=mu, k_grid=(2, 3), n_folds=2, n_init=1)


FAMILIES = ["threshold", "patience", Tunable("dimee", (0.3, 0.05), _small_dimee, True)]


def test_report_table_plot_and_json_agree(run, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr("glue_eval.plots.plot_pareto", lambda df, path, task=None: drawn.append(df.copy()))
    real = report.report_tables
    monkeypatch.setattr(report, "report_tables", lambda *a, **k: real(*a, **{**k, "families": FAMILIES}))
    path = glue_md.write_glue_report([run], tmp_path / "out", command="dimee report run")
    stored = pd.DataFrame(json.loads((tmp_path / "out" / "glue.json").read_text()))
    (plotted,) = drawn
    assert set(stored["policy"]) >= {"all-mobile", "all-edge", "all-cloud", "threshold", "patience", "dimee", "oracle"}
    for row in stored.itertuples(index=False):
        points = plotted[plotted["policy"] == row.policy]
        if row.knob is not None and not pd.isna(row.knob):
            points = points[points["knob"] == row.knob]
        assert len(points) == 1, row.policy
        assert points["normalised_cost"].iloc[0] == row.normalised_cost
        assert points["metric"].iloc[0] == pytest.approx(row.metric / 100, abs=1e-12)
        assert points["final_metric"].iloc[0] == pytest.approx(1.0)
    # every knob of each family is a point of the plot: 60 thresholds, k = 1..5, 2 values of mu
    assert (plotted["policy"] == "threshold").sum() == 60 and (plotted["policy"] == "patience").sum() == 5
    text = path.read_text()
    every = text.split("## Every policy, every task", 1)[1]
    threshold_line = next(line for line in every.splitlines() if line.startswith("| sst2 | threshold |"))
    assert "**missed**" in threshold_line
    patience_line = next(line for line in every.splitlines() if line.startswith("| sst2 | patience |"))
    assert "| yes |" in patience_line and "**missed**" not in patience_line
    assert "row(s) missed the target on calibration" in text


def test_a_second_encoder_gets_its_own_section_and_files(tmp_path, monkeypatch):
    """Runs of two encoders: the first one's part of glue.md and its files are the one-encoder report's; the
    second gets a section (per-exit metric of both, its tables) and suffixed files, so no plot is overwritten."""
    drawn = []
    monkeypatch.setattr("glue_eval.plots.plot_pareto", lambda df, path, task=None: drawn.append(Path(path).name))
    real = report.report_tables
    monkeypatch.setattr(report, "report_tables", lambda *a, **k: real(*a, **{**k, "families": FAMILIES[:2]}))
    runs = [make_run(tmp_path / "small", "small-offline"), make_run(tmp_path / "deep", "org/Deep-Model-offline")]
    for folder, final in zip(runs, (0.625, 0.5)):  # the deep run's final exit sits on its floor (4 of 8 labels)
        per_exit = [{"exit": e, "accuracy": 0.5} for e in range(1, 6)] + [{"exit": 6, "accuracy": final}]
        metrics = {"task": "sst2", "primary_metric": "accuracy", "splits": {"validation": {"per_exit": per_exit}}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    alone = glue_md.write_glue_report(runs[:1], tmp_path / "alone", command="dimee report").read_text()
    both = glue_md.write_glue_report(runs, tmp_path / "both", command="dimee report").read_text()
    head, section = both.split("\n## 6-layer encoder (`org/Deep-Model-offline`)\n")
    assert head == alone
    for name in ("glue.json", "glue_scoreboard.json"):
        assert (tmp_path / "both" / name).read_text() == (tmp_path / "alone" / name).read_text()
    assert drawn == ["glue_sst2_pareto.png", "glue_sst2_pareto.png", "glue_sst2_pareto-deep-model.png"]
    deep = json.loads((tmp_path / "both" / "glue-deep-model.json").read_text())
    assert {row["policy"] for row in deep} >= {"all-cloud", "threshold", "patience", "oracle"}
    assert "summary" in json.loads((tmp_path / "both" / "glue_scoreboard-deep-model.json").read_text())
    assert "| sst2 | small | 6 | 1-2 / 3-4 / 5-6 |" in section and "| sst2 | deep-model | 6 |" in section
    assert "sst2, deep-model (6 layers): final exit 50.0 vs majority class 50.0: near the majority-class" in section
    assert "sst2, small" not in section.split("### Final exit")[0].split("floor (final exit")[1]
    assert "| sst2 | accuracy | 62.5 | 50.0 | 92.32 | not quoted |" in section
    assert "### Every policy, every task" in section and "`glue_sst2_pareto-deep-model.png`" in section


def test_floor_note_names_runs_near_or_below_the_majority_class():
    row = {"task": "rte", "model": "m", "layers": 2, "majority class": 52.7, "exit 2": 56.7}
    assert "near the majority-class floor (within 5 points)" in depth.floor_note(row)
    assert depth.floor_note({**row, "exit 2": 57.8}) is None
    assert "below the majority-class floor" in depth.floor_note({**row, "exit 2": 40.0})
    assert depth.floor_note({"task": "stsb", "model": "m", "layers": 2, "exit 2": 10.0}) is None  # regression


def test_curves_contain_the_table_rows(run):
    table, curves = report_tables(run, families=FAMILIES)
    columns = ["policy", "knob", "metric", "drop", "normalised_cost", "mobile", "edge", "cloud"]
    merged = table[columns].merge(curves[columns], how="left", indicator=True)
    assert (merged["_merge"] == "both").all()


# ---- temperatures: applied in the report as in the deployed policy -----------------------------------------------
def test_report_applies_the_run_temperatures(run):
    """With T = 4 at every exit W's confidence drops to sigmoid(3) = 0.9526 (C's to 0.8176), so a grid threshold
    above it, 0.9567 (the 55th), keeps every sample to exit 6: drop 0, the target is met. Without the setting the
    row is the uncalibrated one (missed, knob 0.5507)."""
    (run / TEMPERATURES_FILE).write_text(json.dumps({"temperatures": [4.0] * 6}))
    calibrated = compare_policies(run, families=["threshold"]).set_index("policy").loc["threshold"]
    raw = compare_policies(run, families=["threshold"], use_temperatures=False).set_index("policy").loc["threshold"]
    assert calibrated["knob"] == 0.9567 and calibrated["meets_target"] == True  # noqa: E712
    assert (calibrated["metric"], calibrated["cloud"], calibrated["normalised_cost"]) == (100.0, 1.0, 1.3548)
    assert raw["knob"] == 0.5507 and raw["meets_target"] == False  # noqa: E712


def test_deployed_policy_is_the_reported_one(run, monkeypatch):
    (run / TEMPERATURES_FILE).write_text(json.dumps({"temperatures": [2.0, 1.5, 1.0, 1.0, 1.2, 1.0]}))

    def small(plan, cost, temperatures=None):
        t = None if temperatures is None else [float(v) for v in temperatures]
        build = lambda mu: DimeePolicy(plan, cost, t, mu=mu, k_grid=(2, 3), n_folds=2, n_init=1)  # noqa: E731
        return [Tunable("dimee", (0.3, 0.05), build, True)]

    monkeypatch.setattr(report, "tunable_policies", small)
    policy, mu = report.fit_run_policy(run, variant="dimee")
    assert policy.temperatures == [2.0, 1.5, 1.0, 1.0, 1.2, 1.0]
    row = compare_policies(run, families=["dimee"]).set_index("policy").loc["dimee"]
    deployed = report.evaluate_policy_on_run(policy, run)
    assert row["knob"] == mu
    for key in ("metric", "drop", "normalised_cost", "mobile", "edge", "cloud"):
        assert row[key] == deployed[key], key

"""The cost sweep, its plots and `dimee sweep`, on small synthetic cached runs (no model is run)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clustering import FixedExitPolicy, Group, ThresholdPolicy, make_exit_logits
from dimee import sweep_cli
from glue_eval.plots import pareto_front, plot_pareto, plot_tier_shares
from glue_eval.sweep import POLICIES, grid_fields, sweep
from tiers import CachedSplit, CostModel, CostModelError, RunInfo, TierPlan, TierPlanError, payload_size
from tiers import write_cached_split, write_run_info

GROUPS = [Group(60, 1, 0.3, 0.2), Group(50, 3, 1.2, 0.2), Group(40, 6, 0.0, 0.1)]
HIDDEN = 8  # the synthetic embedding width stands for the hidden size
PNG = b"\x89PNG\r\n\x1a\n"


def make_run(folder: Path, task: str = "sst2", n_classes: int = 2, seed: int = 0) -> Path:
    """A run folder with run.json and cached calibration / validation splits (logits, labels, tokens, embedding)."""
    info = RunInfo(
        task=task,
        text_fields=["sentence"] if task == "sst2" else ["sentence1", "sentence2"],
        label_names=["negative", "positive"] if n_classes == 2 else [],
        num_labels=n_classes,
        max_length=64,
        plan=TierPlan(2, 4, 6),
        cost_model=CostModel(),
    )
    write_run_info(folder, info)
    rng = np.random.default_rng(seed)
    for split, draw in (("calibration", seed), ("validation", seed + 1)):
        data = make_exit_logits(GROUPS, n_classes=n_classes, seed=draw, embedding_dim=HIDDEN)
        tokens = rng.integers(4, 40, size=data.labels.size)
        write_cached_split(folder, split, CachedSplit(data.logits, data.labels, tokens, data.embeddings))
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("sst2"))


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("stsb"), task="stsb", n_classes=1, seed=3)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- the table --------------------------------------------------------------------------------------------
def test_grid_product_rows_and_columns(run):
    grid = {"mu": [0.05, 0.3], "mobile_to_edge": [0.1, 0.3, 0.5]}
    policies = ["dimee", "threshold", "all-mobile", "oracle"]
    table = sweep(run, policies, grid, progress=False)
    assert len(table) == 2 * 3 * len(policies)
    assert table.groupby(["mu", "mobile_to_edge"]).size().eq(len(policies)).all()
    assert table["policy"].tolist()[:4] == policies  # setting-major, in the sweep's policy order
    for column in (
        "run", "task", "policy", "mu", "mobile_to_edge", "plan", "metric_name", "metric", "accuracy",
        "accuracy_drop", "normalised_cost", "cost_reduction", "share_mobile", "share_edge", "share_cloud",
        "offloads_mobile_edge", "offloads_edge_cloud", "bytes_mobile_edge", "bytes_edge_cloud", "knob",
        "oracle_cost_gap", "oracle_accuracy_gap",
    ):  # fmt: skip
        assert column in table.columns, column
    assert (table["metric_name"] == "accuracy").all() and (table["task"] == "sst2").all()
    shares = table[["share_mobile", "share_edge", "share_cloud"]].sum(axis=1)
    np.testing.assert_allclose(shares, 1.0)
    np.testing.assert_allclose(table["cost_reduction"], 1.0 - table["normalised_cost"])


def test_fast_paths_equal_refitting_every_policy(run):
    """The cached-clustering / vectorised selection paths give exactly what refitting each policy gives."""
    grid = {"mu": [0.0, 0.05, 0.4], "plan": ["2,4", "1,3"], "edge_to_cloud": [0.05, 0.6]}  # mu = 0: ties
    policies = "dimee,dimee-edge,threshold,entropy,patience,all-edge,random,oracle"
    fast = sweep(run, policies, grid, progress=False)
    exact = sweep(run, policies, grid, progress=False, exact=True)
    pd.testing.assert_frame_equal(fast, exact, check_exact=False, rtol=1e-12, atol=1e-12)
    assert fast.loc[fast.policy == "dimee", "normalised_cost"].nunique() > 4  # the grid did move DIMEE's choices


def test_fast_paths_equal_refitting_with_flat_costs(run):
    """Free layers and hops make candidates tie exactly: the ties are settled as the refit settles them."""
    grid = {"mobile_layer": [0.0, 0.1], "edge_layer": [0.0], "cloud_layer": [0.0], "edge_to_cloud": [0.0],
            "mobile_to_edge": [0.0, 0.2]}  # fmt: skip
    policies = "threshold,patience,dimee"
    fast = sweep(run, policies, grid, progress=False)
    pd.testing.assert_frame_equal(fast, sweep(run, policies, grid, progress=False, exact=True))


def test_embedding_policy_and_k_grid(run):
    table = sweep(run, ["dimee-embedding", "dimee"], {"k": [1, 3]}, progress=False)
    assert sorted(table.loc[table.policy == "dimee", "knob"].unique()) == [1.0, 3.0]
    exact = sweep(run, ["dimee-embedding", "dimee"], {"k": [1, 3]}, progress=False, exact=True)
    pd.testing.assert_frame_equal(table, exact, check_exact=False, rtol=1e-12, atol=1e-12)


def test_entry_threshold_sweeps_the_grid_threshold_as_its_exit_threshold(run):
    """dimee-entry-threshold reads the grid's `threshold` (0.9 without one); the fast path equals a refit, and
    its exits are the threshold baseline's at the same threshold (the entry tier moves costs, not answers)."""
    grid = {"threshold": [0.6, 0.95], "edge_to_cloud": [0.05, 0.6]}
    policies = "dimee-entry-threshold,threshold"
    fast = sweep(run, policies, grid, progress=False)
    pd.testing.assert_frame_equal(fast, sweep(run, policies, grid, progress=False, exact=True), check_exact=False, rtol=1e-12, atol=1e-12)
    ours, theirs = (fast[fast.policy == name].reset_index(drop=True) for name in policies.split(","))
    assert ours["knob"].tolist() == [0.6, 0.6, 0.95, 0.95]
    np.testing.assert_allclose(ours["accuracy"], theirs["accuracy"])
    assert (ours["normalised_cost"] <= theirs["normalised_cost"] + 1e-12).all()
    default = sweep(run, "dimee-entry-threshold", {"edge_to_cloud": [0.1]}, progress=False)
    assert (default["knob"] == 0.9).all()
    with pytest.raises(ValueError, match="none .* is not a threshold dimee-entry-threshold can use"):
        sweep(run, "dimee-entry-threshold,threshold", {"threshold": [None, 0.9]}, progress=False)


def test_all_mobile_cost_follows_the_swept_fields_by_hand(run):
    grid = {"mobile_layer": [0.1, 0.2], "mobile_to_edge": [0.1, 0.5]}
    table = sweep(run, ["all-mobile", "all-edge", "all-cloud"], grid, progress=False).set_index(
        ["policy", "mobile_layer", "mobile_to_edge"]
    )["normalised_cost"]
    reference = 0.5 + 6 * 0.02  # mobile_to_cloud + L * cloud_layer (defaults): the all-cloud route itself
    for lam in (0.1, 0.2):
        for hop in (0.1, 0.5):
            # plan 2,4: all-mobile runs 2 mobile layers and offloads nothing
            assert table[("all-mobile", lam, hop)] == pytest.approx(2 * lam / reference)
            # all-edge sends token ids straight to edge, which runs layers 1..4
            assert table[("all-edge", lam, hop)] == pytest.approx((hop + 4 * 0.05) / reference)
            assert table[("all-cloud", lam, hop)] == 1.0


def test_link_rate_costs_per_sample_and_bytes(run):
    tokens = np.load(run / "logits" / "validation.tokens.npy")
    sizes = np.array([16 + 4 + 5 * c for c in tokens], dtype=float)  # token ids: all-edge sends them straight to edge
    rate = 1e4
    table = sweep(run, ["all-edge", "all-mobile"], {"mobile_edge_rate_bps": [0.0, rate]}, progress=False)
    edge = table[table.policy == "all-edge"].set_index("mobile_edge_rate_bps")
    assert edge.loc[0.0, "bytes_mobile_edge"] == pytest.approx(sizes.sum())
    assert edge.loc[0.0, "offloads_mobile_edge"] == tokens.size and edge.loc[0.0, "offloads_edge_cloud"] == 0
    extra = (sizes * 8 / rate).mean() / 0.62  # transmit_cost_per_second = 1, normalised by the reference
    assert edge.loc[rate, "normalised_cost"] - edge.loc[0.0, "normalised_cost"] == pytest.approx(extra)
    mobile = table[table.policy == "all-mobile"]
    assert (mobile["bytes_mobile_edge"] == 0).all() and mobile["normalised_cost"].nunique() == 1


def test_oracle_gap(run):
    policies = "dimee,threshold,patience,all-mobile,all-cloud,random,oracle"
    table = sweep(run, policies, {"mu": [0.05, 0.5]}, progress=False)
    assert (table["oracle_accuracy_gap"] >= -1e-12).all()
    oracle = table[table.policy == "oracle"]
    assert (oracle["oracle_cost_gap"] == 0).all() and (oracle["oracle_accuracy_gap"] == 0).all()
    # as accurate as the oracle means no cheaper than it: every right answer costs at least its first right exit
    as_accurate = table[table["oracle_accuracy_gap"].abs() < 1e-12]
    assert (as_accurate["oracle_cost_gap"] >= -1e-12).all()
    assert (table.loc[table.policy == "all-cloud", "oracle_cost_gap"] > 0).all()
    without = sweep(run, ["dimee"], {"mu": [0.05]}, progress=False)
    assert without["oracle_cost_gap"].isna().all()


def test_random_copies_dimee_tier_shares(run):
    table = sweep(run, ["dimee", "random"], {"mu": [0.02, 0.3]}, progress=False)
    for _, rows in table.groupby("mu"):
        dimee, random = rows.iloc[0], rows.iloc[1]
        for tier in ("share_mobile", "share_edge", "share_cloud"):
            assert random[tier] == pytest.approx(dimee[tier], abs=0.12)


def test_several_runs_and_a_regression_task(run, regression_run):
    policies = ["threshold", "all-cloud", "oracle"]
    table = sweep([run, regression_run], policies, {"edge_to_cloud": [0.1, 0.4]}, progress=False)
    assert len(table) == 2 * 2 * 3
    assert set(table["task"]) == {"sst2", "stsb"}
    assert set(table.loc[table.task == "stsb", "metric_name"]) == {"pearson"}


def test_factory_policies_and_given_knobs(run):
    strict = ("strict", partial(ThresholdPolicy, max_drop=0.0))
    exit3 = ("exit-3", partial(FixedExitPolicy, exit_index=3))  # takes no threshold: the grid passes it none
    table = sweep(run, [strict, exit3, "threshold"], {"threshold": [None, 0.95]}, progress=False)
    given, open_ = table[table.threshold == 0.95].set_index("policy"), table[table.threshold.isna()].set_index("policy")
    assert given.loc["strict", "knob"] == given.loc["threshold", "knob"] == 0.95  # a given knob is used as is
    chosen = ThresholdPolicy(max_drop=0.0).fit(*read_split(run, "calibration")).threshold_
    assert open_.loc["strict", "knob"] == chosen and np.isnan(open_.loc["exit-3", "knob"])  # None: chosen in fit
    assert (table.loc[table.policy == "exit-3", "share_edge"] == 1).all()


def read_split(run: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(run / "logits" / f"{split}.npy"), np.load(run / "logits" / f"{split}.labels.npy")


# ---- bad input: a clear error and nothing written -------------------------------------------------------
def test_unknown_field_is_rejected_before_anything_is_written(run, tmp_path):
    out = tmp_path / "out" / "sweep.csv"
    with pytest.raises(ValueError, match="unknown grid field.*'bogus'.*mobile_to_edge.*mu.*plan"):
        sweep(run, ["dimee"], {"mu": [0.1], "bogus": [1]}, csv_path=out, progress=False)
    assert not out.parent.exists()
    assert all(name in grid_fields() for name in ("mobile_to_edge", "edge_cloud_rate_bps", "mu", "k", "plan", "m", "e"))


def test_negative_cost_is_a_cost_model_error(run, tmp_path):
    out = tmp_path / "sweep.csv"
    with pytest.raises(CostModelError, match="mobile_to_edge"):
        sweep(run, ["all-edge"], {"mobile_to_edge": [0.1, -0.2]}, csv_path=out, progress=False)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    "grid", [{"plan": ["2,4", "5,3"]}, {"plan": ["2,9"]}, {"e": [7]}, {"plan": [TierPlan(2, 4, 8)]}]
)
def test_plan_that_does_not_fit_is_a_tier_plan_error(run, tmp_path, grid):
    with pytest.raises(TierPlanError):
        sweep(run, ["all-edge"], grid, csv_path=tmp_path / "s.csv", progress=False)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    "policies, grid, message",
    [
        (["dimee", "nope"], {}, "unknown policy 'nope'"),
        (["dimee"], {"patience": [2]}, "'patience' is a parameter of patience"),
        (["dimee"], {"mu": [-1]}, "'mu' must be >= 0"),
        (["dimee"], {"k": [2.5]}, "not an integer"),
        (["dimee"], {"plan": ["2,4"], "m": [1]}, "either as 'plan'"),
        (["dimee", "dimee"], {}, "more than once"),
    ],
)
def test_other_bad_input(run, tmp_path, policies, grid, message):
    with pytest.raises(ValueError, match=message):
        sweep(run, policies, grid, csv_path=tmp_path / "s.csv", progress=False)
    assert files_in(tmp_path) == []


def test_missing_split_is_reported(run):
    with pytest.raises(ValueError, match="no cached logits for split 'test'"):
        sweep(run, ["all-cloud"], {}, eval_split="test", progress=False)


# ---- output files ------------------------------------------------------------------------------------------
def test_csv_is_written_complete(run, tmp_path):
    out = tmp_path / "results" / "sweep.csv"
    table = sweep(run, ["threshold", "all-cloud", "oracle"], {"m": [1, 2], "e": [3, 4]}, csv_path=out, progress=False)
    assert files_in(out.parent) == ["sweep.csv"]  # no temporary file left behind
    back = pd.read_csv(out)
    assert back.shape == table.shape and list(back.columns) == list(table.columns)
    assert sorted(back["plan"].unique()) == ["1,3", "1,4", "2,3", "2,4"]
    np.testing.assert_allclose(back["normalised_cost"], table["normalised_cost"])


def test_plots_are_png_files(run, tmp_path):
    policies = "dimee,threshold,all-mobile,all-cloud,oracle"
    table = sweep(run, policies, {"mobile_to_edge": [0.05, 0.3, 0.6]}, progress=False)
    pareto = plot_pareto(table, tmp_path / "plots" / "pareto.png")
    shares = plot_tier_shares(table, "mobile_to_edge", tmp_path / "plots" / "shares.png")
    for path in (pareto, shares):
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="not a column"):
        plot_tier_shares(table, "edge_to_cloud", tmp_path / "x.png")


def test_pareto_front_keeps_the_best_score_at_each_cost():
    cost = np.array([0.5, 0.2, 0.4, 0.9, 0.3])
    score = np.array([0.80, 0.70, 0.60, 0.85, 0.75])
    front_c, front_s = pareto_front(cost, score)
    np.testing.assert_array_equal(front_c, [0.2, 0.3, 0.5, 0.9])
    np.testing.assert_array_equal(front_s, [0.70, 0.75, 0.80, 0.85])


# ---- the command line --------------------------------------------------------------------------------------
def test_parse_grid():
    grid = sweep_cli.parse_grid(["mu=0.01,0.05", "plan=2,4;1,3", "k=2,3", "threshold=none,0.9"])
    assert grid == {"mu": [0.01, 0.05], "plan": ["2,4", "1,3"], "k": [2, 3], "threshold": [None, 0.9]}
    with pytest.raises(ValueError, match="FIELD=V1"):
        sweep_cli.parse_grid(["mu"])


def test_cli_writes_csv_and_plot(run, tmp_path, capsys):
    out, plot = tmp_path / "sweep.csv", tmp_path / "sweep.png"
    argv = [str(run), "--policies", "dimee,all-cloud,oracle", "--grid", "mu=0.05,0.2"]
    argv += ["--grid", "mobile_to_edge=0.1,0.3"]
    assert sweep_cli.main([*argv, "--out", str(out), "--plot", str(plot), "--quiet"]) == 0
    assert len(pd.read_csv(out)) == 4 * 3 and plot.read_bytes()[:8] == PNG
    assert "wrote 12 rows" in capsys.readouterr().out


def test_cli_errors_are_one_line(run, tmp_path, capsys):
    out = tmp_path / "sweep.csv"
    assert sweep_cli.main([str(run), "--grid", "bogus=1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dimee: error: unknown grid field") and "\n" not in err
    assert not out.exists()
    assert sweep_cli.main([str(run), "--grid", "mobile_to_edge=-1", "--quiet"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_registry_names():
    assert set(POLICIES) == {
        "dimee", "dimee-edge", "dimee-embedding", "dimee-paper", "dimee-cascade", "dimee-entry", "dimee-entry-threshold",
        "threshold", "entropy", "patience",
        "all-mobile", "all-edge", "all-cloud", "random", "oracle",
    }  # fmt: skip


def test_oracle_follows_the_cost_of_every_route(run):
    """The oracle's cheapest right (route, exit) moves with the costs: a grid equals one sweep per setting."""
    grid = {"mobile_to_edge": [0.0, 0.4], "edge_to_cloud": [0.0, 0.4]}
    table = sweep(run, "oracle", grid, progress=False)
    for a in grid["mobile_to_edge"]:
        for b in grid["edge_to_cloud"]:
            alone = sweep(run, "oracle", {"mobile_to_edge": [a], "edge_to_cloud": [b]}, progress=False, exact=True)
            row = table[(table.mobile_to_edge == a) & (table.edge_to_cloud == b)]
            np.testing.assert_allclose(row["normalised_cost"].to_numpy(), alone["normalised_cost"].to_numpy())
            np.testing.assert_allclose(row["share_mobile"].to_numpy(), alone["share_mobile"].to_numpy())


# ---- temperatures: the run's temperatures.json, as in the report and the deployed policy -------------------
def _calibrated_copy(run: Path, folder: Path, temps: list[float]) -> Path:
    import json
    import shutil

    shutil.copytree(run, folder)
    (folder / "temperatures.json").write_text(json.dumps({"temperatures": temps}))
    return folder


def test_sweep_applies_the_run_temperatures(run, tmp_path):
    """A fixed threshold under temperatures.json answers where the hand-computed scaled softmax first passes."""
    temps = [4.0, 3.0, 2.0, 1.5, 1.2, 1.0]
    calibrated = _calibrated_copy(run, tmp_path / "cal", temps)
    grid = {"threshold": [0.8]}
    table = sweep(calibrated, "threshold,patience", grid, progress=False).set_index("policy")
    raw = sweep(calibrated, "threshold", grid, progress=False, use_temperatures=False).set_index("policy")
    assert bool(table.loc["threshold", "calibrated"]) and not bool(raw.loc["threshold", "calibrated"])
    assert not bool(table.loc["patience", "calibrated"])  # argmax-based: it takes no temperatures

    from tiers import read_cached_split

    ev = read_cached_split(calibrated, "validation")
    scaled = ev.logits / np.asarray(temps)[None, :, None]
    probs = np.exp(scaled - scaled.max(axis=2, keepdims=True))
    probs /= probs.sum(axis=2, keepdims=True)
    passes = probs.max(axis=2)[:, :-1] >= 0.8
    exits = np.where(passes.any(axis=1), passes.argmax(axis=1) + 1, 6)
    right = ev.logits[np.arange(exits.size), exits - 1].argmax(axis=1) == ev.labels
    assert table.loc["threshold", "accuracy"] == pytest.approx(right.mean(), abs=1e-12)
    assert table.loc["threshold", "share_mobile"] == pytest.approx((exits <= 2).mean(), abs=1e-12)
    assert table.loc["threshold", "share_mobile"] != raw.loc["threshold", "share_mobile"]  # the file did change it


def test_fast_paths_equal_refitting_with_temperatures(run, tmp_path):
    calibrated = _calibrated_copy(run, tmp_path / "cal", [2.5, 2.0, 1.5, 1.2, 1.1, 1.0])
    grid = {"edge_to_cloud": [0.05, 0.3, 0.6], "max_drop": [0.0, 0.02]}
    fast = sweep(calibrated, "threshold,entropy", grid, progress=False)
    exact = sweep(calibrated, "threshold,entropy", grid, progress=False, exact=True)
    pd.testing.assert_frame_equal(fast, exact, check_exact=False, rtol=1e-12, atol=1e-12)
    assert fast["calibrated"].all()


def test_a_factory_that_binds_its_temperatures_keeps_them(run, tmp_path):
    calibrated = _calibrated_copy(run, tmp_path / "cal", [4.0, 3.0, 2.0, 1.5, 1.2, 1.0])
    raw = ("raw-threshold", partial(ThresholdPolicy, criterion="confidence", temperatures=None))
    table = sweep(calibrated, [raw, "threshold"], {"threshold": [0.8]}, progress=False).set_index("policy")
    assert not bool(table.loc["raw-threshold", "calibrated"]) and bool(table.loc["threshold", "calibrated"])
    plain = sweep(run, "threshold", {"threshold": [0.8]}, progress=False).set_index("policy")
    assert table.loc["raw-threshold", "share_mobile"] == plain.loc["threshold", "share_mobile"]

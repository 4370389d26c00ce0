"""The report's "+oof" variants (glue_eval.report): calibration pooled with a run's out-of-fold split (`dimee oof`)
in every fit set, never scored; a family's knobs fitted in one `fit_many` give the state a fit per knob gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clustering import DimeePolicy
from glue_eval import report
from glue_eval.report import POOL_SUFFIX, cross_fit_knob, fit_family, fit_run_policy, pool_split, report_tables
from tiers import CachedSplit, CostModel, RunInfo, TierPlan, read_cached_split, write_cached_split, write_run_info
from tiers.run import OOF_SPLIT, POLICY_FILE

PLAN = TierPlan(2, 4, 6)


def _split(n: int, seed: int, with_embedding: bool = True) -> CachedSplit:
    """Two kinds of sample: easy ones (every exit right and sure) and hard ones (right from exit 5 on only)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    hard = rng.random(n) < 0.4
    logits = np.zeros((n, 6, 2), dtype=np.float32)
    for i in range(n):
        for j in range(6):
            sure = 3.0 if (not hard[i] or j >= 4) else -0.3
            logits[i, j, labels[i]], logits[i, j, 1 - labels[i]] = sure + rng.normal(0, 0.2), -sure
    embedding = (np.c_[hard, 1 - hard] + rng.normal(0, 0.3, (n, 2))).astype(np.float32) if with_embedding else None
    return CachedSplit(logits, labels, np.full(n, 12, dtype=np.int32), embedding)


@pytest.fixture()
def run(tmp_path):
    write_run_info(tmp_path, RunInfo(task="sst2", text_fields=["sentence"], label_names=["negative", "positive"],
                                     num_labels=2, max_length=64, plan=PLAN, cost_model=CostModel()))
    write_cached_split(tmp_path, "calibration", _split(60, 0))
    write_cached_split(tmp_path, "validation", _split(80, 1))
    return tmp_path


def _families(run, names):
    return [f for f in report.tunable_policies(PLAN, CostModel()) if f.name in names]


def test_pooled_rows_only_where_the_run_has_the_split(run):
    names = ["dimee-cascade", "dimee-cascade" + POOL_SUFFIX]
    table, _ = report_tables(run, families=_families(run, names), curves=False)
    assert "dimee-cascade" in set(table["policy"]) and "dimee-cascade+oof" not in set(table["policy"])
    write_cached_split(run, OOF_SPLIT, _split(300, 2))
    table, _ = report_tables(run, families=_families(run, names), curves=False)
    assert {"dimee-cascade", "dimee-cascade+oof"} <= set(table["policy"])


def test_the_pool_joins_every_fit_set_and_is_never_scored(run, monkeypatch):
    write_cached_split(run, OOF_SPLIT, _split(300, 2))
    family = next(f for f in _families(run, ["dimee-entry+oof"]))
    fit, extra = read_cached_split(run, "calibration"), pool_split(run, family)
    fitted_sizes, scored_sizes = [], []
    real_fit_family, real_score = report.fit_family, report._score
    monkeypatch.setattr(report, "fit_family", lambda f, k, data: fitted_sizes.append(len(data.labels)) or real_fit_family(f, k, data))
    monkeypatch.setattr(report, "_score", lambda p, split, task: scored_sizes.append(len(split.labels)) or real_score(p, split, task))
    cross_fit_knob(family, fit, "sst2", 0.003, extra=extra)
    assert fitted_sizes == [30 + 300, 30 + 300]  # each calibration half with the whole pool
    assert set(scored_sizes) == {30}  # scored on the other calibration half only


def test_fit_policy_fits_the_deployed_policy_on_the_pool(run):
    with pytest.raises(ValueError, match="dimee oof"):
        fit_run_policy(run, variant="dimee-entry+oof")
    write_cached_split(run, OOF_SPLIT, _split(300, 2))
    policy, mu = fit_run_policy(run, variant="dimee-entry+oof")
    pooled = CachedSplit.concat([read_cached_split(run, "calibration"), read_cached_split(run, OOF_SPLIT)])
    same = DimeePolicy(PLAN, CostModel(), mu=mu, decision_exits="all", entry="embedding").fit(
        pooled.logits, pooled.labels, pooled.embedding)
    assert json.loads((run / POLICY_FILE).read_text()) == json.loads(json.dumps(same.to_dict()))


def test_one_fit_many_is_a_fit_per_knob(run):
    fit = read_cached_split(run, "calibration")
    for name in ("dimee", "dimee-entry"):
        family = next(f for f in _families(run, [name]))
        knobs = list(family.knobs)[::12]
        batched = fit_family(family, knobs, fit)
        single = [family.build(k).fit(fit.logits, fit.labels, features=fit.embedding) for k in knobs]
        assert [json.dumps(p.to_dict()) for p in batched] == [json.dumps(p.to_dict()) for p in single]


def test_concat_keeps_order_and_drops_a_missing_embedding():
    a, b = _split(3, 0), _split(4, 1, with_embedding=False)
    both = CachedSplit.concat([a, b])
    np.testing.assert_array_equal(both.labels, np.r_[a.labels, b.labels])
    assert both.embedding is None and both.logits.shape == (7, 6, 2)
    np.testing.assert_array_equal(CachedSplit.concat([a, a]).embedding[3:], a.embedding)
    with pytest.raises(ValueError, match="different exits"):
        CachedSplit.concat([a, CachedSplit(np.zeros((2, 4, 2)), np.zeros(2), np.ones(2))])


def test_an_embedding_variant_on_a_run_without_the_feature_names_the_fix(tmp_path):
    write_run_info(tmp_path, RunInfo(task="sst2", text_fields=["sentence"], label_names=["negative", "positive"],
                                     num_labels=2, max_length=64, plan=PLAN, cost_model=CostModel()))
    write_cached_split(tmp_path, "calibration", _split(60, 0, with_embedding=False))
    with pytest.raises(ValueError, match="dimee eval"):
        fit_run_policy(tmp_path, variant="dimee-entry")

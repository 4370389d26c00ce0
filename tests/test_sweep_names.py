"""Every policy the GLUE report shows can be swept by the name the report gives it (`dimee sweep --policies`)."""

from __future__ import annotations

from dimee import sweep_cli
from glue_eval import report
import pytest

from glue_eval.sweep import POLICIES, sweep
from tiers import CostModel, TierPlan


def report_names() -> list[str]:
    families = [f.name for f in report.tunable_policies(TierPlan(2, 4, 6), CostModel())]
    return [*report.FIXED, *families, report.RANDOM, report.ORACLE]


def test_every_report_name_maps_to_a_sweep_policy():
    """All but the pooled "+oof" variants: the sweep fits every policy on one split (next test)."""
    names = [n for n in report_names() if not n.endswith(report.POOL_SUFFIX)]
    assert {"dimee-cascade", "dimee-entry-threshold"} <= set(names)  # fit_run_policy's default, `dimee demo`'s
    mapped = sweep_cli.policy_names(",".join(names))
    assert len(mapped) == len(names)
    missing = [name for name, key in zip(names, mapped) if key not in POLICIES]
    assert not missing, f"report policies the sweep cannot run: {missing}"


def test_a_pooled_variant_is_refused_naming_what_to_sweep_instead():
    pooled = [n for n in report_names() if n.endswith(report.POOL_SUFFIX)]
    assert pooled
    for name in pooled:
        with pytest.raises(ValueError, match=f"sweep '{name.removesuffix(report.POOL_SUFFIX)}'"):
            sweep(".", policies=name)


def test_sweep_cli_accepts_the_deployed_variant_and_report_names(tmp_path, capsys):
    from tests.test_sweep import make_run

    run = make_run(tmp_path / "run")
    policies = "dimee-cascade,random (DIMEE shares),oracle"
    assert sweep_cli.main([str(run), "--policies", policies, "--grid", "mu=0.05", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "dimee-cascade" in out and "random" in out and "oracle" in out

"""`services.policy.policy_actions`: the one decision a served tier and the device client make (validated
actions; the built-in rule for non-finite logits and where the policy fails)."""

from __future__ import annotations

import numpy as np

from services.policy import ThresholdPolicy, policy_actions
from tiers import CONTINUE, HANDOFF_EDGE, TierPlan

PLAN = TierPlan(2, 4, 6)


class Fixed:
    def __init__(self, action: int, fail: bool = False) -> None:
        self.action, self.fail, self.seen = action, fail, []

    def step(self, logits_seen, tier, depth, features=None):
        self.seen.append(np.array(logits_seen))
        if self.fail:
            raise RuntimeError("broken policy")
        return np.full(len(logits_seen), self.action)


def test_policy_actions_validate_fall_back_and_hide_non_finite_rows():
    fallback = ThresholdPolicy(PLAN, 0.9)
    seen = np.array([[[4.0, -4.0], [5.0, -5.0]], [[np.nan, 0.0], [0.0, 0.0]], [[0.1, 0.0], [0.0, 0.1]]])
    policy = Fixed(1)
    assert policy_actions(policy, fallback, PLAN, "mobile", seen, 2).tolist() == [1, HANDOFF_EDGE, 1]
    assert len(policy.seen[0]) == 2 and np.isfinite(policy.seen[0]).all()  # the NaN row never reaches the policy
    errors = []
    broken = Fixed(1, fail=True)
    got = policy_actions(broken, fallback, PLAN, "mobile", seen, 2, on_error=errors.append)
    assert got.tolist() == [2, HANDOFF_EDGE, HANDOFF_EDGE] and [str(e) for e in errors] == ["broken policy"]
    invalid = policy_actions(Fixed(CONTINUE), fallback, PLAN, "mobile", seen[[0]], 2, on_error=errors.append)
    assert invalid.tolist() == [2] and "holds no layer after 2" in str(errors[-1])  # mobile cannot continue past m

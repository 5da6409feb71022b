"""bot.bench.bound (benchmarks/policy_bound.py prints it): the Bayes-optimal rule that knows the mix and the champion's value."""

from __future__ import annotations

import pytest

from benchmarks.policy_bound import bound, measure, Prior, solve
from bot.bench.policy_sim import SCENARIOS, ProposalMix, SimConfig, default_rules, simulate_rule


def test_huge_wins_are_promoted_on_one_run_and_nothing_else_is():
    """Wins of 10-11 sd among nulls: one run tells them apart, so the rule promotes every win on its first run."""
    mix = ProposalMix(null_share=0.7, harmful_share=0.2, win_low=10.0, win_high=11.0)
    result = measure(mix, *solve(Prior.of(mix), cost=1.0, penalty=10.0, holdout=1.0), holdout=1.0, power_at=2.0)
    assert result["runs_per_experiment"] == 1.0 and result["false_promotion_rate"] == 0.0
    assert result["keep_rate"] == pytest.approx(0.1, abs=0.005) and result["power"] == 1.0
    assert result["per_100_runs"] == pytest.approx(100 * 0.1 * 10.5 / 1.1, rel=0.02)  # a holdout run per win


def test_the_bound_keeps_false_promotions_under_the_limit_and_beats_arbot():
    scenario = SCENARIOS["default"]
    best = bound(scenario.mix, fdr=0.05, holdout=1.0)
    arbot = simulate_rule(default_rules()["arbot"], SimConfig.of(scenario, campaigns=40))
    assert best["false_promotion_rate"] <= 0.05 and best["power"] >= 0.8
    assert best["per_100_runs"] > arbot["true_improvement_per_100_runs"]
    lenient = bound(scenario.mix, fdr=0.2, holdout=1.0)  # a looser limit can only help
    assert lenient["per_100_runs"] >= best["per_100_runs"] and lenient["false_promotion_rate"] > 0.05


def test_pairing_raises_the_bound_by_the_share_of_changes_that_pair():
    """A change that pairs is noisy by sqrt(1 - rho) sds once the seed's share is known: the bound rises with rho,
    and less when half the changes do not pair."""
    mix = SCENARIOS["default"].mix
    alone = bound(mix, fdr=0.05, holdout=0.0, n=20_000)
    paired = bound(mix, fdr=0.05, holdout=0.0, pair_correlation=0.8, n=20_000)
    half = bound(SCENARIOS["half_paired"].mix, fdr=0.05, holdout=0.0, pair_correlation=0.8, n=20_000)
    assert alone["per_100_runs"] < half["per_100_runs"] < paired["per_100_runs"]
    assert max(r["false_promotion_rate"] for r in (alone, paired, half)) <= 0.05

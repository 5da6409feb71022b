"""The policy benchmark (`arbot bench policy`): the runs it counts are the lifecycle's, greedy is autoresearch's loop,
the autoresearch mix reproduces the published run, results are reproducible, and arbot's acceptance numbers hold."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from bot.bench.cli import bench_app
from bot.bench.policy_sim import (AUTORESEARCH_KEEP_RATE, METRICS, SCENARIOS, ProposalMix, SimConfig, default_rules,
                                  run_benchmark, simulate_rule)
from bot.core.lifecycle import Rules
from bot.core.records import Decision, Evidence

TODAYS_KEYS = {"false_promotion_rate", "power", "runs_per_experiment", "true_improvement",
               "cost_per_confirmed_improvement"}


@pytest.fixture(scope="module")
def results() -> dict:
    """Every mix at 8 campaigns (a minute or two: the bayes rule learns after every experiment), without the bound
    (tests/test_policy_bound.py)."""
    r = CliRunner().invoke(bench_app, ["policy", "--json", "--campaigns", "8", "--bound-samples", "0"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_json_keeps_todays_keys_for_the_default_mix_and_adds_every_mix(results):
    assert {"arbot", "greedy", "fixed_t", "mixes"} <= set(results)
    assert {"arbot_no_holdout", "bayes", "bayes_no_holdout"} <= set(results)
    assert set(results["mixes"]) == {"default", "small", "autoresearch", "half_paired"}
    assert results["mixes"]["half_paired"]["pair_correlation"] == 0.8
    assert results["mixes"]["half_paired"]["mix"]["unpairable_share"] == 0.5
    for name, m in results["mixes"].items():
        assert {"about", "mix", "campaigns", "experiments", "rules"} <= set(m)
        assert m["mix"]["win_low"] == SCENARIOS[name].mix.win_low and m["campaigns"] == 8
        assert m["experiments"] == SCENARIOS[name].experiments
        for rule in ("arbot", "greedy", "fixed_t"):
            assert set(m["rules"][rule]) == set(METRICS) and TODAYS_KEYS <= set(METRICS)
    assert {k: v for k, v in results.items() if k != "mixes"} == results["mixes"]["default"]["rules"]
    assert results["mixes"]["small"]["mix"]["win_high"] == 1.0


def test_the_false_promotion_rate_comes_with_its_counts(results):
    """A rate over a dozen promotions cannot tell 5% from 15%: the JSON gives the counts it is a share of."""
    for m in results["mixes"].values():
        for v in m["rules"].values():
            assert 0 <= v["false_promotions"] <= v["promotions"]
            share = v["false_promotions"] / v["promotions"] if v["promotions"] else 0.0
            assert v["false_promotion_rate"] == pytest.approx(share, abs=1e-4)


def test_acceptance_where_it_holds(results):
    """What arbot's defaults and the bayes rule achieve (docs/policy.md has the full-size table, and the goals not
    met)."""
    for mix in ("default", "autoresearch"):
        a = results["mixes"][mix]["rules"]["arbot"]
        assert a["false_promotion_rate"] <= 0.08 and a["power"] >= 0.80, (mix, a)  # 8 campaigns: 7.0% on autoresearch
    d = results["mixes"]["default"]["rules"]
    assert d["arbot"]["runs_per_experiment"] <= 2.3  # holdout auto: 3 reference runs per champion (2.12 at 40 campaigns)
    for mix in ("default", "autoresearch", "half_paired"):
        rules = results["mixes"][mix]["rules"]
        b, greedy = rules["bayes_no_holdout"], rules["greedy"]["true_improvement_per_100_runs"]
        # 8 campaigns: one of half_paired's 48 promotions is worse (0.021); 0.005 over 40 campaigns (docs/policy.md)
        assert b["false_promotion_rate"] <= 0.07 and b["worse_promotion_rate"] <= 0.025, (mix, b)
        assert b["true_improvement_per_100_runs"] >= 0.5 * greedy, (mix, b)  # 8 campaigns: 0.52 / 0.63 / 0.56
    # the campaign's false-promotion budget and a noise floor no promotion chose (round 2's rule: 0.56 here)
    rules = results["mixes"]["autoresearch"]["rules"]
    assert rules["bayes_no_holdout"]["true_improvement_per_100_runs"] >= 0.6 * rules["greedy"]["true_improvement_per_100_runs"]
    # more real improvement per run than a fixed 5-seed design, on every mix
    for m in results["mixes"].values():
        assert m["rules"]["arbot"]["true_improvement_per_100_runs"] > m["rules"]["fixed_t"]["true_improvement_per_100_runs"]


def test_greedy_merges_noise(results):
    for m in results["mixes"].values():
        g, a = m["rules"]["greedy"], m["rules"]["arbot"]
        assert g["runs_per_experiment"] == 1.0
        assert g["false_promotion_rate"] > 0.3 and g["false_promotion_rate"] >= 3 * a["false_promotion_rate"]


def test_greedy_keeps_its_winners_luck():
    """autoresearch's loop: the kept run's single measurement becomes the value to beat. With nothing but null
    proposals, a keep is a new record low of i.i.d. draws: about ln(n) keeps in n experiments, not n/2 as against a
    freshly measured champion."""
    sim = SimConfig(campaigns=40, experiments=100, mix=ProposalMix(null_share=1.0, harmful_share=0.0))
    greedy = default_rules()["greedy"]
    keeps = simulate_rule(greedy, sim)["keep_rate"] * 100  # per campaign
    assert 2.5 < keeps < 6.5  # records among 101 draws: H(101) - 1 = 4.2


def test_the_autoresearch_mix_reproduces_the_published_run():
    """Greedy on the calibrated mix keeps about 22 of 125 and its median kept margin is about one noise sd."""
    g = simulate_rule(default_rules()["greedy"], SimConfig.of(SCENARIOS["autoresearch"], campaigns=40))
    assert abs(g["keep_rate"] - AUTORESEARCH_KEEP_RATE) < 0.03, g
    assert 0.7 < g["median_kept_margin"] < 1.3, g


class WinsAtTwo:
    """A rule that promotes every candidate after two runs: its cost is the lifecycle's accounting alone."""

    name, baseline_runs = "wins_at_two", 3

    def decide(self, ev: Evidence) -> Decision:
        if len(ev.candidate) < 2:
            return Decision(verdict="more_runs", rule="x", reason="x", more_candidate_runs=2 - len(ev.candidate))
        return Decision(verdict="win", rule="x", reason="x", effect=0.0)


@pytest.mark.parametrize("holdout, runs", [(0.02, (3 + 3 + 3) / 3), ("auto", (3 + 4 + 4) / 3), (None, 2.0)])
def test_runs_counted_as_the_lifecycle_makes_them(holdout, runs):
    """Three wins in a row: 3 baseline runs; each experiment 2 candidate runs; each new champion inherits the
    winner's 2 val runs and its holdout confirmation, and makes 1 more baseline run. With a holdout check every win
    adds the candidate's confirmation run, and a champion's val runs are scored on holdout too, so their gaps are
    references: the first champion's 3 are all `auto` needs; a later one has 2 (its baseline run and the winner's
    confirmation) and makes 1 reference run more; a fixed gap needs 1, never made."""
    sim = SimConfig(campaigns=1, experiments=3, mix=ProposalMix(null_share=0.0, harmful_share=0.0, win_low=1.0,
                                                                win_high=1.0))  # every proposal is a 1-sd win
    r = simulate_rule(Rules(WinsAtTwo(), holdout_max_gap=holdout), sim)
    total = 3 * runs + 3 + 1 + 1
    assert r["runs_per_experiment"] == pytest.approx(runs)  # baselines excluded
    assert r["cost_per_confirmed_improvement"] == pytest.approx(total / 3)  # everything included
    assert r["true_improvement"] == pytest.approx(3.0) and r["keep_rate"] == 1.0
    assert r["true_improvement_per_100_runs"] == pytest.approx(100 * 3.0 / total)


def test_reproducible_same_seed_same_json():
    args = ["policy", "--json", "--campaigns", "4", "--experiments", "20", "--seed", "4", "--bound-samples", "0"]
    a = CliRunner().invoke(bench_app, args).output
    b = CliRunner().invoke(bench_app, args).output
    assert a == b
    c = CliRunner().invoke(bench_app, args[:-4] + ["--seed", "5", "--bound-samples", "0"]).output
    assert a != c


def test_sigma_units():
    """Effects are drawn in sigma units, so the metrics do not depend on the noise scale (min_effect=0)."""
    a = run_benchmark(SimConfig(campaigns=10, experiments=20, sigma=1.0))
    b = run_benchmark(SimConfig(campaigns=10, experiments=20, sigma=0.04))
    for rule in a:
        for k in METRICS:
            assert a[rule][k] == pytest.approx(b[rule][k], rel=1e-6, nan_ok=True)


def test_table_output_names_each_mix_and_its_parameters():
    r = CliRunner().invoke(bench_app, ["policy", "--campaigns", "3", "--experiments", "10", "--bound-samples", "0"])
    assert r.exit_code == 0, r.output
    for text in ("arbot", "greedy", "fixed_t", "promotions", "power", "per 100 runs", "mix 'default'", "mix 'small'",
                 "mix 'autoresearch'", "mix 'half_paired'", "50% unpairable, same-seed rho 0.8", "bayes_no_holdout",
                 "wins U(0.25, 1) sd", "60% null, 25% harmful -|N(0, 2)|, 15% wins U(1, 4) sd"):
        assert text in r.output, text
    assert re.search(r"\d\.\d{3} \(\d+ of \d+\)", r.output), "the false promotion rate without its counts"


def test_a_maximized_metric_gets_exactly_the_same_results():
    """The rules see the metric as configured: negated and maximized, every campaign ends exactly the same."""
    args = ["policy", "--json", "--campaigns", "4", "--experiments", "20", "--bound-samples", "0"]
    low = CliRunner().invoke(bench_app, args)
    high = CliRunner().invoke(bench_app, args + ["--direction", "maximize"])
    assert low.exit_code == high.exit_code == 0 and json.loads(low.output) == json.loads(high.output)
    assert CliRunner().invoke(bench_app, args + ["--direction", "up"]).exit_code != 0

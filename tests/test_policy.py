"""Behaviour of the promotion policies (bot/core/policy.py)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from bot.core import bayes
from bot.core.policy import BayesPolicy, MarginPolicy, NoiseAwarePolicy, Policy, PolicyConfig, make_policy, paired
from bot.core.records import Decision, Evidence


def run_loop(policy: Policy, champ_true: float, cand_true: float, rng: np.random.Generator, sd: float = 1.0,
             removes_code: bool = False, champion: list[float] | None = None) -> Decision:
    """The loop as arbot runs it: baseline champion runs, then decide / make requested runs until final."""
    champ = list(champion) if champion is not None else list(champ_true + sd * rng.normal(size=policy.baseline_runs))
    cand: list[float] = []
    for _ in range(100):
        d = policy.decide(Evidence(champion=champ, candidate=cand, removes_code=removes_code))
        if d.final:
            return d
        assert d.more_candidate_runs > 0 or d.more_champion_runs > 0
        champ += list(champ_true + sd * rng.normal(size=d.more_champion_runs))
        cand += list(cand_true + sd * rng.normal(size=d.more_candidate_runs))
    raise AssertionError("policy did not terminate")


# ----------------------------------------------------------------------------- config


def test_defaults_and_make_policy():
    cfg = PolicyConfig()
    assert cfg.rule == "noise_aware" and cfg.baseline_runs == 3 and 0 < cfg.alpha < 0.5
    assert cfg.screen_bar == 1.0 and cfg.champion_lead == 1
    p = make_policy(cfg)
    assert isinstance(p, NoiseAwarePolicy) and p.name == "noise_aware" and p.baseline_runs == 3
    assert isinstance(p, Policy)
    m = make_policy(PolicyConfig(rule="margin", margin=0.01, baseline_runs=2))
    assert isinstance(m, MarginPolicy) and m.margin == 0.01 and m.baseline_runs == 2 and isinstance(m, Policy)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"alpha": 0.5}, "alpha"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1}, "alpha"),
        ({"baseline_runs": 0}, "baseline_runs"),
        ({"margin": -0.1}, "margin"),
        ({"max_candidate_runs": 1}, "max_candidate_runs"),
        ({"rule": "bayesian"}, "rule"),
        ({"min_effect": -1}, "min_effect"),
        ({"champion_lead": -1}, "champion_lead"),
        ({"bogus": 1}, "bogus"),
        ({"simplification_runs": 9, "max_candidate_runs": 8}, "simplification_runs"),
    ],
)
def test_config_validation_names_the_key(kwargs, key):
    with pytest.raises(ValidationError) as e:
        PolicyConfig(**kwargs)
    assert key in str(e.value)


def test_the_renamed_screen_key_says_how_to_translate_it():
    with pytest.raises(ValidationError) as e:
        PolicyConfig(screen_sigmas=1.0)
    assert "screen_bar" in str(e.value) and "screen_sigmas: s is screen_bar: -s" in str(e.value)


def test_config_fields_are_described():
    for name, f in PolicyConfig.model_fields.items():
        assert f.description, name


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize("policy", [MarginPolicy(), NoiseAwarePolicy()])
@pytest.mark.parametrize("status", ["crash", "timeout", "rejected"])
def test_failed_run_passes_through(policy, status):
    d = policy.decide(Evidence(champion=[1.0, 1.1, 1.05], candidate=[], candidate_status=status,
                               candidate_reason="OOM at step 3"))
    assert d.verdict == status and d.final
    assert d.reason == "OOM at step 3"
    assert d.more_candidate_runs == 0 and d.more_champion_runs == 0


# ----------------------------------------------------------------------------- margin


def test_margin_greedy_keeps_any_improvement():
    p = MarginPolicy(margin=0.0)
    d = p.decide(Evidence(champion=[1.0], candidate=[0.999]))
    assert d.verdict == "win" and d.rule == "margin"
    assert d.effect == pytest.approx(0.001) and d.champion_mean == 1.0 and d.candidate_mean == 0.999
    assert d.champion_runs == 1 and d.candidate_runs == 1
    assert p.decide(Evidence(champion=[1.0], candidate=[1.0])).verdict == "loss"  # equal is not better
    assert p.decide(Evidence(champion=[1.0], candidate=[1.2])).verdict == "loss"


def test_margin_boundaries():
    p = MarginPolicy(margin=0.25)  # binary-exact numbers: the boundary is exact
    assert p.decide(Evidence(champion=[1.0, 1.0], candidate=[0.875])).verdict == "loss"
    assert p.decide(Evidence(champion=[1.0, 1.0], candidate=[0.75])).verdict == "loss"  # not > margin
    assert p.decide(Evidence(champion=[1.0, 1.0], candidate=[0.625])).verdict == "win"
    d = p.decide(Evidence(champion=[1.0, 1.5], candidate=[0.75]))  # mean of the champion runs
    assert d.verdict == "win" and d.champion_mean == 1.25 and d.effect == 0.5 and d.spread is not None


def test_margin_asks_for_runs():
    p = MarginPolicy(baseline_runs=2)
    d = p.decide(Evidence(champion=[], candidate=[]))
    assert d.verdict == "more_runs" and d.more_champion_runs == 2
    d = p.decide(Evidence(champion=[1.0, 1.0], candidate=[]))
    assert d.verdict == "more_runs" and d.more_candidate_runs == 1


def test_margin_simplification():
    p = MarginPolicy(margin=0.01)
    d = p.decide(Evidence(champion=[1.0], candidate=[0.995], removes_code=True))
    assert d.verdict == "win" and d.rule == "simplification"
    d = p.decide(Evidence(champion=[1.0], candidate=[1.0], removes_code=True))
    assert d.verdict == "win" and d.rule == "simplification"
    assert p.decide(Evidence(champion=[1.0], candidate=[1.001], removes_code=True)).verdict == "loss"
    off = MarginPolicy(margin=0.01, simplification_wins=False)
    assert off.decide(Evidence(champion=[1.0], candidate=[0.995], removes_code=True)).verdict == "loss"


# ----------------------------------------------------------------------------- noise-aware: single decisions

CHAMP = [1.00, 1.04, 0.96]  # mean 1.0, sd 0.04


def test_needs_noise_floor_first():
    p = NoiseAwarePolicy()
    d = p.decide(Evidence(champion=[1.0], candidate=[0.5]))
    assert d.verdict == "more_runs" and d.more_champion_runs >= 1 and d.rule == "noise_floor"
    d = p.decide(Evidence(champion=CHAMP, candidate=[]))
    assert d.verdict == "more_runs" and d.more_candidate_runs == 1


def test_screen_discards_clear_loser_after_one_run():
    p = NoiseAwarePolicy()
    d = p.decide(Evidence(champion=CHAMP, candidate=[1.2]))
    assert d.verdict == "loss" and d.rule == "screen" and d.candidate_runs == 1
    assert d.effect == pytest.approx(-0.2) and d.spread == pytest.approx(0.04)
    assert "0.2" in d.reason


def test_screen_bar_sets_the_bar():
    p = NoiseAwarePolicy()  # the first run must beat the champion mean by more than 1 sd (0.04)
    d = p.decide(Evidence(champion=CHAMP, candidate=[0.98]))  # better, but by 0.5 sd only: one run is all it costs
    assert (d.verdict, d.rule, d.candidate_runs) == ("loss", "screen", 1) and "not more than 1 x noise sd" in d.reason
    assert p.decide(Evidence(champion=CHAMP, candidate=[0.95])).verdict == "more_runs"  # 1.25 sd better
    lenient = NoiseAwarePolicy(PolicyConfig(screen_bar=-1.0))  # a first run up to 1 sd worse goes on
    assert lenient.decide(Evidence(champion=CHAMP, candidate=[1.03])).verdict == "more_runs"  # 0.75 sd worse
    assert lenient.decide(Evidence(champion=CHAMP, candidate=[1.05])).verdict == "loss"  # 1.25 sd worse


def test_never_promotes_on_a_single_run():
    p = NoiseAwarePolicy()
    d = p.decide(Evidence(champion=CHAMP, candidate=[0.0]))  # 25 sd better, still one run
    assert d.verdict == "more_runs" and d.more_candidate_runs == 1
    assert d.more_champion_runs == 0  # the champion's 3 runs already cover 2 candidate runs + champion_lead 1


def test_confirm_runs_the_champion_one_ahead_of_the_candidate():
    p = NoiseAwarePolicy()  # champion_lead 1: champion runs up to the candidate's next count + 1
    d = p.decide(Evidence(champion=CHAMP, candidate=[0.97, 0.98, 0.97]))
    assert d.verdict == "more_runs" and d.more_candidate_runs == 1 and d.more_champion_runs == 2
    d = NoiseAwarePolicy(PolicyConfig(champion_lead=0)).decide(Evidence(champion=CHAMP, candidate=[0.97, 0.98, 0.97]))
    assert d.more_champion_runs == 1
    capped = NoiseAwarePolicy(PolicyConfig(champion_lead=3, match_champion_runs=5))
    assert capped.decide(Evidence(champion=CHAMP, candidate=[0.97, 0.98, 0.97])).more_champion_runs == 2


def test_clear_win_is_promoted_with_numbers():
    p = NoiseAwarePolicy()
    d = p.decide(Evidence(champion=[1.00, 1.04, 0.96, 1.01], candidate=[0.80, 0.82, 0.79, 0.81]))
    assert d.verdict == "win" and d.rule.startswith("confirm:")
    assert d.p_value is not None and d.p_value < 0.01
    assert d.effect == pytest.approx(1.0025 - 0.805)
    assert d.champion_runs == 4 and d.candidate_runs == 4 and d.spread > 0
    assert "p=" in d.reason


def test_futility_stops_a_candidate_that_is_not_better():
    p = NoiseAwarePolicy()
    d = p.decide(Evidence(champion=CHAMP, candidate=[1.01, 1.0]))
    assert d.verdict == "loss" and d.rule == "futility" and d.p_value is not None


def test_max_runs_is_a_loss_and_never_asks_for_more():
    cfg = PolicyConfig(max_candidate_runs=4, futility_sigmas=-10)
    p = NoiseAwarePolicy(cfg)
    d = p.decide(Evidence(champion=[1.0, 1.04, 0.96, 1.0], candidate=[0.99, 1.0, 0.99, 1.0]))
    assert d.verdict == "loss" and d.rule == "max_runs"
    d = p.decide(Evidence(champion=[1.0, 1.04, 0.96, 1.0], candidate=[0.99, 1.0, 0.99, 1.0, 0.98]))
    assert d.final


def test_min_effect_raises_the_bar():
    ev = Evidence(champion=[1.00, 1.04, 0.96, 1.01], candidate=[0.90, 0.92, 0.89, 0.91])
    assert NoiseAwarePolicy().decide(ev).verdict == "win"
    d = NoiseAwarePolicy(PolicyConfig(min_effect=0.2)).decide(ev)
    assert d.verdict != "win"


def test_zero_noise_is_handled():
    p = NoiseAwarePolicy()
    assert p.decide(Evidence(champion=[1.0, 1.0, 1.0], candidate=[1.0, 1.0])).verdict == "loss"
    assert p.decide(Evidence(champion=[1.0, 1.0, 1.0], candidate=[0.9, 0.9])).verdict == "win"


@pytest.mark.parametrize("test", ["pooled", "welch", "paired"])
def test_all_tests_promote_a_clear_win(test):
    p = NoiseAwarePolicy(PolicyConfig(test=test))
    d = run_loop(p, 1.0, 0.0, np.random.default_rng(3), sd=0.1)  # 10 sd better
    assert d.verdict == "win" and d.rule == f"confirm:{test}"


def test_alpha_spending_sums_to_alpha():
    p = NoiseAwarePolicy()
    n = p.cfg.max_candidate_runs
    assert sum(p.alpha_at(k) for k in range(1, n + 1)) == pytest.approx(p.cfg.alpha)
    assert p.alpha_at(1) == 0.0


# ----------------------------------------------------------------------------- noise-aware: simulated loops


def test_seed_only_change_is_rarely_promoted():
    """Candidate distribution == champion distribution: promotion rate stays below alpha."""
    rng = np.random.default_rng(12345)
    p = NoiseAwarePolicy()
    wins = sum(run_loop(p, 1.0, 1.0, rng, sd=0.04).verdict == "win" for _ in range(2000))
    assert wins / 2000 <= p.cfg.alpha


def test_greedy_promotes_seed_only_changes_often():
    rng = np.random.default_rng(12345)
    wins = sum(run_loop(MarginPolicy(), 1.0, 1.0, rng).verdict == "win" for _ in range(500))
    assert wins / 500 > 0.4


def test_three_sigma_win_is_promoted():
    rng = np.random.default_rng(7)
    p = NoiseAwarePolicy()
    decisions = [run_loop(p, 1.0, 1.0 - 3 * 0.04, rng, sd=0.04) for _ in range(400)]
    assert sum(d.verdict == "win" for d in decisions) / 400 >= 0.9
    assert all(d.candidate_runs >= 2 for d in decisions if d.verdict == "win")


def test_always_terminates_within_cap():
    rng = np.random.default_rng(1)
    for cfg in [PolicyConfig(), PolicyConfig(max_candidate_runs=3, futility_sigmas=-100, screen_bar=-100)]:
        p = NoiseAwarePolicy(cfg)
        for eff in [-1, 0, 0.5, 1, 3]:
            for _ in range(50):
                d = run_loop(p, 0.0, -eff, rng)
                assert d.candidate_runs <= cfg.max_candidate_runs


def test_simplification_no_worse_is_promoted():
    rng = np.random.default_rng(11)
    p = NoiseAwarePolicy()
    same = [run_loop(p, 1.0, 1.0, rng, sd=0.04, removes_code=True) for _ in range(200)]
    simpl = [d for d in same if d.verdict == "win"]
    assert len(simpl) / 200 > 0.3 and all(d.rule in ("simplification",) or d.rule.startswith("confirm") for d in simpl)
    worse = [run_loop(p, 1.0, 1.0 + 3 * 0.04, rng, sd=0.04, removes_code=True) for _ in range(200)]
    assert sum(d.verdict == "win" for d in worse) / 200 < 0.05
    off = NoiseAwarePolicy(PolicyConfig(simplification_wins=False))
    d = off.decide(Evidence(champion=CHAMP, candidate=[1.0, 1.0, 1.0], removes_code=True))
    assert d.rule != "simplification"


def test_a_tiny_effect_needs_more_runs_than_a_large_one():
    """Sequential: a clear loser costs one run; past the screen, a large win is decided in a few runs and a small real
    effect is measured longer."""
    rng = np.random.default_rng(21)
    p = NoiseAwarePolicy()

    def runs(effect: float) -> list[int]:
        return [run_loop(p, 0.0, -effect, rng).candidate_runs for _ in range(400)]

    assert np.mean(runs(-3.0)) < 1.05
    small, large = [n for n in runs(0.75) if n > 1], [n for n in runs(5.0) if n > 1]
    assert np.mean(large) < 3.2 and np.mean(small) > np.mean(large) + 0.5, (np.mean(small), np.mean(large))


def test_simplification_single_decision():
    p = NoiseAwarePolicy()
    d = p.decide(Evidence(champion=CHAMP, candidate=[1.0, 1.01, 0.99], removes_code=True))
    assert d.verdict == "win" and d.rule == "simplification" and "Removes code" in d.reason


def test_every_final_decision_fills_its_numbers():
    rng = np.random.default_rng(5)
    p = NoiseAwarePolicy()
    for eff in [-2, 0, 1, 3]:
        for _ in range(30):
            d = run_loop(p, 0.0, -eff, rng)
            assert d.rule and d.reason
            assert None not in (d.champion_mean, d.candidate_mean, d.effect, d.spread)
            assert d.champion_runs >= 2 and d.candidate_runs >= 1
            if d.rule != "screen":
                assert d.p_value is not None


# ----------------------------------------------------------------------------- direction


def test_margin_maximize_keeps_a_higher_metric():
    p = MarginPolicy(margin=0.01)
    up = p.decide(Evidence(metric="val_acc", direction="maximize", champion=[0.90], candidate=[0.95]))
    assert (up.verdict, up.rule) == ("win", "margin") and up.effect == pytest.approx(0.05)
    assert up.delta == pytest.approx(0.05) and "val_acc 0.9500 beats the champion's 0.9000" in up.reason
    assert p.decide(Evidence(direction="maximize", champion=[0.90], candidate=[0.85])).verdict == "loss"
    assert p.decide(Evidence(direction="minimize", champion=[0.90], candidate=[0.95])).verdict == "loss"


@pytest.mark.parametrize("policy", [NoiseAwarePolicy(), NoiseAwarePolicy(PolicyConfig(test="paired")),
                                    NoiseAwarePolicy(PolicyConfig(test="welch")), MarginPolicy(margin=0.1)])
@pytest.mark.parametrize("seed", range(4))
def test_maximizing_negated_values_decides_exactly_as_minimizing(policy, seed):
    """Direction is one transformation: the same evidence negated and maximized gets the same decision, with the
    means shown as measured (negated) and the improvement unchanged."""
    rng = np.random.default_rng(seed)
    champ = list(3.0 + 0.02 * rng.normal(size=4))
    for n in range(1, 7):
        cand = list(3.0 - 0.02 * seed + 0.02 * rng.normal(size=n))
        low = policy.decide(Evidence(champion=champ, candidate=cand, removes_code=seed == 3))
        high = policy.decide(Evidence(direction="maximize", champion=[-x for x in champ], candidate=[-x for x in cand],
                                      removes_code=seed == 3))
        assert (high.verdict, high.rule, high.effect, high.p_value, high.spread) == \
               (low.verdict, low.rule, low.effect, low.p_value, low.spread)
        assert (high.more_candidate_runs, high.more_champion_runs) == (low.more_candidate_runs, low.more_champion_runs)
        if low.candidate_mean is not None:
            assert (high.candidate_mean, high.champion_mean) == (-low.candidate_mean, -low.champion_mean)
            assert high.delta == -low.delta  # a win's delta is negative when minimizing, positive when maximizing


def test_paired_test_pairs_by_seed_not_by_position():
    """Each seed moves both commits' runs by the same large amount; the candidate is 0.1 better at every seed. The
    champion's seed-1 run failed, so its runs are seeds 0, 2, 3, 4: paired by position, they would be compared with
    the candidate's seeds 0, 1, 2, 3, and the seed's share would swamp the difference."""
    seed_part = {0: 0.0, 1: 0.9, 2: -0.7, 3: 0.4, 4: -0.2}
    champ_seeds, cand_seeds = [0, 2, 3, 4], [0, 1, 2, 3]
    ev = Evidence(champion=[1.0 + seed_part[s] for s in champ_seeds], champion_seeds=champ_seeds,
                  candidate=[0.9 + seed_part[s] + 0.001 * s for s in cand_seeds], candidate_seeds=cand_seeds)
    assert paired(ev) == pytest.approx([0.1, 0.098, 0.097])
    d = NoiseAwarePolicy(PolicyConfig(test="paired", screen_bar=-10, futility_sigmas=-10)).decide(ev)
    assert d.verdict == "win" and d.rule == "confirm:paired", d.reason


# ----------------------------------------------------------------------------- bayes: a prior learned from the campaign


def _history(effect: float, n: int, rng: np.random.Generator, runs: int = 3, rho: float = 0.0,
             pairs: bool = True) -> list[tuple[Evidence, Decision]]:
    """n decided experiments of `runs` runs each against a 4-run champion (noise sd 1), every change `effect` sds
    better; same-seed runs share a seed component of variance rho when the change pairs."""
    out = []
    for _ in range(n):
        seed_part = rng.normal(size=4) * np.sqrt(rho)
        own = seed_part if pairs else rng.normal(size=4) * np.sqrt(rho)
        champ = list(seed_part + rng.normal(size=4) * np.sqrt(1 - rho))
        cand = list(-effect + own[:runs] + rng.normal(size=runs) * np.sqrt(1 - rho))
        ev = Evidence(champion=champ, candidate=cand, champion_seeds=[0, 1, 2, 3], candidate_seeds=list(range(runs)))
        out.append((ev, Decision(verdict="loss", rule="futility", reason="r")))
    return out


def test_bayes_learns_the_effect_sizes_of_its_campaign():
    rng = np.random.default_rng(5)
    base = bayes.default_prior()
    null = bayes.learn(_history(0.0, 60, rng))
    wins = bayes.learn(_history(2.0, 60, rng))
    better = lambda p: float(np.asarray(p.weights)[bayes.GRID > 0].sum())  # noqa: E731
    assert null.experiments == 60 and better(null) < better(base) < better(wins)
    assert better(wins) > 0.5 and 0.8 < null.noise_sd < 1.2 and null.noise_df > 100


def test_bayes_pairs_only_where_the_data_shows_it():
    rng = np.random.default_rng(6)
    paired = bayes.learn(_history(0.0, 40, rng, rho=0.8))
    assert paired.pair_share > 0.8 and 0.65 < paired.pair_correlation < 0.9
    half = bayes.learn(_history(0.0, 20, rng, rho=0.8) + _history(0.0, 20, rng, rho=0.8, pairs=False))
    assert 0.2 < half.pair_share < paired.pair_share and half.pair_correlation > 0.6  # two runs each: a rough share
    apart = bayes.learn(_history(0.0, 40, rng, rho=0.0))
    assert (apart.pair_share, apart.pair_correlation) == (0.0, 0.0)


def test_bayes_learns_pairing_from_screens_too():
    """Most experiments end at their screen, one run: how close it lands to the champion's same-seed run is all they
    say about pairing, and it is counted (before, only experiments of two or more runs were)."""
    rng = np.random.default_rng(7)
    half = _history(0.0, 40, rng, runs=1, rho=0.8) + _history(0.0, 40, rng, runs=1, rho=0.8, pairs=False)
    screens = bayes.learn(half)
    assert screens.pair_share > 0.3 and screens.pair_correlation >= 0.5
    apart = bayes.learn(_history(0.0, 80, rng, runs=1, rho=0.8, pairs=False))
    assert (apart.pair_share, apart.pair_correlation) == (0.0, 0.0)


def test_bayes_promotes_a_clear_win_on_two_runs_and_names_its_numbers():
    p = make_policy(PolicyConfig(rule="bayes"))
    assert isinstance(p, BayesPolicy) and p.learns
    d = p.decide(Evidence(metric="val_bpb", champion=[1.0, 1.1, 0.9], candidate=[0.5]))
    assert d.verdict == "more_runs" and d.more_candidate_runs == 1, d.reason  # a single run never promotes
    d = p.decide(Evidence(metric="val_bpb", champion=[1.0, 1.1, 0.9, 1.0, 0.95, 1.05, 0.98], candidate=[0.5, 0.52]))
    assert (d.verdict, d.rule) == ("win", "bayes"), d.reason
    for text in ("P(no better)", "<= 0.050 (fdr 0.05 over the campaign's 1 promotions", "(6 df)", "prior from 0 experiments", "a run buys 0.100 sd"):
        assert text in d.reason, text
    loss = p.decide(Evidence(metric="val_bpb", champion=[1.0, 1.1, 0.9], candidate=[1.05]))
    assert (loss.verdict, loss.rule) == ("loss", "screen") and "Stopped" in loss.reason


def test_bayes_rarely_promotes_a_seed_only_change():
    """Candidate distribution == champion distribution: promotions stay at about the fdr or below."""
    rng = np.random.default_rng(12345)
    p = BayesPolicy(PolicyConfig(rule="bayes"))
    wins = sum(run_loop(p, 1.0, 1.0, rng, sd=0.04).verdict == "win" for _ in range(400))
    assert wins / 400 <= p.cfg.fdr

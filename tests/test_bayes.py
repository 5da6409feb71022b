"""The bayes rule's pieces (bot/core/bayes.py) and properties of its decisions (bot/core/policy.py BayesPolicy)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from scipy import stats
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.core import bayes
from bot.core.policy import BayesPolicy, PolicyConfig
from bot.core.records import Decision, Evidence

# runs on the metric's scale: values a metric takes, with a spread the noise floor can measure
RUN = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False, allow_infinity=False)


def _decided(champion: list[float], candidate: list[float], verdict: str = "loss") -> tuple[Evidence, Decision]:
    return Evidence(champion=champion, candidate=candidate), Decision(verdict=verdict, rule="r", reason="r")


@pytest.mark.parametrize("rho", [0.0, 0.8])
def test_the_likelihood_is_gaussian_with_the_champions_mean_integrated_out(rho):
    """bayes._components against the density itself: runs N(mu, 1) for the champion and N(mu - theta, 1) for the
    candidate, same-seed runs correlated by rho, integrated over mu on a fine grid. Twice with the same shape and
    other values, so that what is cached per shape (`bayes._design`) never carries values over, and in metric units
    of noise sd 0.5, which `_components` scales (its cached forms are of the unscaled runs)."""
    rng = np.random.default_rng(3)
    pairs = [(0, 0), (1, 1)]
    cov = np.eye(6)
    for i, j in pairs:
        cov[i, 4 + j] = cov[4 + j, i] = rho
    mus = np.linspace(-12.0, 12.0, 4801)
    for _ in range(2):
        h, c = rng.normal(size=4), rng.normal(size=2) - 1.0
        got = bayes._components([(tuple(0.5 * h), tuple(0.5 * c), tuple(pairs))], rho, 0.5)[0]  # in units of sd 0.5
        for k in (20, 32, 40):  # theta -3, 0, 2 sds
            theta = bayes.GRID[k]
            means = mus[:, None] - theta * np.r_[np.zeros(4), np.ones(2)][None, :]
            dens = stats.multivariate_normal(np.zeros(6), cov).logpdf(np.concatenate([h, c])[None, :] - means)
            want = float(np.log(np.exp(dens).sum() * (mus[1] - mus[0]))) + 2.5 * np.log(2 * np.pi)
            assert got[k] == pytest.approx(want, abs=1e-6)


def test_runs_beyond_the_priors_support_leave_a_prior_that_still_promotes():
    """A change 1000 noise sds better (beyond the grid's 8, where the default prior puts nothing) is learned from
    without 0/0: the prior stays a distribution (the old EM turned every weight NaN, and the campaign never promoted
    again), and the next clear win is promoted on it. No numpy warning either."""
    history = [_decided([1.0, 1.001, 0.999], [0.0, 0.001], "win")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior = bayes.learn(history)
        w = np.asarray(prior.weights)
        assert np.isfinite(w).all() and w.sum() == pytest.approx(1.0)
        paired = prior.model_copy(update={"pair_share": 0.5, "pair_correlation": 0.8})
        for campaign in (prior, paired):
            d = BayesPolicy().decide(Evidence(champion=[0.3, -0.5, 0.1, -0.2, 0.4], candidate=[-6.0, -6.4],
                                              campaign=campaign))
            assert (d.verdict, d.rule) == ("win", "bayes"), d.reason


def test_the_prior_update_moves_toward_what_the_campaign_shows():
    """Empirical Bayes: a campaign of 3 sd wins raises P(better) and its mean, one of nothing lowers P(better); the
    default counts as PRIOR_STRENGTH experiments, so a few experiments move it less than many."""
    rng = np.random.default_rng(8)

    def history(effect: float, n: int) -> list[tuple[Evidence, Decision]]:
        return [_decided(list(rng.normal(size=4)), list(rng.normal(size=3) - effect)) for _ in range(n)]

    better = lambda p: float(np.asarray(p.weights)[bayes.BETTER].sum())  # noqa: E731
    base = bayes.default_prior()
    few, many, none = bayes.learn(history(3.0, 5)), bayes.learn(history(3.0, 80)), bayes.learn(history(0.0, 80))
    assert better(none) < better(base) < better(few) < better(many)
    assert many.experiments == 80 and 0.8 < many.noise_sd < 1.2


def _lfdr(ev: Evidence) -> float:
    """P(no better) from the posterior, as the rule's documented pieces compute it."""
    prior = ev.campaign or bayes.default_prior()
    ss, df = bayes.noise(ev, ev.campaign)
    ll, _ = bayes.marginal(ev, ss, df, prior.pair_share, prior.pair_correlation)
    return float(bayes.posterior(np.asarray(prior.weights), ll)[bayes.NULL].sum())


# a campaign's promotions so far, and how many of them its prior now thinks false (None: no campaign yet)
CAMPAIGN = st.one_of(st.none(), st.integers(0, 30).flatmap(lambda n: st.tuples(st.just(n), st.floats(0.0, n * 0.3))))


@settings(max_examples=150, deadline=None)
@given(champion=st.lists(RUN, min_size=2, max_size=9, unique=True), candidate=st.lists(RUN, min_size=1, max_size=6),
       fdr=st.sampled_from([0.01, 0.05, 0.2]), min_runs=st.integers(1, 3), past=CAMPAIGN)
def test_never_promotes_on_evidence_below_its_threshold(champion, candidate, fdr, min_runs, past):
    """Whatever the runs and the campaign: a win has at least min_runs candidate runs, a noise sd with
    MIN_NOISE_DF degrees of freedom, and P(no better) within the campaign's budget (at most LFDR_CAP, and at most
    fdr while the campaign's past promotions leave nothing spare); its reason names that P(no better) (the audit
    trail holds the number the verdict was decided on)."""
    campaign = None if past is None else bayes.default_prior().model_copy(
        update={"promotions": past[0], "false_promotions": past[1]})
    ev = Evidence(champion=champion, candidate=candidate, campaign=campaign)
    d = BayesPolicy(PolicyConfig(rule="bayes", fdr=fdr, min_runs=min_runs)).decide(ev)
    if d.verdict == "win":
        assert bayes.noise(ev, campaign)[1] >= bayes.MIN_NOISE_DF, d.reason
    if d.verdict == "win" and d.rule == "bayes":
        lfdr, limit = _lfdr(ev), bayes.promotion_limit(campaign or bayes.default_prior(), fdr)
        assert len(candidate) >= min_runs and lfdr <= limit <= max(fdr, bayes.LFDR_CAP), (lfdr, d.reason)
        if past is None or past[1] >= fdr * past[0]:
            assert lfdr <= fdr, (lfdr, d.reason)
        assert float(re.search(r"P\(no better\) ([0-9.]+) <=", d.reason).group(1)) == pytest.approx(lfdr, abs=6e-4)


def test_a_promotion_waits_for_a_noise_sd_measured_on_enough_runs():
    """A clear win over a champion whose three runs happen to agree is not promoted on that spread (the old rule
    promoted it at once, on 2 degrees of freedom): the rule asks for the champion runs the noise sd lacks, and
    once they show the real spread the same candidate is no clear win."""
    champion, candidate = [1.0, 1.01, 0.99], [0.9, 0.91]
    d = BayesPolicy().decide(Evidence(champion=champion, candidate=candidate))
    assert (d.verdict, d.rule) == ("more_runs", "noise_floor"), d.reason
    assert (d.more_champion_runs, d.more_candidate_runs) == (bayes.MIN_NOISE_DF - 2, 0)
    assert f"needs a noise sd with {bayes.MIN_NOISE_DF} degrees of freedom" in d.reason
    d = BayesPolicy().decide(Evidence(champion=champion + [1.1, 0.88, 1.12, 0.93], candidate=candidate))
    assert d.verdict != "win", d.reason


def test_a_winners_runs_never_measure_the_noise():
    """A promotion picks runs that agree (a small spread makes a clear win), so neither the winner's runs nor the
    same runs inherited by the champion it makes enter the campaign's noise pool; the champion's own runs do."""
    loser = _decided([0.0, 1.0, -1.0], [0.5, 1.5, -0.5])
    winner = _decided([0.0, 1.0, -1.0, 0.5], [-3.0, -3.001, -2.999], "win")
    after = (Evidence(champion=[-3.0, -3.001, -2.999, -2.0, -4.0], candidate=[-3.0], champion_inherited=3),
             Decision(verdict="loss", rule="screen", reason="r"))
    prior = bayes.learn([loser, winner, after])
    pooled = [[1.5, -0.5], [0.0, 1.0, -1.0, 0.5], [-2.0, -4.0]]  # the loser's after its first, each champion's own
    ss = sum(float(np.var(xs) * len(xs)) for xs in pooled)
    assert prior.noise_df == 5 and prior.noise_sd == pytest.approx((ss / 5) ** 0.5)
    assert (prior.promotions, prior.champion_runs) == (1, [-2.0, -4.0])


def test_the_champions_runs_count_once_in_the_noise():
    """The pool holds the champion's runs as the last decided experiment saw them; a decision counts the champion's
    runs now in their place, once, and a new champion's beside them."""
    prior = bayes.learn([_decided([0.0, 1.0, -1.0], [2.0])])
    assert (prior.noise_df, prior.champion_runs) == (2, [0.0, 1.0, -1.0])
    ss, df = bayes.noise(Evidence(champion=[0.0, 1.0, -1.0, 0.5], candidate=[0.3, 0.6, 0.9]), prior)
    assert df == 3 + 1 and ss == pytest.approx(float(np.var([0.0, 1.0, -1.0, 0.5]) * 4) + 0.045)
    _, df = bayes.noise(Evidence(champion=[5.0, 6.0], candidate=[0.3]), prior)
    assert df == 2 + 1


@pytest.mark.parametrize("df", [6, 30, 300])
def test_the_noise_sd_is_integrated_out_as_students_t(df):
    """A run's difference from the truth, its sd integrated over the noise posterior, has Student's t density: in
    its tails too, where a decision at P(no better) 0.05 is made (five equally weighted quantiles of the sd, the
    rule before, gave 0.74 of it four scale units out on 6 df and 0.16 at six)."""
    sds, log_weights = bayes.noise_sds(float(df), df)  # ss = df: the t's scale is 1
    for z in range(7):
        mixed = float(np.sum(np.exp(log_weights) * stats.norm.pdf(z, scale=sds)))
        assert mixed == pytest.approx(stats.t.pdf(z, df), rel=0.03), z


def test_a_close_call_runs_past_the_noise_aware_rules_cap():
    """A change 1.2 noise sds better is not clear on 6 runs (P(no better) ~0.15), and another few runs are worth
    their cost: the bayes rule's own cap (16) lets it run on, where the cap of 6 it had made it a loss."""
    champion = [10.0 + d for d in (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, -1.2, 1.2, -0.3, 0.3, 0.0)]
    candidate = [8.8 + d for d in (-1.0, -0.5, 0.0, 0.0, 0.5, 1.0)]
    ev = Evidence(champion=champion, candidate=candidate)
    assert PolicyConfig(rule="bayes").max_candidate_runs == 16 and PolicyConfig().max_candidate_runs == 6
    d = BayesPolicy(PolicyConfig(rule="bayes")).decide(ev)
    assert d.verdict == "more_runs" and d.more_candidate_runs == 1, d.reason
    capped = BayesPolicy(PolicyConfig(rule="bayes", max_candidate_runs=6)).decide(ev)
    assert (capped.verdict, capped.rule) == ("loss", "max_runs")


def test_the_campaigns_false_promotion_budget():
    """P(no better) a promotion may have: fdr for a campaign's first; more once its promotions have been clear (the
    expected share of false ones over all of them stays at fdr), never above LFDR_CAP; fdr again when its past
    promotions already hold their share."""
    base = bayes.default_prior()
    limit = lambda n, false: bayes.promotion_limit(base.model_copy(update={"promotions": n, "false_promotions": false}), 0.05)  # noqa: E731
    assert limit(0, 0.0) == 0.05
    assert limit(1, 0.0) == pytest.approx(0.10) and limit(2, 0.02) == pytest.approx(0.13)
    assert limit(10, 0.0) == bayes.LFDR_CAP
    assert limit(4, 0.3) == 0.05


@settings(max_examples=60, deadline=None)
@given(champion=st.lists(RUN, min_size=3, max_size=6, unique=True), x=RUN, worse=st.floats(0.01, 5.0))
@example(champion=[0.0, 4.9149873017859535e-55, 2.2250738585e-313], x=0.0, worse=1.0)  # spread below rounding (CI)
def test_the_screen_is_monotone(champion, x, worse):
    """The stopping table's screen is a threshold: if a first run goes on (or wins), a better first run never stops
    as a loss; equivalently a screen loss at x is a loss at every worse x (lower is better here)."""
    p = BayesPolicy()
    at = lambda v: p.decide(Evidence(champion=champion, candidate=[v]))  # noqa: E731
    if at(x).verdict == "loss":
        assert at(x + worse).verdict == "loss", (x, worse, at(x + worse).reason)

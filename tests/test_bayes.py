"""The bayes rule's pieces (bot/core/bayes.py) and properties of its decisions (bot/core/policy.py BayesPolicy)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.core import bayes
from bot.core.policy import BayesPolicy, PolicyConfig
from bot.core.records import Decision, Evidence

# runs on the metric's scale: values a metric takes, with a spread the noise floor can measure
RUN = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False, allow_infinity=False)


def _decided(champion: list[float], candidate: list[float], verdict: str = "loss") -> tuple[Evidence, Decision]:
    return Evidence(champion=champion, candidate=candidate), Decision(verdict=verdict, rule="r", reason="r")


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
            d = BayesPolicy().decide(Evidence(champion=[0.3, -0.5, 0.1], candidate=[-6.0, -6.4], campaign=campaign))
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


@settings(max_examples=150, deadline=None)
@given(champion=st.lists(RUN, min_size=2, max_size=6, unique=True), candidate=st.lists(RUN, min_size=1, max_size=6),
       fdr=st.sampled_from([0.01, 0.05, 0.2]), min_runs=st.integers(1, 3))
def test_never_promotes_on_evidence_below_its_threshold(champion, candidate, fdr, min_runs):
    """Whatever the runs: a win has at least min_runs candidate runs and P(no better) <= fdr, and its reason names
    that P(no better) (the audit trail holds the number the verdict was decided on)."""
    d = BayesPolicy(PolicyConfig(rule="bayes", fdr=fdr, min_runs=min_runs)).decide(
        Evidence(champion=champion, candidate=candidate))
    if d.verdict == "win" and d.rule == "bayes":
        ev = Evidence(champion=champion, candidate=candidate)
        lfdr = _lfdr(ev)
        assert len(candidate) >= min_runs and lfdr <= fdr, (lfdr, d.reason)
        assert float(re.search(r"P\(no better\) ([0-9.]+) <=", d.reason).group(1)) == pytest.approx(lfdr, abs=6e-4)


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

"""Promotion policy: decide from measured runs whether a candidate beats the champion.

A single training run is a noisy measurement: on the built-in CPU target the seed-to-seed spread of the metric
is 0.02-0.07 at a 20 s budget, larger than most real improvements. A rule that trusts one run merges noise.

Three rules are provided:

* `MarginPolicy` - the simple rule. The candidate wins when its mean beats the champion's mean by more
  than `margin`. With `margin=0` and one run each this is autoresearch's greedy "keep if better".
* `NoiseAwarePolicy` - the default. It estimates the noise floor from the champion's repeated runs,
  screens a candidate on one run (most proposals cost that one run), and confirms a promising one with a group-sequential one-sided
  t-test (alpha spending over looks), so clear cases stop early and noise is rarely promoted.
* `BayesPolicy` (`rule: bayes`) - promote, stop or run again, whichever is worth most under a prior over effect
  sizes learned from the campaign's own decided experiments (`bot.core.bayes`), pairing runs by seed where the
  campaign's data shows they pair.

The loop calls `decide(Evidence)` repeatedly; the policy answers `more_runs` (asking for more candidate
and/or champion runs) until it reaches a final verdict. It never asks for more once
`max_candidate_runs` is reached, so the exchange always terminates.

The rules are written for lower-is-better: `_oriented` multiplies every value by the direction's sign first
(`bot.core.records.oriented`), so a maximized metric is decided by the same code. Means and reasons show the values
as measured; `effect` is the improvement (positive: the candidate is better) in either direction.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field, field_validator, model_validator
from scipy import special

import numpy as np

from bot.core import bayes
from bot.core.records import Decision, Evidence, oriented

TestKind = Literal["pooled", "welch", "paired"]
EXACT = 1e-9  # runs that differ by less than this share of their size are equal: their spread is rounding, not noise
# each rule's default cap on a candidate's runs: the noise-aware rule spends its alpha over them; the bayes rule runs
# only while a run is worth what it costs, and a small effect needs many (docs/policy.md, round 4)
MAX_CANDIDATE_RUNS = {"noise_aware": 6, "margin": 6, "bayes": 16}


class PolicyConfig(BaseModel, extra="forbid"):
    """The `policy:` section of arbot.yml."""

    rule: Literal["noise_aware", "bayes", "margin"] = Field(
        "noise_aware",
        description="Promotion rule: 'noise_aware' (sequential significance test), 'bayes' (a stopping rule on a prior "
        "learned from the campaign) or 'margin' (mean beats champion by margin).",
    )
    fdr: float = Field(
        0.05,
        gt=0.0,
        lt=0.5,
        description="Bayes rule: the expected share of false promotions over the campaign. A campaign's first promotion "
        "needs the posterior probability that the change is no better to be at most this; later ones may use what "
        "the campaign's clear promotions left of the budget (at most 0.15).",
    )
    min_runs: int = Field(2, ge=1, description="Bayes rule: candidate runs before a change may be promoted.")
    margin: float = Field(
        0.0,
        ge=0.0,
        description="Margin rule: minimum improvement in metric units; a win must beat the champion mean by more than this.",
    )
    baseline_runs: int = Field(
        3, ge=1, description="Champion runs made when a champion is created, to measure the noise floor."
    )
    alpha: float = Field(
        0.02,
        description="Noise-aware rule: one-sided false-promotion bound for a candidate no better than the champion, spent over all looks.",
    )
    min_effect: float = Field(
        0.0,
        ge=0.0,
        description="Minimum effect size in metric units: the test is against 'improvement <= min_effect', and the mean improvement must exceed it.",
    )
    screen_bar: float = Field(
        1.0,
        description="A first candidate run that does not beat the champion mean by more than this many noise sigmas is discarded at once (negative: a somewhat worse first run goes on).",
    )
    futility_sigmas: float = Field(
        1.0,
        description="At an interim look, stop as a loss when the improvement is below this many standard errors (0: not better than the champion; default 1: not promising).",
    )
    max_candidate_runs: int = Field(
        None,  # type: ignore[assignment] - set by _consistent: the rule's MAX_CANDIDATE_RUNS
        ge=2,
        description="Cap on candidate runs (seeds) for one experiment; not significant by then is a loss. Default: 6 "
        "for noise_aware (its alpha is spent over them), 16 for bayes (its stopping rule spends runs only where they "
        "are worth their cost, and a small effect needs many).",
    )
    spending_power: float = Field(
        2.0,
        gt=0.0,
        description="Alpha spending: by n candidate runs, alpha*((n-1)/(max_candidate_runs-1))**power has been spent (1: even, larger: save alpha for later looks).",
    )
    match_champion_runs: int = Field(
        6,
        ge=2,
        description="Cap on the champion runs a candidate asks for (up to its own runs + champion_lead); champion runs are reused by later experiments.",
    )
    champion_lead: int = Field(
        1,
        ge=0,
        description="A promising candidate asks for champion runs up to its own run count + this (at most match_champion_runs): the champion's mean is compared against every candidate, so it is worth knowing better.",
    )
    test: TestKind = Field(
        "pooled",
        description="Confirm test: 'pooled' (two-sample t, equal variance, candidate and champion pooled), 'welch', or 'paired' (same-seed differences).",
    )
    simplification_wins: bool = Field(
        True, description="A change that deletes code on net is promoted when it is statistically no worse."
    )
    simplification_tolerance: float = Field(
        0.5,
        ge=0.0,
        description="Simplification: the mean may be worse by at most this many noise sigmas (and not significantly worse).",
    )
    simplification_runs: int = Field(
        3, ge=2, description="Simplification: candidate runs needed before a no-worse simplification is promoted."
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: object) -> object:
        if isinstance(data, dict) and "screen_sigmas" in data:
            raise ValueError(
                "policy.screen_sigmas was replaced by policy.screen_bar, which counts the other way: the first run "
                "must beat the champion mean by more than screen_bar noise sds (screen_sigmas: s is screen_bar: -s)")
        return data

    @field_validator("alpha")
    @classmethod
    def _alpha_range(cls, v: float) -> float:
        if not (0.0 < v < 0.5):
            raise ValueError(f"alpha must be in (0, 0.5), got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PolicyConfig:
        if self.max_candidate_runs is None:
            self.max_candidate_runs = MAX_CANDIDATE_RUNS[self.rule]
        if self.simplification_runs > self.max_candidate_runs:
            raise ValueError(
                f"simplification_runs ({self.simplification_runs}) must be <= max_candidate_runs ({self.max_candidate_runs})"
            )
        return self


@runtime_checkable
class Policy(Protocol):
    name: str
    baseline_runs: int

    def decide(self, ev: Evidence) -> Decision: ...


# --------------------------------------------------------------------------------------------- helpers


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _var(xs: list[float]) -> float:
    """Sample variance (n-1); 0 for fewer than two values."""
    n = len(xs)
    if n < 2:
        return 0.0
    m = _mean(xs)
    return sum((x - m) ** 2 for x in xs) / (n - 1)


def t_sf(t: float, df: float) -> float:
    """One-sided upper tail P(T > t) of Student's t (scipy.special.stdtr: the CDF scipy.stats.t uses, without its overhead)."""
    if math.isnan(t):
        return 1.0
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    return float(special.stdtr(df, -t))


def _oriented(ev: Evidence) -> tuple[list[float], list[float]]:
    """The champion's and the candidate's values, oriented so that lower is better."""
    return oriented(ev.champion, ev.direction), oriented(ev.candidate, ev.direction)


def paired(ev: Evidence) -> list[float]:
    """The same-seed differences champion - candidate (oriented: positive means the candidate is better), one per
    seed both have a value for, in the candidate's order. Runs are paired by seed, never by position: a champion
    run that failed, or a run one side made and the other did not, pairs with nothing."""
    champ, cand = _oriented(ev)
    by_seed = dict(zip(ev.champion_seeds or range(len(champ)), champ))
    return [by_seed[s] - v for s, v in zip(ev.candidate_seeds or range(len(cand)), cand) if s in by_seed]


def _failed(ev: Evidence) -> Decision:
    reason = ev.candidate_reason or f"candidate run {ev.candidate_status}"
    return Decision(
        verdict=ev.candidate_status,  # type: ignore[arg-type]  # crash / timeout / rejected
        rule=ev.candidate_status,
        reason=reason,
        metric=ev.metric,
        champion_mean=_mean(ev.champion) if ev.champion else None,
        candidate_mean=_mean(ev.candidate) if ev.candidate else None,
        champion_runs=len(ev.champion),
        candidate_runs=len(ev.candidate),
    )


def _more(ev: Evidence, rule: str, reason: str, cand: int = 0, champ: int = 0, **stats: float | None) -> Decision:
    fields: dict = dict(champion_runs=len(ev.champion), candidate_runs=len(ev.candidate))
    fields.update(stats)
    return Decision(
        verdict="more_runs",
        rule=rule,
        reason=reason,
        metric=ev.metric,
        more_candidate_runs=cand,
        more_champion_runs=champ,
        **fields,
    )


# --------------------------------------------------------------------------------------------- margin


class MarginPolicy:
    """Win when the candidate mean beats the champion mean by more than `margin` (metric units).

    With margin=0 and runs=1 this is autoresearch's greedy rule: one run, keep if better.
    """

    name = "margin"

    def __init__(
        self, margin: float = 0.0, baseline_runs: int = 1, runs: int = 1, simplification_wins: bool = True
    ) -> None:
        if margin < 0:
            raise ValueError("margin must be >= 0")
        if baseline_runs < 1 or runs < 1:
            raise ValueError("baseline_runs and runs must be >= 1")
        self.margin = margin
        self.baseline_runs = baseline_runs
        self.runs = runs
        self.simplification_wins = simplification_wins

    def decide(self, ev: Evidence) -> Decision:
        if ev.candidate_status != "ok":
            return _failed(ev)
        if not ev.champion:
            return _more(ev, "margin", "The champion has no measured run yet.", champ=self.baseline_runs)
        if len(ev.candidate) < self.runs:
            return _more(
                ev, "margin", f"{len(ev.candidate)} of {self.runs} candidate runs made.", cand=self.runs - len(ev.candidate)
            )
        champ, cand = _oriented(ev)
        ch, ca = _mean(ev.champion), _mean(ev.candidate)  # as measured
        effect = _mean(champ) - _mean(cand)
        spread = math.sqrt(_var(ev.champion)) if len(ev.champion) > 1 else None
        stats = dict(
            metric=ev.metric,
            champion_mean=ch,
            candidate_mean=ca,
            effect=effect,
            spread=spread,
            champion_runs=len(ev.champion),
            candidate_runs=len(ev.candidate),
        )
        if effect > self.margin:
            return Decision(
                verdict="win",
                rule="margin",
                reason=f"{ev.metric} {ca:.4f} beats the champion's {ch:.4f} by {effect:.4g} > margin {self.margin:g}.",
                **stats,
            )
        if self.simplification_wins and ev.removes_code and effect >= 0:
            return Decision(
                verdict="win",
                rule="simplification",
                reason=f"Removes code and {ev.metric} {ca:.4f} is no worse than the champion's {ch:.4f}.",
                **stats,
            )
        return Decision(
            verdict="loss",
            rule="margin",
            reason=f"{ev.metric} {ca:.4f} vs champion {ch:.4f}: improvement {effect:.4g} is not > margin {self.margin:g}.",
            **stats,
        )


# --------------------------------------------------------------------------------------------- noise-aware


class NoiseAwarePolicy:
    """Screen on one run, confirm with a group-sequential one-sided t-test, cap at max_candidate_runs.

    * Noise floor: the sample sd of the champion's runs (at least two are required), pooled with the
      candidate's residuals once the candidate has two or more runs.
    * Screen (1 candidate run): not better than the champion mean by more than screen_bar * noise -> loss.
      A single run never promotes.
    * Confirm (n >= 2 candidate runs; the champion is run up to the candidate's count + champion_lead, at most
      `match_champion_runs`, so its mean, which every candidate is compared with, is known at least as well):
      one-sided t-test of H0 "improvement <= min_effect". The alpha available at look n is the increment
      of the spending function alpha * ((n-1)/(N-1))**power, N = max_candidate_runs; by Bonferroni over
      looks the overall false-promotion probability of a no-better candidate is <= alpha.
      Interim futility: improvement below futility_sigmas standard errors -> loss.
    * Cap: not significant at N runs -> loss ("max_runs").
    * Simplification: a change that removes code is promoted once it has simplification_runs runs, its
      mean is worse by at most simplification_tolerance sigmas and it is not significantly worse.
    """

    name = "noise_aware"

    def __init__(self, cfg: PolicyConfig | None = None) -> None:
        self.cfg = cfg or PolicyConfig()
        self.baseline_runs = max(self.cfg.baseline_runs, 2)

    # alpha available at the look with n candidate runs
    def alpha_at(self, n: int) -> float:
        c = self.cfg
        N = c.max_candidate_runs

        def spent(k: int) -> float:
            if k <= 1:
                return 0.0
            return c.alpha * min(1.0, (k - 1) / (N - 1)) ** c.spending_power

        return spent(n) - spent(n - 1)

    def _test(self, champ: list[float], cand: list[float], shift: float,
              pairs: list[float] = ()) -> tuple[float, float, float, str]:
        """(estimated improvement, p-value, standard error, test name) for H0: improvement <= shift; `pairs` are the
        same-seed differences champion - candidate (`paired`): the paired test's estimate is their mean."""
        c = self.cfg
        nh, nc = len(champ), len(cand)
        vh, vc = _var(champ), _var(cand)
        kind = c.test
        if kind == "paired" and len(pairs) >= 2:
            d = list(pairs)
            se = math.sqrt(_var(d) / len(d))
            est, df = _mean(d), len(d) - 1
        elif kind == "welch" and nc >= 2:
            a, b = vh / nh, vc / nc
            se = math.sqrt(a + b)
            denom = (a * a / (nh - 1) if nh > 1 else 0.0) + (b * b / (nc - 1))
            df = (a + b) ** 2 / denom if denom > 0 else nh + nc - 2
            est = _mean(champ) - _mean(cand)
            kind = "welch"
        else:
            kind = "pooled"
            df = nh + nc - 2
            sp2 = ((nh - 1) * vh + (nc - 1) * vc) / df
            se = math.sqrt(sp2 * (1.0 / nh + 1.0 / nc))
            est = _mean(champ) - _mean(cand)
        if se <= 0.0:
            p = 0.0 if est > shift else 1.0
        else:
            p = t_sf((est - shift) / se, df)
        return est, p, se, kind

    def decide(self, ev: Evidence) -> Decision:
        c = self.cfg
        if ev.candidate_status != "ok":
            return _failed(ev)
        champ, cand = _oriented(ev)
        nh, nc = len(champ), len(cand)
        if nh < 2:
            need = self.baseline_runs - nh
            return _more(
                ev, "noise_floor", f"The noise floor needs at least 2 champion runs; {nh} made.", champ=max(1, need)
            )
        if nc == 0:
            return _more(ev, "screen", "No candidate run yet.", cand=1)

        ch, ca = _mean(ev.champion), _mean(ev.candidate)  # as measured
        effect = _mean(champ) - _mean(cand)
        sd_h = math.sqrt(_var(champ))
        if nc >= 2:
            sd = math.sqrt(((nh - 1) * sd_h**2 + (nc - 1) * _var(cand)) / (nh + nc - 2))
        else:
            sd = sd_h
        stats: dict = dict(
            champion_mean=ch, candidate_mean=ca, effect=effect, spread=sd, champion_runs=nh, candidate_runs=nc
        )
        m = ev.metric
        simplification = c.simplification_wins and ev.removes_code

        def final(verdict: str, rule: str, reason: str, p: float | None = None) -> Decision:
            return Decision(verdict=verdict, rule=rule, reason=reason, metric=m, p_value=p, **stats)  # type: ignore[arg-type]

        def ask_next(reason: str, p: float | None = None) -> Decision:
            # one more candidate seed; champion runs up to the paired count (capped by match_champion_runs)
            want_h = min(nc + 1 + c.champion_lead, max(c.match_champion_runs, self.baseline_runs))
            return _more(ev, "confirm", reason, cand=1, champ=max(0, want_h - nh), p_value=p, **stats)

        # --- screen: one run
        if nc == 1:
            bar = c.screen_bar - (c.simplification_tolerance if simplification else 0.0)
            if effect <= bar * sd_h:
                return final(
                    "loss",
                    "screen",
                    f"First run {m} {ca:.4f} against the champion mean {ch:.4f}: improvement {effect:.4g} is not more "
                    f"than {bar:g} x noise sd {sd_h:.4g}.",
                )
            return ask_next(
                f"First run {m} {ca:.4f} vs champion {ch:.4f} (improvement {effect:.4g}, noise sd {sd_h:.4g}): promising, confirming."
            )

        # --- simplification: statistically no worse after simplification_runs runs
        if simplification and nc >= c.simplification_runs:
            _, p_w, _, _ = self._test(cand, champ, 0.0, [-d for d in paired(ev)])  # H1: candidate worse
            if effect >= -c.simplification_tolerance * sd and p_w > c.alpha:
                return final(
                    "win",
                    "simplification",
                    f"Removes code; {m} {ca:.4f} over {nc} runs is no worse than the champion's {ch:.4f} "
                    f"(difference {effect:.4g}, within {c.simplification_tolerance:g} x noise sd {sd:.4g}; "
                    f"one-sided p={p_w:.3g} for 'worse' > {c.alpha:g}).",
                    p=p_w,
                )

        # --- confirm
        effect, p, se, kind = self._test(champ, cand, c.min_effect, paired(ev))
        stats["effect"] = effect
        a_n = self.alpha_at(nc)
        if effect > c.min_effect and p <= a_n:
            return final(
                "win",
                f"confirm:{kind}",
                f"{m} {ca:.4f} over {nc} runs beats the champion's {ch:.4f} over {nh} runs by {effect:.4g} "
                f"(noise sd {sd:.4g}, one-sided {kind} t p={p:.3g} <= {a_n:.3g} at look {nc}).",
                p=p,
            )
        if nc >= c.max_candidate_runs:
            return final(
                "loss",
                "max_runs",
                f"After {nc} runs {m} {ca:.4f} vs champion {ch:.4f} (improvement {effect:.4g}, noise sd {sd:.4g}) "
                f"is not significant (p={p:.3g} > {a_n:.3g}).",
                p=p,
            )
        t0 = (effect / se) if se > 0 else (math.inf if effect > 0 else -math.inf if effect < 0 else 0.0)
        if t0 < c.futility_sigmas and not (simplification and nc < c.simplification_runs):
            return final(
                "loss",
                "futility",
                f"After {nc} runs {m} {ca:.4f} vs champion {ch:.4f}: improvement {effect:.4g} is "
                f"{t0:.2f} standard errors, below the futility bound {c.futility_sigmas:g} (p={p:.3g}).",
                p=p,
            )
        return ask_next(
            f"After {nc} runs improvement {effect:.4g} (p={p:.3g} > {a_n:.3g} at look {nc}): not yet significant, one more seed.",
            p=p,
        )


class BayesPolicy:
    """Promote, stop or run again, whichever is worth most under the campaign's learned prior (`bot.core.bayes`).

    * Noise floor: the champion needs 2 runs (baseline_runs when created); the noise sd pools the campaign's runs.
    * Each look: the posterior of the true improvement from the prior `Evidence.campaign` (the default before any
      experiment is decided) and every champion and candidate run, paired by seed where the campaign's changes pair.
    * Win: at least min_runs candidate runs, P(no better) within the campaign's budget (`bayes.promotion_limit`:
      fdr for its first promotion), and promoting now is worth more than running on; never before the noise sd has
      MIN_NOISE_DF degrees of freedom (champion runs are asked for, rule `noise_floor`).
    * More runs (one candidate seed, the champion up to the candidate's count + champion_lead): when the best
      lookahead of k more runs, less k times what a run buys, beats stopping; never past max_candidate_runs.
    * Loss otherwise: "screen" on one run, "futility" before the cap, "max_runs" at it.
    * Simplification: a change that removes code is promoted after simplification_runs runs when
      P(worse by more than simplification_tolerance sds) <= fdr.
    """

    name = "bayes"
    learns = True  # its evidence carries the campaign's prior (`lifecycle.learned`)

    def __init__(self, cfg: PolicyConfig | None = None) -> None:
        self.cfg = cfg or PolicyConfig(rule="bayes")
        self.baseline_runs = max(self.cfg.baseline_runs, 2)

    def decide(self, ev: Evidence) -> Decision:
        c = self.cfg
        if ev.candidate_status != "ok":
            return _failed(ev)
        nh, nc = len(ev.champion), len(ev.candidate)
        if nh < 2:
            return _more(ev, "noise_floor", f"The noise floor needs at least 2 champion runs; {nh} made.",
                         champ=max(1, self.baseline_runs - nh))
        if nc == 0:
            return _more(ev, "screen", "No candidate run yet.", cand=1)
        prior = ev.campaign or bayes.default_prior()
        ss, df = bayes.noise(ev, ev.campaign)
        short = bayes.MIN_NOISE_DF - df  # degrees of freedom the noise sd lacks before anything is promoted
        champ, cand = _oriented(ev)
        ch, ca, m = _mean(ev.champion), _mean(ev.candidate), ev.metric
        rounding = max(max(map(abs, champ + cand)) * EXACT, 1e-12)
        if df == 0 or ss <= df * rounding**2:  # no spread beyond the values' rounding: the runs are exact
            ss, df = max(abs(_mean(champ) - _mean(cand)), rounding) ** 2, 1
        sd = bayes.median_sd(ss, df)
        ll, paired_ll = bayes.marginal(ev, ss, df, prior.pair_share, prior.pair_correlation)
        w = np.asarray(prior.weights)
        post = bayes.posterior(w, ll)
        p_pair = float(np.exp(special.logsumexp(bayes.log_joint(w, paired_ll)) - special.logsumexp(bayes.log_joint(w, ll))))
        lfdr, mean = float(post[bayes.NULL].sum()), float(post @ bayes.GRID)
        stats: dict = dict(champion_mean=ch, candidate_mean=ca, effect=mean * sd, spread=sd, champion_runs=nh,
                           candidate_runs=nc)  # no p-value: P(no better), a posterior probability, is in the reason
        facts = (f"{m} {ca:.4f} over {nc} runs vs the champion's {ch:.4f} over {nh}: expected improvement "
                 f"{mean:.2f} x noise sd {sd:.4g} ({df} df), P(no better) {lfdr:.3f}"
                 + (f", P(pairs) {p_pair:.2f}" if prior.pair_correlation > 0 else "") + f"; {bayes.describe(prior)}")

        def final(verdict: str, rule: str, why: str) -> Decision:
            if verdict == "win" and short > 0:  # a noise sd from few runs may be low by luck: a null would look clear
                return _more(ev, "noise_floor", f"{why}, but a promotion needs a noise sd with {bayes.MIN_NOISE_DF} "
                             f"degrees of freedom, {short} more champion run(s): {facts}.", champ=short, **stats)
            return Decision(verdict=verdict, rule=rule, reason=f"{why}: {facts}.", metric=m, **stats)  # type: ignore[arg-type]

        if ev.removes_code and c.simplification_wins and nc >= c.simplification_runs:
            worse = float(post[bayes.GRID < -c.simplification_tolerance].sum())
            if worse <= c.fdr:
                return final("win", "simplification", f"Removes code; P(worse by more than "
                             f"{c.simplification_tolerance:g} sd) {worse:.3f} <= {c.fdr:g}")
        limit = bayes.promotion_limit(prior, c.fdr)
        budget = (f"fdr {c.fdr:g} over the campaign's {prior.promotions + 1} promotions, "
                  f"{prior.false_promotions:.2f} expected false before this one")
        allowed = nc >= c.min_runs and lfdr <= limit
        now = mean if allowed and mean > 0 else 0.0
        var = p_pair * 2 * (1 - prior.pair_correlation) + (1 - p_pair)
        left = c.max_candidate_runs - nc
        ahead, k = bayes.lookahead(post, var, nc, left, limit, c.min_runs, prior.run_value) if left else (-math.inf, 0)
        keep_simplifying = ev.removes_code and c.simplification_wins and nc < c.simplification_runs and left > 0
        if ahead > now or keep_simplifying:
            want_h = min(nc + 1 + c.champion_lead, max(c.match_champion_runs, self.baseline_runs))
            return _more(ev, "confirm", f"{k} more run(s) are worth {ahead:.3f} sd net, stopping {now:.3f}: {facts}.",
                         cand=1, champ=max(0, want_h - nh), **stats)
        if allowed and mean > 0:
            return final("win", "bayes", f"Promoted: P(no better) {lfdr:.3f} <= {limit:.3f} ({budget}), worth "
                         f"{now:.3f} sd, more runs {max(ahead, 0.0):.3f}")
        rule = "screen" if nc == 1 else "max_runs" if left <= 0 else "futility"
        return final("loss", rule, f"Stopped: more runs are worth {max(ahead, 0.0):.3f} sd net, promotion "
                     + ("is worth nothing" if allowed else f"not allowed (P(no better) {lfdr:.3f} > {limit:.3f}, {budget}"
                        + (f" or fewer than {c.min_runs} runs" if nc < c.min_runs else "") + ")"))


def make_policy(cfg: PolicyConfig) -> Policy:
    """The policy the `policy:` section of arbot.yml selects."""
    if cfg.rule == "margin":
        return MarginPolicy(
            margin=cfg.margin, baseline_runs=cfg.baseline_runs, runs=1, simplification_wins=cfg.simplification_wins
        )
    if cfg.rule == "bayes":
        return BayesPolicy(cfg)
    return NoiseAwarePolicy(cfg)

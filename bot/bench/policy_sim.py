"""Simulated research campaigns to compare promotion rules (`arbot bench policy`).

A synthetic target has a true metric value (lower is better inside the simulation; with `direction: maximize`
the rules see it negated, as a metric to maximize, and must decide exactly the same). Each experiment proposes a
change with a known true effect (improvement, in noise sigmas) drawn from a mix: most proposals do nothing or harm, a
few help. A run measures true value + Gaussian noise of sd `sigma`; runs with the same seed share a seed component
(correlation `pair_correlation`), as training runs with the same seed do.

Every rule goes through the runs the lifecycle (`bot.core.lifecycle`) makes, counted the same way for each:
- a new champion is run until it has the policy's `baseline_runs` val runs;
- `decide` is asked, the requested champion and candidate runs are made, and so on until a final verdict; champion
  runs stay with the champion and serve its later experiments;
- a win, when the rule confirms on holdout (`Rules.holdout_max_gap` set), costs one candidate run scored on val and
  holdout, plus the champion's holdout reference runs it still lacks (one for a fixed gap, `HOLDOUT_REFERENCE_RUNS`
  for `auto`; a later champion inherits the winner's confirmation run). The synthetic target does not overfit val, so
  the check always passes; its runs are counted, never used in a mean;
- the promoted candidate's val runs become the new champion's runs (`lifecycle.champion_after`), so a winner's luck
  stays in the champion's measured value. With one run each and margin 0 this is autoresearch's greedy loop: the kept
  run's single measurement becomes the value the next candidate must beat.
A promotion applies the candidate's true effect to the champion (a bad promotion hurts the rest of the campaign).

Everything is drawn from numpy Generators seeded from `seed`, so a benchmark is reproducible.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace

import numpy as np

from bot.core.lifecycle import HOLDOUT_REFERENCE_RUNS, Rules
from bot.core.bayes import learn
from bot.core.policy import MarginPolicy, Policy, PolicyConfig, make_policy, t_sf
from bot.core.records import Decision, Evidence, oriented
from runner.config import Direction

METRICS = (
    "false_promotion_rate",
    "worse_promotion_rate",
    "power",
    "runs_per_experiment",
    "true_improvement",
    "cost_per_confirmed_improvement",
    "true_improvement_per_100_runs",
    "keep_rate",
    "median_kept_margin",
)


@dataclass(frozen=True)
class ProposalMix:
    """Distribution of a proposal's true improvement, in noise sigmas (positive = better)."""

    null_share: float = 0.60  # exactly no effect (e.g. "change the seed")
    harmful_share: float = 0.25  # harmful: improvement = -|N(0, harmful_scale)|
    harmful_scale: float = 2.0
    win_low: float = 1.0  # beneficial (the rest): improvement ~ U(win_low, win_high)
    win_high: float = 4.0
    removes_code_share: float = 0.0  # share of proposals flagged as deleting code
    unpairable_share: float = 0.0  # share of changes (of shape, say) whose runs share nothing with the champion's seeds

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        u = rng.random(n)
        harm = -np.abs(rng.normal(0.0, self.harmful_scale, n))
        win = rng.uniform(self.win_low, self.win_high, n)
        return np.where(u < self.null_share, 0.0, np.where(u < self.null_share + self.harmful_share, harm, win))

    def describe(self) -> str:
        return (f"{self.null_share:.0%} null, {self.harmful_share:.0%} harmful -|N(0, {self.harmful_scale:g})|, "
                f"{1 - self.null_share - self.harmful_share:.0%} wins U({self.win_low:g}, {self.win_high:g}) sd"
                + (f", {self.unpairable_share:.0%} unpairable" if self.unpairable_share else ""))


# autoresearch's published overnight run (docs/policy.md): about 125 experiments, 22 kept by greedy, half of the kept
# improvements smaller than the seed-to-seed noise. The mix keeps the default's shape (null and harmful 60:25, wins
# from 0.25 sd) and fits the two free numbers, the share of wins and their largest size, so that greedy, simulated,
# keeps 22/125 and the median kept margin over the champion's value is about one noise sd
# (tests/test_bench_policy.py checks the fit).
AUTORESEARCH_WINS = 0.12
AUTORESEARCH = ProposalMix(null_share=(1 - AUTORESEARCH_WINS) * 0.60 / 0.85,
                           harmful_share=(1 - AUTORESEARCH_WINS) * 0.25 / 0.85, win_low=0.25, win_high=4.0)
AUTORESEARCH_EXPERIMENTS = 125
AUTORESEARCH_KEEP_RATE = 22 / 125


@dataclass(frozen=True)
class Scenario:
    """A mix, and the campaigns it is measured over (each scenario simulates about 10,000 experiments)."""

    mix: ProposalMix
    experiments: int
    campaigns: int
    about: str
    pair_correlation: float = 0.0  # same-seed correlation of the changes that pair


SCENARIOS = {
    "default": Scenario(ProposalMix(), 50, 200, "the default mix"),
    "small": Scenario(ProposalMix(win_low=0.25, win_high=1.0), AUTORESEARCH_EXPERIMENTS, 80,
                      "small effects: the default mix with wins of 0.25-1 sd, over an overnight run"),
    "autoresearch": Scenario(AUTORESEARCH, AUTORESEARCH_EXPERIMENTS, 80,
                             "calibrated on autoresearch's published run (greedy keeps 22 of 125, kept margins ~1 sd)"),
    "half_paired": Scenario(ProposalMix(unpairable_share=0.5), 50, 200,
                            "the default mix, same-seed runs correlated 0.8, half the changes unpairable", 0.8),
}


@dataclass
class SimConfig:
    campaigns: int = 200
    experiments: int = 50
    seed: int = 0
    sigma: float = 1.0  # noise sd of one run, metric units (0.04 mirrors the built-in CPU target's metric)
    direction: Direction = "minimize"  # how the rules are shown the metric
    pair_correlation: float = 0.0  # correlation of same-seed runs of champion and candidate (0: conservative)
    power_threshold: float = 2.0  # power is measured on true improvements >= this many sigmas
    mix: ProposalMix = field(default_factory=ProposalMix)

    @classmethod
    def of(cls, scenario: Scenario, **overrides) -> SimConfig:
        """The config of a scenario; `overrides` (campaigns, experiments, seed, ...) replace its values."""
        base = cls(campaigns=scenario.campaigns, experiments=scenario.experiments, mix=scenario.mix,
                   pair_correlation=scenario.pair_correlation)
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


class FixedTPolicy:
    """A fixed-n design: n candidate runs and n champion runs, one-sided Welch t-test at alpha."""

    name = "fixed_t"

    def __init__(self, n: int = 5, alpha: float = 0.05, baseline_runs: int = 3) -> None:
        self.n, self.alpha, self.baseline_runs = n, alpha, baseline_runs

    def decide(self, ev: Evidence) -> Decision:
        if ev.candidate_status != "ok":
            return Decision(verdict=ev.candidate_status, rule=ev.candidate_status, reason=ev.candidate_reason)  # type: ignore[arg-type]
        nh, nc = len(ev.champion), len(ev.candidate)
        if nh < self.n or nc < self.n:
            return Decision(
                verdict="more_runs",
                rule="fixed_t",
                reason=f"collecting {self.n} runs each",
                champion_runs=nh,
                candidate_runs=nc,
                more_candidate_runs=max(0, self.n - nc),
                more_champion_runs=max(0, self.n - nh),
            )
        h, c = np.asarray(oriented(ev.champion, ev.direction)), np.asarray(oriented(ev.candidate, ev.direction))
        a, b = h.var(ddof=1) / nh, c.var(ddof=1) / nc
        effect = float(h.mean() - c.mean())
        se = math.sqrt(a + b)
        df = (a + b) ** 2 / (a * a / (nh - 1) + b * b / (nc - 1)) if a + b > 0 else nh + nc - 2
        p = t_sf(effect / se, df) if se > 0 else (0.0 if effect > 0 else 1.0)
        win = effect > 0 and p <= self.alpha
        return Decision(
            verdict="win" if win else "loss",
            rule="fixed_t",
            reason=f"Welch t p={p:.3g}",
            champion_mean=float(np.mean(ev.champion)),
            candidate_mean=float(np.mean(ev.candidate)),
            effect=effect,
            spread=float(h.std(ddof=1)),
            p_value=p,
            champion_runs=nh,
            candidate_runs=nc,
        )


def default_rules() -> dict[str, Rules]:
    """The rules the benchmark compares: arbot's defaults (noise_aware; holdout confirmation on, as the target's
    default), the bayes rule, each also without the holdout runs charged (the simulated target never needs them),
    greedy as autoresearch runs it (one run, keep if better, no holdout), and a fixed-n t-test in arbot's lifecycle."""
    arbot, bayes = make_policy(PolicyConfig()), make_policy(PolicyConfig(rule="bayes"))
    return {
        "arbot": Rules(arbot),
        "arbot_no_holdout": Rules(arbot, holdout_max_gap=None),
        "bayes": Rules(bayes),
        "bayes_no_holdout": Rules(bayes, holdout_max_gap=None),
        "greedy": Rules(MarginPolicy(margin=0.0, baseline_runs=1, runs=1), holdout_max_gap=None),
        "fixed_t": Rules(FixedTPolicy(n=5, alpha=0.05)),
    }


class _Campaign:
    """One campaign's champion: its true value, its val runs, its seeds' shares of the noise, its holdout reference
    runs, every run made, and (for a rule that learns) the decided experiments."""

    def __init__(self, sim: SimConfig, rng: np.random.Generator) -> None:
        self.sim, self.rng = sim, rng
        self.true = 0.0
        self.runs: list[float] = []
        self.holdout_runs = 0  # the champion's holdout reference runs
        self.seed_parts: list[float] = []  # the champion's seeds' share of the noise; a change that pairs shares it
        self.made = 0
        self.history: list[tuple[Evidence, Decision]] = []

    def measure(self, true: float, seed: int, parts: list[float]) -> float:
        """One run at `seed`, whose seed share is parts[seed] (drawn when first needed)."""
        s, rho = self.sim.sigma, self.sim.pair_correlation
        while len(parts) <= seed:
            parts.append(float(self.rng.normal()) * math.sqrt(rho) * s)
        self.made += 1
        return true + parts[seed] + float(self.rng.normal()) * math.sqrt(1.0 - rho) * s

    def baseline(self, policy: Policy) -> None:
        """The champion's noise floor: runs until it has the policy's baseline_runs (seeds continue after its own)."""
        while len(self.runs) < policy.baseline_runs:
            self.runs.append(self.measure(self.true, len(self.runs), self.seed_parts))

    def confirm_holdout(self, reference: int) -> None:
        """A win's holdout confirmation: one candidate run on val + holdout, and the champion's reference runs it
        lacks."""
        self.made += 1 + max(0, reference - self.holdout_runs)
        self.holdout_runs = max(reference, self.holdout_runs)

    def promote(self, true: float, runs: list[float], parts: list[float], confirmed: bool) -> None:
        self.true, self.runs, self.seed_parts, self.holdout_runs = true, list(runs), parts, int(confirmed)


def _evidence(champ: _Campaign, cand: list[float], sim: SimConfig, removes: bool, learned) -> Evidence:
    """What the policy sees, as the lifecycle builds it: the metric as reported (the simulation's values, negated
    when maximized: the sign is its own inverse), each run's seed, and what the campaign has taught a rule that
    learns."""
    return Evidence(champion=oriented(champ.runs, sim.direction), direction=sim.direction,
                    candidate=oriented(cand, sim.direction), champion_seeds=list(range(len(champ.runs))),
                    candidate_seeds=list(range(len(cand))), removes_code=removes, campaign=learned)


def simulate_rule(rules: Rules, sim: SimConfig, max_calls: int = 1000) -> dict[str, float]:
    """Run `sim.campaigns` campaigns of `sim.experiments` experiments with one rule; return its metrics."""
    policy, s = rules.policy, sim.sigma
    learns = getattr(policy, "learns", False)
    promotions = false_promotions = worse_promotions = strong = strong_promoted = real_wins = 0
    baseline_runs = total_runs = 0
    margins: list[float] = []
    improvements = []
    for camp in range(sim.campaigns):
        # independent streams: the proposals and the noise, both fixed by (seed, campaign)
        prop_rng = np.random.default_rng([sim.seed, camp, 1])
        effects = sim.mix.draw(prop_rng, sim.experiments) * s
        removes = prop_rng.random(sim.experiments) < sim.mix.removes_code_share
        unpairable = prop_rng.random(sim.experiments) < sim.mix.unpairable_share
        champ = _Campaign(sim, np.random.default_rng([sim.seed, camp, 2]))
        learned = learn([]) if learns else None
        for e in range(sim.experiments):
            before = champ.made
            champ.baseline(policy)
            baseline_runs += champ.made - before
            eff = float(effects[e])
            cand_true = champ.true - eff  # lower is better
            parts = [] if unpairable[e] else champ.seed_parts  # an unpairable change draws its own seed shares
            cand: list[float] = []
            for _ in range(max_calls):
                ev = _evidence(champ, cand, sim, bool(removes[e]), learned)
                d = policy.decide(ev)
                if d.final:
                    break
                for _ in range(d.more_champion_runs):
                    champ.runs.append(champ.measure(champ.true, len(champ.runs), champ.seed_parts))
                for _ in range(d.more_candidate_runs):
                    cand.append(champ.measure(cand_true, len(cand), parts))
            else:  # pragma: no cover - a policy that never ends is a bug
                raise RuntimeError(f"{getattr(policy, 'name', policy)} did not reach a verdict in {max_calls} calls")
            strong += eff >= sim.power_threshold * s
            if learns:
                champ.history.append((ev, d))
                learned = learn(champ.history)
            if d.verdict == "win":
                promotions += 1
                false_promotions += eff <= 0
                worse_promotions += eff < 0
                real_wins += eff > 0
                strong_promoted += eff >= sim.power_threshold * s
                margins.append((d.effect or 0.0) / s)
                confirmed = rules.holdout_max_gap is not None
                if confirmed:
                    champ.confirm_holdout(HOLDOUT_REFERENCE_RUNS if rules.holdout_max_gap == "auto" else 1)
                champ.promote(cand_true, cand, parts if unpairable[e] else champ.seed_parts, confirmed)
        total_runs += champ.made
        improvements.append(-champ.true / s)
    n_exp = sim.campaigns * sim.experiments
    return {
        "false_promotion_rate": false_promotions / promotions if promotions else 0.0,
        "worse_promotion_rate": worse_promotions / promotions if promotions else 0.0,
        "power": strong_promoted / strong if strong else float("nan"),
        "runs_per_experiment": (total_runs - baseline_runs) / n_exp,
        "true_improvement": float(np.mean(improvements)),
        "cost_per_confirmed_improvement": total_runs / real_wins if real_wins else float("inf"),
        "true_improvement_per_100_runs": 100 * float(np.sum(improvements)) / total_runs,
        "keep_rate": promotions / n_exp,
        "median_kept_margin": statistics.median(margins) if margins else float("nan"),
    }


def run_benchmark(sim: SimConfig | None = None, rules: dict[str, Rules] | None = None) -> dict[str, dict[str, float]]:
    """Metrics per rule, on the same proposals and seeds."""
    sim = sim or SimConfig()
    rules = rules if rules is not None else default_rules()
    return {name: simulate_rule(r, sim) for name, r in rules.items()}

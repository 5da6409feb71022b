"""Simulated research campaigns to compare promotion rules (`arbot bench policy`).

A synthetic target has a true metric value (lower is better inside the simulation; with `direction: maximize`
the rules see it negated, as a metric to maximize, and must decide exactly the same). Each experiment proposes a
change with a known true effect (improvement, in noise sigmas) drawn from a mix: most proposals do nothing or harm, a
few help. A run measures true value + Gaussian noise of sd `sigma`; runs with the same seed share a seed component
(correlation `pair_correlation`), as training runs with the same seed do.

Every rule is run by the bot's own lifecycle (`bot.core.lifecycle.next_action` on the bot's records, one experiment
at a time, as the stepper runs it): the simulation only answers each run the lifecycle asks for and merges each win
(`lifecycle.champion_after`). So, as in the bot:
- a new champion is run until it has the policy's `baseline_runs` val runs;
- `decide` is asked, the requested champion and candidate runs are made (seed k for a commit's k-th val run), and so
  on until a final verdict; champion runs stay with the champion and serve its later experiments;
- a win, when the rule confirms on holdout (`Rules.holdout_max_gap` set), costs one candidate run scored on val and
  holdout, plus the champion's holdout reference runs it still lacks. The synthetic target does not overfit val
  (every run's holdout gap is SIM_HOLDOUT_GAP), so the check always passes; its runs are counted, never in a mean;
- the promoted candidate's runs become the new champion's runs, so a winner's luck stays in the champion's measured
  value. With one run each and margin 0 this is autoresearch's greedy loop: the kept run's single measurement
  becomes the value the next candidate must beat;
- a rule that learns (`bayes`) gets the prior `lifecycle.learned` makes from the experiments decided so far.
A promotion applies the candidate's true effect to the champion (a bad promotion hurts the rest of the campaign).

Everything is drawn from numpy Generators seeded from `seed`, so a benchmark is reproducible.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace

import numpy as np

from bot.core import lifecycle as lc
from bot.core.lifecycle import Rules
from bot.core.policy import MarginPolicy, PolicyConfig, make_policy, t_sf
from bot.core.records import (HOLDOUT, VAL, ChampionRecord, Decision, Evidence, ExperimentRecord, Metric, Proposal,
                              RunResult, RunSpec, is_confirmation, oriented, sign)
from runner.config import Direction

METRICS = (
    "promotions",  # how many the rates below are shares of: a dozen cannot tell 5% from 15%
    "false_promotions",
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


SIM_METRIC = "sim"  # the simulated evaluator's metric: val_sim, holdout_sim
SIM_HOLDOUT_GAP = 0.1  # every simulated run's (holdout - val) / |val|: the synthetic target never overfits val


class _World:
    """One campaign's truth: the champion's true value, each commit's seed shares of the noise (a change that pairs
    shares its champion's), and the runs made. The records (what the bot knows) are the lifecycle's."""

    def __init__(self, sim: SimConfig, rng: np.random.Generator, holdout_rng: np.random.Generator,
                 metric: Metric) -> None:
        self.sim, self.rng, self.holdout_rng, self.metric = sim, rng, holdout_rng, metric
        self.true = 0.0
        self.parts: list[float] = []  # the champion's seeds' shares of the noise
        self.made = 0

    def run(self, spec: RunSpec, true: float, parts: list[float]) -> RunResult:
        """The result of one run the lifecycle asked for: true value + the seed's share + the run's own noise; a
        holdout confirmation shares no val seed and draws from its own stream, so a rule's val runs are the same
        whether its holdout runs are charged or not (a champion's val runs scored on holdout as well included)."""
        s, rho = self.sim.sigma, self.sim.pair_correlation
        self.made += 1
        if is_confirmation(spec):
            value = true + float(self.holdout_rng.normal()) * s
        else:
            while len(parts) <= spec.seed:
                parts.append(float(self.rng.normal()) * math.sqrt(rho) * s)
            value = true + parts[spec.seed] + float(self.rng.normal()) * math.sqrt(1.0 - rho) * s
        val = sign(self.metric.direction) * value  # as the evaluator reports it
        metrics = {self.metric.key(VAL): val}
        if HOLDOUT in spec.splits:
            metrics[self.metric.key(HOLDOUT)] = val + SIM_HOLDOUT_GAP * abs(val)
        return RunResult(status="ok", commit=spec.commit, champion=spec.champion, metrics=metrics, seed=spec.seed,
                         splits=list(spec.splits))


def _experiment(number: int, parent: str) -> ExperimentRecord:
    return ExperimentRecord(id=f"exp-{number}", number=number, branch=f"arbot/exp-{number}", commit=f"e{number:07d}",
                            parent=parent, proposal=Proposal(proposer="sim", hypothesis="simulated change", files={}))


def simulate_rule(rules: Rules, sim: SimConfig, max_calls: int = 1000) -> dict[str, float]:
    """Run `sim.campaigns` campaigns of `sim.experiments` experiments with one rule; return its metrics. Every run is
    one `lifecycle.next_action` asked for, every verdict its Decide, and a win's merge makes the next champion with
    `lifecycle.champion_after`, as the stepper does (one experiment at a time: nothing is ever in flight)."""
    policy, s = rules.policy, sim.sigma
    metric = Metric(name=SIM_METRIC, direction=sim.direction, precision=6)
    rules = replace(rules, metric=metric, review_flagged=False)
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
        world = _World(sim, np.random.default_rng([sim.seed, camp, 2]), np.random.default_rng([sim.seed, camp, 3]),
                       metric)
        champion = ChampionRecord(commit="c0000000")
        decided: list[ExperimentRecord] = []
        for e in range(sim.experiments):
            eff = float(effects[e])
            cand_true = world.true - eff  # lower is better
            parts = [] if unpairable[e] else world.parts  # an unpairable change draws its own seed shares
            exp = _experiment(e, champion.commit)
            learned = lc.learned(rules, decided)
            for _ in range(max_calls):
                action = lc.next_action(exp, champion, champion.commit, learned, removes_code=bool(removes[e]))
                if isinstance(action, lc.Decide):
                    exp.decision, exp.evidence = action.decision, action.evidence
                    break
                if not isinstance(action, lc.Run):  # pragma: no cover - nothing is in flight, so nothing waits
                    raise RuntimeError(f"unexpected {action} for {exp.id}")
                floor = not lc.floor_met(champion, rules)
                for spec in action.specs:
                    mine = spec.role == exp.id
                    (exp if mine else champion).runs.append(
                        world.run(spec, cand_true if mine else world.true, parts if mine else world.parts))
                    baseline_runs += floor and not mine
            else:  # pragma: no cover - a policy that never ends is a bug
                raise RuntimeError(f"{getattr(policy, 'name', policy)} did not reach a verdict in {max_calls} calls")
            d = exp.decision
            decided.append(exp)
            strong += eff >= sim.power_threshold * s
            if d.verdict == "win":
                promotions += 1
                false_promotions += eff <= 0
                worse_promotions += eff < 0
                real_wins += eff > 0
                strong_promoted += eff >= sim.power_threshold * s
                margins.append((d.effect or 0.0) / s)
                if not isinstance(lc.next_action(exp, champion, champion.commit, learned), lc.Promote):
                    raise RuntimeError(f"{exp.id} won but the lifecycle does not promote it")  # pragma: no cover
                exp.merged_as = f"m{e:07d}"
                champion = lc.champion_after(exp, exp.merged_as)
                world.true = cand_true
                world.parts = parts
        total_runs += world.made
        improvements.append(-world.true / s)
    n_exp = sim.campaigns * sim.experiments
    return {
        "promotions": promotions,
        "false_promotions": false_promotions,
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

"""Simulated research campaigns to compare promotion rules (`arbot bench policy`).

A synthetic target has a true metric value (lower is better inside the simulation; with `direction: maximize`
the rules see it negated, as a metric to maximize, and must decide exactly the same). Each experiment proposes a
change with a known true effect (improvement, in noise sigmas) drawn from a mix: most proposals do nothing or harm, a
few help. A run measures true value + Gaussian noise of sd `sigma`. Runs with the same seed index share
a seed component (correlation `pair_correlation`) for the same champion, as training runs with the same
seed do. Every rule goes through the same loop driver: `baseline_runs` champion runs when a champion is
created, then `decide` is asked, the requested runs are made, and so on until a final verdict. A
promotion applies the candidate's true effect to the champion (a bad promotion hurts later campaigns).

Everything is drawn from numpy Generators seeded from `seed`, so a benchmark is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from bot.policy import MarginPolicy, NoiseAwarePolicy, Policy, PolicyConfig, t_sf
from bot.records import Decision, Evidence, oriented
from runner.config import Direction

METRICS = (
    "false_promotion_rate",
    "power",
    "runs_per_experiment",
    "true_improvement",
    "cost_per_confirmed_improvement",
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

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        u = rng.random(n)
        harm = -np.abs(rng.normal(0.0, self.harmful_scale, n))
        win = rng.uniform(self.win_low, self.win_high, n)
        return np.where(u < self.null_share, 0.0, np.where(u < self.null_share + self.harmful_share, harm, win))


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


def default_rules(sigma: float = 1.0) -> dict[str, Policy]:
    """The rules the benchmark compares: arbot's defaults, autoresearch's greedy rule, a fixed-n t-test."""
    return {
        "arbot": NoiseAwarePolicy(PolicyConfig()),
        "greedy": MarginPolicy(margin=0.0, baseline_runs=1, runs=1),
        "fixed_t": FixedTPolicy(n=5, alpha=0.05),
    }


class _Champion:
    """A champion's true value, its runs (by seed) and its per-seed shared noise components."""

    def __init__(self, true: float, rng: np.random.Generator, sim: SimConfig) -> None:
        self.true = true
        self.rng = rng
        self.sim = sim
        self.seed_parts: list[float] = []
        self.runs: list[float] = []

    def seed_part(self, i: int) -> float:
        while len(self.seed_parts) <= i:
            self.seed_parts.append(float(self.rng.normal()) * math.sqrt(self.sim.pair_correlation) * self.sim.sigma)
        return self.seed_parts[i]

    def measure(self, true: float, i: int) -> float:
        own = float(self.rng.normal()) * math.sqrt(1.0 - self.sim.pair_correlation) * self.sim.sigma
        return true + self.seed_part(i) + own


def simulate_rule(policy: Policy, sim: SimConfig, max_calls: int = 1000) -> dict[str, float]:
    """Run `sim.campaigns` campaigns of `sim.experiments` experiments with one rule; return its metrics."""
    s = sim.sigma
    promotions = false_promotions = 0
    strong = strong_promoted = 0
    exp_runs = 0  # candidate runs + extra champion runs, per experiment
    total_runs = 0  # everything, champion baselines included
    real_wins = 0
    improvements = []
    for camp in range(sim.campaigns):
        # independent streams: the proposals and the noise, both fixed by (seed, campaign)
        prop_rng = np.random.default_rng([sim.seed, camp, 1])
        noise_rng = np.random.default_rng([sim.seed, camp, 2])
        effects = sim.mix.draw(prop_rng, sim.experiments) * s
        removes = prop_rng.random(sim.experiments) < sim.mix.removes_code_share
        start = 0.0
        champ = _Champion(start, noise_rng, sim)
        for i in range(policy.baseline_runs):
            champ.runs.append(champ.measure(champ.true, i))
        total_runs += policy.baseline_runs
        for e in range(sim.experiments):
            eff = float(effects[e])
            cand_true = champ.true - eff  # lower is better
            cand: list[float] = []
            runs = 0
            for _ in range(max_calls):
                # the metric as reported: the simulation's values, negated when maximized (the sign is its own inverse)
                d = policy.decide(Evidence(champion=oriented(champ.runs, sim.direction), direction=sim.direction,
                                           candidate=oriented(cand, sim.direction), removes_code=bool(removes[e])))
                if d.final:
                    break
                for _ in range(d.more_champion_runs):
                    champ.runs.append(champ.measure(champ.true, len(champ.runs)))
                for _ in range(d.more_candidate_runs):
                    cand.append(champ.measure(cand_true, len(cand)))
                runs += d.more_champion_runs + d.more_candidate_runs
            else:  # pragma: no cover - a policy that never ends is a bug
                raise RuntimeError(f"{getattr(policy, 'name', policy)} did not reach a verdict in {max_calls} calls")
            exp_runs += runs
            total_runs += runs
            if eff >= sim.power_threshold * s:
                strong += 1
            if d.verdict == "win":
                promotions += 1
                if eff <= 0:
                    false_promotions += 1
                else:
                    real_wins += 1
                if eff >= sim.power_threshold * s:
                    strong_promoted += 1
                champ = _Champion(cand_true, noise_rng, sim)
                for i in range(policy.baseline_runs):
                    champ.runs.append(champ.measure(champ.true, i))
                total_runs += policy.baseline_runs
        improvements.append((start - champ.true) / s)
    n_exp = sim.campaigns * sim.experiments
    return {
        "false_promotion_rate": false_promotions / promotions if promotions else 0.0,
        "power": strong_promoted / strong if strong else float("nan"),
        "runs_per_experiment": exp_runs / n_exp,
        "true_improvement": float(np.mean(improvements)),
        "cost_per_confirmed_improvement": total_runs / real_wins if real_wins else float("inf"),
        "promotions_per_campaign": promotions / sim.campaigns,
    }


def run_benchmark(sim: SimConfig | None = None, rules: dict[str, Policy] | None = None) -> dict[str, dict[str, float]]:
    """Metrics per rule, on the same proposals and seeds."""
    sim = sim or SimConfig()
    rules = rules if rules is not None else default_rules(sim.sigma)
    return {name: simulate_rule(p, sim) for name, p in rules.items()}


def sim_config_dict(sim: SimConfig) -> dict:
    return asdict(sim)

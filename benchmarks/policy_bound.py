"""The most true improvement per 100 runs any promotion rule can make in `arbot bench policy`'s world, beside greedy's.

    python benchmarks/policy_bound.py [--mixes default,small,autoresearch] [--fdr 0.05] [--no-holdout] [--json]

The bound is the Bayes-optimal sequential rule for one experiment, given what no real rule has: the mix the
proposals are drawn from and the champion's true value (so it makes no champion runs at all). After each
candidate run it promotes, rejects or asks for another run, whichever is worth most, where a promotion is worth
the candidate's expected true effect, less `lambda` for each promotion that is not a real improvement, and each run
costs the yield per run it is solved for (Dinkelbach's method: solve, measure the yield, solve again for it).
`lambda` is raised by bisection until the share of false promotions is at most `--fdr`. It may promote on a single
run, which arbot never does. A promotion is charged one holdout confirmation run, as arbot's lifecycle makes
(`--no-holdout`: not charged).

It is solved by backward induction over (runs made, their sum) on a grid, then measured by Monte Carlo; greedy's
row is `arbot bench policy`'s own simulation of autoresearch's loop. If the bound is below greedy on a mix, no rule
that keeps false promotions at or under `--fdr` can match greedy's improvement per run there.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import print_table  # noqa: E402
from bot.bench.policy_sim import SCENARIOS, ProposalMix, SimConfig, default_rules, simulate_rule  # noqa: E402

MAX_RUNS = 16  # candidate runs the optimal rule may make before it must decide
STEP = 0.1  # grid step of the runs' sum, in noise sds


@dataclass(frozen=True)
class Prior:
    """The mix as a discrete distribution of true improvements (in sds): a point at 0, the harmful half-normal, the
    uniform wins."""
    effects: np.ndarray
    weights: np.ndarray

    @classmethod
    def of(cls, mix: ProposalMix, points: int = 120) -> Prior:
        harm = -np.linspace(0.01, 5 * mix.harmful_scale, points)
        harm_w = norm.pdf(harm, 0, mix.harmful_scale)
        wins = np.linspace(mix.win_low, mix.win_high, points // 2)
        win_share = 1 - mix.null_share - mix.harmful_share
        return cls(np.concatenate([[0.0], harm, wins]),
                   np.concatenate([[mix.null_share], harm_w / harm_w.sum() * mix.harmful_share,
                                   np.full(len(wins), win_share / len(wins))]))


def solve(prior: Prior, cost: float, penalty: float, holdout: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Backward induction. Returns the grid of sums and, for n = 1..MAX_RUNS runs made, the action at each sum:
    0 reject, 1 promote, 2 one more run."""
    sums = np.arange(-60.0, 40.0 + STEP, STEP)
    steps = np.arange(-12.0, 12.0 + STEP, STEP)
    shifted = np.clip(np.arange(len(sums))[:, None] + np.round(steps / STEP).astype(int)[None, :], 0, len(sums) - 1)
    kernel = norm.pdf(steps[None, :] - prior.effects[:, None]) * STEP  # a run's value given the true effect
    log_prior, effects = np.log(prior.weights), prior.effects
    actions: list[np.ndarray] = [np.empty(0)] * (MAX_RUNS + 1)
    value_next = None
    for n in range(MAX_RUNS, 0, -1):
        log_post = log_prior[None, :] + sums[:, None] * effects[None, :] - n * effects[None, :] ** 2 / 2
        post = np.exp(log_post - log_post.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)
        promote = post @ effects - penalty * post[:, effects <= 0].sum(1) - cost * holdout
        more = (np.full(len(sums), -np.inf) if value_next is None
                else (post * (value_next[shifted] @ kernel.T)).sum(1) - cost)
        options = np.stack([np.zeros(len(sums)), promote, more])
        actions[n], value_next = options.argmax(0), options.max(0)
    return sums, actions


def measure(mix: ProposalMix, sums: np.ndarray, actions: list[np.ndarray], holdout: float, power_at: float,
            n: int = 200_000, seed: int = 0) -> dict[str, float]:
    """The rule's metrics over n proposals drawn from the mix."""
    rng = np.random.default_rng(seed)
    effect = mix.draw(rng, n)
    total, runs = np.zeros(n), np.zeros(n)
    active, promoted = np.ones(n, bool), np.zeros(n, bool)
    for k in range(1, MAX_RUNS + 1):
        total[active] += effect[active] + rng.normal(size=int(active.sum()))
        runs[active] += 1
        act = actions[k][np.clip(np.round((total - sums[0]) / STEP).astype(int), 0, len(sums) - 1)]
        promoted |= active & (act == 1)
        active &= act == 2
    all_runs = runs.sum() + holdout * promoted.sum()
    strong = effect >= power_at
    return {"per_100_runs": 100 * effect[promoted].sum() / all_runs,
            "false_promotion_rate": float((promoted & (effect <= 0)).sum() / max(1, promoted.sum())),
            "power": float((promoted & strong).sum() / strong.sum()) if strong.any() else float("nan"),
            "runs_per_experiment": float(runs.mean()), "keep_rate": float(promoted.mean())}


def bound(mix: ProposalMix, fdr: float, holdout: float, power_at: float = 2.0) -> dict[str, float]:
    """The best yield per run with false promotions at most `fdr`: bisection on the penalty, Dinkelbach inside."""
    prior = Prior.of(mix)

    def at(penalty: float) -> dict[str, float]:
        cost = 0.1
        for _ in range(6):
            result = measure(mix, *solve(prior, cost, penalty, holdout), holdout, power_at)
            cost = result["per_100_runs"] / 100
        return result | {"penalty": penalty}

    low, high = 0.0, 64.0
    best = at(high)
    for _ in range(10):
        mid = (low + high) / 2
        result = at(mid)
        if result["false_promotion_rate"] <= fdr:
            best, high = result, mid
        else:
            low = mid
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixes", default=",".join(SCENARIOS))
    ap.add_argument("--fdr", type=float, default=0.05, help="the largest share of false promotions allowed")
    ap.add_argument("--no-holdout", action="store_true", help="charge no holdout confirmation run per promotion")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for name in args.mixes.split(","):
        scenario = SCENARIOS[name]
        greedy = simulate_rule(default_rules()["greedy"], SimConfig.of(scenario))["true_improvement_per_100_runs"]
        best = bound(scenario.mix, args.fdr, 0.0 if args.no_holdout else 1.0)
        rows.append({"mix": name, "about": scenario.mix.describe(), **best, "greedy_per_100_runs": greedy,
                     "bound_over_greedy": best["per_100_runs"] / greedy})
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print_table({"mix": "mix", "bound": "bound per 100 runs", "fdr": "false promotions", "power": "power (>= 2 sd)",
                 "runs": "runs / exp.", "greedy": "greedy per 100 runs", "ratio": "bound / greedy"},
                [{"mix": r["mix"], "bound": f"{r['per_100_runs']:.3f}", "fdr": f"{r['false_promotion_rate']:.3f}",
                  "power": "-" if np.isnan(r["power"]) else f"{r['power']:.3f}",
                  "runs": f"{r['runs_per_experiment']:.3f}", "greedy": f"{r['greedy_per_100_runs']:.3f}",
                  "ratio": f"{r['bound_over_greedy']:.2f}"} for r in rows])


if __name__ == "__main__":
    main()

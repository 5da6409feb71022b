"""The most true improvement per 100 runs any promotion rule can make in `arbot bench policy`'s world.

The bound is the Bayes-optimal sequential rule for one experiment, given what no real rule has: the mix the
proposals are drawn from and the champion's true value (so it makes no champion runs at all), and, for a change that
pairs, the share of the noise its seed brings (so a run of it is noisy by sqrt(1 - rho) sds only). After each
candidate run it promotes, rejects or asks for another run, whichever is worth most, where a promotion is worth
the candidate's expected true effect, less `lambda` for each promotion that is not a real improvement, and each run
costs the yield per run it is solved for (Dinkelbach's method: solve, measure the yield, solve again for it).
`lambda` is raised by bisection until the share of false promotions is at most `fdr`. It may promote on a single
run, which arbot never does. A promotion may be charged one holdout confirmation run (`holdout`).

It is solved by backward induction over (runs made, their sum) on a grid, then measured by Monte Carlo. If the bound
is below greedy on a mix, no rule that keeps false promotions at or under `fdr` can match greedy's improvement per
run there. benchmarks/policy_bound.py prints it; `arbot bench policy` shows it beside each mix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from bot.bench.policy_sim import ProposalMix

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


def _totals(mix: ProposalMix, sums: np.ndarray, actions: list[np.ndarray], holdout: float, power_at: float,
            n: int, seed: int, scale: float = 1.0) -> dict[str, float]:
    """What the rule does with n proposals drawn from the mix, whose runs are noisy by `scale` sds (the rule was
    solved in those units): the improvement it makes (in sds), the runs, promotions, false ones and power's counts."""
    rng = np.random.default_rng(seed)
    true = mix.draw(rng, n)
    effect = true / scale
    total, runs = np.zeros(n), np.zeros(n)
    active, promoted = np.ones(n, bool), np.zeros(n, bool)
    for k in range(1, MAX_RUNS + 1):
        total[active] += effect[active] + rng.normal(size=int(active.sum()))
        runs[active] += 1
        act = actions[k][np.clip(np.round((total - sums[0]) / STEP).astype(int), 0, len(sums) - 1)]
        promoted |= active & (act == 1)
        active &= act == 2
    strong = true >= power_at
    return {"gain": float(true[promoted].sum()), "runs": float(runs.sum() + holdout * promoted.sum()),
            "candidate_runs": float(runs.sum()), "promoted": float(promoted.sum()),
            "false": float((promoted & (true <= 0)).sum()), "strong": float(strong.sum()),
            "strong_promoted": float((promoted & strong).sum()), "n": float(n)}


def _rates(t: dict[str, float]) -> dict[str, float]:
    return {"per_100_runs": 100 * t["gain"] / t["runs"], "false_promotion_rate": t["false"] / max(1.0, t["promoted"]),
            "power": t["strong_promoted"] / t["strong"] if t["strong"] else float("nan"),
            "runs_per_experiment": t["candidate_runs"] / t["n"], "keep_rate": t["promoted"] / t["n"]}


def measure(mix: ProposalMix, sums: np.ndarray, actions: list[np.ndarray], holdout: float, power_at: float,
            n: int = 200_000, seed: int = 0) -> dict[str, float]:
    """The rule's metrics over n proposals drawn from the mix."""
    return _rates(_totals(mix, sums, actions, holdout, power_at, n, seed))


def bound(mix: ProposalMix, fdr: float, holdout: float, power_at: float = 2.0, pair_correlation: float = 0.0,
          n: int = 200_000) -> dict[str, float]:
    """The best yield per run with false promotions at most `fdr`: bisection on the penalty, Dinkelbach inside. With
    `pair_correlation`, the changes that pair (all but mix.unpairable_share) are solved and measured in their own
    noise units, sqrt(1 - rho) sds, with the same penalty and price of a run (the objective divided by that scale)."""
    classes = [(1.0 - mix.unpairable_share, float(np.sqrt(1 - pair_correlation))), (mix.unpairable_share, 1.0)]
    classes = [(share, scale) for share, scale in classes if share > 0]
    priors = {scale: Prior(Prior.of(mix).effects / scale, Prior.of(mix).weights) for _, scale in classes}

    def at(penalty: float) -> dict[str, float]:
        cost = 0.1
        for _ in range(6):
            parts = [_totals(mix, *solve(priors[scale], cost / scale, penalty / scale, holdout), holdout, power_at,
                             int(n * share), seed, scale) for seed, (share, scale) in enumerate(classes)]
            result = _rates({k: sum(p[k] for p in parts) for k in parts[0]})
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



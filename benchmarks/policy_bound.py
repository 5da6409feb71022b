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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import print_table  # noqa: E402
from bot.bench.bound import MAX_RUNS, Prior, bound, measure, solve  # noqa: E402,F401 - the bound lives in bot.bench
from bot.bench.policy_sim import SCENARIOS, SimConfig, default_rules, simulate_rule  # noqa: E402


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
        best = bound(scenario.mix, args.fdr, 0.0 if args.no_holdout else 1.0, pair_correlation=scenario.pair_correlation)
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

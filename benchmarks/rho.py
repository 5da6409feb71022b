"""Same-seed correlation (rho) of a champion and a change on the built-in target, as the `bayes` rule's pairing needs.

    python benchmarks/rho.py [--config arbot.yml] [--seeds 8] [--repeats 2] [--budget S] [--jobs J]
                             [--hyper LEARNING_RATE=7.5e-4] [--shape DEPTH=5] [--json] [--runs FILE]

Trains the champion (the config's knobs) and two changes of it, a hyperparameter change (`--hyper`) and a change of
shape (`--shape`), at seeds 0..N-1, each `--repeats` times (no sandbox, as benchmarks/noise.py), scores each model on
val and records its training steps. Prints, for each change:
- rho: the correlation across seeds of the champion's and the change's metric (each seed's mean over its repeats),
  the share of a run's variance its seed brings to both, and the sd of the same-seed differences beside the sd of
  the differences unpaired (what pairing buys: sqrt(2 (1 - rho)) against sqrt(2) noise sds);
- repeat: the correlation of two runs of one commit at one seed (how deterministic a seed is: under load the step
  count, so the model, moves);
- steps: the correlation of the metric with the training step count within each commit (the covariate: a run that
  made more steps scores better whatever its seed), and rho again on the metric less each commit's least-squares
  line on its steps (the seed's share once the step count is taken out: runs are time-budgeted, so load moves it).

Each run is printed to stderr as a JSON line when it ends; `--runs FILE` tabulates such lines (a measurement cut
short: only the seeds both commits reached count) and trains nothing. Each run trains with the runner's threads
(`target.threads`, 0: the cores less one split between the `--jobs`), as `arbot run` would: a run given every core
of a loaded machine makes a handful of steps.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import knob_values, print_table  # noqa: E402
from benchmarks.noise import train  # noqa: E402


def correlation(xs: list[float], ys: list[float]) -> float:
    enough = len(xs) > 2 and statistics.pstdev(xs) and statistics.pstdev(ys)
    return statistics.correlation(xs, ys) if enough else float("nan")


def interval(r: float, n: int, dropped: int = 0) -> tuple[float, float]:
    """The 95% interval of a correlation `r` of `n` pairs (Fisher's z; `dropped`: parameters fitted out of each
    side first, e.g. a line on the steps): 8 seeds place a rho of 0.5 anywhere from about -0.3 to 0.9."""
    if math.isnan(r) or n - 3 - dropped < 1 or abs(r) == 1:
        return float("nan"), float("nan")
    half = 1.96 / math.sqrt(n - 3 - dropped)
    return math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)


def residuals(rows: list[dict], key: str) -> list[float]:
    """`key` less its mean over the rows (one commit)."""
    mean = statistics.fmean(r[key] for r in rows)
    return [r[key] - mean for r in rows]


def step_residuals(rows: list[dict], metric: str) -> list[float]:
    """`metric` less its least-squares line on the step count, within one commit (its mean where steps never vary)."""
    steps, values = [r["steps"] for r in rows], [r[metric] for r in rows]
    if len(set(steps)) < 2:
        return residuals(rows, metric)
    slope, intercept = statistics.linear_regression(steps, values)
    return [v - (intercept + slope * s) for s, v in zip(steps, values)]


def compare(champion: list[dict], change: list[dict], metric: str) -> dict:
    """rho and its companions for one change (rows: seed, repeat, metric, steps)."""
    seeds = sorted({r["seed"] for r in champion} & {r["seed"] for r in change})
    champion, change = [r for r in champion if r["seed"] in seeds], [r for r in change if r["seed"] in seeds]

    def by_seed(rows: list[dict], values: list[float]) -> list[float]:
        return [statistics.fmean(v for r, v in zip(rows, values) if r["seed"] == s) for s in seeds]

    h, c = by_seed(champion, [r[metric] for r in champion]), by_seed(change, [r[metric] for r in change])
    h_adjusted = by_seed(champion, step_residuals(champion, metric))
    c_adjusted = by_seed(change, step_residuals(change, metric))
    paired = [a - b for a, b in zip(h, c)]
    unpaired = [a - b for a in h for b in c]
    repeat = [(a[metric], b[metric]) for rows in (champion, change) for a in rows for b in rows
              if a["seed"] == b["seed"] and a["repeat"] < b["repeat"]]
    steps = [(m, s) for rows in (champion, change)
             for m, s in zip(residuals(rows, metric), residuals(rows, "steps"))]
    rho, adjusted = correlation(h, c), correlation(h_adjusted, c_adjusted)
    return {"rho": rho, "rho_interval": interval(rho, len(seeds)), "rho_steps_adjusted": adjusted,
            "rho_steps_adjusted_interval": interval(adjusted, len(seeds), dropped=1),
            "sd_paired": statistics.stdev(paired), "sd_unpaired": statistics.stdev(unpaired),
            "repeat_correlation": correlation([a for a, _ in repeat], [b for _, b in repeat]),
            "steps_correlation": correlation([m for m, _ in steps], [s for _, s in steps]),
            "mean_difference": statistics.fmean(paired), "seeds": len(seeds),
            "steps_mean": {name: statistics.fmean(r["steps"] for r in rows) for name, rows in
                           (("champion", champion), ("change", change))},
            "steps_range": [min(r["steps"] for r in champion + change), max(r["steps"] for r in champion + change)]}


def read_runs(path: Path) -> list[dict]:
    """The runs an earlier measurement printed (its stderr: JSON lines with a commit; other lines are skipped)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "commit" in row:
            rows.append(row)
    if not rows:
        raise SystemExit(f"{path}: no runs in it (JSON lines with a commit, as this benchmark prints to stderr)")
    return rows


def measure(args: argparse.Namespace, commits: dict[str, dict]) -> tuple[list[dict], str, dict]:
    """Train and score every (commit, seed, repeat), a seed's commits one after another (the same load)."""
    from bot.config import load_config
    from bot.executors.pool import threads_per_worker
    from evaluator.data import DEFAULT_CORPUS, prepare
    from evaluator.score import score
    from runner.job import default_cache_dir, train_argv

    config = load_config(args.config)
    target, evaluator = config.target, config.evaluator
    budget = args.budget or target.budget_seconds
    cache = Path(evaluator.cache_dir) if evaluator.cache_dir else default_cache_dir()
    splits = prepare(cache, corpus=evaluator.corpus or DEFAULT_CORPUS)
    threads = threads_per_worker(target, args.jobs)
    script, metric = ROOT / target.script, f"val_{evaluator.metric}"
    jobs = [(name, seed, rep) for rep in range(args.repeats) for seed in range(args.seeds) for name in commits]
    with tempfile.TemporaryDirectory() as tmp:

        def one(job: tuple[str, int, int]) -> dict:
            name, seed, rep = job
            out = Path(tmp) / f"{name}-{seed}-{rep}"
            argv = train_argv(script.name, splits.train, out, budget, seed, target.device,
                              target.overrides | commits[name])
            run = train(argv, script.parent, threads)
            scored = score(out / "model.pt2", splits, ("val",), device=evaluator.device)
            if scored["status"] != "ok":
                raise RuntimeError(f"{name} seed {seed}: {scored['status']}: {scored['reason']}")
            row = {"commit": name, "seed": seed, "repeat": rep, metric: scored["metrics"][metric], "steps": run["steps"]}
            print(json.dumps(row), file=sys.stderr, flush=True)  # each run as it ends: a cut-short measurement keeps them
            return row

        with ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(one, jobs))
    return rows, metric, {"budget_seconds": budget, "threads": threads, "jobs": args.jobs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "arbot.yml")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--budget", type=float, help="training seconds (default: the config's target.budget_seconds)")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once (CPU: give each a share of the cores)")
    ap.add_argument("--hyper", action="append", default=None, metavar="NAME=VALUE", help="the hyperparameter change")
    ap.add_argument("--shape", action="append", default=None, metavar="NAME=VALUE", help="the change of shape")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=Path, metavar="FILE", help="tabulate the runs an earlier measurement printed")
    args = ap.parse_args()
    if args.seeds < 3 or args.repeats < 1:
        ap.error("--seeds must be at least 3 (a correlation) and --repeats at least 1")
    commits = {"champion": {}, "hyper": knob_values(args.hyper or ["LEARNING_RATE=7.5e-4"]),
               "shape": knob_values(args.shape or ["DEPTH=5"])}
    if args.runs:
        rows = read_runs(args.runs)
        metric, setup = next(k for k in rows[0] if k.startswith("val_")), {"runs_file": str(args.runs)}
    else:
        rows, metric, setup = measure(args, commits)
    of = {name: [r for r in rows if r["commit"] == name] for name in commits}
    report = {"config": str(args.config), **setup, "changes": {k: v for k, v in commits.items() if v},
              "seeds": len({r["seed"] for r in rows}), "repeats": len({r["repeat"] for r in rows}),
              "runs": rows, "compare": {name: compare(of["champion"], of[name], metric) for name in ("hyper", "shape")}}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    how = (f"runs from {args.runs}" if args.runs else f"{args.config.name}: budget {setup['budget_seconds']:g} s, "
           f"{setup['threads']} thread(s) x {args.jobs} job(s)")
    print(f"{how}; {len(rows)} runs, seeds {report['seeds']}, repeats {report['repeats']}; changes {report['changes']}")
    print_table({"change": "change", "rho": "rho (95%)", "adjusted": "rho less steps (95%)", "paired": "sd same-seed diff.",
                 "unpaired": "sd unpaired diff.",
                 "repeat": "repeat corr.", "steps": "corr. with steps", "diff": "mean diff.",
                 "mean_steps": "steps (champion / change)", "range": "steps range"},
                [{"change": name, "rho": f"{c['rho']:.2f} ({c['rho_interval'][0]:.2f} .. {c['rho_interval'][1]:.2f})",
                  "adjusted": "{:.2f} ({:.2f} .. {:.2f})".format(c["rho_steps_adjusted"],
                                                                 *c["rho_steps_adjusted_interval"]),
                  "paired": f"{c['sd_paired']:.4f}",
                  "unpaired": f"{c['sd_unpaired']:.4f}", "repeat": f"{c['repeat_correlation']:.2f}",
                  "steps": f"{c['steps_correlation']:.2f}", "diff": f"{c['mean_difference']:+.4f}",
                  "mean_steps": f"{c['steps_mean']['champion']:.0f} / {c['steps_mean']['change']:.0f}",
                  "range": "{} .. {}".format(*c["steps_range"])}
                 for name, c in report["compare"].items()])


if __name__ == "__main__":
    main()

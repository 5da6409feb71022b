"""Yield on the real target: arbot's policy, greedy keep/revert and random search, each given the same runner time,
then every promotion and each final champion measured again with fresh seeds.

    python benchmarks/yield.py [--seconds 900] [--budget 5] [--workers 1] [--audit-runs 3] [--final-runs 4]
                               [--strategies arbot,bayes,greedy,random] [--audit bayes] [--repeats 3] [--json]

Each strategy gets a fresh clone of this checkout's committed HEAD (the built-in target, `--workers` workers, one
by default: runner seconds are wall seconds times workers) and runs
`arbot run` as a user would, until `--seconds` of wall time have passed; then it is interrupted as Ctrl-C does
(its run in flight is lost, as it would be). Strategies:

- arbot:  the defaults (the search proposer, the noise-aware policy, holdout confirmation);
- bayes:  the defaults with `policy.rule: bayes` (the prior learned from the campaign, docs/policy.md);
- greedy: autoresearch's keep/revert, the same proposer: one run, kept when it beats the champion's value
          (`policy.rule: margin`, margin 0, one baseline run, no holdout check);
- random: random search (`search.sampler: random`) with greedy's keep/revert.

Afterwards, as `arbot audit` does, every promotion is run again against its parent with `--audit-runs` fresh seeds
each (a promotion replicates when its improvement is positive and significant at 0.05, one-sided; with two workers
or more, each seed's pair trains at once, the load the campaign's runs had), and the
starting champion and each final champion get `--final-runs` fresh seeds, the two measured one after the other at
each seed (the same load: a time-budgeted run's steps move with it): the replicated improvement is the difference
of those means (positive: better), per runner-hour of the campaign; 0 where nothing was promoted. The machine
should be idle: every strategy gets the same seconds, and a loaded machine gives each run fewer steps.
With `--repeats N` each strategy runs N campaigns (each from a fresh clone, the strategies interleaved; campaign k
of every strategy with search seed k, so the repeats propose different sequences and the strategies the same), and the
summary gives the mean improvement per runner-hour with its 95% t interval and the share of promotions that did not
replicate, and each strategy's share of greedy's improvement per runner-hour: the ratio of the means, and campaign by
campaign (the k-th campaigns of two strategies start from the same proposals). `--audit` names the strategies whose
promotions are audited (all by default): an audit costs two runs per seed per promotion, and greedy promotes a
sixth of its experiments. `--keep DIR` keeps every campaign's repository (DIR/K/STRATEGY), so its decisions'
reasons and audits can be read afterwards (`arbot log`) and its promotions audited again (`arbot audit`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import clone, print_table  # noqa: E402

GREEDY = {"policy": {"rule": "margin", "margin": 0.0, "baseline_runs": 1}, "target": {"holdout_max_gap": None}}
STRATEGIES = {
    "arbot": {},
    "bayes": {"policy": {"rule": "bayes"}},
    "greedy": GREEDY,
    "random": {**GREEDY, "search": {"sampler": "random"}},
}
GREEDY_NAME = "greedy"  # the strategy every other is given as a share of (issue 27's goal)
FRESH_SEED = 2000  # the final measurements' seeds: disjoint from the campaign's and the audits' (1000+)
STOP_SECONDS = 120  # how long an interrupted `arbot run` may take to save and exit


def heed_interrupts() -> None:
    """In the child before it starts `arbot run`: SIGINT back to its default. Started in the background (`nohup ...
    &`), this benchmark inherits SIGINT ignored, and a Python that starts with SIGINT ignored never raises
    KeyboardInterrupt: the campaign would not stop when told."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def campaign(repo: Path, seconds: float) -> float:
    """`arbot run` in `repo` until `seconds` have passed, then SIGINT, as Ctrl-C (to arbot alone: its git
    helper processes must outlive it to save the records). Returns the seconds it ran."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bot", "run", "--repo", str(repo)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, preexec_fn=heed_interrupts)
    try:
        out, _ = proc.communicate(timeout=seconds)
        raise SystemExit(f"`arbot run` in {repo} ended before its time ({proc.returncode}):\n{out[-3000:]}")
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=STOP_SECONDS)
    if proc.returncode != 130:
        raise SystemExit(f"`arbot run` in {repo} did not stop as interrupted ({proc.returncode}):\n{out[-6000:]}")
    return time.monotonic() - start


def fresh(project, commit: str, champion: str, seed: int) -> float:
    """A fresh-seed measurement of `commit`, scored by `champion`'s evaluator, oriented lower-is-better."""
    from bot.core.records import ok_metric, oriented

    result = project.runner.run(commit, champion, seed=seed)
    metric = project.config.metric
    if not (values := ok_metric([result], metric.key())):
        raise SystemExit(f"a fresh run of {commit[:12]} failed ({result.status}): {result.reason}")
    return oriented(values, metric.direction)[0]


def start_and_final(project, start: str, final: str, runs: int) -> tuple[list[float], list[float]]:
    """The starting and the final champion at the same `runs` fresh seeds, one right after the other at each seed:
    runs are time-budgeted, so a run's step count (and its value) moves with the machine's load, and measuring the
    start once for every campaign would count the load's change between campaigns as improvement. No runs when the
    campaign promoted nothing (its improvement is 0): empty lists."""
    if final == start:
        return [], []
    seeds = [FRESH_SEED + i for i in range(runs)]
    pairs = [(fresh(project, start, start, seed), fresh(project, final, start, seed)) for seed in seeds]
    return [a for a, _ in pairs], [b for _, b in pairs]


def campaign_settings(settings: dict, campaign: int, budget: float, workers: int) -> dict:
    """The arbot.yml settings of a strategy's `campaign`-th campaign: its own, the budget and workers, and the search
    seed `campaign`: each repeat proposes its own sequence (with one seed, every repeat began with the same
    proposals, and its interval measured the runs' noise alone), and every strategy's k-th campaign the same."""
    return {**settings, "run": {"experiments": None, "workers": workers},
            "target": {**settings.get("target", {}), "budget_seconds": budget},
            "search": {**settings.get("search", {}), "seed": campaign}}


def measure(name: str, settings: dict, seconds: float, budget: float, workers: int, audit_runs: int,
            final_runs: int, tmp: Path, campaign_number: int = 0) -> dict:
    """One campaign of strategy `name`; `audit_runs` 0: its promotions are not audited (not_replicated None)."""
    from bot.audit import audit_win
    from bot.cli import Project, audit_runners

    repo = tmp / name
    clone(repo, campaign_settings(settings, campaign_number, budget, workers))
    project = Project(repo, None)  # its forge reads the records from git at each call
    start = project.repo.head.commit.hexsha
    ran = campaign(repo, seconds)
    recs = project.forge.experiments()
    wins = [r for r in recs if r.merged_as]
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    runner, beside = audit_runners(project)
    audits = [audit_win(project.forge, runner, r, audit_runs, 0.05, project.config.metric, at, beside=beside)
              for r in wins] if audit_runs else None
    start_values, final_values = start_and_final(project, start, project.forge.champion(), final_runs)
    improvement = statistics.fmean(start_values) - statistics.fmean(final_values) if start_values else 0.0
    return {
        "strategy": name, "seconds": round(ran, 1), "workers": workers,
        "experiments": sum(r.decision is not None for r in recs),
        "runs": sum(len(r.runs) for r in recs), "promotions": len(wins),
        **replication(audits),
        "start": round(statistics.fmean(start_values), 4) if start_values else None,
        "final": round(statistics.fmean(final_values), 4) if final_values else None,
        "replicated_improvement": round(improvement, 4),
        "per_runner_hour": round(improvement / (ran * workers / 3600), 4),
    }


def replication(audits: list | None) -> dict:
    """A campaign's audits counted: promotions that did not replicate, and those not tested because an audit run
    failed (not a failed replication); both None where its promotions were not audited (`--audit`). Each audit's
    effect and whether it replicated, in the order of the promotions (None: not tested)."""
    if audits is None:
        return {"not_replicated": None, "unaudited": None, "audit_effects": [], "audit_replicated": []}
    return {"not_replicated": sum(a.effect is not None and not a.replicates for a in audits),
            "unaudited": sum(a.effect is None for a in audits),
            "audit_effects": [round(a.effect, 4) if a.effect is not None else None for a in audits],
            "audit_replicated": [a.replicates if a.effect is not None else None for a in audits]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=900, help="wall seconds of each campaign")
    parser.add_argument("--budget", type=float, default=5.0, help="training seconds per run")
    parser.add_argument("--workers", type=int, default=1, help="run.workers of each campaign (runner seconds: wall "
                        "seconds x workers)")
    parser.add_argument("--audit-runs", type=int, default=3, help="fresh seeds per side for each promotion")
    parser.add_argument("--final-runs", type=int, default=4, help="fresh seeds for the starting and final champions")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--audit", help="strategies whose promotions are audited (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="campaigns per strategy (3+ for an interval)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="a new folder to keep each campaign's repository in "
                        "(DIR/K/STRATEGY: its records, reasons and audits in git notes); default: a temporary folder, "
                        "removed at the end")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = args.strategies.split(",")
    audited = names if args.audit is None else args.audit.split(",")
    if unknown := [n for n in names + audited if n not in STRATEGIES]:
        parser.error(f"no strategy {', '.join(unknown)}: choose from {', '.join(STRATEGIES)}")
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep} exists: name a folder that does not, so no campaign's records mix")
    rows = []
    folder = contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="arbot-yield-")
    with folder as tmp:
        for k in range(args.repeats):
            for name in names:
                row = measure(name, STRATEGIES[name], args.seconds, args.budget, args.workers,
                              args.audit_runs if name in audited else 0, args.final_runs, Path(tmp) / str(k),
                              campaign_number=k)
                rows.append(row | {"campaign": k})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    summary = [summarize(name, [r for r in rows if r["strategy"] == name]) | shares_of(GREEDY_NAME, name, rows)
               for name in names]
    if args.json:
        print(json.dumps({"campaigns": rows, "summary": summary}, indent=2))
        return
    print_table({"strategy": "strategy", "campaign": "#", "seconds": "seconds", "experiments": "exps", "runs": "runs",
                 "promotions": "promoted", "not_replicated": "not repl.", "unaudited": "unaudited", "start": "start",
                 "final": "final",
                 "replicated_improvement": "improvement", "per_runner_hour": "per hour"}, rows)
    print_table({"strategy": "strategy", "campaigns": "campaigns", "per_runner_hour": "per hour (mean)",
                 "interval": "95% interval", "not_replicated_share": "promotions not replicated",
                 "unaudited": "unaudited", "share_of_greedy": "of greedy", "campaign_shares": "by campaign"}, summary)


def summarize(name: str, rows: list[dict]) -> dict:
    """A strategy's campaigns: mean improvement per runner-hour with its 95% t interval, and the share of its
    audited promotions that did not replicate (a promotion whose audit runs failed is not counted either way)."""
    from scipy import special

    hours = [r["per_runner_hour"] for r in rows]
    mean = statistics.fmean(hours)
    half = (float(special.stdtrit(len(hours) - 1, 0.975)) * statistics.stdev(hours) / len(hours) ** 0.5
            if len(hours) > 1 else float("nan"))
    audited = [r for r in rows if r["not_replicated"] is not None]
    promoted = sum(r["promotions"] - r["unaudited"] for r in audited)
    return {"strategy": name, "campaigns": len(rows), "per_runner_hour": round(mean, 4),
            "interval": f"{mean - half:.4f} .. {mean + half:.4f}",
            "not_replicated_share": (round(sum(r["not_replicated"] for r in audited) / promoted, 3)
                                     if promoted else None),
            "unaudited": sum(r["unaudited"] for r in audited) if audited else None}


def shares_of(reference: str, name: str, rows: list[dict]) -> dict:
    """`name`'s improvement per runner-hour as a share of `reference`'s: the ratio of the two means, and the k-th
    campaign's against the reference's k-th (the same search seed: the same first proposals). None where the
    reference did not run or gained nothing."""
    hours = {r["campaign"]: r["per_runner_hour"] for r in rows if r["strategy"] == name}
    base = {r["campaign"]: r["per_runner_hour"] for r in rows if r["strategy"] == reference}
    paired = sorted(k for k in hours if k in base)
    mean_base = statistics.fmean(base[k] for k in paired) if paired else 0.0
    share = statistics.fmean(hours[k] for k in paired) / mean_base if mean_base > 0 else None
    return {"share_of_greedy": round(share, 3) if share is not None else None,
            "campaign_shares": [round(hours[k] / base[k], 3) if base[k] > 0 else None for k in paired]}

if __name__ == "__main__":
    main()

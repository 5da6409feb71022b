"""Throughput: experiments decided per hour by `arbot run` with 1 and 2 local workers, and with the Slurm executor.

    python benchmarks/throughput.py [--experiments 6] [--budget 5] [--executors local:1,local:2,slurm:2] [--seed 0]
                                    [--keep DIR] [--json]

Each configuration gets a fresh clone of this checkout's committed HEAD (the built-in target, the search proposer
with the same `--seed`), one training thread per worker (target.threads: 1), and runs `arbot run -n N` as a user
would (a subprocess); its wall time from start to end (the champion's noise floor included) and its records give
the rate. An experiment closed as stale (measured again because a win moved the champion while it was in flight)
is not counted as decided: its fresh copy is. The stale rate is reported beside, and so are every run the
campaign made (champions' included), their mean wall seconds and the workers' utilization (run seconds over
workers x wall seconds), which tell a slower run from an idle worker. The machine should be idle:
the rate is what the cores give. `slurm:N` needs a running cluster (scripts/slurm-up.sh) and submits N jobs at
once, one core each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, clone, print_table

sys.path.insert(0, str(ROOT))


def settings(executor: str, workers: int, experiments: int, budget: float, seed: int) -> dict:
    out = {"target": {"threads": 1, "budget_seconds": budget}, "search": {"seed": seed},
           "run": {"experiments": experiments, "executor": executor, "workers": workers}}
    if executor == "slurm":
        out["slurm"] = {"max_jobs": workers, "cpus_per_task": 1}
    return out


def measure(executor: str, workers: int, experiments: int, budget: float, seed: int, keep: Path | None = None) -> dict:
    import git

    from bot.forges.local import LocalForge
    from bot.progress import stale_rate

    with tempfile.TemporaryDirectory(prefix="arbot-throughput-") as tmp:
        repo = (keep / f"{executor}-{workers}") if keep else Path(tmp) / "repo"
        clone(repo, settings(executor, workers, experiments, budget, seed))
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "bot", "run", "--repo", str(repo)], capture_output=True, text=True)
        seconds = time.monotonic() - start
        if done.returncode != 0:
            raise SystemExit(f"{executor}:{workers} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        forge = LocalForge(git.Repo(repo))
        recs = forge.experiments()
        rate, stale, decided = stale_rate(recs)
        runs = made(forge, recs)
        busy = sum(r.total_seconds for r in runs)
        return {"executor": executor, "workers": workers, "seconds": round(seconds, 1),
                "decided": decided - stale, "stale": stale, "stale_rate": round(rate or 0.0, 3), "runs": len(runs),
                "wins": sum(bool(r.merged_as) for r in recs),
                "rejected": sum(r.decision is not None and r.decision.verdict == "rejected" and r.decision.rule != "stale"
                                for r in recs),
                "seconds_per_run": round(busy / len(runs), 1), "utilization": round(busy / (workers * seconds), 2),
                "runs_per_hour": round(len(runs) / seconds * 3600, 1),
                "experiments_per_hour": round((decided - stale) / seconds * 3600, 1)}


def made(forge, recs) -> list:
    """Every run the campaign made: the experiments' and each champion's own (a promoted champion's record starts
    with its winner's runs, which are the experiment's)."""
    wins = sum(bool(r.merged_as) for r in recs)
    champions = [forge.repo.commit(f"{forge.champion_branch}~{i}").hexsha for i in range(wins + 1)]
    own = [run for sha in champions for run in forge.champion_record(sha).runs if run.commit == sha]
    return [run for r in recs for run in r.runs] + own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=6)
    parser.add_argument("--budget", type=float, default=5.0, help="training seconds per run")
    parser.add_argument("--executors", default="local:1,local:2,slurm:2", help="executor:workers, comma-separated")
    parser.add_argument("--seed", type=int, default=0, help="the search proposer's seed (search.seed)")
    parser.add_argument("--keep", type=Path, help="leave each campaign's repository here (<executor>-<workers>)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for item in args.executors.split(","):
        executor, workers = item.split(":")
        rows.append(measure(executor, int(workers), args.experiments, args.budget, args.seed, args.keep))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = next((r["experiments_per_hour"] for r in rows if (r["executor"], r["workers"]) == ("local", 1)), None)
    for r in rows:
        r["speedup_vs_1_worker"] = round(r["experiments_per_hour"] / base, 2) if base else None
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print_table({"executor": "executor", "workers": "workers", "seconds": "seconds", "decided": "decided",
                 "stale": "stale", "runs": "runs", "seconds_per_run": "s/run", "busy": "busy",
                 "runs_per_hour": "runs/hour", "experiments_per_hour": "exp/hour", "speedup": "speedup"},
                [{**r, "stale": f"{r['stale_rate']:.0%}", "busy": f"{r['utilization']:.0%}",
                  "speedup": r["speedup_vs_1_worker"] or ""} for r in rows])


if __name__ == "__main__":
    main()

"""The demo's win rate: `make run` from a fresh clone, once per search seed, on this machine.

    python benchmarks/demo.py [--seeds 0,1,2,3,4] [--workers N] [--json]

Each seed gets a fresh clone of this checkout's committed HEAD with `search.seed` set and runs `make run` as a
newcomer would, the venv included (torch from this machine's disk, as the Makefile pins it); `--workers N` runs
`make run ARGS="--workers N"` instead. Reports, per seed, the minutes it took, the experiments decided, the
confirmed wins (merged into `champion`) and the champion before and after as `arbot run` printed them. The
issue's goal: at least one win in 4 of 5 seeds, each in under 10 minutes. The machine should be idle.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, clone

sys.path.insert(0, str(ROOT))

CHAMPION_LINE = re.compile(r"^champion \w+ -> \w+: .*$", re.MULTILINE)


def demo(seed: int, tmp: Path, workers: int | None) -> dict:
    import git

    from bot.forges.local import LocalForge

    repo = tmp / f"seed-{seed}"
    clone(repo, {"search": {"seed": seed}})
    start = time.monotonic()
    make = ["make", "run"] + ([f"ARGS=--workers {workers}"] if workers else [])
    done = subprocess.run(make, cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "300"})  # rich wraps at the terminal's width
    minutes = (time.monotonic() - start) / 60
    if done.returncode != 0:
        raise SystemExit(f"seed {seed}: make run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    recs = LocalForge(git.Repo(repo)).experiments()
    line = CHAMPION_LINE.findall(done.stdout)
    return {"seed": seed, "minutes": round(minutes, 1), "experiments": sum(r.decision is not None for r in recs),
            "wins": sum(bool(r.merged_as) for r in recs), "champion": line[-1] if line else None,
            "won": [r.proposal.hypothesis for r in recs if r.merged_as]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--workers", type=int, help="arbot run --workers N (default: arbot.yml's run.workers)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="arbot-demo-") as tmp:
        for seed in map(int, args.seeds.split(",")):
            rows.append(demo(seed, Path(tmp), args.workers))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"seed {r['seed']}: {r['minutes']} min, {r['experiments']} experiments, {r['wins']} wins "
              f"({'; '.join(r['won']) or 'none'})\n  {r['champion']}")
    won = sum(r["wins"] > 0 for r in rows)
    print(f"{won} of {len(rows)} seeds found a confirmed win; longest {max(r['minutes'] for r in rows)} min")


if __name__ == "__main__":
    main()

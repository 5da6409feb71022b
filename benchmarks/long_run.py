"""A long unattended campaign: the real `arbot run` on a fast toy target until N experiments are decided.

    python benchmarks/long_run.py [--experiments 150] [--budget 0.5] [--keep 3] [--workers 1] [--json]

A fresh repository holds a copy of examples/digits (a numpy MLP scored by accuracy, its own evaluator) with the
default search proposer and policy, `target.budget_seconds` set to --budget and `run.keep_models` to --keep. Its
search section is dropped (`--example-ranges` keeps it): every knob is searched in a range from its value, as a
user's script without configured ranges is (the example's few choices run out on one champion after about 130
experiments). One
`arbot run -n N` makes the campaign, as a user would start it (real runner, sandbox, evaluator). Reported: its
exit code, the experiments decided and merged, the stages the search used (sample, refine-*, combine), how the run
ended, the wall time, and the model files left in .arbot/runs against the retention bound: the champion's runs,
the open experiments' and the last --keep decided experiments' (issue 25: the search keeps going, the disk stays
bounded). A run that ends early says why (the search space exhausted: exit 0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from common import BENCH_GIT, ROOT, print_table

sys.path.insert(0, str(ROOT))


def make_repo(dest: Path, budget: float, keep: int, workers: int, example_ranges: bool) -> None:
    shutil.copytree(ROOT / "examples" / "digits", dest, ignore=shutil.ignore_patterns("__pycache__", ".arbot"))
    config = yaml.safe_load((dest / "arbot.yml").read_text())
    if not example_ranges:
        del config["search"]
    config["target"]["budget_seconds"] = budget
    config["run"] = {"keep_models": keep, "workers": workers}
    (dest / "arbot.yml").write_text(yaml.safe_dump(config))
    (dest / ".gitignore").write_text(".arbot/\nresults.tsv\n")
    env = {**BENCH_GIT}
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "digits"]):
        subprocess.run(argv, cwd=dest, check=True, env=env)


def campaign(experiments: int, budget: float, keep: int, workers: int, example_ranges: bool, tmp: Path) -> dict:
    from bot import retention
    from bot.forges.local import LocalForge

    import git

    repo = tmp / "digits"
    make_repo(repo, budget, keep, workers, example_ranges)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bot", "run", "-n", str(experiments), "--repo", str(repo)],
                          capture_output=True, text=True)
    minutes = (time.monotonic() - start) / 60
    forge = LocalForge(git.Repo(repo))
    recs = forge.experiments()
    models = retention.usage(repo / retention.RUNS_DIR)
    champion_runs = len(forge.champion_record(forge.champion()).runs)
    per_experiment = max((len(r.runs) for r in recs), default=0)
    said = " ".join(done.stdout.split())
    ended = said[said.index("the campaign ended early"):] if "the campaign ended early" in said else ""
    return {"exit": done.returncode, "minutes": round(minutes, 1), "experiments": len(recs),
            "decided": sum(r.decision is not None for r in recs), "merged": sum(bool(r.merged_as) for r in recs),
            "stages": dict(Counter(str(r.proposal.params.get("stage", "-")) for r in recs)),
            "model_files": models.files, "model_mib": round(models.bytes / 2**20, 2),
            "bound": champion_runs + per_experiment * (keep + workers), "ended_early": ended,
            "tail": "" if done.returncode == 0 else (done.stdout + done.stderr)[-2000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=150)
    ap.add_argument("--budget", type=float, default=0.5, help="training seconds per run")
    ap.add_argument("--keep", type=int, default=3, help="run.keep_models")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--example-ranges", action="store_true", help="keep the example's search ranges")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="arbot-long-run-") as tmp:
        out = campaign(args.experiments, args.budget, args.keep, args.workers, args.example_ranges, Path(tmp))
    if args.json:
        print(json.dumps(out))
        return
    print_table({k: k for k in ("exit", "minutes", "experiments", "decided", "merged", "model_files", "model_mib",
                                "bound")}, [out])
    print(f"search stages: {out['stages']}")
    if out["ended_early"]:
        print(out["ended_early"])
    if out["tail"]:
        print(out["tail"])


if __name__ == "__main__":
    main()

"""Scoring cost of this checkout's evaluator against another revision's: one model, both evaluators warm.

    python benchmarks/scoring.py [--before main] [--repeats 5] [--budget 2] [--set DEPTH=1 ...] [--threads 1]
                                 [--splits val]

Trains one model with this checkout's target/train.py (the default size unless --set), starts `python -m evaluator
serve` for the evaluator/ of revision --before (`git archive`) and for this checkout's evaluator/ (working tree),
sends each the same request once (cold: its first load), then `--repeats` times, alternating, and prints one JSON
object: each evaluator's scoring seconds (the `seconds` of its answer: load, checks, probes and scoring, without
the JSON round trip) and the CPU seconds its process spent on it (the least disturbed by other load on the
machine), the ratios (after / before) of the median and minimum seconds and of the median CPU seconds, and both
answers' metrics. No sandbox: this measures the evaluator's own work (benchmarks/scoring_overhead.py
measures the sandbox's).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def serve(tree: Path, cache: str, threads: int) -> subprocess.Popen:
    env = {**os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    return subprocess.Popen([sys.executable, "-m", "evaluator", "serve", "--cache", cache], cwd=tree, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ask(proc: subprocess.Popen, request: str) -> tuple[dict, float]:
    """The evaluator's answer, and the CPU seconds it spent on it."""
    before = cpu_seconds(proc.pid)
    proc.stdin.write(request + "\n")
    proc.stdin.flush()
    answer = json.loads(proc.stdout.readline())
    if answer.get("status") != "ok":
        raise SystemExit(f"the evaluator did not score the model: {answer}")
    return answer, cpu_seconds(proc.pid) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="main", help="the git revision whose evaluator/ is the baseline")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=2.0, help="training seconds of the model that is scored")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a knob of the model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--splits", default="val", help="comma-separated subset of val,holdout")
    parser.add_argument("--cache", default=os.environ.get("ARBOT_CACHE") or str(Path.home() / ".cache" / "arbot"))
    args = parser.parse_args()

    prepared = json.loads(subprocess.run([sys.executable, "-m", "evaluator", "prepare", "--cache", args.cache],
                                         cwd=ROOT, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    with tempfile.TemporaryDirectory(prefix="arbot-bench-") as tmp:
        out = Path(tmp) / "out"
        argv = [sys.executable, "train.py", "--data", prepared["train"], "--out", str(out), "--budget",
                str(args.budget), "--seed", "0", "--device", "cpu"] + [a for s in args.set for a in ("--set", s)]
        subprocess.run(argv, cwd=ROOT / "target", check=True, stdout=subprocess.DEVNULL)
        size = (out / "model.pt2").stat().st_size
        before = Path(tmp) / "before"
        archive = subprocess.run(["git", "archive", args.before, "evaluator"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(before, filter="data")
        trees = {"before": before, "after": ROOT}
        request = json.dumps({"model": str(out / "model.pt2"), "splits": args.splits.split(","), "device": "cpu"})
        procs = {name: serve(tree, args.cache, args.threads) for name, tree in trees.items()}
        try:
            cold = {name: ask(p, request)[0] for name, p in procs.items()}
            times: dict[str, list[float]] = {name: [] for name in procs}
            cpu: dict[str, list[float]] = {name: [] for name in procs}
            for _ in range(args.repeats):
                for name, p in procs.items():
                    answer, spent = ask(p, request)
                    times[name].append(answer["seconds"])
                    cpu[name].append(spent)
        finally:
            for p in procs.values():
                p.stdin.close()
                p.wait()
    median = {name: statistics.median(t) for name, t in times.items()}
    cpu_median = {name: statistics.median(t) for name, t in cpu.items()}
    print(json.dumps({
        "before": args.before, "model": {"knobs": args.set, "bytes": size},
        "threads": args.threads, "splits": args.splits,
        "cold_seconds": {name: a["seconds"] for name, a in cold.items()},
        "warm_seconds": {name: {"median": round(median[name], 3), "min": round(min(t), 3), "max": round(max(t), 3)}
                         for name, t in times.items()},
        "cpu_seconds": {name: round(m, 3) for name, m in cpu_median.items()},
        "ratio_after_before": {"median": round(median["after"] / median["before"], 3),
                               "min": round(min(times["after"]) / min(times["before"]), 3),
                               "cpu": round(cpu_median["after"] / cpu_median["before"], 3)},
        "metrics": {name: a["metrics"] for name, a in cold.items()},
    }, indent=2))


if __name__ == "__main__":
    main()

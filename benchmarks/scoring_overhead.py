"""Overhead of sandboxed scoring: one model scored by a warm evaluator worker under bubblewrap and without.

    python benchmarks/scoring_overhead.py [--repeats 9] [--budget 2] [--set DEPTH=1 ...] [--threads 1]

Trains one model with target/train.py (the default size unless --set), starts two workers of this checkout's
evaluator (one sandboxed as the runner does it: own uid, read-only code, data and inbox, scratch tmpfs, limits;
one not), times the first (cold) request of each, then `--repeats` warm requests of each, interleaved. A
request's time is the runner's view (EvaluatorWorker.last_seconds): staging the model in the inbox, the JSON
round trip and the scoring. Prints one JSON object; the per-run overhead is the median of the paired differences
(each sandboxed request minus the unsandboxed one right after it), which cancels most of the load drift.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--budget", type=float, default=2.0, help="training seconds of the model that is scored")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a knob of the model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=os.environ.get("ARBOT_CACHE") or str(Path.home() / ".cache" / "arbot"))
    args = parser.parse_args()

    from runner import sandbox as sb
    from runner.job import EVALUATOR_FILE_BYTES
    from runner.limits import Limits
    from runner.scorer import EvaluatorWorker

    prepared = json.loads(subprocess.run([sys.executable, "-m", "evaluator", "prepare", "--cache", args.cache],
                                         cwd=ROOT, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    limits = Limits(memory_bytes=8 << 30, max_processes=256, max_file_bytes=EVALUATOR_FILE_BYTES)
    box = sb.resolve("require", limits).with_uid(sb.DEFAULT_UID - 1, limits)
    with tempfile.TemporaryDirectory(prefix="arbot-bench-") as tmp:
        out = Path(tmp) / "out"
        argv = [sys.executable, "train.py", "--data", prepared["train"], "--out", str(out), "--budget",
                str(args.budget), "--seed", "0", "--device", "cpu"] + [a for s in args.set for a in ("--set", s)]
        subprocess.run(argv, cwd=ROOT / "target", check=True, stdout=subprocess.DEVNULL)
        model = out / "model.pt2"
        size = model.stat().st_size
        workers = {"bwrap": EvaluatorWorker("bench", Path(args.cache), args.threads, sandbox=box,
                                            data_dir=Path(prepared["val"]).parent),
                   "none": EvaluatorWorker("bench", Path(args.cache), args.threads)}
        times: dict[str, list[float]] = {kind: [] for kind in workers}
        cold, metrics = {}, {}
        try:
            for kind, w in workers.items():
                shutil.copytree(ROOT / "evaluator", w.dir / "evaluator", ignore=shutil.ignore_patterns("__pycache__"))
                answer = w.score(model, ("val",), "cpu")
                cold[kind], metrics[kind] = round(w.last_seconds, 3), answer.get("metrics")
            for _ in range(args.repeats):
                for kind, w in workers.items():
                    assert w.score(model, ("val",), "cpu")["status"] == "ok"
                    times[kind].append(w.last_seconds)
        finally:
            for w in workers.values():
                w.close()
    paired = [a - b for a, b in zip(times["bwrap"], times["none"])]
    print(json.dumps({
        "model": {"knobs": args.set, "bytes": size},
        "metrics_equal": metrics["bwrap"] == metrics["none"],
        "cold_seconds": cold,
        "warm_seconds": {kind: {"median": round(statistics.median(t), 3), "min": round(min(t), 3),
                                "max": round(max(t), 3)} for kind, t in times.items()},
        "overhead_seconds_per_run": round(statistics.median(paired), 3),
        "paired_differences": [round(d, 3) for d in paired],
        "cold_start_overhead_seconds": round(cold["bwrap"] - cold["none"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()

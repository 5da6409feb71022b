"""Seed noise of one configuration: train the target with several seeds and score each on val.

    python benchmarks/noise.py [--config arbot.gpu.yml] [--seeds 5] [--budget S] [--train-bytes N] [--corpus C]
                               [--jobs J] [--set NAME=VALUE ...] [--out results.json]

Reads the target (script, budget, device, overrides, threads) and the evaluator (device, corpus, cache) from the
config, prepares that corpus's splits (as the runner does, public split rule), trains seeds 0..N-1 directly (no
sandbox: the noise of the measurement, not of the runner) and scores each model on val. Prints, per seed, the
metric, steps, tokens/s and epochs of the training split, then the mean, the sample sd and the sd as % of the
mean; `--out` writes the same as JSON.

`--train-bytes N` trains on the first N bytes of the training split only: the CPU-scale analogue of a GPU run that
cycles its split (epochs = tokens seen / N), to show what cycling does to the noise on a machine with no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import knob_values, print_table  # noqa: E402


def train(argv: list[str], cwd: Path, threads: int) -> dict:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(metric: str, rows: list[dict]) -> dict:
    values = [r[metric] for r in rows]
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return {"seeds": len(values), "mean": mean, "sd": sd, "sd_percent": 100 * sd / abs(mean),
            "tokens_per_second": statistics.fmean(r["tokens_per_second"] for r in rows),
            "epochs": statistics.fmean(r["epochs"] for r in rows)}


def main() -> None:
    from bot.config import load_config
    from bot.executors.pool import threads_per_worker
    from evaluator.data import DEFAULT_CORPUS, prepare
    from evaluator.score import score
    from runner.job import default_cache_dir, train_argv

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "arbot.yml")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=float, help="training seconds (default: the config's target.budget_seconds)")
    ap.add_argument("--train-bytes", type=int, help="train on the first N bytes of the training split only")
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained at once (CPU: give each a share of the cores)")
    ap.add_argument("--corpus", help="the evaluator's corpus (default: the config's evaluator.corpus)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a knob, over the config's")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.seeds < 2:
        ap.error("--seeds must be at least 2 (an sd needs two runs)")

    config = load_config(args.config)
    target, evaluator = config.target, config.evaluator
    budget = args.budget or target.budget_seconds
    overrides = target.overrides | knob_values(args.set)
    cache = Path(evaluator.cache_dir) if evaluator.cache_dir else default_cache_dir()
    splits = prepare(cache, corpus=args.corpus or evaluator.corpus or DEFAULT_CORPUS)
    threads = threads_per_worker(target, args.jobs)  # as the runner's workers: a loaded core stalls a thread
    script = ROOT / target.script
    metric = f"val_{evaluator.metric}"
    with tempfile.TemporaryDirectory() as tmp:
        data = splits.train
        if args.train_bytes:
            data = Path(tmp) / "train.bin"
            data.write_bytes(splits.train.read_bytes()[:args.train_bytes])
        train_bytes = data.stat().st_size

        def one(seed: int) -> dict:
            out = Path(tmp) / f"seed{seed}"
            argv = train_argv(script.name, data, out, budget, seed, target.device, overrides)
            return {"seed": seed, "out": out, **train(argv, script.parent, threads)}

        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(one, range(args.seeds)))
        rows = []
        for run in runs:
            scored = score(run["out"] / "model.pt2", splits, ("val",), device=evaluator.device)
            if scored["status"] != "ok":
                raise RuntimeError(f"seed {run['seed']}: the evaluator found the model {scored['status']}: "
                                   f"{scored['reason']}")
            rows.append({"seed": run["seed"], metric: scored["metrics"][metric], "steps": run["steps"],
                         "tokens_per_second": run["tokens_per_second"], "epochs": run["tokens"] / train_bytes,
                         "device": run["device"]})
    summary = summarize(metric, rows)
    report = {"config": str(args.config), "budget_seconds": budget, "overrides": overrides,
              "corpus": splits.manifest.get("corpus", DEFAULT_CORPUS), "train_bytes": train_bytes,
              "val_bytes": splits.val.stat().st_size, "threads": threads, "jobs": args.jobs, "runs": rows,
              "summary": summary}
    print(f"{args.config.name}: budget {budget:g} s, overrides {overrides}, corpus {report['corpus']}, training "
          f"split {train_bytes:,} bytes, val {report['val_bytes']:,} bytes, {threads} thread(s) x {args.jobs} job(s)")
    print_table({"seed": "seed", metric: metric, "steps": "steps", "tps": "tokens/s", "epochs": "epochs"},
                [{"seed": r["seed"], metric: f"{r[metric]:.4f}", "steps": r["steps"],
                  "tps": f"{r['tokens_per_second']:,.0f}", "epochs": f"{r['epochs']:.2f}"} for r in rows])
    print(f"mean {summary['mean']:.4f}  sd {summary['sd']:.4f}  sd/mean {summary['sd_percent']:.2f}%  "
          f"({summary['seeds']} seeds)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

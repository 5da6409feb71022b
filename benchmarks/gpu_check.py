"""GPU check: the target on CUDA with bf16, and the runner job end to end, with tokens/s and peak memory.

    python benchmarks/gpu_check.py --budget 60 [--out results.json]

Needs a CUDA machine with torch; prepares (or reuses, via $ARBOT_CACHE) the data splits, then:
1. trains target/train.py directly at the default size (corpus kjv) and at the GPU profile's size and corpus
   (arbot.gpu.yml) and scores each;
2. runs the runner job (guard -> train -> champion's evaluator) on a throwaway git repository.
Prints one JSON object with the measurements.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROFILE = ROOT / "arbot.gpu.yml"  # the GPU profile: its knobs and corpus are the GPU size measured here


def train_and_score(cache: Path, budget: float, overrides: dict, work: Path, device: str, corpus: str) -> dict:
    from evaluator.data import prepare
    from evaluator.score import score
    from runner.job import train_argv

    splits = prepare(cache, corpus=corpus)
    out = work / "out"
    argv = train_argv("train.py", splits.train, out, budget, 0, device, overrides)
    start = time.monotonic()
    subprocess.run(argv, cwd=ROOT / "target", check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - start
    summary = json.loads((out / "summary.json").read_text())
    t0 = time.monotonic()
    result = score(out / "model.pt2", splits, ("val", "holdout"), device=device)
    return {"overrides": overrides, "wall_seconds": round(wall, 1), "summary": summary, "score": result,
            "score_seconds": round(time.monotonic() - t0, 1)}


def runner_job(cache: Path, budget: float, overrides: dict, work: Path, device: str, corpus: str) -> dict:
    import git

    from runner.config import EvaluatorConfig, TargetConfig
    from runner.job import Runner

    repo_dir = work / "repo"
    repo = git.Repo.init(repo_dir)
    for d in ("target", "evaluator"):
        shutil.copytree(ROOT / d, repo_dir / d, ignore=shutil.ignore_patterns("__pycache__"))
    repo.git.add(A=True)
    repo.index.commit("gpu check")
    runner = Runner(repo, TargetConfig(budget_seconds=budget, device=device, overrides=overrides),
                    EvaluatorConfig(device=device, cache_dir=str(cache), corpus=corpus))
    result = runner.run("HEAD", "HEAD", seed=0)
    return result.model_dump(exclude={"log_tail"}) | {"log_tail": result.log_tail[-2000:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=60)
    ap.add_argument("--cache", type=Path, default=ROOT / ".devcache")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--device", default="cuda", help="cuda (the check); cpu only to try the script itself")
    args = ap.parse_args()
    import torch

    from bot.config import load_config
    from evaluator.data import DEFAULT_CORPUS

    profile = load_config(PROFILE)
    gpu, gpu_corpus = profile.target, profile.evaluator.corpus or DEFAULT_CORPUS
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    report = {"torch": torch.__version__, "device": name, "budget_seconds": args.budget}
    with tempfile.TemporaryDirectory() as tmp:
        for label, overrides, corpus in (("default_size", {}, DEFAULT_CORPUS), ("gpu_size", gpu.overrides, gpu_corpus)):
            work = Path(tmp) / label
            work.mkdir()
            try:
                report[label] = train_and_score(args.cache, args.budget, overrides, work, args.device, corpus)
            except Exception as e:  # report and go on: one failed measurement should not hide the others
                report[label] = {"error": repr(e)}
            print(json.dumps({label: report[label]}), flush=True)
        work = Path(tmp) / "runner"
        work.mkdir()
        try:
            report["runner_job_gpu_size"] = runner_job(args.cache, args.budget, gpu.overrides, work, args.device,
                                                       gpu_corpus)
        except Exception as e:
            report["runner_job_gpu_size"] = {"error": repr(e)}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

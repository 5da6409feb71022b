"""Where a run's wall time beyond its training budget goes: real runs of the built-in target through the Runner.

    python benchmarks/overhead.py [--config arbot.gpu.yml] [--runs 3] [--promoted 1] [--budget 5]
                                  [--set DEPTH=1 ...] [--threads 0] [--device cpu] [--sandbox require] [--json]

Copies this checkout's target/ and evaluator/ into a throwaway repository and makes `--runs` champion runs (seeds
0, 1, ...) with one Runner, sandboxed as `arbot run` makes them; then, as after a win, commits a new champion (its
train.py changed, its evaluator/ not) and makes `--promoted` runs of it. Each run is broken down into:

  runner phases   RunResult.phases (runner.job.Laps): inspect, evaluator (export, handshake, prepare), checkout
                  (git archive of target/, the train split copied in), train (the sandboxed process), copy_out (disk
                  cap, model and summary copied out, hashed), score, bookkeeping;
  in the process  the training script's own summary phases (target/train.py): import, data, setup, train, export,
                  save; what the process took beyond them is sandbox start, interpreter start and exit, split by
                  timing `python -c pass` bare and under the same sandbox (--probes times each, median).

Prints a table (seconds; the last column is the median of the warm runs, those after the first of each champion)
or, with --json, one JSON object. The machine may be shared: compare medians, and runs of one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import knob_values  # noqa: E402
from runner.tempdirs import OwnedTempDir  # noqa: E402

# (row, where it comes from, its key there); "process" rows come from the training script's summary
ROWS = [
    ("inspect", "runner", "inspect"),
    ("evaluator setup", "runner", "evaluator"),
    ("checkout (git archive)", "runner", "checkout"),
    ("sandbox start", "derived", "sandbox"),
    ("interpreter start + exit", "derived", "interpreter"),
    ("torch import", "process", "import"),
    ("data load", "process", "data"),
    ("model setup", "process", "setup"),
    ("training (budget)", "process", "train"),
    ("export", "process", "export"),
    ("save", "process", "save"),
    ("copy out + model check", "runner", "copy_out"),
    ("scoring", "runner", "score"),
    ("bookkeeping", "runner", "bookkeeping"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of the first champion (the first is cold)")
    parser.add_argument("--promoted", type=int, default=1, help="runs of a new champion with the same evaluator/")
    parser.add_argument("--config", type=Path, help="take the target's and the evaluator's settings from this file "
                        "(e.g. arbot.gpu.yml: its budget, knobs, devices and corpus); the flags below override it")
    parser.add_argument("--budget", type=float, help="training seconds per run (default: the config's, else 5)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a knob of the model")
    parser.add_argument("--threads", type=int, default=0, help="target.threads (0: all cores)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"),
                        help="target.device and evaluator.device (default: the config's, else cpu)")
    parser.add_argument("--sandbox", default="require", choices=("require", "auto", "off"), help="target.sandbox")
    parser.add_argument("--probes", type=int, default=5, help="times `python -c pass` is timed, bare and sandboxed")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.runs < 1 or args.promoted < 0:
        parser.error("--runs must be at least 1 and --promoted at least 0")
    overrides = knob_values(args.set)

    import git

    from bot.config import Config, load_config
    from runner.job import Runner

    config = load_config(args.config) if args.config else Config(target={"device": "cpu"}, evaluator={"device": "cpu"})
    devices = {"device": args.device} if args.device else {}
    args.budget = args.budget or (config.target.budget_seconds if args.config else 5.0)
    with OwnedTempDir(prefix="arbot-overhead-") as tmp:  # unmounts a run's work-dir tmpfs before removing it
        repo = research_repo(Path(tmp) / "repo", git)
        target = config.target.model_copy(update={
            "budget_seconds": args.budget, "threads": args.threads, "sandbox": args.sandbox,
            "overrides": config.target.overrides | overrides, **devices})
        runner = Runner(repo, target, config.evaluator.model_copy(update=devices), artifacts=Path(tmp) / "artifacts")
        starts = probe_starts(runner, Path(tmp), args.probes)
        champion = repo.head.commit.hexsha
        runs = [measure(runner, champion, seed, "cold" if seed == 0 else "warm", Path(tmp), starts)
                for seed in range(args.runs)]
        if args.promoted:
            champion = promote(repo, Path(tmp) / "repo")
            runs += [measure(runner, champion, args.runs + i, "new champion" if i == 0 else "warm",
                             Path(tmp), starts) for i in range(args.promoted)]
    warm = [r for r in runs if r["kind"] == "warm"]
    report = {
        "budget_seconds": args.budget, "knobs": target.overrides, "threads": args.threads, "device": target.device,
        "sandbox": runs[0]["sandbox"], "start_probes": starts, "runs": runs,
        "warm_median": {key: round(statistics.median(r["seconds"][key] for r in warm), 3)
                        for key in runs[0]["seconds"]} if warm else None,
    }
    if report["warm_median"]:
        report["warm_median"]["overhead_pct"] = round(100 * report["warm_median"]["overhead"] / args.budget, 1)
    print(json.dumps(report, indent=2) if args.json else table(report))


def research_repo(path: Path, git) -> "git.Repo":
    """A repository holding this checkout's target/ and evaluator/, committed."""
    path.mkdir(parents=True)
    repo = git.Repo.init(path, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "arbot overhead benchmark")
        cw.set_value("user", "email", "bench@example.com")
    for d in ("target", "evaluator"):
        shutil.copytree(ROOT / d, path / d, ignore=shutil.ignore_patterns("__pycache__"))
    repo.git.add(A=True)
    repo.index.commit("the built-in target")
    return repo


def promote(repo, path: Path) -> str:
    """A new champion as a win makes one: train.py changed, evaluator/ the same."""
    script = path / "target" / "train.py"
    script.write_text(script.read_text() + "# promoted\n")
    repo.git.add("target/train.py")
    return repo.index.commit("a win").hexsha


def probe_starts(runner, tmp: Path, probes: int) -> dict[str, float]:
    """Median seconds of `python -c pass`, bare and under the runner's sandbox (its start cost is the difference)."""
    from runner.process import scrubbed_env

    work = tmp / "probe"
    work.mkdir()
    box = runner.sandbox()
    box.prepare(work)
    env = scrubbed_env(work, runner.target.threads)
    argv = [sys.executable, "-c", "pass"]

    def timed(cmd: list[str]) -> float:
        start = time.monotonic()
        subprocess.run(cmd, cwd=work, env=env, check=True, preexec_fn=box.limits.apply)
        return time.monotonic() - start

    bare = [timed(argv) for _ in range(probes)]
    boxed = [timed(box.wrap(argv, work, work)) for _ in range(probes)]
    return {"python": round(statistics.median(bare), 3), "sandboxed_python": round(statistics.median(boxed), 3)}


def measure(runner, champion: str, seed: int, kind: str, tmp: Path, starts: dict[str, float]) -> dict:
    """One champion run and where its wall time went."""
    result = runner.run(champion, champion, seed=seed)
    if not result.ok:
        sys.exit(f"run {seed} ended {result.status}: {result.reason}\n{result.log_tail}")
    summary = json.loads((tmp / "artifacts" / champion[:12] / f"seed-{seed}" / "summary.json").read_text())
    script = summary.get("phases")
    if not script:
        sys.exit("target/train.py wrote no phases in its summary: this benchmark needs a checkout whose train.py does")
    runner_phases = dict(result.phases)
    beyond_script = runner_phases.get("train", 0.0) - sum(script.values())
    sandbox = max(starts["sandboxed_python"] - starts["python"], 0.0) if result.sandbox == "bwrap" else 0.0
    derived = {"sandbox": sandbox, "interpreter": beyond_script - sandbox}
    seconds = {}
    for row, source, key in ROWS:
        value = {"runner": runner_phases, "process": script, "derived": derived}[source].get(key, 0.0)
        seconds[row] = round(value, 3)
    seconds["total"] = result.total_seconds
    seconds["overhead"] = round(result.total_seconds - runner.target.budget_seconds, 3)
    return {"seed": seed, "kind": kind, "sandbox": result.sandbox, "steps": result.steps,
            "tokens_per_second": result.tokens_per_second, "val_bpb": result.metrics.get("val_bpb"),
            "seconds": seconds}


def table(report: dict) -> str:
    runs, median = report["runs"], report["warm_median"]
    heads = [f"{i + 1} {r['kind']}" for i, r in enumerate(runs)] + (["warm median"] if median else [])
    width = max(len(row) for row, _, _ in ROWS) + 2
    lines = [f"budget {report['budget_seconds']:g} s, sandbox {report['sandbox']}, threads {report['threads']}, "
             f"knobs {report['knobs'] or 'default'}; python -c pass: {report['start_probes']['python']:.3f} s, "
             f"sandboxed {report['start_probes']['sandboxed_python']:.3f} s",
             "seconds".ljust(width) + "".join(h.rjust(14) for h in heads)]
    for row in [r for r, _, _ in ROWS] + ["total", "overhead"]:
        cells = [r["seconds"][row] for r in runs] + ([median[row]] if median else [])
        lines.append(row.ljust(width) + "".join(f"{c:14.2f}" for c in cells))
    pct = [100 * r["seconds"]["overhead"] / report["budget_seconds"] for r in runs]
    pct += [median["overhead_pct"]] if median else []
    lines.append("overhead % of budget".ljust(width) + "".join(f"{p:13.1f}%" for p in pct))
    lines.append("steps".ljust(width) + "".join(f"{r['steps']:14d}" for r in runs))
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()

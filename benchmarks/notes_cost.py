"""The bot's own cost per decision against the size of the history (issue 25), no training.

A repository with N decided experiments already recorded (signed notes, as the bot writes them), then the real
stepper, local surface and forge open and decide one more experiment at a time: the executor answers each run at
once with a synthetic result, the proposer changes one line. Prints seconds per decision (median of --decisions)
at each history size; the goal is a flat line (at most 0.3 s at 1000 experiments).

    .venv/bin/python benchmarks/notes_cost.py [--sizes 0 100 300 1000] [--decisions 5]
    .venv/bin/python benchmarks/notes_cost.py --replay 1000 4000

`--replay LINES...`: instead, the seconds one replay's merge takes (`merge_lines`: a stale experiment's change of
one line carried onto a champion that changed another) on scripts of these many lines, a quarter of them distinct
(the rest blank, as between a script's blocks): median of 20.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import git

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import print_table  # noqa: E402
from bot.core import lifecycle as lc  # noqa: E402
from bot.core.policy import make_policy  # noqa: E402
from bot.config import Config  # noqa: E402
from bot.core.records import ChampionRecord, Decision, Proposal, RunResult  # noqa: E402
from bot.executors import Finished  # noqa: E402
from bot.forges.local import LocalForge, merge_lines  # noqa: E402
from bot.stepper import Stepper  # noqa: E402
from bot.surfaces.local import LocalSurface  # noqa: E402

SCRIPT = "target/train.py"
BASE = 3.0


def result(commit: str, champion: str, seed: int, splits: list[str], value: float) -> RunResult:
    return RunResult(status="ok", commit=commit, champion=champion, seed=seed, splits=splits,
                     metrics={"val_bpb": value, "holdout_bpb": value}, evaluator_fingerprint="bench", total_seconds=1.0)


class Instant:
    """An executor whose runs end at once: the champion scores BASE, every candidate a little worse."""

    slots = 1

    def __init__(self):
        self.done: list[Finished] = []

    def submit(self, spec, timing):
        value = BASE + (0.0 if spec.role == "champion" else 0.1) + 0.001 * spec.seed
        self.done.append(Finished(spec, result(spec.commit, spec.champion, spec.seed, spec.splits, value)))
        return spec

    def resume(self, spec) -> bool:
        return False

    def poll(self, timeout: float) -> list[Finished]:
        done, self.done = self.done, []
        return done

    def cancel(self, spec) -> None:
        self.done = [f for f in self.done if f.spec.key != spec.key]

    def busy(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


class OneLine:
    """Proposes a new last line of the training script each time."""

    name = "bench"

    def __init__(self):
        self.n = 0

    def propose(self, ctx) -> Proposal:
        self.n += 1
        text = ctx.files[SCRIPT] + f"# change {self.n}\n"
        return Proposal(proposer=self.name, hypothesis=f"change {self.n}", files={SCRIPT: text})


def repository(path: Path) -> git.Repo:
    repo = git.Repo.init(path, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "bench")
        cw.set_value("user", "email", "bench@localhost")
    (path / "target").mkdir()
    (path / SCRIPT).write_text("LEARNING_RATE = 0.001\n")
    repo.git.add(A=True)
    repo.index.commit("bench target")
    return repo


def grow(forge: LocalForge, champion: str, have: int, want: int) -> None:
    """Decided experiments (a loss each, one run) recorded as the bot records them, up to `want`."""
    for i in range(have, want):
        text = forge.text(champion, SCRIPT) + f"# history {i}\n"
        rec = forge.open_experiment(Proposal(proposer="bench", hypothesis=f"history {i}", files={SCRIPT: text}),
                                    champion, "2026-01-01T00:00:00+00:00")
        rec.runs = [result(rec.commit, champion, 0, ["val"], BASE + 0.1)]
        rec.decision = Decision(verdict="loss", rule="margin", reason="worse")
        rec.finished_at = "2026-01-01T00:01:00+00:00"
        forge.save(rec)


def decide_one(stepper: Stepper, forge: LocalForge) -> float:
    """Seconds to open one experiment and step until it is decided."""
    start = time.perf_counter()
    stepper.fill()
    while stepper.active():
        stepper.step(0)
    return time.perf_counter() - start


def replay_seconds(lines: int, times: int = 20) -> float:
    """Median seconds of one `merge_lines` on a script of `lines` lines (one in four distinct, three blank)."""
    base = "".join(f"VALUE_{i} = {i}\n\n\n\n" for i in range(lines // 4))
    ours = base.replace(f"VALUE_{lines // 8} = ", f"VALUE_{lines // 8} = 1 + ", 1)
    theirs = base.replace("VALUE_1 = ", "VALUE_1 = 2 * ", 1)
    out = []
    for _ in range(times):
        start = time.perf_counter()
        merged = merge_lines(base, ours, theirs)
        out.append(time.perf_counter() - start)
        assert merged is not None and "1 + " in merged and "2 * " in merged
    return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 100, 300, 1000])
    ap.add_argument("--decisions", type=int, default=5, help="decisions timed at each size (the median is shown)")
    ap.add_argument("--replay", type=int, nargs="+", metavar="LINES", help="time one replay's merge instead")
    args = ap.parse_args(argv)
    if args.replay:
        print_table({"lines": "script lines", "seconds": "s per replay merge"},
                    [{"lines": n, "seconds": f"{replay_seconds(n):.4f}"} for n in args.replay])
        return 0
    with tempfile.TemporaryDirectory(prefix="arbot-notes-cost-") as tmp:
        os.environ["ARBOT_SIGNING_KEY"] = str(Path(tmp) / "signing-key")
        config = Config.model_validate({"policy": {"rule": "margin", "margin": 0.0, "baseline_runs": 1},
                                        "target": {"holdout_max_gap": None}})
        rules = lc.Rules.of(make_policy(config.policy), config.target, config.metric)
        forge = LocalForge(repository(Path(tmp) / "repo"))
        champion = forge.ensure_champion()
        forge.save(ChampionRecord(commit=champion, runs=[result(champion, champion, 0, ["val"], BASE)]))
        rows, have = [], 0
        for size in sorted(args.sizes):
            grow(forge, champion, have, size)
            have = size
            # a fresh process's stepper and forge at this size, as `arbot run` starts
            fresh = LocalForge(git.Repo(forge.repo.working_tree_dir))
            stepper = Stepper(fresh, Instant(), LocalSurface(fresh), OneLine(), config.target, rules, slots=1)
            first = decide_one(stepper, fresh)  # reads and checks every note once
            times = [decide_one(stepper, fresh) for _ in range(args.decisions)]
            have += 1 + args.decisions
            rows.append({"size": size, "first": f"{first:.3f}", "median": f"{statistics.median(times):.3f}",
                         "max": f"{max(times):.3f}"})
            print(f"{size} experiments: {statistics.median(times):.3f} s per decision", file=sys.stderr, flush=True)
    print_table({"size": "experiments of history", "first": "first decision (s)", "median": "s per decision",
                 "max": "max (s)"}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

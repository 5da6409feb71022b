"""Capacity by simulation (`arbot bench capacity`): the real stepper, lifecycle, local forge (git notes) and
`arbot run`'s loop, driven through a long campaign by a simulated executor; no training.

The world: the training script is a fixed column of SLOTS slot lines, each holding a number, and each proposal
changes one slot's number in place, the slots taken in turn (so experiments open together change different lines,
merge cleanly, and a replay onto a new champion keeps its change; the script keeps its size however long the
campaign). A proposal adds its true effect on the metric to its slot's number, drawn from a mix (most proposals
harmless or harmful, a few real wins). A run of a commit reports the sum of its script's slots, plus seeded noise,
on the splits it was asked for.

The executor: `workers` simulated workers in virtual time. A run takes a synthetic duration (uniform around
RUN_SECONDS). Virtual time passes as the bot works (its real seconds between two polls are added) and `poll` then
moves it on to the next run's end at once: the campaign's wall time is the bot's own time (and the world's few git
reads, timed apart and subtracted), and a slow bot leaves workers idle as it would on real ones. Reported: decisions per second, bot seconds per
decision by history size, and worker utilisation: busy worker time over workers x virtual time, while the campaign
still proposes (up to its last proposal: after it, the last experiments drain and workers idle by design).
"""

from __future__ import annotations

import hashlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import git

from bot.core.policy import PolicyConfig, make_policy
from bot.core.records import DEFAULT_METRIC, ExperimentRecord, Proposal, RunResult, RunSpec
from bot.executors import Finished, Outcome
from bot.forges.local import LocalForge
from bot.loop import Loop
from runner.config import TargetConfig

SCRIPT = "target/train.py"
MARK = "# bench: "
BASE = 3.0  # the starting champion's metric (DEFAULT_METRIC, minimized)
NOISE_SD = 0.01  # of one run's metric
RUN_SECONDS = 60.0  # mean virtual duration of a run (each within +-20%)
WIN_SHARE, WIN_EFFECT = 0.05, -0.05  # proposals that really help, and by how much
HARM_SHARE, HARM_EFFECT = 0.35, 0.05  # proposals that hurt (up to this much)
HOLDOUT_GAP = 0.01  # (holdout - val) / val of every model: an honest one
HISTORY_MARKS = (0, 100, 300, 1000, 3000)  # history sizes the bot's seconds per decision are reported at
WINDOW = 20  # decisions averaged at each mark (at least 2 x the workers: a win closes many experiments at once)
STATUS_AT = 1000  # decided experiments at which `arbot status` is timed
SLOTS = 256  # slot lines of the script (at least 4 x the workers: more than the experiments open at once)


def train_py(slots: int) -> str:
    """A script of `slots` slot lines, each at 0, four lines apart."""
    return "LEARNING_RATE = 0.001\n\n\n\n" + "".join(f"{MARK}{i} {0:+.4f} -\n\n\n\n" for i in range(1, slots + 1))


def effects(text: str) -> float:
    return sum(float(line[len(MARK):].split()[1]) for line in text.splitlines() if line.startswith(MARK))


def set_slot(text: str, slot: int, effect: float, by: str) -> str:
    """`text` with `effect` added to the number of slot `slot`, the change named `by` (so a change of no effect
    changes the line too)."""
    head = f"{MARK}{slot} "
    at = text.index("\n" + head) + 1
    end = text.index("\n", at)
    value = float(text[at + len(head):end].split()[0]) + effect
    return f"{text[:at]}{head}{value:+.4f} {by}{text[end:]}"


def noise(commit: str, seed: int) -> float:
    digest = hashlib.sha256(f"{commit}:{seed}".encode()).digest()
    return random.Random(digest).gauss(0.0, NOISE_SD)


class MarkerProposer:
    """Proposes one change per experiment to the next slot in turn, its effect drawn from the mix (seeded)."""

    name = "bench"

    def __init__(self, seed: int, slots: int, clock=lambda: 0.0):
        self.rng, self.slots, self.proposed, self.clock = random.Random(seed), slots, 0, clock
        self.last_at = 0.0  # the virtual time of the last proposal

    def propose(self, ctx) -> Proposal:
        slot = self.proposed % self.slots + 1
        self.proposed += 1
        self.last_at = self.clock()
        roll = self.rng.random()
        effect = WIN_EFFECT if roll < WIN_SHARE else self.rng.uniform(0, HARM_EFFECT) if roll < WIN_SHARE + HARM_SHARE \
            else 0.0
        return Proposal(proposer=self.name, hypothesis=f"proposal {self.proposed}: slot {slot} {effect:+.4f}",
                        files={SCRIPT: set_slot(ctx.files[SCRIPT], slot, effect, f"p{self.proposed}")})


@dataclass(order=True)
class _Running:
    ends: float
    spec: RunSpec = field(compare=False)
    span: list[float] = field(compare=False)


class SimExecutor:
    """An executor (bot.executors.Executor) of `slots` simulated workers in virtual time."""

    def __init__(self, repo: git.Repo, slots: int, seed: int):
        self.repo, self.slots, self.rng = repo, slots, random.Random(seed)
        self.now = 0.0
        self.queue: list[RunSpec] = []
        self.running: list[_Running] = []
        self.spans: list[list[float]] = []  # [start, end] of every run made (a cancelled one ends when cancelled)
        self.world_seconds = 0.0  # real time spent reading the world (git), not the bot's
        self._mark = time.perf_counter()  # real time up to which the bot's work is counted in `now`

    def submit(self, spec: RunSpec, timing) -> RunSpec:
        self._tick()
        self.queue.append(spec)
        self._start()
        return spec

    def resume(self, spec: RunSpec) -> bool:
        return False

    def poll(self, timeout: float) -> list[Outcome]:
        self._tick()
        if self.running:
            self.running.sort()
            self.now = max(self.now, self.running[0].ends)
        done = [r for r in self.running if r.ends <= self.now]
        self.running = [r for r in self.running if r.ends > self.now]
        self._start()
        finished: list[Outcome] = [Finished(r.spec, self._result(r.spec)) for r in done]
        self._mark = time.perf_counter()  # reading the world is not the bot's work
        return finished

    def cancel(self, spec: RunSpec) -> None:
        self._tick()
        self.queue = [s for s in self.queue if s.key != spec.key]
        for r in [r for r in self.running if r.spec.key == spec.key]:
            self.running.remove(r)
            r.span[1] = self.now  # the worker is free from now
        self._start()

    def busy(self) -> dict[str, str]:
        return {f"sim {i}": r.spec.key for i, r in enumerate(self.running)}

    def close(self) -> None:
        self.queue.clear()
        self.running.clear()

    def _start(self) -> None:
        while self.queue and len(self.running) < self.slots:
            spec = self.queue.pop(0)
            ends = self.now + RUN_SECONDS * self.rng.uniform(0.8, 1.2)
            self.spans.append(span := [self.now, ends])
            self.running.append(_Running(ends, spec, span))

    def _tick(self) -> None:
        """Virtual time passes as the bot works: its real seconds since the last mark."""
        at = time.perf_counter()
        self.now += at - self._mark
        self._mark = at

    def utilisation(self, until: float) -> float:
        """Busy worker time over workers x time, from 0 to `until` (virtual seconds)."""
        busy = sum(max(0.0, min(end, until) - start) for start, end in self.spans)
        return busy / (self.slots * until) if until > 0 else 0.0

    def _result(self, spec: RunSpec) -> RunResult:
        start = time.perf_counter()
        text = self.repo.git.show(f"{spec.commit}:{SCRIPT}")
        self.world_seconds += time.perf_counter() - start
        val = BASE + effects(text) + noise(spec.commit, spec.seed)
        metrics = {DEFAULT_METRIC.key("val"): val}
        if "holdout" in spec.splits:
            metrics[DEFAULT_METRIC.key("holdout")] = val * (1 + HOLDOUT_GAP)
        return RunResult(status="ok", commit=spec.commit, champion=spec.champion, seed=spec.seed, splits=spec.splits,
                         metrics=metrics, evaluator_fingerprint="sim", train_seconds=RUN_SECONDS, score_seconds=1.0,
                         total_seconds=RUN_SECONDS + 1, job="sim", node="sim")


class Clock:
    """The campaign's report (bot.surfaces.local.Report): the real time of each decision and the history then; and
    `arbot status` timed once the history is `status_at` decided experiments (`status_root`: the repository), a
    user's process beside the bot's, kept out of the bot's time and of virtual time."""

    def __init__(self, sim: SimExecutor, status_root: Path | None = None, status_at: int = STATUS_AT):
        self.sim, self.decided = sim, 0
        self.samples: list[tuple[int, float]] = []  # (decided experiments before it, bot seconds it took)
        self._last, self._world = time.perf_counter(), 0.0
        self.status_root, self.status_at = status_root, status_at
        self.status_seconds: float | None = None

    def measured(self, champion) -> None:
        pass

    def finished(self, rec: ExperimentRecord) -> None:
        now = time.perf_counter()
        world = self.sim.world_seconds - self._world
        self.samples.append((self.decided, now - self._last - world))
        self.decided += 1
        if self.status_root is not None and self.decided == self.status_at:
            self.status_seconds = _status_seconds(self.status_root)
            self.sim.world_seconds += self.status_seconds
            self.sim._mark += self.status_seconds  # no virtual time passes while the user's process runs
        self._last, self._world = now, self.sim.world_seconds

    def refused(self, error) -> None:
        pass

    def stopped(self, why: str) -> None:
        pass


@dataclass
class Capacity:
    workers: int
    experiments: int
    decided: int
    wins: int
    wall_seconds: float
    bot_seconds: float
    virtual_hours: float
    utilisation: float
    per_decision: dict[int, float]  # history size -> mean bot seconds per decision around it
    status_seconds: float | None

    @property
    def decisions_per_second(self) -> float:
        return self.decided / self.bot_seconds if self.bot_seconds else float("inf")


def make_repo(path: Path, slots: int) -> git.Repo:
    path.mkdir(parents=True)
    repo = git.Repo.init(path, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "arbot bench")
        cw.set_value("user", "email", "bench@example.com")
    (path / "target").mkdir()
    (path / SCRIPT).write_text(train_py(slots))
    (path / "arbot.yml").write_text("policy:\n  rule: noise_aware\n")
    repo.git.add(A=True)
    repo.index.commit("the simulated target")
    return repo


def campaign(workers: int, experiments: int, seed: int = 0, status: bool = True,
             where: Path | None = None) -> Capacity:
    """One simulated campaign of `experiments` proposals with `workers` workers (and as many in flight)."""
    with tempfile.TemporaryDirectory(prefix="arbot-capacity-", dir=where) as tmp:
        slots = max(SLOTS, 4 * workers)
        repo = make_repo(Path(tmp) / "repo", slots)
        forge = LocalForge(repo)
        forge.ensure_champion()
        sim = SimExecutor(repo, workers, seed)
        clock = Clock(sim, Path(tmp) / "repo" if status else None)
        target = TargetConfig(script=SCRIPT, allowed_paths=[SCRIPT], budget_seconds=RUN_SECONDS)
        proposer = MarkerProposer(seed, slots, clock=lambda: sim.now)
        loop = Loop(forge, None, proposer, make_policy(PolicyConfig()), target, metric=DEFAULT_METRIC,
                    executor=sim, in_flight=workers)
        start = time.perf_counter()
        loop.campaign(experiments, clock)
        wall = time.perf_counter() - start
        recs = forge.experiments()
        per, size = {}, max(WINDOW, 2 * workers)
        for mark in HISTORY_MARKS:
            window = [s for n, s in clock.samples if mark <= n < mark + size]
            if len(window) >= size // 2:
                per[mark] = statistics.fmean(window)
        status_seconds = clock.status_seconds
        if status and status_seconds is None:  # a campaign that decided fewer: at its end
            status_seconds = _status_seconds(Path(tmp) / "repo")
        return Capacity(workers=workers, experiments=experiments, decided=sum(r.decision is not None for r in recs),
                        wins=sum(bool(r.merged_as) for r in recs), wall_seconds=wall,
                        bot_seconds=wall - sim.world_seconds, virtual_hours=sim.now / 3600,
                        utilisation=sim.utilisation(proposer.last_at), per_decision=per,
                        status_seconds=status_seconds)


def _status_seconds(root: Path) -> float:
    """`arbot status` on the campaign's repository, as a user runs it (a process of its own)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bot", "status", "--repo", str(root)], check=True, capture_output=True)
    return time.perf_counter() - start

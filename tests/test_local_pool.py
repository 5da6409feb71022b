"""Many experiments in flight on the local executor (bot.loop + bot.executors.pool), in the scripted world.

Runs are scripted (tests/scripted.py) but made by real worker threads, so the order they end in is the pool's:
the tests assert what must hold whatever the order.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import git
import pytest

from bot.config import SearchConfig, load_config
from bot.executors import MAX_LOST, Lost
from bot.executors.pool import (AUTO_MAX_CPU_WORKERS, CANCELLED, WORKER_UID_STRIDE, Inline, LocalPool, shares,
                                worker_count)
from bot.forges.local import LocalForge
from bot.loop import Loop
from bot.stepper import RunsLost
from bot.surfaces.local import Quiet
from bot.core.policy import make_policy
from bot.proposers.base import ProposalContext
from bot.proposers.search import SearchProposer
from bot.core.records import HOLDOUT, VAL, ExperimentRecord, RunResult, RunSpec, val_runs
from runner.config import TargetConfig
from tests.scripted import SCRIPT, ScriptedProposer, ScriptedRunner, Variant, make_world, markers

CONFIG = {"policy": {"rule": "noise_aware"}}


class CountingRunner(ScriptedRunner):
    """The scripted runner, recording every run it makes and how many it makes at once; a run of a commit
    holding a `slow` marker takes `delay` seconds."""

    made: Counter = Counter()
    busy = most = 0
    lock = threading.Lock()

    def __init__(self, repo, world, delay: float = 0.3):
        super().__init__(repo, world)
        self.delay = delay

    def run(self, candidate, champion, seed=0, splits=("val",), on_progress=None, stop=None, timing=None):
        cls = type(self)
        with cls.lock:
            cls.made[(candidate, seed, tuple(splits))] += 1
            cls.busy += 1
            cls.most = max(cls.most, cls.busy)
        try:
            slow = "slow" in " ".join(markers(self.repo.git.show(f"{candidate}:{SCRIPT}")))
            time.sleep(self.delay * (4 if slow else 1))
            return super().run(candidate, champion, seed, splits, on_progress, stop)
        finally:
            with cls.lock:
                cls.busy -= 1


@pytest.fixture
def counting():
    CountingRunner.made, CountingRunner.busy, CountingRunner.most = Counter(), 0, 0
    return CountingRunner


def scripted_world(tmp_path, config: dict = CONFIG):
    """The scripted world's repository, its loaded arbot.yml and a forge with the champion branch made."""
    repo = make_world(tmp_path / "w", config)
    forge = LocalForge(repo)
    forge.ensure_champion()
    return repo, load_config(tmp_path / "w" / "arbot.yml"), forge


def world_loop(tmp_path, world, names, workers=2):
    repo, config, forge = scripted_world(tmp_path)
    pool = LocalPool(lambda target, gpus: CountingRunner(git.Repo(repo.working_dir), world), config.target, workers)
    loop = Loop(forge, None, ScriptedProposer(*names), make_policy(config.policy), config.target, executor=pool)
    return forge, loop, pool


def test_two_workers_run_two_experiments_at_once_and_a_win_sends_the_other_back_to_be_measured_again(tmp_path, counting):
    world = {"win": Variant(effect=-0.3), "slow-win": Variant(effect=-0.2), "worse": Variant(effect=0.2)}
    forge, loop, pool = world_loop(tmp_path, world, ["win", "slow-win", "worse"])
    try:
        loop.measure_champion()
        finished = loop.campaign(limit=2)
    finally:
        pool.close()
    recs = {r.id: r for r in forge.experiments()}
    win, stale, fresh = recs["exp-1"], recs["exp-2"], recs["exp-3"]
    assert counting.most == 2  # both workers were busy at once
    assert win.merged_as and forge.repo.is_ancestor(win.merged_as, forge.champion())
    # the slow experiment was opened on the old champion, still in flight when the win merged: never decided on it
    assert stale.parent != win.merged_as and stale.decision.rule == "stale"
    assert "measured again as exp-3" in stale.decision.reason and not stale.pending
    assert fresh.proposal.hypothesis == "slow-win" and fresh.parent == win.merged_as and fresh.decision is not None
    assert [r.id for r in finished][-1] == "exp-3" and {r.id for r in finished} == {"exp-1", "exp-2", "exp-3"}
    # no run made twice; a champion's runs are shared, every seed once
    assert max(counting.made.values()) == 1
    for sha in {r.parent for r in recs.values()}:
        seeds = [(r.seed, tuple(r.splits)) for r in forge.champion_record(sha).runs]
        assert len(seeds) == len(set(seeds)) and not forge.champion_record(sha).pending
    assert all(r.job in ("worker 1", "worker 2") and r.node for rec in recs.values() for r in rec.runs)


def test_two_promising_experiments_on_one_champion_are_not_confirmed_at_once(tmp_path, counting):
    """Both pass their screens on one champion: one is confirmed, the other deferred (its worker screens another
    experiment meanwhile); when the first wins, the deferred one is measured again having spent only its screen."""
    world = {"win": Variant(effect=-0.3), "win-too": Variant(effect=-0.3), "worse": Variant(effect=0.2),
             "worse-too": Variant(effect=0.25)}
    forge, loop, pool = world_loop(tmp_path, world, ["win", "win-too", "worse", "worse-too"])
    start = forge.champion()
    try:
        loop.measure_champion()
        loop.campaign(limit=4)
    finally:
        pool.close()
    recs = [r for r in forge.experiments() if r.parent == start]
    confirmed = [r for r in recs if len(val_runs(r.runs)) > 1]
    assert len(confirmed) == 1 and confirmed[0].merged_as  # one confirmed on the start champion: the win
    stale = [r for r in recs if r.decision.rule == "stale"]
    assert stale and all(sum(n for (commit, _, _), n in counting.made.items() if commit == r.commit) == 1
                         for r in stale)  # its screen alone was made: no run spent confirming it
    assert any(r.decision.rule == "screen" and r.number > min(s.number for s in stale) for r in recs)  # screened meanwhile


class TimedRunner(CountingRunner):
    """The counting runner, reporting training and scoring seconds on each run as the real runner does (so the
    champion's runs are timed) and recording when each run started and ended."""

    spans: list = []

    def run(self, candidate, champion, seed=0, splits=("val",), on_progress=None, stop=None, timing=None):
        start = time.monotonic()
        held = timing is not None  # what a real runner holds a candidate's budget to
        result = super().run(candidate, champion, seed, splits, on_progress, stop)
        type(self).spans.append((candidate == champion, held, start, time.monotonic()))
        return result.model_copy(update={"train_seconds": self.delay, "score_seconds": 0.01})


class Measured(Quiet):
    def __init__(self):
        self.champions = []

    def measured(self, champion):
        self.champions.append(champion)


def test_a_campaign_runs_its_first_candidates_beside_the_champions_noise_floor(tmp_path, counting):
    TimedRunner.spans = []
    repo, config, forge = scripted_world(tmp_path)
    world = {"worse": Variant(effect=0.2), "also-worse": Variant(effect=0.3)}
    pool = LocalPool(lambda target, gpus: TimedRunner(git.Repo(repo.working_dir), world), config.target, 2)
    loop = Loop(forge, None, ScriptedProposer("worse", "also-worse"), make_policy(config.policy), config.target,
                executor=pool)
    report = Measured()
    try:
        loop.campaign(limit=2, report=report)
    finally:
        pool.close()
    floor = sorted(end for champion_run, _, _, end in TimedRunner.spans if champion_run)
    candidates = [(held, start) for champion_run, held, start, _ in TimedRunner.spans if not champion_run]
    assert len(floor) == 3  # the policy's baseline_runs
    # every candidate held to the champion's times; the first one beside the floor's last run, not after it (the
    # policy screens a first run against two champion runs)
    assert all(held for held, _ in candidates) and floor[0] <= min(s for _, s in candidates) < floor[-1]
    assert [r.verdict for r in (e.decision for e in forge.experiments())] == ["loss", "loss"]
    (start,) = report.champions  # reported once, with its floor made
    assert start.commit == forge.champion() and len(start.runs) == 3


def test_one_worker_makes_the_same_decisions_as_the_serial_loop(tmp_path, counting):
    world = {"win": Variant(effect=-0.3), "worse": Variant(effect=0.2), "crash": Variant(status="crash")}
    forge, loop, pool = world_loop(tmp_path, world, ["win", "worse", "crash"], workers=1)
    try:
        loop.measure_champion()
        loop.campaign(limit=3)
    finally:
        pool.close()
    decided = [(r.id, r.decision.verdict, r.decision.rule) for r in forge.experiments()]
    assert decided == [("exp-1", "win", "confirm:pooled"), ("exp-2", "loss", "screen"), ("exp-3", "crash", "crash")]
    assert counting.most == 1


def test_a_loop_killed_mid_run_resumes_without_losing_or_repeating_a_run(tmp_path, counting):
    world = {"win": Variant(effect=-0.3)}
    repo, config, forge = scripted_world(tmp_path)

    class Dies(CountingRunner):
        def run(self, candidate, champion, seed=0, splits=("val",), on_progress=None, stop=None, timing=None):
            if candidate != forge.champion() and seed == 1:
                raise KeyboardInterrupt  # Ctrl-C (or a kill) while the candidate's second run trains
            return super().run(candidate, champion, seed, splits, on_progress, stop)

    loop = Loop(forge, Dies(repo, world, delay=0), ScriptedProposer("win"), make_policy(config.policy), config.target)
    with pytest.raises(KeyboardInterrupt):
        loop.campaign(limit=1)
    exp = forge.experiments()[0]
    assert exp.pending and exp.decision is None  # the run in the making is still asked for
    made_before = sum(counting.made.values())

    again = Loop(forge, CountingRunner(repo, world, delay=0), ScriptedProposer(), make_policy(config.policy),
                 config.target)
    again.campaign(limit=1)
    exp = forge.experiments()[0]
    assert exp.decision.verdict == "win" and exp.merged_as and not exp.pending
    seeds = [(r.seed, tuple(r.splits)) for r in exp.runs]
    assert len(seeds) == len(set(seeds)) and (1, ("val",)) in seeds
    assert sum(counting.made.values()) > made_before and max(counting.made.values()) == 1  # the killed one, once


class Losing(Inline):
    """The one-worker executor, except that the machine loses chosen attempts (a cancelled or preempted job)."""

    def __init__(self, runner, lose):
        super().__init__(runner)
        self.lose = lose  # key -> how many attempts are lost

    def poll(self, timeout):
        spec = self._queue[0][0] if self._queue else None
        if spec is not None and self.lose.get(spec.key, 0) > 0:
            self._queue.pop(0)
            self.lose[spec.key] -= 1
            return [Lost(spec, job="slurm 41", node="gpu-7", reason="CANCELLED by 0")]
        return super().poll(timeout)


def test_a_cancelled_run_is_stopped_while_it_trains_and_frees_its_worker(tmp_path):
    class Training:
        """Trains until its budget (10 s) or until `stop` answers, as runner.job.Runner does."""

        def run(self, candidate, champion, seed=0, splits=("val",), on_progress=None, stop=None, timing=None):
            end = time.monotonic() + 10
            while time.monotonic() < end and not (why := stop()):
                time.sleep(0.05)
            return RunResult(status="rejected", commit=candidate, champion=champion, seed=seed, reason=why)

    repo, config, forge = scripted_world(tmp_path)
    sha = forge.champion()
    pool = LocalPool(lambda target, gpus: Training(), config.target, 1)
    spec = RunSpec(role="exp-1", commit=sha, champion=sha, seed=0)
    try:
        start = time.monotonic()
        pool.submit(spec, None)
        while not pool.busy():
            time.sleep(0.05)
        pool.cancel(spec)
        (ended,) = pool.poll(10)
    finally:
        pool.close()
    assert ended.result.reason == CANCELLED and time.monotonic() - start < 5


def test_a_lost_run_is_recorded_and_made_again_never_counted_as_the_candidates(tmp_path, counting):
    repo, config, forge = scripted_world(tmp_path)
    sha = forge.champion()
    key = RunSpec(role="champion", commit=sha, champion=sha, seed=1, splits=[VAL, HOLDOUT]).key  # holdout: auto
    executor = Losing(CountingRunner(repo, {}, delay=0), {key: 1})
    loop = Loop(forge, None, ScriptedProposer(), make_policy(config.policy), config.target, executor=executor)
    champion = loop.measure_champion()
    assert [(lost.key, lost.job, lost.node, lost.reason) for lost in champion.lost] == [
        (key, "slurm 41", "gpu-7", "CANCELLED by 0")]
    assert sorted(r.seed for r in champion.runs) == [0, 1, 2] and all(r.ok for r in champion.runs)


def test_a_run_the_machine_keeps_losing_stops_the_loop_with_the_reason(tmp_path, counting):
    repo, config, forge = scripted_world(tmp_path)
    sha = forge.champion()
    key = RunSpec(role="champion", commit=sha, champion=sha, seed=0, splits=[VAL, HOLDOUT]).key  # holdout: auto
    loop = Loop(forge, None, ScriptedProposer(), make_policy(config.policy), config.target,
                executor=Losing(CountingRunner(repo, {}, delay=0), {key: MAX_LOST}))
    with pytest.raises(RunsLost, match=f"lost {MAX_LOST} times.*slurm 41 on gpu-7: CANCELLED by 0"):
        loop.measure_champion()
    record = forge.champion_record(sha)
    assert len(record.lost) == MAX_LOST and any(s.key == key for s in record.pending)  # still asked for


def test_the_search_never_proposes_what_is_in_flight(tmp_path):
    script = "LEARNING_RATE = 0.001\nDEPTH = 2\n"
    from bot.knobs import find_knobs

    def ctx(pending):
        return ProposalContext(champion="c" * 40, script_path=SCRIPT, files={SCRIPT: script},
                               knobs=find_knobs(script), pending=pending)

    search = SearchProposer(SearchConfig(seed=3))
    first = search.propose(ctx([]))
    in_flight = ExperimentRecord(id="exp-1", number=1, branch="b", commit="d" * 40, parent="c" * 40,
                                 proposal=first)
    second = search.propose(ctx([in_flight]))
    assert second.params != first.params
    third = search.propose(ctx([in_flight, ExperimentRecord(id="exp-2", number=2, branch="b2", commit="e" * 40,
                                                            parent="c" * 40, proposal=second)]))
    assert third.params not in (first.params, second.params)


def test_auto_workers_are_one_per_gpu_else_one_per_threads_cores_at_most_four(monkeypatch):
    target = TargetConfig()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)))
    assert worker_count(3, target, ["0"]) == 3  # a number is taken as it is
    assert worker_count("auto", target, ["0", "1", "2"]) == 3  # one per GPU
    assert worker_count("auto", TargetConfig(device="cpu"), ["0", "1", "2"]) == 2  # cpu training: one per core
    assert worker_count("auto", target, []) == 2
    assert worker_count("auto", TargetConfig(threads=2), []) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert worker_count("auto", target, []) == AUTO_MAX_CPU_WORKERS == 4
    assert worker_count("auto", TargetConfig(threads=32), []) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set())  # none known: one
    assert worker_count("auto", target, []) == 1


def test_each_worker_gets_a_gpu_or_its_share_of_the_cores():
    target = TargetConfig()
    assert [g for _, g in shares(target, 2, ["0", "1", "2"])] == ["0", "1"]
    cpu = shares(target, 2, [])
    assert all(g is None and t.threads >= 1 and t.memory_gb for t, g in cpu)
    assert shares(TargetConfig(threads=3), 2, [])[0][0].threads == 3
    with pytest.raises(ValueError, match="only 1 GPUs are visible"):
        shares(target, 2, ["0"])
    assert shares(TargetConfig(device="cpu"), 2, ["0"])[0][1] is None  # cpu training: cores, not GPUs


def test_each_worker_gets_its_own_uid_and_its_own_cores():
    """No per-uid limit (RLIMIT_NPROC) is shared by two workers, and each is bound to its own target.threads cores
    (target.cpus, else the runner's), sharing one only where there are fewer cores than they ask for."""
    workers = shares(TargetConfig(threads=2, cpus="0-5"), 3, [])
    assert [t.sandbox_uid for t, _ in workers] == [TargetConfig().sandbox_uid + i * WORKER_UID_STRIDE for i in range(3)]
    assert [t.cpus for t, _ in workers] == ["0,1", "2,3", "4,5"]
    assert [t.limits().cpus for t, _ in workers] == [(0, 1), (2, 3), (4, 5)]
    assert [t.cpus for t, _ in shares(TargetConfig(threads=2, cpus="0-2"), 2, [])] == ["0,1", "0,2"]
    gpu = shares(TargetConfig(), 2, ["0", "1"])  # threads 0: GPU workers are not bound to cores
    assert [t.cpus for t, _ in gpu] == [None, None] and gpu[0][0].sandbox_uid != gpu[1][0].sandbox_uid
    assert shares(TargetConfig(threads=1), 1, [])[0][0] == TargetConfig(threads=1)  # one worker: as configured

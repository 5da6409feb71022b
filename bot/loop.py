"""The local executor: `arbot run` carries out the lifecycle's actions (bot.lifecycle) on a git repository.

It gathers the records (git notes), asks `next_action`, and does what it says: a run is noted pending on its
record and handed to an executor (bot.executors: one worker in this thread, a pool of workers, Slurm jobs), a
decision, a merge or a note is made at once. Up to `in_flight` experiments are open together, each decided
against the champion it was measured on; when a win moves the champion, the others are measured again on the
new one (the lifecycle's Replay; a screen in flight finishes first, and a loss it shows stands), champion runs
are shared between them, and the proposer sees the experiments in flight. Every result is saved as it arrives,
so an interrupted loop resumes where it stopped: runs already made are kept, runs in flight are taken up again (or
made again), nothing is proposed twice. It decides nothing.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from bot import lifecycle as lc
from bot.executors import MAX_LOST, Executor, Finished, Lost, Outcome
from bot.executors.pool import Inline, RunHook
from bot.forges.local import LocalForge
from bot.policy import Policy
from bot.proposers.base import Proposer
from bot.proposers.context import propose
from bot.proposers.failures import ProposalRejected, SpendCapReached
from bot.records import DEFAULT_METRIC, ChampionRecord, ExperimentRecord, LostRun, Metric, RunSpec
from bot.results import results_table
from runner.config import TargetConfig
from runner.job import Runner, champion_timing

POLL_SECONDS = 1.0  # how long one wait for an executor's news lasts before the status file is written again


class ChampionBroken(RuntimeError):
    """The champion itself does not train and score: nothing can be compared against it."""


class RunsLost(RuntimeError):
    """The executor lost the same run MAX_LOST times in a row: the machine, not the candidate, is failing."""


class Report(Protocol):
    """What `arbot run` shows as a campaign goes (bot.cli)."""

    def measured(self, champion: ChampionRecord) -> None: ...  # the champion a campaign started from, its floor made
    def finished(self, rec: ExperimentRecord) -> None: ...
    def refused(self, error: ProposalRejected) -> None: ...
    def stopped(self, why: str) -> None: ...


class Quiet:
    def measured(self, champion: ChampionRecord) -> None:
        pass

    def finished(self, rec: ExperimentRecord) -> None:
        pass

    def refused(self, error: ProposalRejected) -> None:
        pass

    def stopped(self, why: str) -> None:
        pass


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Loop:
    def __init__(self, forge: LocalForge, runner: Runner | None, proposer: Proposer | None, policy: Policy,
                 target: TargetConfig, on_run: RunHook | None = None, metric: Metric = DEFAULT_METRIC,
                 executor: Executor | None = None, in_flight: int | None = None, status_file: Path | None = None):
        """`executor`: where runs are made (default: `runner`, in this thread); `in_flight`: experiments open at
        once (default: the executor's slots); `status_file`: where the state of the campaign is written for
        `arbot status` while it runs."""
        self.forge, self.proposer, self.target = forge, proposer, target
        self.executor = executor or Inline(runner, on_run)
        self.in_flight = in_flight or self.executor.slots
        self.rules = lc.Rules.of(policy, target, metric)
        self.status_file = status_file
        self._inflight: dict[str, RunSpec] = {}  # key -> spec, for every run handed to the executor
        self._awaiting: dict[str, set[str]] = {}  # experiment id -> the runs its last Run action asked for
        self._losses: dict[str, int] = {}  # key -> times lost in a row by this process
        self._resumed = False
        self._started, self._made = time.monotonic(), 0

    # --- campaigns -------------------------------------------------------------------------------------------
    def measure_champion(self) -> ChampionRecord:
        """The current champion, with the runs its noise floor needs (the policy's baseline)."""
        self._resume()
        sha = self.forge.champion()
        while True:
            self._floor()
            if not self.forge.champion_record(sha).pending:
                return self.forge.champion_record(sha)
            self._collect(self.executor.poll(POLL_SECONDS))

    def campaign(self, limit: int | None, report: Report | None = None) -> list[ExperimentRecord]:
        """Finish the experiments left unfinished, then open new ones, up to `in_flight` at once, until `limit`
        experiments (finished ones that were unfinished, and proposals, refused ones included) have been taken
        up (None: until interrupted). Returns the experiments finished, in the order they finished.

        The champion's noise floor is measured as part of it: experiments are proposed at once, and a candidate's
        first run goes beside the floor's last (the policy screens it against two champion runs), so no worker
        waits for the floor to end."""
        report = report or Quiet()
        self._resume()
        taken = len(self._active())
        refused_in_a_row, proposing, finished = 0, True, []
        start: str | None = self.forge.champion()  # reported once its floor is made
        while True:
            self._floor()
            if start and lc.floor_met(champion := self.forge.champion_record(start), self.rules):
                report.measured(champion)
                start = None
            done = self._advance_all()
            for rec in done:
                finished.append(rec)
                report.finished(rec)
            opened = 0
            while proposing and (limit is None or taken < limit) and lc.has_room(self._active(), self.in_flight):
                try:
                    self._open()
                    opened += 1
                    refused_in_a_row = 0
                except SpendCapReached as e:
                    proposing = False
                    report.stopped(f"stopped proposing: {e}")
                except ProposalRejected as e:
                    refused_in_a_row += 1
                    report.refused(e)
                    if refused_in_a_row >= lc.MAX_REFUSED:
                        proposing = False
                        report.stopped(f"stopped: {refused_in_a_row} proposals in a row were refused")
                taken += 1
            if not self._inflight:
                waiting = [r.id for r in self._active() if self._ready(r)]
                if not waiting:
                    return finished
                if opened or done:
                    continue  # opened or finished just now: advance them (one deferred on a finished one may go on)
                raise RuntimeError(f"{', '.join(waiting)} wait for runs no executor is making (a bug: please report "
                                   "it with `arbot log`)")
            self._write_status()
            self._collect(self.executor.poll(POLL_SECONDS))

    def step(self) -> ExperimentRecord:
        """Finish an unfinished experiment if there is one, else propose and run a new one."""
        active = self._active()
        return self.advance(active[0] if active else self._open())

    def approve(self, experiment_id: str) -> ExperimentRecord:
        """A human's approval of a held win: merged now, or, when the champion moved meanwhile, closed as stale
        and measured again (the fresh experiment is left for the next `arbot run`). Returns the approved record."""
        rec = next((r for r in self.forge.experiments() if r.id == experiment_id), None)
        if rec is None or rec.review != "needed":
            raise ValueError(f"{experiment_id} is not a win waiting for review")
        rec.review = "approved"
        self.forge.save(rec)
        self.advance(rec, train=False)
        return next(r for r in self.forge.experiments() if r.id == experiment_id)

    def advance(self, rec: ExperimentRecord, train: bool = True) -> ExperimentRecord:
        """Carry out the lifecycle's actions for `rec` until it is finished (or, with train=False, until it
        needs a run). Returns the experiment it ended on (a replay's fresh one, when the champion moved)."""
        if not train:
            return self._advance(rec, train=False)
        self._resume()
        while True:
            if self._ready(rec):
                rec = self._advance(rec)
                if not lc.is_active(rec):
                    return rec
            self._collect(self.executor.poll(POLL_SECONDS))
            rec = self._record(rec.id) or rec

    # --- one pass over the records ------------------------------------------------------------------------
    def _active(self) -> list[ExperimentRecord]:
        return [r for r in self.forge.experiments() if lc.is_active(r)]

    def _ready(self, rec: ExperimentRecord) -> bool:
        """Whether `rec` can be advanced: the runs its last decision asked for are all in (a decision is made on
        all of them, as with one worker), or the champion moved (the lifecycle says whether they still matter)."""
        return not self._awaiting.get(rec.id) or rec.parent != self.forge.champion()

    def _record(self, experiment_id: str) -> ExperimentRecord | None:
        return next((r for r in self.forge.experiments() if r.id == experiment_id), None)

    def _floor(self) -> None:
        """Ask for the runs the current champion's noise floor still needs."""
        sha = self.forge.champion()
        action = lc.noise_floor(self.forge.champion_record(sha), self.rules)
        if isinstance(action, lc.ChampionFails):
            raise ChampionBroken(action.reason)
        if isinstance(action, lc.Run):
            self._submit(action.specs, None)

    def _advance_all(self) -> list[ExperimentRecord]:
        """Advance every active experiment as far as it goes without new results; the ones that finished."""
        finished = []
        for rec in self._active():
            if not self._ready(rec):
                continue
            end = self._advance(rec)
            stale = [rec] if end.id != rec.id else []  # a replay: the stale one is finished, its fresh one is active
            finished += stale + ([end] if not lc.is_active(end) else [])
        return finished

    def _advance(self, rec: ExperimentRecord, train: bool = True) -> ExperimentRecord:
        """Carry out `rec`'s actions until it needs runs (asked for; none with train=False), waits, or is
        finished. Returns the experiment it ended on."""
        while True:
            action = lc.next_action(rec, self.forge.champion_record(rec.parent), self.forge.champion(), self.rules,
                                    self.forge.removes_code(rec), self.forge.moved_branch(rec),
                                    lc.ahead_of(rec, self._active()))
            if isinstance(action, lc.Run):
                if train:
                    self._submit(action.specs, rec)
                return rec
            if isinstance(action, (lc.Wait, lc.Defer, *lc.FINISHED)):
                return rec
            rec = self._carry_out(action, rec)

    def _carry_out(self, action: lc.Action, rec: ExperimentRecord) -> ExperimentRecord:
        if isinstance(action, lc.Decide):
            self._drop_pending(rec)
            rec.evidence, rec.decision, rec.review, rec.finished_at = action.evidence, action.decision, action.review, now()
            self.forge.save(rec)
        elif isinstance(action, lc.Replay):
            return self._replay(rec, action.onto)
        elif isinstance(action, lc.Promote):
            merge = self.forge.promote(rec, action.trailers)
            self.forge.save(lc.champion_after(rec, merge))
            rec.merged_as = merge
            self.forge.save(rec)
        elif isinstance(action, lc.ChampionFails):
            raise ChampionBroken(action.reason)
        else:
            raise TypeError(f"the local executor cannot carry out {action!r}")
        return rec

    def _replay(self, stale: ExperimentRecord, champion: str) -> ExperimentRecord:
        files = self.forge.replay_files(stale, champion)
        fresh = None
        if files is not None:
            fresh = self.forge.open_experiment(stale.proposal.model_copy(update={"files": files}), champion, now())
        self._drop_pending(stale)
        stale.decision, stale.finished_at = lc.stale_decision(stale, champion, fresh.id if fresh else None), now()
        self.forge.save(stale)
        return fresh or stale

    def _open(self) -> ExperimentRecord:
        champion = self.forge.champion()
        proposal = propose(self.forge, self.proposer, self.target, champion, self.rules.metric)
        return self.forge.open_experiment(proposal, champion, now())

    # --- runs: noted pending, handed to the executor, collected ------------------------------------------------
    def _owner(self, spec: RunSpec) -> ExperimentRecord | ChampionRecord | None:
        return self.forge.champion_record(spec.commit) if spec.role == "champion" else self._record(spec.role)

    def _submit(self, specs: tuple[RunSpec, ...], rec: ExperimentRecord | None) -> None:
        """Hand each run to the executor and note it pending on the record it is for (saved at once)."""
        for spec in specs:
            owner = rec if rec is not None and spec.role == rec.id else self._owner(spec)
            self._hand_over(spec, owner)
        if rec is not None:
            self._awaiting[rec.id] = {s.key for s in specs}

    def _hand_over(self, spec: RunSpec, owner: ExperimentRecord | ChampionRecord) -> None:
        timing = champion_timing(self.forge.champion_record(spec.champion).runs, self.target.budget_seconds)
        noted = self.executor.submit(spec.model_copy(update={"requested_at": now()}), timing)
        owner.pending = [s for s in owner.pending if s.key != spec.key] + [noted]
        self.forge.save(owner)
        self._inflight[noted.key] = noted

    def _collect(self, outcomes: list[Outcome]) -> None:
        """Move each ended run into its record: a result joins the runs, a lost run is noted and asked for again.
        One whose record no longer waits for it (decided meanwhile) is dropped."""
        for outcome in outcomes:
            spec = outcome.spec
            owner = self._owner(spec)
            wanted = owner is not None and any(s.key == spec.key for s in owner.pending)
            if isinstance(outcome, Lost) and wanted:
                self._lost(outcome, owner)  # asked for again: still in flight, still awaited
                continue
            self._inflight.pop(spec.key, None)
            for waiting in self._awaiting.values():
                waiting.discard(spec.key)
            if wanted and isinstance(outcome, Finished):
                self._losses.pop(spec.key, None)
                owner.pending = [s for s in owner.pending if s.key != spec.key]
                owner.runs.append(outcome.result.model_copy(update={"splits": spec.splits}))  # as asked
                self._made += 1
                self.forge.save(owner)

    def _lost(self, lost: Lost, owner: ExperimentRecord | ChampionRecord) -> None:
        spec = lost.spec
        owner.lost.append(LostRun(key=spec.key, job=lost.job, node=lost.node, reason=lost.reason, at=now()))
        self.forge.save(owner)
        self._losses[spec.key] = self._losses.get(spec.key, 0) + 1
        if self._losses[spec.key] >= MAX_LOST:
            raise RunsLost(f"the run {spec.key} was lost {MAX_LOST} times in a row, last as {lost.job} on "
                           f"{lost.node or 'an unknown node'}: {lost.reason}. The machine is failing, not the "
                           "candidate: fix the executor (see the lost runs in `arbot log`), then `arbot run` again")
        self._hand_over(spec, owner)

    def _drop_pending(self, rec: ExperimentRecord) -> None:
        """A decided experiment waits for nothing: its runs still in flight are cancelled and will not count."""
        for spec in rec.pending:
            self.executor.cancel(spec)
            self._inflight.pop(spec.key, None)
        rec.pending = []
        self._awaiting.pop(rec.id, None)

    def _resume(self) -> None:
        """Once per loop: runs noted pending by an earlier process are taken up again by the executor, or made
        again; those of experiments decided meanwhile are dropped."""
        if self._resumed:
            return
        self._resumed = True
        owners: list[ExperimentRecord | ChampionRecord] = [self.forge.champion_record(self.forge.champion())]
        for rec in self.forge.experiments():
            if lc.is_active(rec):
                owners += [rec, self.forge.champion_record(rec.parent)]
            elif rec.pending:
                rec.pending = []
                self.forge.save(rec)
        seen = set()
        for owner in owners:
            for spec in list(owner.pending):
                if spec.key in seen:
                    continue
                seen.add(spec.key)
                if self.executor.resume(spec):
                    self._inflight[spec.key] = spec
                else:
                    self._hand_over(spec, self._owner(spec))
                if isinstance(owner, ExperimentRecord):
                    self._awaiting.setdefault(owner.id, set()).add(spec.key)

    # --- progress ---------------------------------------------------------------------------------------
    def _write_status(self) -> None:
        """The campaign as `arbot status` shows it while this loop runs (written atomically)."""
        if self.status_file is None:
            return
        hours = (time.monotonic() - self._started) / 3600
        state = {"pid": os.getpid(), "updated_at": now(), "in_flight": self.in_flight,
                 "busy": self.executor.busy(), "queued": len(self._inflight) - len(self.executor.busy()),
                 "runs_made": self._made, "runs_per_hour": round(self._made / hours, 1) if hours > 0 else None}
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state) + "\n")
        tmp.replace(self.status_file)


def export_results(forge: LocalForge, path: Path, metric: Metric) -> None:
    """results.tsv: autoresearch's columns (commit, the metric, memory_gb, status, description), then arbot's own."""
    path.write_text(results_table(forge.experiments(), metric))


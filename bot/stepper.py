"""The stepper: one program carries out the lifecycle's actions (bot.core.lifecycle) in every mode.

It gathers the records (git notes, through the store), asks `next_action` of every active experiment, and does
what it says through two narrow ports:

    executor  where runs are made (bot.executors: a worker pool, Slurm jobs, GitHub Actions workflow runs):
              submit, resume, poll, cancel
    surface   what people see and what merges (bot.surfaces: the terminal and local git, or pull requests,
              check runs, comments and the GitHub merge)

Local, Slurm and GitHub mode are this one program with other ports: `arbot run` (bot.loop) steps and waits on its
executor between steps; GitHub mode (bot.server.driver) steps once per webhook event. The stepper decides
nothing, not even when to decide: a decision waits for every run its request asked for (the lifecycle's rule).

Every run is noted pending on its record (saved) before it is submitted, and every result is saved as it
arrives, so a process that stops is taken up by the next: runs in flight are resumed or made again, runs
already made are kept, nothing is proposed twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from bot.core import lifecycle as lc
from bot.core.records import ChampionRecord, Decision, ExperimentRecord, LostRun, RunResult, RunSpec
from bot.executors import MAX_LOST, Executor, Finished, Lost, Outcome
from bot.forges.local import LocalForge
from bot.proposers.base import ProposalError, Proposer, SearchExhausted
from bot.proposers.context import propose
from bot.proposers.failures import ProposalRejected, SpendCapReached
from runner.config import TargetConfig
from runner.job import champion_timing

log = logging.getLogger("arbot.stepper")


class RunsLost(RuntimeError):
    """The executor lost the same run MAX_LOST times (in this process; with other writers, in its record): the
    machine, not the candidate, is failing."""

    def __init__(self, message: str, spec: RunSpec):
        super().__init__(message)
        self.spec = spec


class Surface(Protocol):
    """What people see and what merges (bot.surfaces.local, bot.surfaces.github)."""

    shared: bool  # whether other writers change the records meanwhile (GitHub mode: another server, a workflow)

    def sync(self) -> dict[str, str]:
        """Bring the records up to date with the surface; the wins merged outside the stepper (GitHub's
        auto-merge, a human's merge button) since: experiment id -> merge commit."""
        ...

    def tampered(self, rec: ExperimentRecord) -> str | None:
        """Why what would be merged is no longer the experiment's commit, or None."""
        ...

    def why_not_propose(self) -> str | None:
        """Why no experiment may be opened now (paused, a daily cap), or None."""
        ...

    def opened(self, rec: ExperimentRecord, proposed: bool) -> None: ...  # a new experiment (proposed, or a replay)
    def measuring(self, rec: ExperimentRecord, run: lc.Run) -> None: ...  # its runs were submitted
    def held(self, rec: ExperimentRecord, why: str) -> None: ...  # a win waits for a human
    def closed(self, rec: ExperimentRecord) -> None: ...  # a final non-win

    def promote(self, rec: ExperimentRecord, trailers: dict[str, str]) -> str | None:
        """Merge the win with these trailers: the merge commit, or None while the merge is still to come."""
        ...

    def champion_fails(self, rec: ExperimentRecord | None, reason: str) -> None: ...
    def notes_skipped(self, rec: ExperimentRecord, lines: list[str]) -> None: ...  # forged notes about it, ignored
    def refused(self, error: ProposalRejected) -> None: ...  # a proposal refused before any branch was made
    def stopped(self, why: str) -> None: ...  # proposing stopped for good


class Tracker(Protocol):
    """Where runs and decisions are also logged as they happen (an experiment tracker: bot.tracking). Its methods
    never raise: a tracker that is down never stops research, and what it missed is logged later from the notes."""

    def ran(self, owner: ExperimentRecord | ChampionRecord, result: RunResult) -> None: ...  # a run joined a record
    def decided(self, rec: ExperimentRecord) -> None: ...  # a decision (or a merge) was noted


class NoTracker:
    def ran(self, owner: ExperimentRecord | ChampionRecord, result: RunResult) -> None:
        pass

    def decided(self, rec: ExperimentRecord) -> None:
        pass


@dataclass
class Filled:
    """What one `fill` did: the experiments opened, the proposals tried (refused ones included), and why
    proposing stopped for good, if it did (`failed`: because the proposer failed; an exhausted search space, a
    spend cap or refusals are no failure)."""

    opened: list[ExperimentRecord] = field(default_factory=list)
    tries: int = 0
    stopped: str | None = None
    failed: bool = False


def times_lost(spec: RunSpec, owner: ExperimentRecord | ChampionRecord) -> int:
    """How often the run was lost, by every process (its record keeps each loss)."""
    return sum(lost.key == spec.key for lost in owner.lost)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Stepper:
    def __init__(self, store: LocalForge, executor: Executor, surface: Surface, proposer: Proposer | None,
                 target: TargetConfig, rules: lc.Rules, slots: int, keep: Callable[[], None] = lambda: None,
                 tracker: Tracker | None = None):
        """`slots`: experiments open at once (lc.has_room); `keep`: called before each experiment is advanced
        (GitHub mode renews its lease there); `tracker`: where runs and decisions are also logged."""
        self.store, self.executor, self.surface, self.proposer = store, executor, surface, proposer
        self.tracker = tracker or NoTracker()
        self.target, self.rules, self.slots, self.keep = target, rules, slots, keep
        self.in_flight: dict[str, RunSpec] = {}  # key -> spec, for every run handed to the executor
        self._taken_up = False  # whether this process has looked for runs noted pending that it is not making
        self._said: set[tuple[str, tuple[str, ...]]] = set()  # (experiment id, skipped notes) said on it already
        self._exhausted: tuple[str, str] | None = None  # (champion, why) when the search space around it ran out
        self._losses: dict[str, int] = {}  # key -> times lost in this process (shared surfaces count the records')
        self.made = 0  # runs whose results this process took in

    # --- one step ---------------------------------------------------------------------------------------------
    def step(self, wait: float) -> list[ExperimentRecord]:
        """Take in what changed outside (merges, runs noted pending elsewhere, runs that ended: waiting up to `wait`
        seconds for the first), ask for the champion's noise floor, and advance every active experiment as far as
        it goes. Returns the experiments that finished."""
        for experiment_id, merge in self.surface.sync().items():
            if (rec := self.record(experiment_id)) is not None:
                self.record_merge(rec, merge)
        self.say_skipped()
        self.take_up()
        self.collect(self.executor.poll(wait))
        self.floor()
        return self._advance_all()

    def say_skipped(self) -> None:
        """Notes the store skipped (unsigned, edited, a second record of an id) that concern an active experiment:
        said on it once per process. They change nothing: the store reads only what the bot signed."""
        for rec in self.active():
            if (lines := self.store.skipped_about(rec)) and (rec.id, tuple(lines)) not in self._said:
                self._said.add((rec.id, tuple(lines)))
                self.surface.notes_skipped(rec, lines)

    def _advance_all(self) -> list[ExperimentRecord]:
        """Advance every active experiment, again while one finishes or the champion moves (that may let one it
        deferred go on, or make others stale)."""
        finished: list[ExperimentRecord] = []
        while True:
            champion, ended = self.store.champion(), []
            for rec in self.active():
                self.keep()
                end = self.advance(rec)
                ended += ([rec] if end.id != rec.id else []) + ([end] if not lc.is_active(end) else [])
            finished += ended
            if not ended and self.store.champion() == champion:
                return finished

    def advance(self, rec: ExperimentRecord, train: bool = True, defer: bool = True) -> ExperimentRecord:
        """Carry out `rec`'s actions until it needs runs (submitted; not with train=False), waits, or is finished.
        `defer=False`: confirmed now even when another experiment on its champion is ahead (`use_free_workers`).
        Returns the experiment it ended on (a replay's fresh one, when the champion moved)."""
        while True:
            if getattr(self.rules.policy, "learns", False):  # the records are read only for a policy that learns
                self.rules = lc.learned(self.rules, self.store.experiments())
            action = lc.next_action(rec, self.store.champion_record(rec.parent), self.store.champion(), self.rules,
                                    self.store.removes_code(rec), self.surface.tampered(rec),
                                    lc.ahead_of(rec, self.active()) if defer else None)
            if isinstance(action, lc.Run):
                if train:
                    for spec in action.specs:
                        self._hand_over(spec)
                    self.surface.measuring(rec, action)
                return rec
            if isinstance(action, (lc.Wait, lc.Defer, lc.Done)):
                return rec
            if isinstance(action, lc.Decide):
                self._decide(rec, action)
            elif isinstance(action, lc.Replay):
                rec = self._replay(rec, action.onto)
            elif isinstance(action, lc.Promote):
                if (merge := self.surface.promote(rec, action.trailers)) is not None:
                    self.record_merge(rec, merge)
                return rec
            elif isinstance(action, lc.Hold):
                self.surface.held(rec, action.why)
                return rec
            elif isinstance(action, lc.Close):
                self.surface.closed(rec)
                return rec
            elif isinstance(action, lc.ChampionFails):
                self.surface.champion_fails(rec, action.reason)
                return rec

    # --- what the actions change in the records ------------------------------------------------------------------
    def _decide(self, rec: ExperimentRecord, action: lc.Decide) -> None:
        self._drop_pending(rec)
        rec.evidence, rec.decision, rec.review, rec.finished_at = action.evidence, action.decision, action.review, now()
        self.store.save(rec)
        self.tracker.decided(rec)
        log.info("%s: %s (%s) %s", rec.id, rec.decision.verdict, rec.decision.rule, rec.decision.reason)

    def _replay(self, stale: ExperimentRecord, champion: str) -> ExperimentRecord:
        """Measured on an old champion: never merged. Its change is opened again as a new experiment on the new
        champion (when it still applies), and the stale one is closed."""
        # an adopted PR is measured again once its author rebases it (a push: a new experiment), never as a bot branch
        files = self.store.replay_files(stale, champion) if stale.pr is None else None
        fresh = None
        if files is not None:
            fresh = self.store.open_experiment(stale.proposal.model_copy(update={"files": files}), champion, now())
            self.surface.opened(fresh, proposed=False)
        self._drop_pending(stale)
        stale.decision, stale.finished_at = lc.stale_decision(stale, champion, fresh.id if fresh else None), now()
        self.store.save(stale)
        self.tracker.decided(stale)
        self.surface.closed(stale)
        return fresh or stale

    def abandon(self, old: str) -> list[ExperimentRecord]:
        """The champion was moved by hand from `old` (it followed your branch before it had a win of its own):
        the experiments still open on `old` are closed as stale and not measured again, since they change code
        that was replaced (and `old` may not train at all: a failed first run). Returns them."""
        closed = []
        for rec in self.active():
            if rec.parent == old and rec.decision is None:
                self._drop_pending(rec)
                rec.decision = Decision(verdict="rejected", rule="stale", reason=(
                    f"the champion followed your branch from {old[:12]} to {self.store.champion()[:12]} before this "
                    "was decided: proposed on code that was replaced, it is not measured again"))
                rec.finished_at = now()
                self.store.save(rec)
                self.tracker.decided(rec)
                closed.append(rec)
        return closed

    def withdraw(self, rec: ExperimentRecord, rule: str, reason: str) -> None:
        """An adopted PR moved to a new head (rule `superseded`: the new head is an experiment of its own) or was
        closed (`withdrawn`) before `rec` was merged: closed with that rule, its runs kept, those in flight
        cancelled."""
        self._drop_pending(rec)
        rec.decision, rec.finished_at = Decision(verdict="rejected", rule=rule, reason=reason), now()
        self.store.save(rec)
        self.tracker.decided(rec)

    def record_merge(self, rec: ExperimentRecord, merge: str) -> None:
        """A win merged as `merge`: its runs measure the new champion (its tree is the candidate's)."""
        if rec.merged_as != merge:
            rec.merged_as = merge
            self.store.save(rec)
            self.tracker.decided(rec)
        if not self.store.champion_record(merge).runs:
            self.store.save(lc.champion_after(rec, merge))
        log.info("%s merged as %s: it is the champion's measurement now", rec.id, merge[:12])

    def approve(self, rec: ExperimentRecord, train: bool = True) -> ExperimentRecord:
        """A human's approval of a held win: merged now or, when the champion moved meanwhile, closed as stale and
        measured again (its runs submitted only with `train`)."""
        if rec.review != "needed":
            raise ValueError(f"{rec.id} is not a win waiting for review")
        rec.review = "approved"
        self.store.save(rec)
        self.advance(rec, train=train)
        return self.record(rec.id) or rec

    # --- proposing ---------------------------------------------------------------------------------------------
    def fill(self, tries: int | None = None) -> Filled:
        """Open experiments while there is room (lc.has_room), at most `tries` proposals (None: no limit), unless
        the surface says not now. A refused proposal counts as a try; MAX_REFUSED in a row, the LLM's spend cap, an
        exhausted search space or any other proposer error stop proposing for good (never the experiments open)."""
        filled, refused = Filled(), 0
        while (tries is None or filled.tries < tries) and lc.has_room(self.active(), self.slots):
            if (why := self.surface.why_not_propose() or self.exhausted()) is not None:
                log.warning("not proposing: %s", why)
                break
            self.keep()
            filled.tries += 1
            try:
                filled.opened.append(self.open())
                refused = 0
            except SpendCapReached as e:
                filled.stopped = f"stopped proposing: {e}"
            except ProposalRejected as e:
                refused += 1
                self.surface.refused(e)
                if refused >= lc.MAX_REFUSED:
                    filled.stopped = f"stopped: {refused} proposals in a row were refused"
            except SearchExhausted as e:
                filled.stopped = f"stopped proposing: {e}"
                self._exhausted = (self.store.champion(), filled.stopped)
            except ProposalError as e:
                filled.stopped, filled.failed = f"stopped proposing: the proposer failed: {e}", True
            if filled.stopped:
                self.surface.stopped(filled.stopped)
                break
        self.use_free_workers()
        return filled

    def use_free_workers(self) -> None:
        """Workers left free while no experiment may be opened (as many are open as lc.has_room allows, most of them
        deferred behind one being confirmed): the deferred ones are confirmed beside it, oldest first, until every
        worker has a run. Two confirmed at once may cost the later one a replay when the first wins; an idle worker
        costs that run for nothing."""
        active = self.active()
        if lc.has_room(active, self.slots):
            return
        for rec in [r for r in active if lc.deferred(r, active)]:
            if len(self.in_flight) >= self.slots:
                return
            self.keep()
            self.advance(rec, defer=False)

    def exhausted(self, champion: str | None = None) -> str | None:
        """Why nothing is proposed on the champion (default: the current one): its search space ran out (a new
        champion, e.g. a win merged meanwhile or a hand edit brought in, opens a new one; so does a restarted
        process)."""
        if self._exhausted is not None and self._exhausted[0] == (champion or self.store.champion()):
            return self._exhausted[1]
        return None

    def open(self) -> ExperimentRecord:
        """One experiment proposed on the current champion, shown, and its first runs asked for."""
        champion = self.store.champion()
        rec = self.store.open_experiment(propose(self.store, self.proposer, self.target, champion, self.rules.metric),
                                         champion, now())
        self.surface.opened(rec, proposed=True)
        return self.advance(rec)

    # --- runs: noted pending, handed to the executor, collected ----------------------------------------------
    def floor(self) -> None:
        """Ask for the runs the current champion's noise floor still needs."""
        action = lc.noise_floor(self.store.champion_record(self.store.champion()), self.rules)
        if isinstance(action, lc.ChampionFails):
            self.surface.champion_fails(None, action.reason)
        elif isinstance(action, lc.Run):
            for spec in action.specs:
                self._hand_over(spec)

    def _owner(self, spec: RunSpec) -> ExperimentRecord | ChampionRecord | None:
        return self.store.champion_record(spec.commit) if spec.role == "champion" else self.record(spec.role)

    def _hand_over(self, spec: RunSpec, owner: ExperimentRecord | ChampionRecord | None = None) -> None:
        """Note the run pending on its record (saved first, so that a process stopped right after the submission
        never submits it twice), hand it to the executor with the champion's timing, note what the executor
        named it."""
        owner = owner or self._owner(spec)
        spec = spec.model_copy(update={"requested_at": now()})
        owner.pending = [s for s in owner.pending if s.key != spec.key] + [spec]
        self.store.save(owner)
        timing = champion_timing(self.store.champion_record(spec.champion).runs, self.target.budget_seconds)
        noted = self.executor.submit(spec, timing)
        if noted != spec:
            owner.pending = [s for s in owner.pending if s.key != spec.key] + [noted]
            self.store.save(owner)
        self.in_flight[noted.key] = noted

    def again(self, rec: ExperimentRecord, refuse: Callable[[RunSpec], str | None] = lambda spec: None
              ) -> tuple[list[str], dict[str, str]]:
        """Hand the runs still pending for `rec` and its champion to the executor again (`/arbot rerun`), each
        unless `refuse(spec)` says why not (GitHub mode: only a run that ended without a result): only the new
        attempt's result counts. (the keys handed over again, {key: why not} for the others)."""
        again, refused = [], {}
        for owner in (rec, self.store.champion_record(rec.parent)):
            for spec in list(owner.pending):
                if (why := refuse(spec)) is not None:
                    refused[spec.key] = why
                    continue
                self.executor.cancel(spec)
                self._hand_over(spec, owner)
                again.append(spec.key)
        return again, refused

    def collect(self, outcomes: list[Outcome]) -> None:
        """Move each ended run into its record: a result joins the runs, a lost run is noted and submitted again.
        One its record no longer waits for (decided meanwhile) is dropped. A run lost MAX_LOST times raises RunsLost,
        once every outcome is in."""
        gave_up: list[RunsLost] = []
        for outcome in outcomes:
            spec = outcome.spec
            owner = self._owner(spec)
            wanted = owner is not None and any(s.key == spec.key for s in owner.pending)
            self.in_flight.pop(spec.key, None)  # a lost run is handed over again (in flight again), or raises
            if isinstance(outcome, Lost) and wanted:
                try:
                    self._lost(outcome, owner)
                except RunsLost as e:
                    gave_up.append(e)
                continue
            if wanted and isinstance(outcome, Finished):
                self._losses.pop(spec.key, None)
                owner.pending = [s for s in owner.pending if s.key != spec.key]
                owner.runs.append(result := outcome.result.model_copy(update={"splits": spec.splits}))  # as asked
                self.made += 1
                self.store.save(owner)
                self.tracker.ran(owner, result)
        if gave_up:
            raise gave_up[0]

    def _lost(self, lost: Lost, owner: ExperimentRecord | ChampionRecord) -> None:
        spec = lost.spec
        owner.lost.append(LostRun(key=spec.key, job=lost.job, node=lost.node, reason=lost.reason, at=now()))
        self.store.save(owner)
        self._losses[spec.key] = self._losses.get(spec.key, 0) + 1
        if (times_lost(spec, owner) if self.surface.shared else self._losses[spec.key]) >= MAX_LOST:
            raise RunsLost(f"the run {spec.key} was lost {MAX_LOST} times, last as {lost.job} on "
                           f"{lost.node or 'an unknown node'}: {lost.reason}. The machine is failing, not the "
                           "candidate: fix the executor (see the lost runs in `arbot log`), then run again", spec)
        self._hand_over(spec, owner)

    def _drop_pending(self, rec: ExperimentRecord) -> None:
        """A decided experiment waits for nothing: its runs still in flight are cancelled and will not count."""
        for spec in rec.pending:
            self.executor.cancel(spec)
            self.in_flight.pop(spec.key, None)
        rec.pending = []

    def take_up(self) -> None:
        """Runs noted pending that this process is not making (noted by an earlier process, or by another writer
        in GitHub mode) are resumed by the executor, or submitted again; runs it makes that no record waits for
        any more are cancelled; a finished experiment's leftover pending runs are dropped. Once per process where
        this process is the only writer (it then notes every other pending run itself), every step where it is not."""
        if self._taken_up and not self.surface.shared:
            return
        self._taken_up = True
        owners: list[ExperimentRecord | ChampionRecord] = [self.store.champion_record(self.store.champion())]
        for rec in self.store.experiments():
            if lc.is_active(rec):
                owners += [rec, self.store.champion_record(rec.parent)]
            elif rec.pending:
                rec.pending = []
                self.store.save(rec)
        pending = {s.key: (s, owner) for owner in owners for s in owner.pending}
        for key in [k for k in self.in_flight if k not in pending]:
            self.executor.cancel(self.in_flight.pop(key))
        again = []  # every run the executor still makes is resumed before any is handed over (its slots are taken)
        for key, (spec, owner) in pending.items():
            if key in self.in_flight:
                continue
            if self.executor.resume(spec):
                self.in_flight[key] = spec
            elif not (self.surface.shared and times_lost(spec, owner) >= MAX_LOST):
                # with other writers, one lost MAX_LOST times (by any of them) waits for a human: `/arbot rerun`
                again.append((spec, owner))
        for spec, owner in again:
            self._hand_over(spec, owner)

    # --- lookups ------------------------------------------------------------------------------------------------
    def active(self) -> list[ExperimentRecord]:
        return self.store.active()

    def record(self, experiment_id: str) -> ExperimentRecord | None:
        return self.store.experiment(experiment_id)

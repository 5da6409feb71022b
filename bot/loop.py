"""`arbot run`: the stepper (bot.stepper) with the local ports, stepped until the campaign is done.

The ports: runs are made by an executor (bot.executors: one worker in this thread, a pool of workers, Slurm
jobs), and what people see and what merges is the terminal and the local git repository (bot.surfaces.local).
Between steps the loop waits on the executor for the next run to end. Up to `in_flight` experiments are open
together; the stepper and the lifecycle decide the rest, as in GitHub mode.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bot.core import lifecycle as lc
from bot.core.policy import Policy
from bot.core.records import DEFAULT_METRIC, ChampionRecord, ExperimentRecord, Metric
from bot.executors import Executor
from bot.executors.pool import Inline, RunHook
from bot.forges.local import LocalForge
from bot.proposers.base import Proposer
from bot.results import results_table
from bot.stepper import Filled, Stepper, Tracker, now
from bot.surfaces.local import LocalSurface, Quiet, Report
from runner.config import TargetConfig
from runner.job import Runner

POLL_SECONDS = 1.0  # how long one wait for an executor's news lasts before the status file is written again


class Loop:
    def __init__(self, forge: LocalForge, runner: Runner | None, proposer: Proposer | None, policy: Policy,
                 target: TargetConfig, on_run: RunHook | None = None, metric: Metric = DEFAULT_METRIC,
                 executor: Executor | None = None, in_flight: int | None = None, status_file: Path | None = None,
                 tracker: Tracker | None = None):
        """`executor`: where runs are made (default: `runner`, in this thread); `in_flight`: experiments open at
        once (default: the executor's slots); `status_file`: where the state of the campaign is written for
        `arbot status` while it runs; `tracker`: where runs and decisions are also logged (bot.stepper.Tracker)."""
        self.forge = forge
        self.executor = executor or Inline(runner, on_run)
        self.surface = LocalSurface(forge)
        self.stepper = Stepper(forge, self.executor, self.surface, proposer, target, lc.Rules.of(policy, target, metric),
                               in_flight or self.executor.slots, tracker=tracker)
        self.status_file = status_file
        self.stopped: Filled | None = None  # why the last campaign stopped proposing, if it did
        self._started = time.monotonic()

    def measure_champion(self) -> ChampionRecord:
        """The current champion, with the runs its noise floor needs (the policy's baseline)."""
        self.stepper.take_up()
        while True:
            self.stepper.floor()
            if not (champion := self.forge.champion_record(self.forge.champion())).pending:
                return champion
            self.stepper.collect(self.executor.poll(POLL_SECONDS))

    def campaign(self, limit: int | None, report: Report | None = None) -> list[ExperimentRecord]:
        """Finish the experiments left unfinished, then open new ones, up to `in_flight` at once, until `limit`
        experiments (finished ones that were unfinished, and proposals, refused ones included) have been taken
        up (None: until interrupted), or until proposing stops for good (`self.stopped` says why: the experiments
        open are finished first). Returns the experiments finished, in the order they finished.

        The champion's noise floor is measured as part of it: experiments are proposed at once, and their screen
        runs go beside the floor's runs (lifecycle._more_runs), so no worker waits for the floor to end."""
        self.surface.report = report = report or Quiet()
        self.stopped = None
        taken = len(self.stepper.active())
        proposing, finished, wait = True, [], 0.0
        start: str | None = self.forge.champion()  # reported once its floor is made
        while True:
            done = self.stepper.step(wait)
            if start and lc.floor_met(champion := self.forge.champion_record(start), self.stepper.rules):
                report.measured(champion)
                start = None
            for rec in done:
                finished.append(rec)
                report.finished(rec)
            filled = self.stepper.fill(None if limit is None else max(limit - taken, 0)) if proposing else None
            if filled is not None:
                taken += filled.tries
                proposing = filled.stopped is None
                self.stopped = None if proposing else filled
            if not self.stepper.in_flight:
                if not self.stepper.active():
                    return finished
                if done or (filled is not None and filled.opened):
                    wait = 0.0  # finished or opened just now: step again (one deferred on a finished one may go on)
                    continue
                raise RuntimeError(f"{', '.join(r.id for r in self.stepper.active())} wait for runs no executor is "
                                   "making (a bug: please report it with `arbot log`)")
            self._write_status()
            wait = POLL_SECONDS

    def step(self) -> ExperimentRecord:
        """Finish an unfinished experiment if there is one, else propose and run a new one."""
        self.stepper.take_up()
        active = self.stepper.active()
        return self.advance(active[0] if active else self.stepper.open())

    def approve(self, experiment_id: str) -> ExperimentRecord:
        """A human's approval of a held win: merged now, or, when the champion moved meanwhile, closed as stale and
        measured again (the fresh experiment is left for the next `arbot run`). Returns the approved record."""
        rec = self.stepper.record(experiment_id)
        if rec is None:
            raise ValueError(f"{experiment_id} is not a win waiting for review")
        return self.stepper.approve(rec, train=False)

    def advance(self, rec: ExperimentRecord) -> ExperimentRecord:
        """Carry out the lifecycle's actions for `rec` until it is finished. Returns the experiment it ended on (a
        replay's fresh one, when the champion moved)."""
        while True:
            rec = self.stepper.advance(rec)
            if not lc.is_active(rec):
                return rec
            self.stepper.collect(self.executor.poll(POLL_SECONDS))
            rec = self.stepper.record(rec.id) or rec

    def _write_status(self) -> None:
        """The campaign as `arbot status` shows it while this loop runs (written atomically)."""
        if self.status_file is None:
            return
        hours = (time.monotonic() - self._started) / 3600
        made, busy = self.stepper.made, self.executor.busy()
        state = {"pid": os.getpid(), "updated_at": now(), "in_flight": self.stepper.slots, "busy": busy,
                 "queued": len(self.stepper.in_flight) - len(busy),
                 "runs_per_hour": round(made / hours, 1) if hours > 0 else None, "runs_made": made,
                 "blocked": getattr(self.executor, "blocked", dict)()}  # only a cluster's jobs wait on its nodes
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state) + "\n")
        tmp.replace(self.status_file)


def export_results(forge: LocalForge, path: Path, metric: Metric) -> None:
    """results.tsv: autoresearch's columns (commit, the metric, memory_gb, status, description), then arbot's own."""
    path.write_text(results_table(forge.experiments(), metric))


"""The local executor: `arbot run` carries out the lifecycle's actions (bot.lifecycle) on a git repository.

It gathers the records (git notes), asks `next_action`, does what it says (a runner job, a merge, a note) and
saves the result at once, so an interrupted loop resumes where it stopped: runs already made are kept, a
decided win that was not merged yet is merged, nothing is proposed twice. It decides nothing itself.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from bot import lifecycle as lc
from bot.forges.local import LocalForge
from bot.policy import Policy
from bot.proposers.base import Proposer
from bot.proposers.context import propose
from bot.records import DEFAULT_METRIC, ChampionRecord, ExperimentRecord, Metric, RunSpec
from bot.results import results_table
from runner.config import TargetConfig
from runner.job import Runner

RunHook = Callable[[str, str, int], Callable[[dict], None] | None]  # (label, commit, seed) -> progress callback


class ChampionBroken(RuntimeError):
    """The champion itself does not train and score: nothing can be compared against it."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Loop:
    def __init__(self, forge: LocalForge, runner: Runner, proposer: Proposer | None, policy: Policy,
                 target: TargetConfig, on_run: RunHook | None = None, metric: Metric = DEFAULT_METRIC):
        self.forge, self.runner, self.proposer, self.target = forge, runner, proposer, target
        self.rules = lc.Rules.of(policy, target, metric)
        self.on_run = on_run or (lambda label, commit, seed: None)

    def measure_champion(self) -> ChampionRecord:
        """The current champion, with the runs its noise floor needs (the policy's baseline)."""
        sha = self.forge.champion()
        while (action := lc.noise_floor(self.forge.champion_record(sha), self.rules)) is not None:
            self._carry_out(action, None)
        return self.forge.champion_record(sha)

    def step(self) -> ExperimentRecord:
        """Finish an unfinished experiment if there is one, else propose and run a new one."""
        active = [r for r in self.forge.experiments() if lc.is_active(r)]
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
        while True:
            action = lc.next_action(rec, self.forge.champion_record(rec.parent), self.forge.champion(), self.rules,
                                    self.forge.removes_code(rec), self.forge.moved_branch(rec))
            if isinstance(action, lc.FINISHED) or (isinstance(action, lc.Run) and not train):
                return rec
            rec = self._carry_out(action, rec)

    def _carry_out(self, action: lc.Action, rec: ExperimentRecord | None) -> ExperimentRecord | None:
        if isinstance(action, lc.Run):
            for spec in action.specs:
                self._run(spec, rec)
        elif isinstance(action, lc.Decide):
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

    def _run(self, spec: RunSpec, rec: ExperimentRecord | None) -> None:
        """One runner job; its result is saved to the experiment's or the champion's record at once."""
        target = rec if rec is not None and spec.role == rec.id else self.forge.champion_record(spec.commit)
        result = self.runner.run(spec.commit, spec.champion, seed=spec.seed, splits=tuple(spec.splits),
                                 on_progress=self.on_run(spec.role, spec.commit, spec.seed))
        target.runs.append(result.model_copy(update={"splits": spec.splits}))  # as asked, like GitHub mode
        self.forge.save(target)

    def _replay(self, stale: ExperimentRecord, champion: str) -> ExperimentRecord:
        files = self.forge.replay_files(stale, champion)
        fresh = None
        if files is not None:
            fresh = self.forge.open_experiment(stale.proposal.model_copy(update={"files": files}), champion, now())
        stale.decision, stale.finished_at = lc.stale_decision(stale, champion, fresh.id if fresh else None), now()
        self.forge.save(stale)
        return fresh or stale

    def _open(self) -> ExperimentRecord:
        champion = self.forge.champion()
        proposal = propose(self.forge, self.proposer, self.target, champion, self.rules.metric)
        return self.forge.open_experiment(proposal, champion, now())


def export_results(forge: LocalForge, path: Path, metric: Metric) -> None:
    """results.tsv: autoresearch's columns (commit, the metric, memory_gb, status, description), then arbot's own."""
    path.write_text(results_table(forge.experiments(), metric))

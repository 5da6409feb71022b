"""GitHub mode's entry points: the stepper (bot.stepper) with the GitHub ports, stepped once per event.

The ports: runs are workflow runs of the evaluate workflow (bot.executors.github_actions), what people see and
what merges are pull requests, checks, comments and the GitHub merge (bot.surfaces.github). Each entry point
runs under the lease (bot.github.lease), so two writers (`arbot serve` and the scheduled workflow, or two servers)
never step or propose at once, and each is safe to repeat: a run is noted pending before it is dispatched, the
verdict is posted when it changes, the comment is upserted, merges carry the head guard.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

import git

from bot.config import Config
from bot.core import lifecycle as lc
from bot.core.policy import Policy
from bot.core.records import Decision, ExperimentRecord, Proposal
from bot.github import adopt as adoption
from bot.executors.github_actions import GitHubActions
from bot.forges.local import LocalForge
from bot.github.forge import PULL_BRANCH, GitHubForge, GitHubForgeError
from bot.github.lease import Lease, holder_name
from bot.progress import champion_steps, stale_rate
from bot.proposers.base import Proposer
from bot.stepper import RunsLost, Stepper, Tracker, now
from bot.surfaces.github import Budget, GitHubSurface

log = logging.getLogger("arbot.github")


class Driver:
    def __init__(self, forge: GitHubForge, local: git.Repo, config: Config, proposer: Proposer, policy: Policy,
                 budget: Budget | None = None, paused: Callable[[], bool] = lambda: False,
                 holder: str | None = None, lease_wait: float = 0, tracker: Tracker | None = None):
        """`holder` names this writer on the lease; `lease_wait`: seconds to wait for another holder before giving
        up with its name; `tracker`: where runs and decisions are also logged (bot.stepper.Tracker)."""
        self.forge, self.local, self.config, self.proposer, self.budget = forge, local, config, proposer, budget
        slots = config.github.max_in_flight
        self.executor = GitHubActions(forge, slots, lambda sha: self.surface.on_default(sha), budget,
                                      before_dispatch=lambda: self.surface.flush(), pull_of=self._pull_of)
        self.surface = GitHubSurface(forge, local, config, budget, paused, recheck=self.executor.recheck)
        self.lf = self.surface.store
        self.lease = Lease(self.surface.git, local, holder or holder_name("driver"))
        self.lease_wait = lease_wait
        self._reader: LocalForge | None = None  # /healthz's own handle on the mirror (the worker writes through lf)
        self._reading = threading.Lock()
        self.stepper = Stepper(self.lf, self.executor, self.surface, proposer, config.target,
                               lc.Rules.of(policy, config.target, config.metric), slots, keep=self.lease.keep,
                               tracker=tracker)

    def sync(self) -> None:
        self.surface.fetch()

    def push_notes(self) -> None:
        self.surface.push_notes()

    def advance_all(self, runs: Iterable[int] | None = None) -> list[ExperimentRecord]:
        """Take in what GitHub reported and merged, advance every active experiment, then open new ones up to
        github.max_in_flight. What a webhook, `arbot decide` and a restart all run; safe to repeat. `runs`: the
        only workflow runs to ask GitHub about (a webhook names the one that completed); None: every run in flight
        (the catch-up timer, a restart, `arbot decide`). Returns the experiments that finished, those still active
        and those opened."""
        with self.lease.held(wait=self.lease_wait), self.surface.one_push():
            self.executor.only = None if runs is None else set(runs)
            try:
                finished = self._step()
            finally:
                self.executor.only = None
            return finished + self.stepper.active() + self.stepper.fill().opened

    def _step(self) -> list[ExperimentRecord]:
        """One step; a run lost MAX_LOST times is reported on the PRs waiting for it (it waits for `/arbot rerun`),
        and the other experiments go on."""
        try:
            return self.stepper.step(0)
        except RunsLost as e:
            log.error("%s", e)
            role, commit = str(e.spec.role), e.spec.commit
            for rec in self.stepper.active():
                if (rec.id == role or (role == "champion" and rec.parent == commit)) and (
                        pr := self.surface.find_pr(rec.branch)) is not None:
                    self.forge.comment(pr.number, f"**A run was lost**: {e}. Comment `/arbot rerun` to dispatch it "
                                       "again once the runners are fixed.")
            return self.stepper.step(0)

    def advance_pr(self, number: int) -> ExperimentRecord:
        """`arbot decide --pr N`: a step, then where the experiment of PR N stands."""
        with self.lease.held(wait=self.lease_wait), self.surface.one_push():
            self._step()
            return self._record_of(number)

    def record_merged_pr(self, number: int) -> None:
        """A PR closed as merged (auto-merge, or a human): record the win's merge before anything else runs."""
        with self.lease.held(wait=self.lease_wait), self.surface.one_push():
            self.surface.fetch()
            rec, pr = self._record_of(number), self.forge.pr(number)
            if pr.merged:
                self.stepper.record_merge(rec, pr.merge_commit_sha)

    def approve(self, number: int) -> ExperimentRecord:
        """`/arbot approve` on a held win: the same as `arbot approve` locally."""
        with self.lease.held(wait=self.lease_wait), self.surface.one_push():
            self.surface.fetch()
            rec = self._record_of(number)
            if rec.review != "needed":
                raise GitHubForgeError(f"PR #{number} ({rec.id}) is not a win waiting for review")
            return self.stepper.approve(rec)

    def adopt(self, number: int, approved_by: str | None = None,
              approved_head: str | None = None) -> ExperimentRecord | None:
        """An outside PR into champion labelled `arbot` or commented `/arbot evaluate` by `approved_by` (a user the
        dispatcher found to have write access), or opened or pushed to: its head becomes an experiment, the bot's
        own signed record pinning that commit, unless it needs an approval it lacks, its author is over a daily
        cap, it is not based on the champion or changes nothing (each said on the PR; nothing runs). A head that
        changes a path outside target.allowed_paths or a file that is not regular is an experiment rejected before
        any run. An experiment of an earlier head of the PR is closed as superseded. `approved_head`: the head a
        label approved (a push since then is not approved by it). Returns the head's experiment, or None."""
        with self.lease.held(wait=self.lease_wait), self.surface.one_push():
            self.surface.fetch()
            pr = self.forge.pr(number)
            if pr.state != "open" or pr.base.ref != self.config.run.champion_branch:
                log.info("PR #%d is %s into %s: not adopted", number, pr.state, pr.base.ref)
                return None
            fork = pr.head.repo is None or pr.head.repo.full_name != self.forge.full_name
            head = adoption.Head(number=number, author=pr.user.login, sha=pr.head.sha, title=pr.title or "",
                                 body=pr.body or "", fork=fork)
            if approved_head is not None and approved_head != head.sha:
                log.warning("PR #%d: approved by %s at %s, its head is %s now", number, approved_by, approved_head[:12],
                            head.sha[:12])
                approved_by = None
            return self._adopt(head, approved_by)

    def _adopt(self, head: adoption.Head, approved_by: str | None) -> ExperimentRecord | None:
        mine = [r for r in self.lf.experiments() if r.pr == head.number]
        if (same := next((r for r in mine if r.commit == head.sha), None)) is not None:
            return same  # adopted already (a label after a listed author's push, a redelivery)
        earlier = [r for r in mine if lc.is_active(r)]
        for old in earlier:
            self.stepper.withdraw(old, "superseded", f"PR #{head.number} moved to {head.sha[:12]} before this was "
                                                     "decided")
        if (why := adoption.approval_needed(head, approved_by, self.config.github.evaluate_authors, bool(mine))):
            return self._refuse(head, f"not measured: {why}. A maintainer labels it `arbot` or comments "
                                      "`/arbot evaluate` to have it measured.")
        if any(r.commit == head.sha for r in self.lf.experiments()):
            return self._refuse(head, f"not measured: its head {head.sha[:12]} is an experiment already")
        if (why := adoption.over_cap(self.lf.experiments(), head.author, self.config.github.author_caps,
                                     datetime.now(timezone.utc))):
            return self._refuse(head, f"not measured: {why}. Nothing runs until tomorrow (UTC); a push then, or "
                                      "a maintainer's `/arbot evaluate`, has it measured.")
        champion = self.lf.champion()
        try:
            self.local.git.cat_file("-e", f"{head.sha}^{{commit}}")
        except git.GitCommandError:
            return self._refuse(head, f"not measured yet: its head {head.sha[:12]} is not fetched from GitHub; "
                                      "comment `/arbot evaluate` to try again")
        if not self.surface.contains(head.sha, champion):
            return self._refuse(head, f"not measured: it is not based on the champion `{champion[:12]}`. Rebase "
                                      f"it onto `{self.config.run.champion_branch}` and push: that head is measured.")
        refused = adoption.refusal(self.local, champion, head.sha, self.config.target.allowed_paths)
        try:
            proposal = adoption.proposal_of(self.local, champion, head)
        except ValueError as e:
            proposal = Proposal(proposer=adoption.PROPOSER, hypothesis=head.title, files={})
            refused = refused or ("regular", str(e))
        if not proposal.files and refused is None:
            return self._refuse(head, "not measured: it changes nothing the champion does not have")
        number = self.lf.next_number()
        rec = ExperimentRecord(id=f"exp-{number}", number=number, branch=f"{PULL_BRANCH}{head.number}",
                               commit=head.sha, parent=champion, proposal=proposal, started_at=now(),
                               pr=head.number, author=head.author)
        if refused is not None:
            rule, reason = refused
            rec.decision = Decision(verdict="rejected", rule=rule, reason=f"rejected before any run: {reason}")
            rec.finished_at = rec.started_at
        self.lf.save(rec)
        self.surface.adopted(rec, earlier[-1] if earlier else None)
        if rec.decision is not None:
            self.surface.closed(rec)  # decided already: the verdict and the reason on the PR
        log.info("PR #%d (%s by %s) adopted as %s%s", head.number, head.sha[:12], head.author, rec.id,
                 f": rejected, {refused[1]}" if refused else "")
        return rec

    def pr_closed(self, number: int) -> list[ExperimentRecord]:
        """An adopted PR closed unmerged: its experiments still open are closed as withdrawn (their runs kept, none
        more made). Returns them."""
        with self.lease.held(wait=self.lease_wait), self.surface.one_push():
            self.surface.fetch()
            open_ = [r for r in self.stepper.active() if r.pr == number]
            for rec in open_:
                self.stepper.withdraw(rec, "withdrawn", f"PR #{number} was closed before this was merged")
            return open_

    def _refuse(self, head: adoption.Head, why: str) -> None:
        """Said on the PR; nothing is recorded or run."""
        log.info("PR #%d (%s): %s", head.number, head.sha[:12], why)
        self.forge.comment(head.number, f"**arbot**: {why}")
        return None

    def rerun(self, number: int) -> list[str]:
        """`/arbot rerun` on a PR: dispatch again each run of its experiment (and its champion) still pending whose
        workflow run ended without a result (lost, cancelled, never started); only the new workflow run's result
        counts. A run still queued or running, or one that reported, is not run again: the PR says why. Returns the
        keys dispatched again."""
        with self.lease.held(wait=self.lease_wait), self.surface.one_push():
            self.surface.fetch()
            rec = self._record_of(number)
            again, refused = self.stepper.again(rec, self.executor.why_not_again)
            if refused or not again:
                lines = [f"- `{key}`: {why}" for key, why in refused.items()] or ["- nothing is pending"]
                self.forge.comment(number, "`/arbot rerun` ran nothing again:\n" + "\n".join(lines))
            return again

    def fill(self) -> list[ExperimentRecord]:
        """Open experiments while there is room, unless paused or over a daily cap."""
        with self.lease.held(wait=self.lease_wait), self.surface.one_push():
            self.surface.fetch()  # the count is GitHub's, read under the lease
            return self.stepper.fill().opened

    def _pull_of(self, spec) -> int | None:
        """The adopted PR whose head a run trains (its experiment's), if any."""
        rec = self.lf.experiment(spec.role) if spec.role != "champion" else None
        return rec.pr if rec is not None and rec.commit == spec.commit else None

    def _record_of(self, number: int) -> ExperimentRecord:
        """The experiment of PR `number`: the bot's own by its branch, an adopted one's latest."""
        pr = self.forge.pr(number)
        rec = next((r for r in reversed(self.lf.experiments()) if r.pr == number or (
            r.pr is None and r.branch == pr.head.ref and pr.head.repo is not None
            and pr.head.repo.full_name == self.forge.full_name)), None)
        if rec is None:
            raise GitHubForgeError(f"PR #{number} ({pr.head.ref}) is not an arbot experiment")
        return rec

    def progress(self) -> dict:
        """What `/healthz` shows of the research: each evaluate run in flight (a runner each), the runs asked for
        and not started yet, runs per hour, the stale rate, the champion's trajectory and why proposing stopped
        (the search space around the champion ran out), if it did. Reads its own handle on the mirror (the webhook
        worker writes through another)."""
        with self._reading:
            if self._reader is None:  # kept: its index makes each /healthz read only the notes that changed
                self._reader = LocalForge(git.Repo(self.local.git_dir), champion_branch=self.config.run.champion_branch,
                                          branch_prefix=self.config.run.branch_prefix)
            return self._progress(self._reader)

    def _progress(self, forge: LocalForge) -> dict:
        recs = forge.experiments()
        owners = [r for r in recs if lc.is_active(r)] + list(forge.champion_records({r.parent for r in recs}).values())
        pending = [s for o in owners for s in o.pending]
        made = sum(len(r.runs) for r in recs)
        starts = sorted(r.started_at for r in recs if r.started_at)
        hours = (datetime.now(timezone.utc) - datetime.fromisoformat(starts[0])).total_seconds() / 3600 if starts else 0
        rate, stale, decided = stale_rate(recs)
        return {"in_flight": [{"run": s.key, "workflow_run": s.run_id, "requested_at": s.requested_at}
                              for s in pending if s.run_id is not None],
                "queued": sum(s.run_id is None for s in pending),
                "runs_per_hour": round(made / hours, 1) if hours > 0 else None,
                "stale_rate": rate, "stale": stale, "decided": decided,
                "proposing_stopped": self.stepper.exhausted(forge.champion()),
                "trajectory": [{"experiment": e, self.config.metric.key(): v}
                               for e, v in champion_steps(forge.champion_log())],
                "skipped_notes": forge.unreadable_notes()}  # forged, edited or unsigned notes: ignored

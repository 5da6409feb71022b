"""The GitHub executor: GitHub mode carries out the lifecycle's actions (bot.lifecycle) on pull requests.

It decides nothing itself. For each experiment it gathers the records (git notes on the bot's mirror, and the
results of the workflow runs it dispatched), asks `next_action`, and carries it out:
Run -> one `workflow_dispatch` of the evaluate workflow per run, on the default branch (the request is noted as
pending first, then the id of the workflow run GitHub started; that run's `arbot-result` artifact, once the run
proves to be the evaluate workflow dispatched for this request, is the only result that counts: check runs are
for humans, and a forged one changes nothing); Decide -> the note; Promote -> `arbot/verdict` success and a
squash merge through branch protection, with the lifecycle's trailers plus `PR:`; Hold -> a neutral verdict
until `/arbot approve`; Close -> the verdict, the results comment, a label, the PR closed (its branch kept);
Replay -> the stale PR closed and the change opened again as a new experiment on the new champion. A PR whose
head is not the experiment's commit is `tampered`: rejected, never merged.

The bot keeps a bare mirror of the repository (`.arbot/github.git`): experiment commits are made there and
pushed, champion and both notes refs (`refs/notes/arbot`, `refs/notes/arbot-proposals`) are fetched before
every action, and every note is pushed as soon as it is written. So the state lives on GitHub and a restarted
bot rebuilds it from there (`advance_all`). Every action is safe to repeat: a run is dispatched once (noted as
pending before), the verdict is posted when it changes, the comment is upserted, merges carry the head guard.
"""

from __future__ import annotations

import io
import logging
import statistics
import zipfile
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol

import git
from pydantic import ValidationError

from bot import lifecycle as lc
from bot.config import Config
from bot.forges.local import NOTES_REF, NOTES_REFS, LocalForge
from bot.github import report
from bot.github.forge import (CONCLUSION_TO_STATE, EVALUATE_WORKFLOW, VERDICT_CHECK, GitHubForge,
                              GitHubForgeError, results_comment, squash_message, verdict_check)
from bot.github.lease import Lease, holder_name
from bot.policy import Policy
from bot.progress import champion_steps, stale_rate
from bot.proposers.base import Proposer
from bot.proposers.context import propose
from bot.proposers.failures import ProposalRejected, SpendCapReached
from bot.records import Decision, ExperimentRecord, RunResult, RunSpec, ok_metric
from runner.guard import changed_paths, forbidden_paths
from runner.job import champion_timing

log = logging.getLogger("arbot.github")

MIRROR = ".arbot/github.git"
RESULT_ARTIFACT = "arbot-result"  # what the evaluate workflow's train job uploads: result.json, evaluate.log
EVALUATE_RUN_NAME = "arbot-evaluate"  # its run-name is "arbot-evaluate <request key>"
CLOCK_SKEW = timedelta(minutes=2)  # between the bot's clock and GitHub's, when a dispatched run is looked up by name


class Budget(Protocol):
    """The daily caps (bot.server.store.Budget)."""

    def exhausted(self) -> str | None: ...
    def record_experiment(self) -> None: ...
    def record_runner_seconds(self, seconds: float) -> None: ...


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def verify_run(run: dict, workflow: str, branch: str, key: str) -> str | None:
    """Why a workflow run is not the evaluate workflow of the default branch dispatched for request `key`."""
    checks = {"path": (run.get("path") or "").split("@")[0] == f".github/workflows/{workflow}",
              "event": run.get("event") == "workflow_dispatch", "branch": run.get("head_branch") == branch,
              "request": run.get("display_title") == f"{EVALUATE_RUN_NAME} {key}"}
    wrong = [name for name, ok in checks.items() if not ok]
    return None if not wrong else (f"its {', '.join(wrong)} differ from the evaluate workflow's ({run.get('path')}, "
                                   f"{run.get('event')}, {run.get('head_branch')}, {run.get('display_title')!r})")


def result_json(artifact: bytes | None) -> str:
    """result.json from the zip of the result artifact (BadResult when there is none)."""
    if artifact is None:
        raise report.BadResult(f"no {RESULT_ARTIFACT} artifact")
    try:
        with zipfile.ZipFile(io.BytesIO(artifact)) as z:
            return z.read("result.json").decode(errors="replace")
    except (zipfile.BadZipFile, KeyError) as e:
        raise report.BadResult(f"the {RESULT_ARTIFACT} artifact holds no result.json ({e})") from e


class MirrorForge(LocalForge):
    """The local forge on the bot's mirror: every note it writes is pushed to GitHub at once."""

    def __init__(self, repo: git.Repo, push_notes: Callable[[], None], **kwargs):
        super().__init__(repo, **kwargs)
        self.push_notes = push_notes

    def _write_note(self, commit: str, payload: str, ref: str = NOTES_REF) -> None:
        super()._write_note(commit, payload, ref)
        self.push_notes()


def mirror(path: Path) -> git.Repo:
    """The bot's bare mirror, created on first use, with an identity for the commits and notes it writes."""
    repo = git.Repo(path) if path.exists() else git.Repo.init(path, bare=True, mkdir=True)
    with repo.config_writer() as cw:
        if not cw.has_option("user", "name"):
            cw.set_value("user", "name", "arbot")
            cw.set_value("user", "email", "arbot@users.noreply.github.com")
    return repo


class Driver:
    def __init__(self, forge: GitHubForge, local: git.Repo, config: Config, proposer: Proposer, policy: Policy,
                 budget: Budget | None = None, paused: Callable[[], bool] = lambda: False,
                 holder: str | None = None, lease_wait: float = 0):
        """`holder` names this writer on the lease (bot.github.lease): every entry point below runs under it, so
        two writers (`arbot serve` and the scheduled workflow, or two servers) never fill or decide at once;
        `lease_wait`: seconds to wait for another holder before giving up with its name."""
        self.forge, self.local, self.config, self.proposer = forge, local, config, proposer
        self.budget, self.paused = budget, paused
        self.lease = Lease(self._git, local, holder or holder_name("driver"))
        self.lease_wait = lease_wait
        self.rules = lc.Rules.of(policy, config.target, config.metric)
        self.lf = MirrorForge(local, self.push_notes, champion_branch=config.run.champion_branch,
                              branch_prefix=config.run.branch_prefix)

    # --- git: the mirror follows GitHub ------------------------------------------------------------
    def _git(self, *args: str) -> str:
        remote = self.forge.git_remote()
        try:
            return self.local.git.execute(["git", *[remote if a == "{remote}" else a for a in args]])
        except git.GitCommandError as e:
            token = self.forge._token()
            detail = str(e.stderr).replace(token, "***") if token else str(e.stderr)
            # from None: the GitCommandError's command line holds the remote URL with the token
            raise GitHubForgeError(f"git {args[0]} failed: {detail}") from None

    def sync(self) -> None:
        """Fetch champion, the experiment branches and the notes from GitHub (GitHub is the truth)."""
        branch, prefix = self.config.run.champion_branch, self.config.run.branch_prefix
        self._git("fetch", "--quiet", "{remote}", f"+refs/heads/{branch}:refs/heads/{branch}",
                  f"+refs/heads/{prefix}*:refs/remotes/github/{prefix}*")
        remote_refs = self._git("ls-remote", "{remote}", "refs/notes/*")
        notes = [ref for ref in NOTES_REFS if ref in remote_refs.split()]
        if notes:
            self._git("fetch", "--quiet", "{remote}", *[f"+{ref}:{ref}" for ref in notes])

    def push_notes(self) -> None:
        """Never forced: a note written elsewhere meanwhile makes this fail loudly instead of being lost."""
        local = [ref for ref in NOTES_REFS if self.lf.has_ref(ref)]
        self._git("push", "--quiet", "{remote}", *[f"{ref}:{ref}" for ref in local])

    # --- the executor --------------------------------------------------------------------------------
    def advance_all(self) -> list[ExperimentRecord]:
        """Record merges GitHub made, advance every active experiment until none changes champion or finishes,
        then open new ones up to max_in_flight. What a webhook, `arbot decide` and a restart all run; safe to repeat."""
        with self.lease.held(wait=self.lease_wait):
            advanced: dict[str, ExperimentRecord] = {}
            champion, finished = None, False
            while champion != (champion := self._synced_champion()) or finished:
                finished = False  # one that finishes may let one it deferred go on: then another pass
                for rec in self._active():
                    self.lease.keep()
                    advanced[rec.id] = end = self.advance(rec)
                    finished |= end.id != rec.id or not lc.is_active(end)
            self.fill()
            return list(advanced.values())

    def _synced_champion(self) -> str:
        self.sync()
        for rec in self.lf.experiments():
            if rec.decision is not None and rec.decision.verdict == "win" and not rec.merged_as:
                pr = self.forge.find_pr(rec.branch)
                if pr is not None and pr.merged:
                    self.record_merge(rec, pr.merge_commit_sha)
        return self.lf.champion()

    def advance(self, rec: ExperimentRecord) -> ExperimentRecord:
        """Carry out `rec`'s actions until it waits for runs or is finished; returns where it ended (a replay's
        fresh experiment, when the champion moved)."""
        self._collect(rec)
        while True:
            action = lc.next_action(rec, self.lf.champion_record(rec.parent), self.lf.champion(), self.rules,
                                    self.lf.removes_code(rec), self._tampered(rec), lc.ahead_of(rec, self._active()))
            if isinstance(action, lc.Run):
                self._dispatch(rec, action)
                return rec
            if isinstance(action, (lc.Wait, lc.Defer, lc.Done)):
                return rec
            if isinstance(action, lc.Decide):
                rec.evidence, rec.review = action.evidence, action.review
                self._decided(rec, action.decision)
                log.info("%s: %s (%s) %s", rec.id, rec.decision.verdict, rec.decision.rule, rec.decision.reason)
            elif isinstance(action, lc.Replay):
                rec = self._replay(rec, action.onto)
            elif isinstance(action, lc.Promote):
                self._promote(rec, action.trailers)
                return rec
            elif isinstance(action, lc.Hold):
                self._conclude(rec, verdict_check(rec.decision, self.rules.metric, held=True),
                               f"Held for a human: {action.why}. Read the diff; a user with write access comments "
                               "`/arbot approve` to merge it.")
                return rec
            elif isinstance(action, lc.Close):
                self._close(rec)
                return rec
            elif isinstance(action, lc.ChampionFails):
                log.error("%s cannot be measured: %s", rec.id, action.reason)
                self._comment(rec, f"### {rec.id}: the champion fails\n\n{action.reason[:3000]}")
                return rec

    # --- runs: dispatched, then collected from the workflow run the bot started -------------------------
    def _owner(self, rec: ExperimentRecord, spec: RunSpec):
        return rec if spec.role == rec.id else self.lf.champion_record(spec.commit)

    def _dispatch(self, rec: ExperimentRecord, action: lc.Run) -> None:
        """One workflow run per run asked for. The request is noted as pending (and pushed) before it is
        dispatched, so a redelivery or a restart never dispatches it twice; then the id of the workflow run
        GitHub started for it is noted: only that run's result will count."""
        for spec in action.specs:
            spec = spec.model_copy(update={"requested_at": now()})
            owner = self._owner(rec, spec)
            owner.pending.append(spec)
            self.lf.save(owner)
            self._start(owner, spec)
        self._comment(rec, f"### {rec.id}: measuring\n\n{action.why}\n\n"
                      + "\n".join(f"- `{s.key}`" for s in action.specs))

    def _start(self, owner, spec: RunSpec) -> None:
        """Dispatch the evaluate workflow on the default branch (a definition no PR can change) and note its run."""
        requested_at = now()
        inputs = {"request": spec.key, "commit": spec.commit, "champion": spec.champion, "seed": str(spec.seed),
                  "splits": ",".join(spec.splits)}
        timing = champion_timing(self.lf.champion_record(spec.champion).runs, self.config.target.budget_seconds)
        if spec.commit != spec.champion and timing is not None:  # the runner holds the candidate to the champion's times
            inputs |= {"champion_overhead": f"{timing[0]:.2f}", "champion_score_seconds": f"{timing[1]:.2f}"}
        run_id = self.forge.dispatch(EVALUATE_WORKFLOW, self.forge.repo.default_branch, inputs)
        owner.pending = [s.model_copy(update={"run_id": run_id, "requested_at": requested_at}) if s.key == spec.key
                         else s for s in owner.pending]
        self.lf.save(owner)
        log.info("dispatched %s as workflow run %s", spec.key, run_id if run_id is not None else "(id to be found)")

    def _find_run(self, spec: RunSpec) -> int | None:
        """The workflow run of a dispatch GitHub answered with no run id (a server without return_run_details):
        the first run of the evaluate workflow named for this request and created since it was dispatched."""
        since = (datetime.fromisoformat(spec.requested_at) - CLOCK_SKEW if spec.requested_at
                 else datetime.min.replace(tzinfo=timezone.utc))
        runs = [(created, r["id"]) for r in self.forge.dispatched_runs(EVALUATE_WORKFLOW, self.forge.repo.default_branch)
                if r.get("display_title") == f"{EVALUATE_RUN_NAME} {spec.key}"
                and (created := datetime.fromisoformat(r["created_at"].replace("Z", "+00:00"))) >= since]
        return min(runs)[1] if runs else None

    def _collect(self, rec: ExperimentRecord) -> None:
        """Move every pending run of `rec` and of its champion that has reported into the records."""
        for owner in (rec, self.lf.champion_record(rec.parent)):
            found = {s.key: run_id for s in owner.pending if s.run_id is None and (run_id := self._find_run(s))}
            if found:
                owner.pending = [s.model_copy(update={"run_id": found.get(s.key, s.run_id)}) for s in owner.pending]
                self.lf.save(owner)
            arrived = [(spec, result) for spec in owner.pending if (result := self._result(spec)) is not None]
            for spec, result in arrived:
                owner.pending.remove(spec)
                owner.runs.append(result)
            if arrived:
                self.lf.save(owner)
                if self.budget is not None:
                    self.budget.record_runner_seconds(sum(r.total_seconds for _, r in arrived))

    def _result(self, spec: RunSpec) -> RunResult | None:
        """The run answering `spec`: the result artifact of the workflow run the bot dispatched for it, once that
        run is completed and proves to be the evaluate workflow on the default branch, started by a dispatch for
        this request. Check runs are for humans: a forged one counts for nothing. None while in flight."""
        if spec.run_id is None:
            return None
        run = self.forge.workflow_run(spec.run_id)
        if run.get("status") != "completed":
            return None
        crash = lambda why: RunResult(status="crash", commit=spec.commit, champion=spec.champion,  # noqa: E731
                                      seed=spec.seed, splits=spec.splits, reason=why)
        wrong = verify_run(run, EVALUATE_WORKFLOW, self.forge.repo.default_branch, spec.key)
        if wrong:
            return crash(f"workflow run {spec.run_id} does not count: {wrong}")
        artifact = self.forge.run_artifact(spec.run_id, RESULT_ARTIFACT)
        try:
            runs = [RunResult.model_validate(r) for r in report.load_runs(result_json(artifact))]
        except (report.BadResult, ValidationError) as e:
            return crash(f"workflow run {spec.run_id} ({run.get('conclusion')}) left no result: {str(e)[:300]}")
        match = next((r for r in runs if (r.commit, r.seed, r.champion) == (spec.commit, spec.seed, spec.champion)), None)
        if match is None:
            return crash(f"workflow run {spec.run_id} reported no run of {spec.commit[:12]} seed {spec.seed} "
                         f"scored by {spec.champion[:12]}")
        return match.model_copy(update={"splits": spec.splits})

    def rerun(self, number: int) -> bool:
        """`/arbot rerun` on a PR: dispatch again every run of its experiment (and its champion) still pending,
        e.g. after a runner died; only the new workflow run's result counts. False when nothing is pending."""
        with self.lease.held(wait=self.lease_wait):
            self.sync()
            rec = self._record_of(number)
            owners = (rec, self.lf.champion_record(rec.parent))
            for owner in owners:
                for spec in list(owner.pending):
                    self._start(owner, spec)
            return any(owner.pending for owner in owners)

    # --- what a decision asks of GitHub ----------------------------------------------------------------
    def _promote(self, rec: ExperimentRecord, trailers: dict[str, str]) -> None:
        pr = self._pr(rec)
        if pr.merged:
            self.record_merge(rec, pr.merge_commit_sha)
            return
        self._conclude(rec, verdict_check(rec.decision, self.rules.metric))
        title, body = squash_message(rec, trailers, pr.number)
        if self.forge.enable_automerge(pr, rec.commit, title, body):
            log.info("PR #%d (%s): auto-merge enabled at %s", pr.number, rec.id, rec.commit[:12])
        else:
            try:
                log.info("PR #%d (%s): merged as %s", pr.number, rec.id, self.forge.merge(pr, rec.commit, title, body)[:12])
            except GitHubForgeError as e:  # tried again on the next event and on the server's catch-up timer
                log.warning("PR #%d (%s): not merged: %s", pr.number, rec.id, e)
                self._conclude(rec, verdict_check(rec.decision, self.rules.metric),
                               f"**Not merged yet**: GitHub refused the merge ({str(e)[:500]}). The bot tries again "
                               "on the next event and on its catch-up timer.")
        merged = self.forge.pr(pr.number)
        if merged.merged:  # at once; GitHub may also merge later, and the closed webhook records it then
            self.sync()
            self.record_merge(rec, merged.merge_commit_sha)

    def record_merge(self, rec: ExperimentRecord, merge: str) -> None:
        """The merged win's runs measure the new champion (its tree is the candidate's head)."""
        if rec.merged_as != merge:
            rec.merged_as = merge
            self.lf.save(rec)
        if not self.lf.champion_record(merge).runs:
            self.lf.save(lc.champion_after(rec, merge))
        log.info("%s merged as %s: it is the champion's measurement now", rec.id, merge[:12])

    def _close(self, rec: ExperimentRecord) -> None:
        pr = self._pr(rec)
        check = verdict_check(rec.decision, self.rules.metric)
        self._verdict(rec, check)
        if pr.state == "open":
            self.forge.close_as(pr, rec.decision.verdict,
                                results_comment(rec, rec.decision, self.trajectory(rec), self.rules.metric))
            log.info("PR #%d (%s): closed as %s (%s)", pr.number, rec.id, rec.decision.verdict, rec.decision.rule)

    def _conclude(self, rec: ExperimentRecord, check, note: str = "") -> None:
        """The verdict check and the results comment of a decided experiment."""
        self._verdict(rec, check)
        comment = results_comment(rec, rec.decision, self.trajectory(rec), self.rules.metric)
        self._comment(rec, f"{comment}\n\n{note}" if note else comment)

    def _verdict(self, rec: ExperimentRecord, check) -> None:
        """Post `arbot/verdict` on the experiment's commit unless the latest one already says this."""
        latest = self.forge.check(rec.commit, VERDICT_CHECK)
        want = check.conclusion if self.forge.use_checks else CONCLUSION_TO_STATE[check.conclusion]
        if latest is None or latest.conclusion != want:
            self.forge.post_check(rec.commit, VERDICT_CHECK, check.conclusion, check.title, check.summary)

    def _comment(self, rec: ExperimentRecord, body: str) -> None:
        self.forge.upsert_comment(self._pr(rec).number, body)

    def _decided(self, rec: ExperimentRecord, decision: Decision) -> None:
        """Note the decision. Runs still in flight can change nothing now: they are no longer waited for."""
        if rec.pending:
            log.info("%s: decided with %d run(s) in flight, which will not count", rec.id, len(rec.pending))
        rec.decision, rec.finished_at, rec.pending = decision, now(), []
        self.lf.save(rec)

    def _replay(self, stale: ExperimentRecord, champion: str) -> ExperimentRecord:
        """Measured on an old champion: never merged. Its change is opened again, as a new experiment and PR on
        the new champion (as the local loop does), and the stale PR is closed."""
        files = self.lf.replay_files(stale, champion)
        fresh = None
        if files is not None:
            fresh = self.lf.open_experiment(stale.proposal.model_copy(update={"files": files}), champion, now())
            self.forge.open_pr(fresh, self.local)
        self._decided(stale, lc.stale_decision(stale, champion, fresh.id if fresh else None))
        self._close(stale)
        return fresh or stale

    def advance_pr(self, number: int) -> ExperimentRecord:
        """`arbot decide --pr N`: the same as `advance_all`, for one experiment PR."""
        with self.lease.held(wait=self.lease_wait):
            self._synced_champion()
            return self.advance(self._record_of(number))

    def record_merged_pr(self, number: int) -> None:
        """A PR closed as merged (auto-merge, or a human): record the win's merge before anything else runs."""
        with self.lease.held(wait=self.lease_wait):
            self.sync()
            rec, pr = self._record_of(number), self.forge.pr(number)
            if pr.merged:
                self.record_merge(rec, pr.merge_commit_sha)

    def approve(self, number: int) -> ExperimentRecord:
        """`/arbot approve` on a held win: the same as `arbot approve` locally."""
        with self.lease.held(wait=self.lease_wait):
            self.sync()
            rec = self._record_of(number)
            if rec.review != "needed":
                raise GitHubForgeError(f"PR #{number} ({rec.id}) is not a win waiting for review")
            rec.review = "approved"
            self.lf.save(rec)
            return self.advance(rec)

    # --- proposing -------------------------------------------------------------------------------------
    def fill(self) -> list[ExperimentRecord]:
        """Open experiments while fewer than max_in_flight are undecided, unless paused or over a daily cap."""
        with self.lease.held(wait=self.lease_wait):
            self.sync()  # the count below is GitHub's, read under the lease
            opened: list[ExperimentRecord] = []
            refused = 0
            while not self.paused() and refused < lc.MAX_REFUSED:
                self.lease.keep()
                why = self.budget.exhausted() if self.budget is not None else None
                if why:
                    log.warning("not proposing: %s", why)
                    break
                if not lc.has_room(self.lf.experiments(), self.config.github.max_in_flight):
                    break
                try:
                    opened.append(self.propose())
                    refused = 0
                except SpendCapReached as e:
                    log.warning("stopped proposing: %s", e)
                    break
                except ProposalRejected as e:
                    refused += 1
                    log.warning("proposal refused (no branch made, %d in a row): %s", refused, e)
            return opened

    def propose(self) -> ExperimentRecord:
        """One experiment on the mirror, its PR (the branch is pushed, never forced), and its first runs."""
        self.sync()
        champion = self.lf.champion()
        proposal = propose(self.lf, self.proposer, self.config.target, champion, self.rules.metric)
        rec = self.lf.open_experiment(proposal, champion, now())
        pr = self.forge.open_pr(rec, self.local)
        if self.budget is not None:
            self.budget.record_experiment()
        log.info("opened PR #%d for %s: %s", pr.number, rec.id, rec.proposal.hypothesis)
        self.advance(rec)
        return rec

    # --- lookups -----------------------------------------------------------------------------------------
    def _active(self) -> list[ExperimentRecord]:
        return [r for r in self.lf.experiments() if lc.is_active(r)]

    def _tampered(self, rec: ExperimentRecord) -> str | None:
        """Why the experiment may not be merged whatever it measured, or None: its commit (checked on the
        mirror) changes a path outside target.allowed_paths (a note written by hand names any commit), or its
        PR no longer holds that commit (a push to its branch, a head from another repository)."""
        try:
            outside = forbidden_paths(changed_paths(self.local, rec.parent, rec.commit),
                                      self.config.target.allowed_paths)
        except (ValueError, git.BadName, git.GitCommandError) as e:
            return f"{rec.commit[:12]} cannot be compared with its champion {rec.parent[:12]} on the mirror ({e})"
        if outside:
            return f"{rec.commit[:12]} changes {', '.join(outside[:5])}, outside target.allowed_paths"
        pr = self.forge.find_pr(rec.branch)
        if pr is None:
            return None
        head_repo = pr.head.repo.full_name if pr.head.repo is not None else "a deleted repository"
        if head_repo != self.forge.full_name:
            return f"PR #{pr.number}'s head is in {head_repo}, not {self.forge.full_name}"
        if pr.head.sha != rec.commit:
            return f"PR #{pr.number}'s head is {pr.head.sha[:12]}, not the experiment's commit {rec.commit[:12]}"
        return None

    def _pr(self, rec: ExperimentRecord):
        """The experiment's PR; opened now if the bot stopped between the experiment's note and its PR."""
        return self.forge.find_pr(rec.branch) or self.forge.open_pr(rec, self.local)

    def _record_of(self, number: int) -> ExperimentRecord:
        pr = self.forge.pr(number)
        rec = next((r for r in self.lf.experiments() if r.branch == pr.head.ref), None)
        if rec is None:
            raise GitHubForgeError(f"PR #{number} ({pr.head.ref}) is not an arbot experiment")
        return rec

    def progress(self) -> dict:
        """What `/healthz` shows of the research: each evaluate run in flight (a runner each), the runs asked for
        and not started yet, runs per hour, the stale rate and the champion's trajectory. Reads its own handle on
        the mirror (the webhook worker writes through another)."""
        forge = LocalForge(git.Repo(self.local.git_dir), champion_branch=self.config.run.champion_branch,
                           branch_prefix=self.config.run.branch_prefix)
        recs = forge.experiments()
        owners = [r for r in recs if lc.is_active(r)] + [forge.champion_record(sha) for sha in {r.parent for r in recs}]
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
                "trajectory": [{"experiment": e, self.rules.metric.key(): v}
                               for e, v in champion_steps(forge.champion_log())]}

    def trajectory(self, current: ExperimentRecord | None = None) -> list[tuple[str, float]]:
        """The champion's metric: its first measured value, then each merged win (and this one, if a win)."""
        recs = self.lf.experiments()
        wins = [r for r in recs if r.merged_as or (current is not None and r.id == current.id
                                                   and current.decision is not None and current.decision.verdict == "win")]
        points = []
        key = self.rules.metric.key()
        start = ok_metric(self.lf.champion_record(recs[0].parent).runs, key) if recs else []
        if start:
            points.append(("start", statistics.fmean(start)))
        for r in wins:
            values = ok_metric(current.runs if current is not None and r.id == current.id else r.runs, key)
            if values:
                points.append((r.id, statistics.fmean(values)))
        return points

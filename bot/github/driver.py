"""GitHub mode's decision flow: the code behind the webhook server's `Dispatcher.act`.

One core with the local loop (bot.loop): the same records in git notes (refs/notes/arbot, pushed to the
remote), the same proposer (`Loop.context`, `Loop._open`), the same policy, the same trailers and the same
rules for flagged wins (`hold_flagged`) and for the champion a win makes (`champion_after`). What differs is
who trains (the evaluate workflow on a GPU runner) and who merges (GitHub, through branch protection).

The bot keeps a bare mirror of the repository (`.arbot/github.git` by default): experiment commits are made
there and pushed, the champion branch and the notes are fetched from GitHub before every action, and every
note is pushed as soon as it is written. So the state lives on GitHub (PRs, labels, check runs, notes) and a
restarted bot rebuilds it from there (`recover`). Every action is safe to repeat: the verdict is posted once
per head sha, the results comment is upserted, merges carry the head-sha guard, labels go by name.

Champion measurements: the candidate's runs become the merged champion's (as in the local loop). A champion
that lacks a run of the seed being trained (the first champion, or one the policy wants more runs of) is
measured by the train job too (`report.py needs-champion-run`); its run comes back in the same check run and
the bot adds it to the champion's note. More seeds: the bot re-runs the workflow run (attempt k trains seed
k-1) and gathers the runs of every attempt's check run.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from pathlib import Path

import git
from github import GithubException
from pydantic import ValidationError

from bot.config import Config
from bot.forges.local import LocalForge, trailers_for
from bot.github import report
from bot.github.decide import decide, evidence, verdict_check
from bot.github.forge import (EVALUATE_CHECK, VERDICT_CHECK, GitHubForge, GitHubForgeError, results_comment,
                              squash_message)
from bot.loop import Loop, champion_after, hold_flagged, now
from bot.policy import Policy
from bot.proposers.base import Proposer
from bot.proposers.failures import ProposalRejected
from bot.records import Decision, ExperimentRecord, RunResult, ok_metric
from bot.server.store import Budget

log = logging.getLogger("arbot.github")

NOTES = "refs/notes/arbot"
MIRROR = ".arbot/github.git"
ACTIONS_APP = "github-actions"  # only the workflow's report job may make arbot/evaluate
MAX_REFUSED = 3  # proposals refused in a row before one fill() gives up


class MirrorForge(LocalForge):
    """The local forge on the bot's mirror: every record it saves is pushed to GitHub at once."""

    def __init__(self, repo: git.Repo, push_notes: Callable[[], None], **kwargs):
        super().__init__(repo, **kwargs)
        self.push_notes = push_notes

    def save(self, rec) -> None:
        super().save(rec)
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
                 evaluate_app: str | None = ACTIONS_APP):
        self.forge, self.local, self.config, self.policy = forge, local, config, policy
        self.budget, self.paused, self.evaluate_app = budget, paused, evaluate_app
        self.lf = MirrorForge(local, self.push_notes, champion_branch=config.run.champion_branch,
                              branch_prefix=config.run.branch_prefix)
        self.loop = Loop(self.lf, None, proposer, policy, config.target)

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
        if self._git("ls-remote", "{remote}", NOTES).strip():
            self._git("fetch", "--quiet", "{remote}", f"+{NOTES}:{NOTES}")

    def push_notes(self) -> None:
        """Never forced: a note written elsewhere meanwhile makes this fail loudly instead of being lost."""
        self._git("push", "--quiet", "{remote}", f"{NOTES}:{NOTES}")

    # --- lookups ---------------------------------------------------------------------------------
    def record(self, branch: str) -> ExperimentRecord | None:
        return next((r for r in self.lf.experiments() if r.branch == branch), None)

    def _pr_for(self, number: int | None, head_sha: str):
        if number is not None:
            return self.forge.pr(number)
        return next((pr for pr in self.forge.open_prs() if pr.head.sha == head_sha), None)

    def _up_to_date(self, champion: str, head: str) -> bool:
        return self.local.is_ancestor(champion, head)

    # --- step 3: decide an evaluation --------------------------------------------------------------
    def on_evaluated(self, pr_number: int | None, head_sha: str) -> Decision | None:
        self.sync()
        pr = self._pr_for(pr_number, head_sha)
        if pr is None or pr.state != "open":
            log.info("evaluation of %s: no open experiment PR has this head", head_sha[:12])
            return None
        if pr.head.sha != head_sha:
            log.info("PR #%d: evaluation of %s, but the head is now %s: waiting for its own", pr.number, head_sha[:12],
                     pr.head.sha[:12])
            return None
        rec = self.record(pr.head.ref)
        if rec is None:
            log.warning("PR #%d (%s) has no experiment record: not an arbot experiment", pr.number, pr.head.ref)
            return None
        return self.decide_pr(pr, rec)

    @staticmethod
    def _runs(head: str, checks) -> tuple[list[RunResult], list[RunResult], str]:
        """(candidate runs of `head`, champion runs, why there is no result) from every arbot/evaluate check."""
        candidate: dict[int, RunResult] = {}
        champion: list[RunResult] = []
        missing = ""
        for check in checks:
            try:
                runs = [RunResult.model_validate(r) for r in report.extract(check.summary)]
            except (report.BadResult, ValidationError) as e:
                missing = check.summary.strip().splitlines()[0][:300] if check.summary.strip() else str(e)
                continue
            for r in runs:
                if r.commit == head:
                    candidate.setdefault(r.seed, r)
                elif r.champion and r.commit == r.champion:
                    champion.append(r)
        return [candidate[s] for s in sorted(candidate)], champion, missing

    def _add_champion_runs(self, runs: list[RunResult]) -> float:
        """Add champion runs to their champions' notes (one per seed); the runner seconds that were new."""
        seconds = 0.0
        for sha in {r.commit for r in runs}:
            crec = self.lf.champion_record(sha)
            seeds = {r.seed for r in crec.runs if r.ok}
            new = [r for r in runs if r.commit == sha and r.seed not in seeds]
            if new:
                crec.runs.extend(new)
                self.lf.save(crec)
                seconds += sum(r.total_seconds for r in new)
        return seconds

    def decide_pr(self, pr, rec: ExperimentRecord) -> Decision | None:
        head = pr.head.sha
        verdict = self.forge.check(head, VERDICT_CHECK)
        if verdict is not None and verdict.conclusion is not None and rec.decision is not None:
            self.follow(pr, rec)  # decided before (a redelivery or a restart): finish what it asked for
            return rec.decision
        checks = self.forge.checks(head, EVALUATE_CHECK, app_slug=self.evaluate_app)
        if not checks:
            return None  # not evaluated yet: the workflow's check run will call again
        candidate, champion_runs, missing = self._runs(head, checks)
        seconds = self._add_champion_runs(champion_runs)
        champion = self.lf.champion()
        if not candidate:
            candidate = [RunResult(status="crash", commit=head, champion=pr.base.sha,
                                   reason=f"the evaluation left no result: {missing or 'no arbot:result block'}")]
        known = {(r.commit, r.seed) for r in rec.runs}
        seconds += sum(r.total_seconds for r in candidate if (r.commit, r.seed) not in known)
        if self.budget is not None and seconds:
            self.budget.record_runner_seconds(seconds)
        base = champion if self._up_to_date(champion, head) else self.local.merge_base(champion, head)[0].hexsha
        decision = decide(self.policy, self.lf.champion_record(champion).runs, candidate, pr_base=base,
                          champion=champion, removes_code=self.loop._removes_code(rec))
        if decision.rule == "stale-base":
            self._stale(pr, head, decision)
            return decision
        rec.runs = candidate
        if not decision.final:
            self.lf.save(rec)
            try:
                rerun = self.forge.rerun_workflow(checks[-1].details_url)
            except GithubException as e:  # e.g. that run is already re-running (a redelivery): wait for it
                log.warning("PR #%d: re-run of %s refused (%s): %s; waiting (/arbot rerun asks again)", pr.number,
                            checks[-1].details_url, e.status, getattr(e, "data", e))
                return decision
            if rerun:
                self.forge.upsert_comment(pr.number, f"### {rec.id}: more runs\n\n{decision.reason}\n\n"
                                                     f"Re-running the evaluation for seed {len(candidate)}.")
                return decision
            decision = decision.model_copy(update={
                "verdict": "loss", "rule": f"{decision.rule}, no re-run",
                "reason": f"{decision.reason}; the check run names no workflow run to re-run for more seeds"})
        decision, review = hold_flagged(decision, candidate, self.config.target.review_flagged)
        rec.review = review
        rec.evidence = evidence(self.lf.champion_record(champion).runs, candidate, decision.metric,
                                self.loop._removes_code(rec))
        rec.decision, rec.finished_at = decision, now()
        self.lf.save(rec)
        check = verdict_check(decision)
        conclusion = "neutral" if review == "needed" else check.conclusion
        title = f"held for review: {check.title}" if review == "needed" else check.title
        self.forge.post_check(head, VERDICT_CHECK, conclusion, title, check.summary)
        log.info("PR #%d (%s): %s (%s) %s", pr.number, rec.id, decision.verdict, decision.rule, decision.reason)
        self.follow(self.forge.pr(pr.number), rec)
        return decision

    def _stale(self, pr, head: str, decision: Decision) -> None:
        """Measured on an old champion: never merged; brought up to date, so the workflow evaluates it again."""
        check = verdict_check(decision)
        self.forge.post_check(head, VERDICT_CHECK, "failure", f"stale: {check.title}"[:200], check.summary)
        self.forge.upsert_comment(pr.number, f"### re-evaluating\n\n{decision.reason}")
        if self.forge.update_branch(pr, head):
            log.info("PR #%d: measured on an old champion; updated, to be evaluated again", pr.number)

    def follow(self, pr, rec: ExperimentRecord) -> None:
        """Do what a final decision asks: merge a win, close a loss or crash; comment either way."""
        d = rec.decision
        comment = results_comment(rec, d, self.trajectory(rec))
        if pr.state != "open":
            self.forge.upsert_comment(pr.number, comment)
            return
        head = pr.head.sha
        if d.verdict == "win" and rec.review == "needed":
            self.forge.upsert_comment(pr.number, comment + "\n\nHeld for a human: the runner's diff inspection flagged "
                                      "this change. Review it and merge by hand if it is sound.")
            return
        if d.verdict == "win":
            self.forge.upsert_comment(pr.number, comment)
            fingerprint = next((r.evaluator_fingerprint for r in rec.runs if r.evaluator_fingerprint), None)
            title, body = squash_message(rec, trailers_for(rec, d, fingerprint), pr.number)
            if self.forge.enable_automerge(pr, head, title, body):
                log.info("PR #%d (%s): auto-merge enabled at %s", pr.number, rec.id, head[:12])
            else:
                try:
                    sha = self.forge.merge(pr, head, title, body)
                    log.info("PR #%d (%s): merged as %s", pr.number, rec.id, sha[:12])
                except GitHubForgeError as e:
                    log.warning("PR #%d (%s): not merged: %s", pr.number, rec.id, e)
                    self.sync()
                    if not self._up_to_date(self.lf.champion(), head):
                        self.forge.update_branch(pr, head)
            merged = self.forge.pr(pr.number)
            if merged.merged:  # at once (GitHub may also merge later: the closed webhook records it then)
                self.sync()
                self.record_merge(rec, merged.merge_commit_sha)
            return
        self.forge.close_as(pr, "loss" if d.verdict == "loss" else "crash", comment)
        log.info("PR #%d (%s): closed as %s", pr.number, rec.id, d.verdict)

    def trajectory(self, current: ExperimentRecord | None = None) -> list[tuple[str, float]]:
        """The champion's metric: its first measured value, then each merged win (and this one, if a win)."""
        recs = sorted(self.lf.experiments(), key=lambda r: r.number)
        wins = [r for r in recs if r.merged_as or (current is not None and r.id == current.id
                                                   and current.decision is not None and current.decision.verdict == "win")]
        points = []
        first = min(recs, key=lambda r: r.number).parent if recs else None
        start = ok_metric(self.lf.champion_record(first).runs) if first else []
        if start:
            points.append(("start", statistics.fmean(start)))
        for r in wins:
            values = ok_metric(current.runs if current is not None and r.id == current.id else r.runs)
            if values:
                points.append((r.id, statistics.fmean(values)))
        return points

    # --- steps 4-6: a PR closed, champion moved, keep going ------------------------------------------
    def on_closed(self, number: int, merged: bool, merge_sha: str | None) -> None:
        self.sync()
        pr = self.forge.pr(number)
        rec = self.record(pr.head.ref)
        if merged and rec is not None:
            self.record_merge(rec, merge_sha or pr.merge_commit_sha)
        if merged:
            self.update_stale()
        self.fill()

    def record_merge(self, rec: ExperimentRecord, merge: str) -> None:
        """The merged win's runs measure the new champion (its tree is the candidate's head)."""
        if rec.merged_as != merge:
            rec.merged_as = merge
            self.lf.save(rec)
        if not self.lf.champion_record(merge).runs:
            self.lf.save(champion_after(rec, merge))
        log.info("%s merged as %s: it is the champion's measurement now", rec.id, merge[:12])

    def update_stale(self) -> list[int]:
        """Bring every open PR measured on an older champion up to date; the workflow then evaluates it again."""
        self.sync()
        champion, updated = self.lf.champion(), []
        for pr in self.forge.open_prs():
            head = pr.head.sha
            if not self._up_to_date(champion, head) and self.forge.update_branch(pr, head):
                log.info("PR #%d: brought up to date with %s, to be evaluated again", pr.number, champion[:12])
                updated.append(pr.number)
        return updated

    def fill(self) -> list[ExperimentRecord]:
        """Open experiments while fewer than max_in_flight are open, unless paused or over a daily cap."""
        opened: list[ExperimentRecord] = []
        refused, before = 0, None
        while True:
            if self.paused():
                log.info("paused: not proposing")
                break
            why = self.budget.exhausted() if self.budget is not None else None
            if why:
                log.warning("not proposing: %s", why)
                break
            now_open = len(self.forge.open_prs())
            before = now_open if before is None else before
            # GitHub's PR list may lag behind a PR just created: count the ones opened here as well
            if max(now_open, before + len(opened)) >= self.config.github.max_in_flight:
                break
            try:
                opened.append(self.propose())
                refused = 0
            except ProposalRejected as e:
                refused += 1
                log.warning("proposal refused (no branch made): %s", e)
                if refused >= MAX_REFUSED:
                    log.warning("stopped proposing: %d proposals in a row were refused", refused)
                    break
        return opened

    def propose(self) -> ExperimentRecord:
        """The local loop's proposal step on the mirror, then its PR (the branch is pushed, never forced)."""
        self.sync()
        rec = self.loop._open()
        pr = self.forge.open_pr(rec, self.local)
        if self.budget is not None:
            self.budget.record_experiment()
        log.info("opened PR #%d for %s: %s", pr.number, rec.id, rec.proposal.hypothesis)
        return rec

    def rerun(self, number: int) -> bool:
        """/arbot rerun on a PR: re-run its latest evaluation (the next attempt trains the next seed)."""
        pr = self.forge.pr(number)
        checks = self.forge.checks(pr.head.sha, EVALUATE_CHECK, app_slug=self.evaluate_app)
        if checks and self.forge.rerun_workflow(checks[-1].details_url):
            return True
        log.warning("PR #%d: no evaluation to re-run", number)
        return False

    # --- recovery at start ---------------------------------------------------------------------------
    def recover(self) -> None:
        """At start: rebuild the state from GitHub (`catch_up`), then open experiments up to max_in_flight."""
        self.catch_up()
        self.fill()

    def catch_up(self) -> list[Decision]:
        """Record merges that happened while the bot was away, decide evaluated PRs that have no verdict, finish
        decided ones (merge a win, close a loss), update stale PRs. Safe to repeat; also `arbot decide`."""
        self.sync()
        for rec in self.lf.experiments():
            if rec.merged_as is None and rec.decision is not None and rec.decision.verdict == "win":
                pr = self.forge.find_pr(rec.branch)
                if pr is not None and pr.merged:
                    self.record_merge(rec, pr.merge_commit_sha)
        decisions = []
        for pr in self.forge.open_prs():
            rec = self.record(pr.head.ref)
            if rec is not None and (d := self.decide_pr(pr, rec)) is not None:
                decisions.append(d)
        self.update_stale()
        return decisions

    def decide_number(self, number: int) -> Decision | None:
        """`arbot decide --pr N`: decide one PR (or record its merge); stale PRs are then brought up to date."""
        self.sync()
        pr = self.forge.pr(number)
        rec = self.record(pr.head.ref)
        if rec is None:
            raise GitHubForgeError(f"PR #{number} ({pr.head.ref}) is not an arbot experiment")
        decision = None
        if pr.state == "open":
            decision = self.decide_pr(pr, rec)
            pr = self.forge.pr(number)
        if pr.merged:
            self.record_merge(rec, pr.merge_commit_sha)
            self.update_stale()
        return decision

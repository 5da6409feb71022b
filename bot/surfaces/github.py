"""The GitHub surface: each experiment is a pull request, each decision a check run, a comment and a merge.

Decide -> the note; Promote -> each run the win was decided on verified again against its workflow run, then
`arbot/verdict` success and a squash merge through branch protection (a direct merge; auto-merge only where GitHub
refuses it for now and the repository allows it), with the lifecycle's trailers plus `PR:`; Hold -> a
neutral verdict until `/arbot approve`; Close -> the verdict, the results comment, a label, the PR closed (its
branch kept); a replay's fresh experiment gets a PR of its own. A PR whose head is not the experiment's commit, or
whose commit changes a path outside target.allowed_paths, is `tampered`: rejected, never merged. An outside PR
the bot adopted (bot.server.driver.Driver.adopt) is an experiment on branch `pull/<n>`: its head fetched from
`refs/pull/<n>/head` (a fork's too), the PR itself commented, merged or labelled, and left open when it did not win.

The bot keeps a bare mirror of the repository (`.arbot/github.git`): experiment commits are made there and
pushed, champion, the default branch and both notes refs are fetched before every step, and the notes written
during a pass are pushed at its end, and before every dispatch, fetch and new PR. So the state lives on GitHub and a restarted bot rebuilds it from there. The experiment PRs
are listed once per step (`sync`), and read from that listing for the rest of the step.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import git

from bot.config import Config
from bot.core import lifecycle as lc
from bot.core.records import ExperimentRecord, RunResult, ok_metric
from bot.forges.local import NOTES_REF, NOTES_REFS, LocalForge
from bot.github.forge import (CONCLUSION_TO_STATE, LABEL, PULL_BRANCH, VERDICT_CHECK, GitHubForge, GitHubForgeError,
                              results_comment, squash_message, verdict_check)
from bot.proposers.failures import ProposalRejected
from runner.guard import changed_paths, forbidden_paths

log = logging.getLogger("arbot.github")

MIRROR = ".arbot/github.git"


class Budget(Protocol):
    """The daily caps (bot.server.store.Budget)."""

    def exhausted(self) -> str | None: ...
    def record_experiment(self) -> None: ...
    def record_runner_seconds(self, seconds: float) -> None: ...


class MirrorForge(LocalForge):
    """The local forge on the bot's mirror: every note it writes is pushed to GitHub, at once, or during a pass
    (`GitHubSurface.one_push`) at its end, and before any dispatch, fetch or new PR."""

    def __init__(self, repo: git.Repo, push_notes: Callable[[], None], **kwargs):
        super().__init__(repo, **kwargs)
        self.push_notes = push_notes
        self.batching = False  # during a pass: pushed at its end
        self.unpushed = False

    def _write_note(self, commit: str, payload: str, ref: str = NOTES_REF) -> None:
        super()._write_note(commit, payload, ref)
        self.unpushed = True
        if not self.batching:
            self.push_notes()


def mirror(path: Path) -> git.Repo:
    """The bot's bare mirror, created on first use, with an identity for the commits and notes it writes."""
    repo = git.Repo(path) if path.exists() else git.Repo.init(path, bare=True, mkdir=True)
    with repo.config_writer() as cw:
        if not cw.has_option("user", "name"):
            cw.set_value("user", "name", "arbot")
            cw.set_value("user", "email", "arbot@users.noreply.github.com")
    return repo


class GitHubSurface:
    shared = True  # another server, the scheduled workflow or a restarted bot may write the notes between events

    def __init__(self, forge: GitHubForge, local: git.Repo, config: Config, budget: Budget | None = None,
                 paused: Callable[[], bool] = lambda: False,
                 recheck: Callable[[RunResult], str | None] = lambda run: "no workflow run can be verified"):
        """`recheck(run)`: why a recorded run does not prove to come from its verified workflow run (asked for each
        run a win was decided on, before it is merged: GitHubActions.recheck)."""
        self.forge, self.local, self.config, self.budget, self.paused = forge, local, config, budget, paused
        self.recheck = recheck
        self._prs: dict[str, object] = {}  # head branch -> PR, as this process last saw it
        self.metric = config.metric
        self.store = MirrorForge(local, self.push_notes, champion_branch=config.run.champion_branch,
                                 branch_prefix=config.run.branch_prefix)

    # --- git: the mirror follows GitHub ----------------------------------------------------------------------
    def git(self, *args: str) -> str:
        """git in the mirror, "{remote}" replaced by GitHub's URL; errors never show the token."""
        remote = self.forge.git_remote()
        try:
            return self.local.git.execute(["git", *[remote if a == "{remote}" else a for a in args]])
        except git.GitCommandError as e:
            token = self.forge._token()
            detail = str(e.stderr).replace(token, "***") if token else str(e.stderr)
            # from None: the GitCommandError's command line holds the remote URL with the token
            raise GitHubForgeError(f"git {args[0]} failed: {detail}") from None

    def fetch(self) -> None:
        """Fetch champion, the default branch, the experiment branches and the notes from GitHub (GitHub is the
        truth). The default branch lands on refs/remotes/github/<default>, named by its full ref: no tag stands in.
        Notes written and not pushed yet are pushed first (the fetch would replace them)."""
        self.flush()
        branch, prefix, default = self.config.run.champion_branch, self.config.run.branch_prefix, self.default_branch
        self.git("fetch", "--quiet", "{remote}", f"+refs/heads/{branch}:refs/heads/{branch}",
                 f"+refs/heads/{default}:refs/remotes/github/{default}",
                 f"+refs/heads/{prefix}*:refs/remotes/github/{prefix}*",
                 f"+refs/pull/*/head:refs/remotes/github/{PULL_BRANCH}*")  # adopted PRs' heads, forks' included
        remote_refs = self.git("ls-remote", "{remote}", "refs/notes/*")
        notes = [ref for ref in NOTES_REFS if ref in remote_refs.split()]
        if notes:
            self.git("fetch", "--quiet", "{remote}", *[f"+{ref}:{ref}" for ref in notes])

    @property
    def default_branch(self) -> str:
        return self.forge.repo.default_branch

    def on_default(self, sha: str) -> bool:
        """Whether `sha` is a commit of the default branch as last fetched (no API call)."""
        return self.contains(f"refs/remotes/github/{self.default_branch}", sha)

    def contains(self, sha: str, ancestor: str) -> bool:
        """Whether `ancestor` is in `sha`'s history on the mirror."""
        try:
            self.local.git.merge_base("--is-ancestor", ancestor, sha)
            return True
        except git.GitCommandError:
            return False

    def push_notes(self) -> None:
        """Never forced: a note written elsewhere meanwhile makes this fail loudly instead of being lost."""
        local = [ref for ref in NOTES_REFS if self.store.has_ref(ref)]
        self.git("push", "--quiet", "{remote}", *[f"{ref}:{ref}" for ref in local])
        self.store.unpushed = False

    def flush(self) -> None:
        """Push the notes written since the last push, if any (before a dispatch: a run is noted pending on GitHub
        before it is dispatched, so a restarted bot never dispatches it twice; before a fetch)."""
        if self.store.unpushed:
            self.push_notes()

    @contextmanager
    def one_push(self) -> Iterator[None]:
        """A pass whose notes are pushed once, at its end (and before each dispatch: `flush`)."""
        self.store.batching = True
        try:
            yield
        finally:
            self.store.batching = False
            self.flush()

    # --- the surface port (bot.stepper.Surface) ----------------------------------------------------------------
    def sync(self) -> dict[str, str]:
        """The mirror fetched; the wins GitHub merged meanwhile (auto-merge, or a human), read from one listing of
        the PRs, made only while a win waits for its merge."""
        self.fetch()
        waiting = [rec for rec in self.store.experiments()
                   if rec.decision is not None and rec.decision.verdict == "win" and not rec.merged_as]
        if waiting:
            self._prs.update({pr.head.ref: pr for pr in self.forge.recent_prs()})
        merged = {}
        for rec in waiting:
            if rec.pr is not None:  # an adopted PR is not in the listing of this repository's branches: read again
                self._prs.pop(rec.branch, None)
            pr = self.find_pr(rec.branch)
            if pr is not None and pr.merged_at is not None:
                merged[rec.id] = pr.merge_commit_sha
        return merged

    def find_pr(self, branch: str):
        """The experiment's PR, as this process last saw it (opened, listed or changed by it), else asked of GitHub."""
        if branch not in self._prs:
            pr = self.forge.find_pr(branch)
            if pr is None:
                return None
            self._prs[branch] = pr
        return self._prs[branch]

    def branch_head(self, branch: str) -> str | None:
        """The experiment branch's commit on GitHub as last fetched (or pushed by the bot), None when there is none."""
        try:
            return self.local.git.rev_parse("--verify", "-q", f"refs/remotes/github/{branch}^{{commit}}")
        except git.GitCommandError:
            return None

    def tampered(self, rec: ExperimentRecord) -> str | None:
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
        if rec.decision is not None and rec.decision.verdict == "win" and not rec.merged_as:
            evidence = rec.runs + self.store.champion_record(rec.parent).runs
            if (why := next((w for run in evidence if (w := self.recheck(run)) is not None), None)) is not None:
                return f"a run it was decided on does not verify ({why})"
        if self.branch_head(rec.branch) == rec.commit:
            return None  # its branch holds it: so does its PR (from this repository: find_pr), whose merge is guarded
        pr = self.forge.find_pr(rec.branch)  # the branch moved, or is gone: what its PR holds now
        if pr is None:
            return None
        head_repo = pr.head.repo.full_name if pr.head.repo is not None else "a deleted repository"
        if head_repo != self.forge.full_name and rec.pr is None:  # an adopted PR may come from a fork
            return f"PR #{pr.number}'s head is in {head_repo}, not {self.forge.full_name}"
        if pr.head.sha != rec.commit:
            return f"PR #{pr.number}'s head is {pr.head.sha[:12]}, not the experiment's commit {rec.commit[:12]}"
        return None

    def why_not_propose(self) -> str | None:
        if self.paused():
            return "paused (github.paused, or `/arbot pause`; `/arbot resume` goes on)"
        return self.budget.exhausted() if self.budget is not None else None

    def opened(self, rec: ExperimentRecord, proposed: bool) -> None:
        """Its pull request (the branch is pushed, never forced), after its note (a restarted bot knows every
        experiment it opened a PR for); a proposed one counts against the daily cap (a replay measures again a
        change that did)."""
        self.flush()
        pr = self._prs[rec.branch] = self.forge.open_pr(rec, self.local, self._prs.get(rec.branch))
        self.local.git.update_ref(f"refs/remotes/github/{rec.branch}", rec.commit)  # pushed: as a fetch would see it
        if proposed and self.budget is not None:
            self.budget.record_experiment()
        log.info("opened PR #%d for %s: %s", pr.number, rec.id, rec.proposal.hypothesis)

    def adopted(self, rec: ExperimentRecord, superseded: ExperimentRecord | None) -> None:
        """An outside PR adopted as `rec`: labelled `arbot`, and said on it (what is measured, what it supersedes)."""
        pr = self._pr(rec)
        if LABEL not in {lab.name for lab in pr.labels}:
            self.forge.add_labels(pr.number, LABEL)
        if superseded is not None:  # a comment of its own: the results comment moves on to the new experiment
            self.forge.comment(pr.number, f"**arbot**: {rec.id} supersedes {superseded.id}: {superseded.id} measured "
                                          f"`{superseded.commit[:12]}`, the head before the push (its runs are kept).")
        self._comment(rec, f"### {rec.id}: adopted\n\narbot measures this PR's head `{rec.commit[:12]}` by "
                           f"@{rec.author} against the champion `{rec.parent[:12]}`.")

    def measuring(self, rec: ExperimentRecord, run: lc.Run) -> None:
        self._comment(rec, f"### {rec.id}: measuring\n\n{run.why}\n\n" + "\n".join(f"- `{s.key}`" for s in run.specs))

    def held(self, rec: ExperimentRecord, why: str) -> None:
        self._conclude(rec, verdict_check(rec.decision, self.metric, held=True),
                       f"Held for a human: {why}. Read the diff; a user with write access comments `/arbot approve` "
                       "to merge it.")

    def closed(self, rec: ExperimentRecord) -> None:
        """The verdict, the results comment, a label, the PR closed. An adopted PR stays open for its author (closed
        after a loss only with github.close_losing_prs)."""
        pr = self._pr(rec)
        self._verdict(rec, verdict_check(rec.decision, self.metric))
        close = rec.pr is None or (self.config.github.close_losing_prs and rec.decision.verdict == "loss")
        if pr.state == "open":
            self._prs.pop(rec.branch, None)  # closed or labelled now: read again if asked
            self.forge.close_as(pr, rec.decision.verdict, results_comment(rec, rec.decision, self.trajectory(rec),
                                                                          self.metric), close=close)
            log.info("PR #%d (%s): %s as %s (%s)", pr.number, rec.id, "closed" if close else "labelled",
                     rec.decision.verdict, rec.decision.rule)

    def promote(self, rec: ExperimentRecord, trailers: dict[str, str]) -> str | None:
        """The verdict, then a squash merge guarded by the head, made now. Where GitHub refuses it for now (a
        required check still pending) and the repository allows auto-merge, auto-merge is enabled (the merge then
        comes later, and `sync` records it); a refused merge is tried again on the next step."""
        pr = self._pr(rec)
        if pr.merged_at is None:
            self._conclude(rec, verdict_check(rec.decision, self.metric))
            title, body = squash_message(rec, trailers, pr.number)
            self._prs.pop(rec.branch, None)  # merged, or refused: read again if asked
            try:
                merge = self.forge.merge(pr, rec.commit, title, body)
                log.info("PR #%d (%s): merged as %s", pr.number, rec.id, merge[:12])
            except GitHubForgeError as e:
                if pr.auto_merge is None and self.forge.repo.allow_auto_merge and self.forge.enable_automerge(
                        pr, rec.commit, title, body):
                    log.info("PR #%d (%s): auto-merge enabled at %s (%s)", pr.number, rec.id, rec.commit[:12], e)
                elif pr.auto_merge is None:
                    log.warning("PR #%d (%s): not merged: %s", pr.number, rec.id, e)
                    self._conclude(rec, verdict_check(rec.decision, self.metric),
                                   f"**Not merged yet**: GitHub refused the merge ({str(e)[:500]}). The bot tries again "
                                   "on the next event and on its catch-up timer.")
                return None
        else:
            merge = pr.merge_commit_sha
        self.fetch()  # the merge commit, on which the new champion's note is written
        return merge

    def champion_fails(self, rec: ExperimentRecord | None, reason: str) -> None:
        log.error("the champion fails%s: %s", f" ({rec.id} cannot be measured)" if rec else "", reason)
        if rec is not None:
            self._comment(rec, f"### {rec.id}: the champion fails\n\n{reason[:3000]}")

    def notes_skipped(self, rec: ExperimentRecord, lines: list[str]) -> None:
        """A comment of its own on the experiment's PR (the results comment is left as it is); none without a PR."""
        if (pr := self.find_pr(rec.branch)) is not None:
            pr.create_issue_comment(
                f"### {rec.id}: notes ignored\n\nNotes not signed by arbot's key were written about this experiment; "
                "arbot ignores them and goes on with its own records:\n\n" + "\n".join(f"- {line[:500]}" for line in lines[:10]))

    def refused(self, error: ProposalRejected) -> None:
        log.warning("proposal refused (no branch made): %s", error)

    def stopped(self, why: str) -> None:
        log.warning("%s", why)

    # --- what people read --------------------------------------------------------------------------------------
    def _conclude(self, rec: ExperimentRecord, check, note: str = "") -> None:
        """The verdict check and the results comment of a decided experiment."""
        self._verdict(rec, check)
        comment = results_comment(rec, rec.decision, self.trajectory(rec), self.metric)
        self._comment(rec, f"{comment}\n\n{note}" if note else comment)

    def _verdict(self, rec: ExperimentRecord, check) -> None:
        """Post `arbot/verdict` on the experiment's commit unless this process posted the same already (a restarted
        bot posts it once more: the same state, no read-back)."""
        want = check.conclusion if self.forge.use_checks else CONCLUSION_TO_STATE[check.conclusion]
        if self.forge.posted(rec.commit, VERDICT_CHECK) != want:  # posted again by a restarted bot: the same state
            self.forge.post_check(rec.commit, VERDICT_CHECK, check.conclusion, check.title, check.summary)

    def _comment(self, rec: ExperimentRecord, body: str) -> None:
        self.forge.upsert_comment(self._pr(rec).number, body)

    def _pr(self, rec: ExperimentRecord):
        """The experiment's PR; opened now if the bot stopped between the experiment's note and its PR."""
        if (pr := self.find_pr(rec.branch)) is None:
            pr = self._prs[rec.branch] = self.forge.open_pr(rec, self.local, None)
        return pr

    def trajectory(self, current: ExperimentRecord | None = None) -> list[tuple[str, float]]:
        """The champion's metric: its first measured value, then each merged win (and this one, if a win)."""
        recs = self.store.experiments()
        wins = [r for r in recs if r.merged_as or (current is not None and r.id == current.id
                                                   and current.decision is not None and current.decision.verdict == "win")]
        points = []
        key = self.metric.key()
        start = ok_metric(self.store.champion_record(recs[0].parent).runs, key) if recs else []
        if start:
            points.append(("start", statistics.fmean(start)))
        for r in wins:
            values = ok_metric(current.runs if current is not None and r.id == current.id else r.runs, key)
            if values:
                points.append((r.id, statistics.fmean(values)))
        return points

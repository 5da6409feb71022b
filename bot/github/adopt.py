"""Adopting an outside pull request (a coding agent's or a person's) as an experiment, decided without GitHub calls.

The driver (bot.server.driver.Driver.adopt) reads the PR and the mirror, then asks here: may its head be measured
without a maintainer's approval (`approval_needed`), is its author over a daily cap (`over_cap`), does it change
only regular files under target.allowed_paths (`refusal`, the runner's own path and mode rules), and what is the
proposal it stands for (`proposal_of`). docs/github.md, "Evaluating agents' PRs".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import git

from bot.config import AuthorCaps
from bot.core.records import ExperimentRecord, Proposal
from runner.guard import changed_paths, forbidden_paths, irregular_paths

PROPOSER = "pr"  # the proposer of an adopted PR's experiment (its `Proposer:` trailer)
MAX_RATIONALE = 4000  # characters of the PR's description kept as the proposal's rationale


@dataclass(frozen=True)
class Head:
    """What the API says of a PR, as adoption reads it."""

    number: int
    author: str
    sha: str
    fork: bool  # its head is in another repository
    title: str
    body: str


def approval_needed(head: Head, approved_by: str | None, authors: list[str], adopted_before: bool) -> str | None:
    """Why the PR's head may not be measured before a maintainer approves it (labels it `arbot`, comments `/arbot
    evaluate`), or None. GitHub's rule for outside contributors: a fork's every push waits for an approval; a
    branch of this repository needs one unless its author is listed, or the PR was approved before."""
    if approved_by is not None:
        return None
    if head.fork:
        return "it comes from a fork: each of its pushes waits for a maintainer's approval"
    if head.author not in authors and not adopted_before:
        return f"its author @{head.author} is not in github.evaluate_authors"
    return None


def over_cap(experiments: list[ExperimentRecord], author: str, caps: AuthorCaps, now: datetime) -> str | None:
    """Why `author`'s PRs may not start another experiment today (UTC), or None: the experiments adopted today, and
    the runner minutes their runs used."""
    today = now.date().isoformat()
    theirs = [r for r in experiments if r.author == author and r.started_at.startswith(today)]
    if caps.experiments_per_day is not None and len(theirs) >= caps.experiments_per_day:
        return (f"@{author} had {len(theirs)} experiments adopted today, the daily cap "
                f"(github.author_caps.experiments_per_day: {caps.experiments_per_day})")
    minutes = sum(run.total_seconds for r in theirs for run in r.runs) / 60
    if caps.runner_minutes_per_day is not None and minutes >= caps.runner_minutes_per_day:
        return (f"@{author}'s experiments used {minutes:.1f} runner minutes today, the daily cap "
                f"(github.author_caps.runner_minutes_per_day: {caps.runner_minutes_per_day:g})")
    return None


def refusal(repo: git.Repo, champion: str, sha: str, allowed: list[str]) -> tuple[str, str] | None:
    """(rule, reason) when the head may not be run at all: a path outside target.allowed_paths, or one that is
    not a regular file (a symlink, a submodule); None when it may."""
    changed = changed_paths(repo, champion, sha)
    if outside := forbidden_paths(changed, allowed):
        return "paths", (f"it changes {', '.join(outside[:10])}, outside target.allowed_paths "
                         f"({', '.join(allowed)}); a PR arbot evaluates changes only those")
    if irregular := irregular_paths(repo, sha, changed):
        return "regular", "it changes files that are not regular files: " + ", ".join(
            f"{path} ({what})" for path, what in list(irregular.items())[:10])
    return None


def proposal_of(repo: git.Repo, champion: str, head: Head) -> Proposal:
    """The proposal the PR stands for: the new text of each file it changes (a deleted one is absent), its title
    as the hypothesis, its description as the rationale. ValueError when a changed file is not UTF-8 text."""
    tree = repo.commit(head.sha).tree
    files = {}
    for path in changed_paths(repo, champion, head.sha):
        try:
            data = (tree / path).data_stream.read()
        except KeyError:
            continue
        try:
            files[path] = data.decode()
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text") from e
    return Proposal(proposer=PROPOSER, hypothesis=head.title.strip() or f"PR #{head.number}",
                    rationale=head.body.strip()[:MAX_RATIONALE], files=files)

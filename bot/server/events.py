"""What a verified event asks the bot to do, decided without I/O.

`route(event, ...)` maps a webhook to one action object (or an `Ignored` that says why). The worker that
executes actions (collect runs, carry out the lifecycle, merge or close, propose the next experiment) is the
part of GitHub mode that talks to GitHub; keeping this mapping pure keeps it exhaustively testable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from bot.github.forge import EVALUATE_WORKFLOW, LABEL
from bot.github.report import EVALUATE_CHECK
from bot.server.webhooks import Event

COMMANDS = ("pause", "resume", "rerun", "approve", "evaluate")
PUSHED = ("opened", "reopened", "synchronize", "ready_for_review")  # a PR's head is new, or open again
# author_association values that can hold write access; the worker still asks GitHub for the permission.
MAYBE_WRITERS = {"OWNER", "MEMBER", "COLLABORATOR"}


@dataclass(frozen=True)
class Evaluated:
    """An evaluation may have ended (the evaluate workflow's run completed, or its arbot/evaluate check run or
    status for humans): advance the experiments. A nudge only: the driver reads the result itself from the
    workflow run it dispatched, so a forged event changes nothing but when the bot looks."""

    head_sha: str  # the commit trained (check run, status), or the workflow run's head on the default branch
    conclusion: str | None
    source: Literal["workflow_run", "check_run", "status"]
    run_id: int | None = None  # the workflow run that completed (workflow_run only)


@dataclass(frozen=True)
class Command:
    """`/arbot pause|resume|rerun|approve|evaluate` in a comment; only users with write access may give it (the
    worker checks)."""

    command: Literal["pause", "resume", "rerun", "approve", "evaluate"]
    issue: int
    is_pr: bool
    user: str
    association: str


@dataclass(frozen=True)
class PullRequestClosed:
    """An experiment PR closed: when merged, its merge is recorded; the champion moved, so experiments measured on
    the old one are replayed and the next is proposed."""

    pr: int
    merged: bool
    head_ref: str
    merge_sha: str | None


@dataclass(frozen=True)
class Adopt:
    """An outside PR into champion (one the bot did not open) labelled `arbot` by `by` (the worker asks GitHub
    whether that user has write access: the label is a maintainer's approval), or opened or pushed to by an author
    in github.evaluate_authors or after its adoption (`by` None): the driver decides whether its head is measured."""

    pr: int
    by: str | None
    action: str
    head_sha: str = ""  # the head the label was put on: a maintainer approves that head, no later one


@dataclass(frozen=True)
class ChampionMoved:
    """A push to the champion branch (by a merge or by hand)."""

    before: str
    after: str


@dataclass(frozen=True)
class Ping:
    zen: str


@dataclass(frozen=True)
class Ignored:
    reason: str


Action = Union[Evaluated, Command, PullRequestClosed, Adopt, ChampionMoved, Ping, Ignored]


def parse_command(body: str) -> str | None:
    """The arbot command of a comment: its first line `/arbot <command>`, else None."""
    first = (body or "").strip().splitlines()[0].strip() if (body or "").strip() else ""
    parts = first.split()
    if len(parts) >= 2 and parts[0] == "/arbot" and parts[1] in COMMANDS:
        return parts[1]
    return None


def route(event: Event, repo: str | None = None, champion_branch: str = "champion",
          label: str = LABEL, bot_login: str | None = None, branch_prefix: str = "arbot/exp-",
          authors: tuple[str, ...] = ()) -> Action:
    """The action for one event. `repo` (owner/name) limits the bot to its repository; `authors`: the logins whose
    PRs are evaluated without a label (github.evaluate_authors)."""
    p = event.payload
    if event.name == "ping":
        return Ping(zen=p.get("zen", ""))
    if repo and event.repo and event.repo.lower() != repo.lower():
        return Ignored(f"event for {event.repo}, not {repo}")

    if event.name == "workflow_run":
        run = p.get("workflow_run") or {}
        if event.action != "completed":
            return Ignored(f"workflow_run.{event.action}")
        if (run.get("path") or "").split("@")[0] != f".github/workflows/{EVALUATE_WORKFLOW}":
            return Ignored(f"workflow run of {run.get('path')!r}, not {EVALUATE_WORKFLOW}")
        return Evaluated(head_sha=run.get("head_sha", ""), conclusion=run.get("conclusion"), source="workflow_run",
                         run_id=run.get("id"))

    if event.name == "check_run":
        run = p.get("check_run") or {}
        if event.action != "completed":
            return Ignored(f"check_run.{event.action}")
        if run.get("name") != EVALUATE_CHECK:
            return Ignored(f"check run {run.get('name')!r} is not {EVALUATE_CHECK}")
        return Evaluated(head_sha=run.get("head_sha", ""), conclusion=run.get("conclusion"), source="check_run")

    if event.name == "status":
        if p.get("context") != EVALUATE_CHECK:
            return Ignored(f"status {p.get('context')!r} is not {EVALUATE_CHECK}")
        if p.get("state") == "pending":
            return Ignored("status pending")
        return Evaluated(head_sha=p.get("sha", ""), conclusion=p.get("state"), source="status")

    if event.name == "issue_comment":
        if event.action != "created":
            return Ignored(f"issue_comment.{event.action}")
        comment = p.get("comment") or {}
        user = (comment.get("user") or {}).get("login", "")
        if bot_login and user == bot_login:
            return Ignored("the bot's own comment")
        command = parse_command(comment.get("body", ""))
        if command is None:
            return Ignored("not an /arbot command")
        association = comment.get("author_association", "NONE")
        if association not in MAYBE_WRITERS:
            return Ignored(f"/arbot {command} from {user} ({association}), who has no write access")
        issue = p.get("issue") or {}
        return Command(command=command, issue=issue.get("number", 0), is_pr="pull_request" in issue,
                       user=user, association=association)

    if event.name == "pull_request":
        pr = p.get("pull_request") or {}
        if (pr.get("base") or {}).get("ref") != champion_branch:
            return Ignored(f"pull request into {(pr.get('base') or {}).get('ref')}, not {champion_branch}")
        head = pr.get("head") or {}
        own = (head.get("ref") or "").startswith(branch_prefix) and (
            repo is None or ((head.get("repo") or {}).get("full_name") or "").lower() == repo.lower())
        labelled = label in {lab.get("name") for lab in pr.get("labels") or []}
        if not own:
            return _outside(event, pr, label, labelled, authors, bot_login)
        if not labelled:
            return Ignored(f"pull request without the {label!r} label")
        if event.action == "closed":
            return _closed(event, pr)
        return Ignored(f"pull_request.{event.action}: the bot dispatches its runs itself")

    if event.name == "push":
        if p.get("ref") != f"refs/heads/{champion_branch}":
            return Ignored(f"push to {p.get('ref')}")
        return ChampionMoved(before=p.get("before", ""), after=p.get("after", ""))

    return Ignored(f"event {event.name} is not handled")


def _closed(event: Event, pr: dict) -> PullRequestClosed:
    return PullRequestClosed(pr=pr.get("number", event.payload.get("number", 0)), merged=bool(pr.get("merged")),
                             head_ref=(pr.get("head") or {}).get("ref", ""), merge_sha=pr.get("merge_commit_sha"))


def _outside(event: Event, pr: dict, label: str, labelled: bool, authors: tuple[str, ...],
             bot_login: str | None) -> Action:
    """A pull_request event of a PR the bot did not open: adopted on a maintainer's label, on a push by a listed
    author or to a PR adopted before (labelled); its merge recorded; anything else left alone."""
    number = pr.get("number", event.payload.get("number", 0))
    author = (pr.get("user") or {}).get("login", "")
    if event.action == "closed":
        if labelled:
            return _closed(event, pr)
        return Ignored("an outside pull request closed, never adopted")
    if event.action == "labeled":
        if (event.payload.get("label") or {}).get("name") != label:
            return Ignored(f"label {(event.payload.get('label') or {}).get('name')!r} is not {label!r}")
        by = (event.payload.get("sender") or {}).get("login", "")
        if bot_login and by == bot_login:
            return Ignored("the bot's own label on the pull request it adopted")
        return Adopt(pr=number, by=by, action="labeled", head_sha=(pr.get("head") or {}).get("sha", ""))
    if event.action in PUSHED and (labelled or author in authors):
        return Adopt(pr=number, by=None, action=event.action)
    return Ignored(f"pull_request.{event.action} of @{author}'s pull request: not labelled {label!r}, author not in "
                   "github.evaluate_authors")

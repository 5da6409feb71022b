"""Proposals that failed the validation cascade: no commit or branch exists for them, so their record is a git
note on the champion commit they were made against, under a separate notes ref (refs/notes/arbot-proposals),
holding a JSON list. `arbot log` shows them; the daily spend cap counts their cost.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from typing import Literal

import git
from pydantic import BaseModel, Field

from bot.proposers.base import ProposalError
from bot.records import Cost

PROPOSALS_REF = "arbot-proposals"  # refs/notes/arbot-proposals


class Attempt(BaseModel):
    """One answer of the model and the cascade step that refused it."""

    stage: str  # parse, paths, apply, compile, duplicate, smoke
    error: str
    answer: str = ""  # the start of the model's answer


class FailedProposal(BaseModel):
    kind: Literal["failed_proposal"] = "failed_proposal"
    proposer: str
    model: str = ""
    champion: str
    hypothesis: str = ""  # the last hypothesis the model gave, if any
    stage: str  # where the last attempt failed, or spend_cap
    reason: str
    attempts: list[Attempt] = Field(default_factory=list)
    cost: Cost = Field(default_factory=Cost)
    at: str = ""


class ProposalRejected(ProposalError):
    """No usable proposal: every answer failed the cascade (or a spend cap stopped the repairs). No branch exists."""

    def __init__(self, message: str, record: FailedProposal | None = None):
        super().__init__(message)
        self.record = record


class SpendCapReached(ProposalRejected):
    """A configured spend cap is reached: stop proposing."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_note(repo: git.Repo, commit: str) -> list[dict]:
    try:
        data = json.loads(repo.git.notes(f"--ref={PROPOSALS_REF}", "show", commit))
    except (git.GitCommandError, ValueError):
        return []
    return data if isinstance(data, list) else []


def save_failed_proposal(repo: git.Repo, rec: FailedProposal) -> None:
    """Append the record to the JSON list noted on its champion commit."""
    items = _read_note(repo, rec.champion) + [rec.model_dump(mode="json")]
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(items, f, indent=1)
        f.flush()
        repo.git.notes(f"--ref={PROPOSALS_REF}", "add", "-f", "-F", f.name, rec.champion)


def failed_proposals(repo: git.Repo) -> list[FailedProposal]:
    """Every recorded failed proposal, oldest first."""
    try:
        listing = repo.git.notes(f"--ref={PROPOSALS_REF}", "list")
    except git.GitCommandError:
        return []
    out = []
    for line in listing.splitlines():
        blob, _ = line.split()
        try:
            items = json.loads(repo.odb.stream(bytes.fromhex(blob)).read())
        except ValueError:
            continue
        out += [FailedProposal.model_validate(i) for i in items if isinstance(i, dict)]
    return sorted(out, key=lambda r: r.at)


def spent_today(repo: git.Repo, experiments_ref: str = "arbot") -> float:
    """USD spent on proposals today (UTC): experiments started today plus failed proposals made today."""
    from bot.forges.local import LocalForge  # local import: the forge does not depend on proposers

    today = datetime.now(timezone.utc).date().isoformat()
    total = sum(r.cost.usd for r in failed_proposals(repo) if r.at.startswith(today))
    total += sum(r.proposal.cost.usd for r in LocalForge(repo).experiments() if r.started_at.startswith(today))
    return total

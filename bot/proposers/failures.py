"""A proposer that cannot deliver a usable proposal says so with these errors. No branch exists for such a
proposal; the executor stores the record the error carries (bot.forges.local.LocalForge.save_failed_proposal).
"""

from __future__ import annotations

from datetime import datetime, timezone

from bot.proposers.base import ProposalError
from bot.core.records import FailedProposal


class ProposalRejected(ProposalError):
    """No usable proposal: every answer failed the cascade (or a spend cap stopped the repairs). No branch exists."""

    def __init__(self, message: str, record: FailedProposal | None = None):
        super().__init__(message)
        self.record = record


class SpendCapReached(ProposalRejected):
    """A configured spend cap is reached: stop proposing."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

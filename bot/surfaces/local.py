"""The local surface: `arbot run` shows the research in the terminal and merges wins into the local `champion`.

A win is merged by the local forge (a merge commit with the lifecycle's trailers); nothing is merged outside the
stepper, and no branch can be pushed to meanwhile but by hand (`moved_branch`: the experiment is then `tampered`).
"""

from __future__ import annotations

import logging
from typing import Protocol

from bot.core import lifecycle as lc
from bot.core.records import ChampionRecord, ExperimentRecord
from bot.forges.local import LocalForge
from bot.proposers.failures import ProposalRejected

log = logging.getLogger("arbot.loop")


class ChampionBroken(RuntimeError):
    """The champion itself does not train and score: nothing can be compared against it."""


class Report(Protocol):
    """What `arbot run` shows as a campaign goes (bot.cli)."""

    def measured(self, champion: ChampionRecord) -> None: ...  # the champion a campaign started from, its floor made
    def finished(self, rec: ExperimentRecord) -> None: ...
    def refused(self, error: ProposalRejected) -> None: ...
    def stopped(self, why: str) -> None: ...


class Quiet:
    def measured(self, champion: ChampionRecord) -> None:
        pass

    def finished(self, rec: ExperimentRecord) -> None:
        pass

    def refused(self, error: ProposalRejected) -> None:
        pass

    def stopped(self, why: str) -> None:
        pass


class LocalSurface:
    shared = False  # `arbot run` is the repository's only writer while it runs

    def __init__(self, forge: LocalForge, report: Report | None = None):
        self.forge, self.report = forge, report or Quiet()

    def sync(self) -> dict[str, str]:
        return {}

    def tampered(self, rec: ExperimentRecord) -> str | None:
        return self.forge.moved_branch(rec)

    def why_not_propose(self) -> str | None:
        return None

    def opened(self, rec: ExperimentRecord, proposed: bool) -> None:
        pass  # its branch is made with its commit (LocalForge.open_experiment)

    def measuring(self, rec: ExperimentRecord, run: lc.Run) -> None:
        pass  # each run shows its own progress bar (bot.cli)

    def held(self, rec: ExperimentRecord, why: str) -> None:
        pass  # `arbot run` lists it as `review`; `arbot approve` merges it

    def closed(self, rec: ExperimentRecord) -> None:
        pass  # its branch and notes stay: the record is kept

    def promote(self, rec: ExperimentRecord, trailers: dict[str, str]) -> str:
        return self.forge.promote(rec, trailers)

    def champion_fails(self, rec: ExperimentRecord | None, reason: str) -> None:
        raise ChampionBroken(reason)

    def notes_skipped(self, rec: ExperimentRecord, lines: list[str]) -> None:
        for line in lines:
            log.warning("%s: %s", rec.id, line)

    def refused(self, error: ProposalRejected) -> None:
        self.report.refused(error)

    def stopped(self, why: str) -> None:
        self.report.stopped(why)

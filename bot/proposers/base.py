"""The proposer interface: read a context, return one Proposal. Proposers never touch git."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from bot.knobs import Knob
from bot.core.records import DEFAULT_METRIC, ExperimentRecord, Metric, Proposal


@dataclass
class ProposalContext:
    champion: str  # sha the proposal will be measured against
    script_path: str  # e.g. target/train.py
    files: dict[str, str]  # the champion's text of each allowed file
    knobs: list[Knob]
    history: list[ExperimentRecord] = field(default_factory=list)  # decided experiments
    pending: list[ExperimentRecord] = field(default_factory=list)  # experiments in flight: propose none of them again
    program: str = ""  # target/program.md
    metric: Metric = DEFAULT_METRIC  # what the proposal should improve

    @property
    def script(self) -> str:
        return self.files[self.script_path]


class Proposer(Protocol):
    name: str

    def propose(self, ctx: ProposalContext) -> Proposal: ...


class ProposalError(RuntimeError):
    """The proposer could not produce a usable proposal; the message says why."""


class SearchExhausted(ProposalError):
    """Every change the proposer can make to this champion was tried: nothing is left to propose until the
    champion moves or the search space is widened. Proposing stops cleanly."""

"""The shared vocabulary: every surface (notes, trailers, results.tsv, CLI) renders these records.

All records are pydantic models so they round-trip through JSON (git notes, runner output) unchanged.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from runner.result import RunResult, RunStatus

Verdict = Literal["win", "loss", "crash", "timeout", "rejected", "more_runs"]
LOWER_IS_BETTER = {"val_bpb": True, "holdout_bpb": True}
VAL, HOLDOUT = "val", "holdout"  # the evaluator's splits a run is scored on


class KnobChange(BaseModel):
    name: str
    old: float | int
    new: float | int


class Cost(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float = 0.0


class Proposal(BaseModel):
    """One change to the target, as a proposer made it. `files` holds the full new text of each changed file."""

    proposer: str
    hypothesis: str
    rationale: str = ""
    files: dict[str, str]
    knobs: list[KnobChange] = Field(default_factory=list)
    cost: Cost = Field(default_factory=Cost)
    params: dict[str, float | int | str] = Field(default_factory=dict)


class Evidence(BaseModel):
    """What the policy sees: the measured metric of the champion's and the candidate's runs (lower is better)."""

    metric: str = "val_bpb"
    champion: list[float]
    candidate: list[float]
    candidate_status: RunStatus = "ok"
    candidate_reason: str = ""
    removes_code: bool = False


class Decision(BaseModel):
    """The policy's answer, with the evidence that led to it."""

    verdict: Verdict
    rule: str
    reason: str
    metric: str = "val_bpb"
    champion_mean: float | None = None
    candidate_mean: float | None = None
    effect: float | None = None  # champion_mean - candidate_mean: positive means the candidate is better
    spread: float | None = None  # the noise the rule used (standard deviation of single runs)
    p_value: float | None = None
    champion_runs: int = 0
    candidate_runs: int = 0
    more_candidate_runs: int = 0  # for more_runs: how many more candidate runs to make
    more_champion_runs: int = 0  # for more_runs: how many more champion runs to make

    @property
    def final(self) -> bool:
        return self.verdict != "more_runs"


class RunSpec(BaseModel):
    """One run the lifecycle asks for: train `commit`, score it with `champion`'s evaluator, at `seed`, on `splits`.

    An executor that runs it later (GitHub mode dispatches a workflow) keeps it in the record's `pending` list
    until its result arrives; `key` names that run everywhere (the check run's external_id on GitHub)."""

    role: str  # "champion", or the experiment id
    commit: str
    champion: str
    seed: int
    splits: list[str] = Field(default_factory=lambda: ["val"])
    requested_at: str = ""
    run_id: int | None = None  # GitHub mode: the workflow run dispatched for it, whose result alone counts

    @property
    def key(self) -> str:
        return f"{self.role}:{self.commit[:12]}:seed-{self.seed}:{'+'.join(self.splits)}"


class AuditRecord(BaseModel):
    """One replication of a merged win: fresh seeds for the win and for the champion it was measured against."""

    runs: int
    seeds: list[int]
    candidate: list[float]
    baseline: list[float]
    effect: float | None = None  # baseline mean - candidate mean: positive means the win held
    p_value: float | None = None
    replicates: bool = False
    note: str = ""
    at: str = ""


class ExperimentRecord(BaseModel):
    """One experiment, win or not, as stored in git notes (refs/notes/arbot) on its commit."""

    kind: Literal["experiment"] = "experiment"
    id: str  # exp-<n>
    number: int
    branch: str
    commit: str
    parent: str  # the champion sha it is measured against
    proposal: Proposal
    runs: list[RunResult] = Field(default_factory=list)
    evidence: Evidence | None = None  # what the final decision was made on
    decision: Decision | None = None
    merged_as: str | None = None
    reverted_as: str | None = None  # the champion commit that rolled this win back (arbot revert)
    audits: list[AuditRecord] = Field(default_factory=list)
    review: Literal["needed", "approved"] | None = None  # a flagged win waits for a human (arbot approve)
    pending: list[RunSpec] = Field(default_factory=list)  # runs asked for, not reported yet (GitHub mode)
    started_at: str = ""
    finished_at: str | None = None


class ChampionRecord(BaseModel):
    """Measurements of one champion commit, stored as its note: the runs that define its metric and noise."""

    kind: Literal["champion"] = "champion"
    commit: str
    experiment: str | None = None  # the experiment that made this champion; None for the starting point
    runs: list[RunResult] = Field(default_factory=list)
    pending: list[RunSpec] = Field(default_factory=list)  # runs asked for, not reported yet (GitHub mode)


class Attempt(BaseModel):
    """One answer of the LLM proposer and the validation step that refused it."""

    stage: str  # parse, paths, apply, compile, duplicate, smoke
    error: str
    answer: str = ""  # the start of the model's answer


class FailedProposal(BaseModel):
    """A proposal that failed the validation cascade: no branch exists, so its record is a note on the champion
    commit it was made against, under refs/notes/arbot-proposals."""

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


def val_runs(runs: list[RunResult]) -> list[RunResult]:
    """The runs scored on val alone: a holdout confirmation run (splits val + holdout) checks a win; it is never
    part of a mean, a noise floor or a decision."""
    return [r for r in runs if HOLDOUT not in r.splits]


def ok_metric(runs: list[RunResult], metric: str = "val_bpb") -> list[float]:
    """The metric of each successful val run, in order."""
    return [r.metrics[metric] for r in val_runs(runs) if r.ok and metric in r.metrics]

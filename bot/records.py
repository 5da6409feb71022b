"""The shared vocabulary: every surface (notes, trailers, results.tsv, CLI) renders these records.

All records are pydantic models so they round-trip through JSON (git notes, runner output) unchanged.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

RunStatus = Literal["ok", "crash", "timeout", "rejected"]
Verdict = Literal["win", "loss", "crash", "timeout", "rejected", "more_runs"]
LOWER_IS_BETTER = {"val_bpb": True, "holdout_bpb": True}


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


class RunResult(BaseModel):
    """One train + evaluate run of one commit, as the runner reports it (the JSON of `arbot evaluate`)."""

    status: RunStatus
    commit: str
    champion: str | None = None
    reason: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    seed: int = 0
    steps: int | None = None
    tokens: int | None = None
    tokens_per_second: float | None = None
    train_seconds: float | None = None
    total_seconds: float = 0.0
    peak_memory_gb: float | None = None
    device: str | None = None
    params: int | None = None
    evaluator_fingerprint: str | None = None
    sandbox: str = "none"
    log_tail: str = ""
    flags: list[str] = Field(default_factory=list)  # what diff inspection found suspicious (runner.inspect)
    model_sha256: str | None = None  # the exported model as scored (copied out of the sandbox, then hashed)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


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
    review: Literal["needed", "approved"] | None = None  # a flagged win waits for a human (Loop.approve)
    started_at: str = ""
    finished_at: str | None = None


class ChampionRecord(BaseModel):
    """Measurements of one champion commit, stored as its note: the runs that define its metric and noise."""

    kind: Literal["champion"] = "champion"
    commit: str
    experiment: str | None = None  # the experiment that made this champion; None for the starting point
    runs: list[RunResult] = Field(default_factory=list)


def ok_metric(runs: list[RunResult], metric: str = "val_bpb") -> list[float]:
    """The metric of each successful run, in order."""
    return [r.metrics[metric] for r in runs if r.ok and metric in r.metrics]

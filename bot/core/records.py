"""The shared vocabulary: every surface (notes, trailers, results.tsv, CLI) renders these records.

All records are pydantic models so they round-trip through JSON (git notes, runner output) unchanged.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from runner.config import Direction, EvaluatorConfig
from runner.result import RunResult, RunStatus

Verdict = Literal["win", "loss", "crash", "timeout", "rejected", "more_runs"]
VAL, HOLDOUT = "val", "holdout"  # the evaluator's splits a run is scored on
HOLDOUT_SEEDS = 1_000_000  # the first seed of holdout confirmation runs: val runs are numbered 0, 1, 2, ... below it


def sign(direction: Direction) -> int:
    """+1 when lower is better, -1 when higher is."""
    return 1 if direction == "minimize" else -1


def oriented(values: list[float], direction: Direction) -> list[float]:
    """The values times the direction's sign, so lower is better: the policy and the audit compare these, so each
    rule is written once, for lower-is-better."""
    return [sign(direction) * v for v in values]


class Metric(BaseModel, frozen=True):
    """The metric that decides (evaluator.metric, .direction, .precision). The evaluator reports it for each split
    it scores as `<split>_<name>`: the val one decides, the holdout one confirms a win."""

    name: str
    direction: Direction
    precision: int

    @classmethod
    def of(cls, evaluator: EvaluatorConfig) -> Metric:
        return cls(name=evaluator.metric, direction=evaluator.direction, precision=evaluator.precision)

    def key(self, split: str = VAL) -> str:
        return f"{split}_{self.name}"

    @property
    def better(self) -> str:
        """Which way wins, in words: lower or higher."""
        return "lower" if self.direction == "minimize" else "higher"

    def fmt(self, value: float | None, signed: bool = False) -> str:
        """A value (signed: a delta, with its sign) at the configured precision; n/a for none."""
        return "n/a" if value is None else f"{value:{'+' if signed else ''}.{self.precision}f}"


DEFAULT_METRIC = Metric.of(EvaluatorConfig())  # the built-in target's


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


class CampaignPrior(BaseModel):
    """What the `bayes` policy has learned from a campaign's decided experiments (`bot.core.bayes.learn`): the
    distribution of true improvements (`effects`, in noise sds, with `weights`), the noise sd of one run, the share
    of changes whose runs pair with the champion's by seed and their correlation, and the improvement a run buys."""

    effects: list[float]
    weights: list[float]
    noise_sd: float | None = None  # metric units; None: from the champion's runs alone
    noise_df: int = 0
    champion_runs: list[float] = Field(default_factory=list)  # the latest champion's runs in the noise pool
    pair_share: float = 0.0
    pair_correlation: float = 0.0
    run_value: float  # improvement (noise sds) per run the campaign has made: the price of one more run
    experiments: int = 0  # how many decided experiments it was learned from
    promotions: int = 0  # of them, promoted
    false_promotions: float = 0.0  # how many of those promotions are no better, expected under this prior


class Evidence(BaseModel):
    """What the policy sees: the measured metric of the champion's and the candidate's runs."""

    metric: str = ""  # the val key of the metric
    direction: Direction = "minimize"
    champion: list[float]
    candidate: list[float]
    champion_seeds: list[int] = Field(default_factory=list)  # the seed of each value above; empty: run i is seed i
    champion_inherited: int = 0  # the champion's first values are this many runs of the win that made it (selected)
    candidate_seeds: list[int] = Field(default_factory=list)
    campaign: CampaignPrior | None = None  # the bayes policy's prior, learned from the campaign so far
    candidate_status: RunStatus = "ok"
    candidate_reason: str = ""
    removes_code: bool = False


def verdict_text(verdict: str, rule: str) -> str:
    """`loss (screen)`; the rule only where it says more than the verdict (not `crash (crash)`)."""
    return verdict if rule in ("", verdict) else f"{verdict} ({rule})"


class Decision(BaseModel):
    """The policy's answer, with the evidence that led to it."""

    verdict: Verdict
    rule: str
    reason: str
    metric: str = ""  # the val key of the metric, when the policy decided
    champion_mean: float | None = None
    candidate_mean: float | None = None
    effect: float | None = None  # the improvement over the champion's mean: positive means the candidate is better
    spread: float | None = None  # the noise the rule used (standard deviation of single runs)
    p_value: float | None = None
    champion_runs: int = 0
    candidate_runs: int = 0
    more_candidate_runs: int = 0  # for more_runs: how many more candidate runs to make
    more_champion_runs: int = 0  # for more_runs: how many more champion runs to make

    @property
    def final(self) -> bool:
        return self.verdict != "more_runs"

    @property
    def delta(self) -> float | None:
        """candidate_mean - champion_mean, as humans read it (a win's is negative when minimizing, positive when
        maximizing); None when the rule measured no effect."""
        if self.effect is None or self.candidate_mean is None or self.champion_mean is None:
            return None
        return self.candidate_mean - self.champion_mean


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


class LostRun(BaseModel):
    """A run the machine lost (job cancelled or preempted, node failed, worker died): asked for again, and kept
    here so nothing about it is lost; it never counts as the candidate's result."""

    key: str  # the RunSpec's key
    job: str
    node: str = ""
    reason: str
    at: str = ""


class AuditRecord(BaseModel):
    """One replication of a merged win: fresh seeds for the win and for the champion it was measured against."""

    runs: int
    seeds: list[int]
    candidate: list[float]
    baseline: list[float]
    effect: float | None = None  # the improvement over the baseline mean: positive means the win held
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
    pending: list[RunSpec] = Field(default_factory=list)  # runs asked for, not reported yet
    lost: list[LostRun] = Field(default_factory=list)  # attempts the machine lost (each asked for again)
    started_at: str = ""
    finished_at: str | None = None
    pr: int | None = None  # an adopted pull request (proposer "pr"): its head is `commit`, its branch `pull/<pr>`
    author: str | None = None  # that pull request's author


class ChampionRecord(BaseModel):
    """Measurements of one champion commit, stored as its note: the runs that define its metric and noise."""

    kind: Literal["champion"] = "champion"
    commit: str
    experiment: str | None = None  # the experiment that made this champion; None for the starting point
    runs: list[RunResult] = Field(default_factory=list)
    pending: list[RunSpec] = Field(default_factory=list)  # runs asked for, not reported yet
    lost: list[LostRun] = Field(default_factory=list)  # attempts the machine lost (each asked for again)


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


def is_confirmation(run: RunResult | RunSpec) -> bool:
    """Whether a run is a holdout confirmation (seeded from HOLDOUT_SEEDS, scored on val and holdout): a candidate's,
    which checks its win, or a champion's reference made for one. It is never part of a mean, a noise floor or a
    decision. A champion's val runs may be scored on holdout too (their gaps are the references); they stay val runs."""
    return run.seed >= HOLDOUT_SEEDS


def val_runs(runs: list[RunResult]) -> list[RunResult]:
    """The runs a decision is made on: every run but the holdout confirmations (`is_confirmation`)."""
    return [r for r in runs if not is_confirmation(r)]


def ok_runs(runs: list[RunResult], metric: str) -> list[RunResult]:
    """The successful val runs that scored the metric (its val key), in order: the runs a decision is made on."""
    return [r for r in val_runs(runs) if r.ok and metric in r.metrics]


def ok_metric(runs: list[RunResult], metric: str) -> list[float]:
    """The metric (its val key) of each successful val run, in order."""
    return [r.metrics[metric] for r in ok_runs(runs, metric)]


def ok_seeds(runs: list[RunResult], metric: str) -> list[int]:
    """The seed of each value `ok_metric` gives, in the same order."""
    return [r.seed for r in ok_runs(runs, metric)]

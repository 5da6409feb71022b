"""The runner's output record for one run; the bot stores it unchanged (git notes, results.tsv)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

RunStatus = Literal["ok", "crash", "timeout", "rejected"]


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
    score_seconds: float | None = None  # the scoring request's wall time, measured by the runner
    total_seconds: float = 0.0
    phases: dict[str, float] = Field(default_factory=dict)  # wall seconds of each step of the run (runner.job.PHASES)
    peak_memory_gb: float | None = None
    device: str | None = None
    params: int | None = None
    evaluator_fingerprint: str | None = None
    sandbox: str = "none"
    log_tail: str = ""
    flags: list[str] = Field(default_factory=list)  # what diff inspection found suspicious (runner.inspect)
    model_sha256: str | None = None  # the exported model as scored (copied out of the sandbox, then hashed)
    splits: list[str] = Field(default_factory=lambda: ["val"])  # what it was scored on: val, or val + holdout
    job: str | None = None  # the executor's name for the run: "worker 1", "slurm 1234", "workflow run 99"
    node: str | None = None  # the machine it ran on

    @property
    def ok(self) -> bool:
        return self.status == "ok"

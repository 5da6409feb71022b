"""The runner's output record for one run; the bot stores it unchanged (git notes, results.tsv)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

RunStatus = Literal["ok", "crash", "timeout", "rejected"]
# terminal control (escape sequences, carriage returns), bidi overrides and lone surrogates: never shown as text
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Text a candidate (or a model, or an LLM) wrote, as data: control characters, bidi overrides and lone
    surrogates removed; newlines and tabs kept."""
    return CONTROL.sub("", text)


class RunResult(BaseModel):
    """One train + evaluate run of one commit, as the runner reports it (the JSON of `arbot evaluate`). Every
    field is validated when it is set too, and its text fields are cleaned (`clean_text`): a record is valid
    whatever a candidate wrote."""

    model_config = ConfigDict(validate_assignment=True)

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
    log_tail: str = ""  # the end of the candidate's own output: its text, never the runner's reason
    flags: list[str] = Field(default_factory=list)  # what diff inspection found suspicious (runner.inspect)
    model_sha256: str | None = None  # the exported model as scored (copied out of the sandbox, then hashed)
    splits: list[str] = Field(default_factory=lambda: ["val"])  # what it was scored on: val, or val + holdout
    job: str | None = None  # the executor's name for the run: "worker 1", "slurm 1234", "workflow run 99"
    run_id: int | None = None  # GitHub mode: the workflow run it came from, verified again before a merge
    node: str | None = None  # the machine it ran on

    @field_validator("reason", "log_tail", "device", "job", "node")
    @classmethod
    def _clean(cls, text: str | None) -> str | None:
        return None if text is None else clean_text(text)

    @field_validator("flags")
    @classmethod
    def _clean_flags(cls, flags: list[str]) -> list[str]:
        return [clean_text(f) for f in flags]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

"""The runner's sections of `arbot.yml` (target, evaluator); bot.config composes them into the whole file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from runner.limits import MAX_FILE_BYTES
from runner.sandbox import DEFAULT_UID


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetConfig(Strict):
    """What is trained and how: the runner reads this section."""

    script: str = Field("target/train.py", description="the training script, relative to the repository root")
    allowed_paths: list[str] = Field(
        default_factory=lambda: ["target/train.py"],
        description="glob patterns of the paths a proposal may change; any other changed path is rejected before training",
    )
    budget_seconds: float = Field(10.0, gt=0, description="training time budget per run, in seconds")
    grace_seconds: float = Field(
        40.0, ge=0, description="extra wall-clock time for start-up and export before the run is killed as a timeout"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where training runs")
    overrides: dict[str, float | int] = Field(
        default_factory=dict, description="knob values passed to train.py with --set (scale the model to a GPU)"
    )
    threads: int = Field(0, ge=0, description="CPU threads for training and evaluation; 0 = all cores")
    sandbox: Literal["auto", "require", "off"] = Field(
        "auto",
        description="train inside bubblewrap: 'auto' uses it when it starts (else warns and records sandbox: none), "
        "'require' refuses to run without it, 'off' never uses it (trusted code only)",
    )
    sandbox_uid: int = Field(DEFAULT_UID, ge=1, description="uid and gid a root runner drops to inside the sandbox")
    memory_gb: float | None = Field(
        None, gt=0, description="memory limit of each training process (RLIMIT_DATA), in GiB; none = 75% of RAM"
    )
    max_processes: int = Field(
        2048, ge=16, description="processes and threads the training may have (RLIMIT_NPROC; per uid, so shared by parallel runs)"
    )
    max_file_gb: float = Field(MAX_FILE_BYTES / 2**30, gt=0, description="largest file the training may write, in GiB")
    review_flagged: bool = Field(
        True,
        description="a win whose diff inspection raised flags (timing, seeding, file/network I/O, subprocesses, "
        "environment, ...) waits for a human to approve it instead of merging",
    )
    holdout_max_gap: float | None = Field(
        0.01,
        ge=0,
        description="a win is confirmed with one run scored on val and holdout; it is rejected when its relative gap "
        "(holdout_bpb - val_bpb) / val_bpb exceeds the champion's by more than this; none = no holdout check",
    )


class EvaluatorConfig(Strict):
    device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="where the evaluator scores the model")
    cache_dir: str | None = Field(None, description="where the data splits are prepared; default ~/.cache/arbot")

"""The runner's sections of `arbot.yml` (target, evaluator); bot.config composes them into the whole file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runner.limits import MAX_FILE_BYTES, Limits, default_memory_bytes, parse_cpus
from runner.sandbox import DEFAULT_UID

SPLIT_KEY_VAR = "ARBOT_SPLIT_KEY"  # where the evaluator's `prepare` reads the split key
CORPUS_VAR = "ARBOT_CORPUS"  # where the evaluator's `prepare` reads which of its data sets to prepare
DEFAULT_ARTIFACT = "model.pt2"  # what the built-in target writes: a torch.export program
SUMMARY_FILE = "summary.json"  # the training's own report, next to its artifact in --out
Direction = Literal["minimize", "maximize"]


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
    artifact: str = Field(
        DEFAULT_ARTIFACT, description="the file the training script writes in its --out directory and the evaluator "
        "scores (`score --model`, serve's `model`): the built-in target writes a torch.export program; your "
        "evaluator may read any format it can load as data, e.g. weights.npz (docs/evaluator.md)",
    )
    overrides: dict[str, float | int] = Field(
        default_factory=dict, description="knob values passed to train.py with --set (scale the model to a GPU)"
    )
    threads: int = Field(0, ge=0, description="CPU threads for training and evaluation, and the CPU time a training "
                         "run may use, in cores' worth (a cpu cgroup quota, where the machine has one); 0 = the runner's cores less one "
                         "split between the local workers, at most an even share, at least one each (2 cores, 1 worker: "
                         "1; 8 cores, 4 workers: 2): never more threads than cores")
    cpus: str | None = Field(
        None, pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*$", description="the cores training may run on, as a cpuset list "
        "('0-3,8'); unset: any of the runner's; with run.workers above 1 each worker gets its own target.threads of "
        "them (of these, else of the runner's)")
    sandbox: Literal["auto", "require", "off"] | None = Field(
        None,
        description="train and score inside bubblewrap: 'require' refuses to run without it, 'auto' uses it when it "
        "starts (else warns and records sandbox: none), 'off' never uses it (trusted code only); unset: 'require', "
        "except for the local search demo (`arbot run` whose only proposer is the search), where it is 'auto'",
    )
    sandbox_uid: int = Field(DEFAULT_UID, ge=1, description="uid and gid a root runner drops to inside the sandbox")
    memory_gb: float | None = Field(
        None, gt=0, description="memory limit of each training run, in GiB: its memory cgroup (its processes, shared "
        "memory such as memfd and /dev/shm, and the files in its work dir) where the machine has one, and "
        "RLIMIT_DATA of each process; over it the kernel kills the run (memory_limit); none = 75% of RAM"
    )
    max_processes: int = Field(
        2048, ge=16, description="processes and threads one training run may hold at once: its pids cgroup where the "
        "machine has one (a fork past it fails: pids_limit), else RLIMIT_NPROC, which counts every process of the "
        "sandbox uid"
    )
    max_file_gb: float = Field(MAX_FILE_BYTES / 2**30, gt=0, description="largest file the training may write, in GiB")
    max_disk_gb: float = Field(
        8.0, gt=0, description="total disk a run may use in its work dir (every file and directory, each at least "
        "4 KiB), in GiB: a root runner puts the work dir on a tmpfs of this size (a write past it fails at once; its "
        "files count against memory_gb too), and it is measured every second while it trains and once after; over "
        "it the run is killed and rejected (disk_cap)"
    )
    allow_unboxed_workers: bool = Field(
        False, description="run parallel workers (run.workers above 1) even where the kernel cannot bound each run's "
        "memory, processes and cores (no cgroups, not root: `arbot doctor` says which); one run may then starve or "
        "crash another"
    )
    budget_tolerance_seconds: float = Field(
        5.0, ge=0, description="a candidate whose training wall time (measured by the runner) exceeds the budget + the "
        "champion's measured start-up and export time + a tolerance is rejected (over_budget), and killed one tolerance "
        "later; the tolerance is the larger of this and budget_tolerance x (budget + start-up)"
    )
    budget_tolerance: float = Field(0.05, ge=0, description="the tolerance as a fraction of budget + start-up (see above)")
    review_flagged: bool = Field(
        True,
        description="a win whose diff inspection raised flags (timing, seeding, file/network I/O, subprocesses, "
        "environment, ...) waits for a human to approve it instead of merging",
    )
    holdout_max_gap: float | Literal["auto"] | None = Field(
        "auto",
        description="a win is confirmed with one run scored on val and holdout; it is rejected when its relative gap "
        "(holdout - val) / val of the metric departs from the mean of the champion's by more than this, either way (a "
        "model that has seen val, or holdout). auto: a limit from the champion's own spread, its gap measured on 3 "
        "seeds (an honest win is rejected 1% of the time); a number: that fixed share, against one champion run; "
        "none = no holdout check",
    )

    @field_validator("holdout_max_gap")
    @classmethod
    def _gap(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, float) and v < 0:
            raise ValueError(f"holdout_max_gap must be >= 0, 'auto' or none, got {v}")
        return v

    def limits(self, gpus: str | None = None) -> Limits:
        """What one training run is bounded by (runner.limits, runner.box); `gpus`: its worker's GPUs."""
        memory = int(self.memory_gb * 2**30) if self.memory_gb else default_memory_bytes()
        return Limits(memory_bytes=memory or None, max_processes=self.max_processes,
                      max_file_bytes=int(self.max_file_gb * 2**30), disk_bytes=int(self.max_disk_gb * 2**30),
                      cores=self.threads or None, cpus=parse_cpus(self.cpus) if self.cpus else None, gpus=gpus)

    @field_validator("artifact")
    @classmethod
    def _a_file_name(cls, name: str) -> str:
        if not name or name in (".", "..", SUMMARY_FILE) or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"must be a plain file name the training writes in --out, like {DEFAULT_ARTIFACT} or "
                             f"weights.npz (not a path, not hidden, not {SUMMARY_FILE})")
        return name


class EvaluatorConfig(Strict):
    metric: str = Field(
        "bpb", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the metric that decides: the evaluator reports "
        "it for each split it scores as <split>_<metric> (val_<metric>, holdout_<metric>); val decides, holdout "
        "confirms a win"
    )
    direction: Direction = Field(
        "minimize", description="minimize or maximize: whether a lower or a higher metric wins")
    precision: int = Field(4, ge=0, le=12, description="decimals the metric and its deltas are shown with")
    device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="where the evaluator scores the model")
    cache_dir: str | None = Field(None, description="where the data splits are prepared; default ~/.cache/arbot")
    timeout_seconds: float = Field(
        120.0, gt=0, description="the time one scoring may take while the champion's scoring time is unknown (its own "
        "runs, or before it has one); past it the runner kills the evaluator and rejects the run (scoring_timeout)"
    )
    timeout_factor: float = Field(
        5.0, gt=0, description="a candidate's scoring may take this many times the champion's own measured scoring "
        "time, plus 5 s"
    )
    sandbox_uid: int = Field(
        DEFAULT_UID - 1, ge=1, description="uid and gid a root runner drops to inside the evaluator's sandbox (not the "
        "training's, so a training process shares nothing with it)"
    )
    split_key_env: str = Field(
        SPLIT_KEY_VAR, description="the runner's environment variable holding the operator's secret split key "
        "(which blocks are val and holdout); it reaches only the evaluator's prepare step, never a sandbox. Unset: "
        "the public split rule (split_key: none)"
    )
    split_key_file: str | None = Field(None, description="a file holding the split key (instead of the variable)")
    corpus: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="which data set the evaluator prepares, passed to "
        "its prepare step as $ARBOT_CORPUS (the built-in evaluator: kjv, the default, or kjv-sotu, the GPU "
        "profile's); unset: the evaluator's default"
    )

    def prepare_env(self) -> dict[str, str]:
        """What the evaluator's `prepare` is told: the split key ({ARBOT_SPLIT_KEY: key}, none when unset) and the
        corpus ({ARBOT_CORPUS: name}, when one is set)."""
        corpus = {CORPUS_VAR: self.corpus} if self.corpus else {}
        if self.split_key_file:
            try:
                key = Path(self.split_key_file).expanduser().read_text().strip()
            except OSError as e:
                raise ValueError(f"evaluator.split_key_file: cannot read the split key: {e}") from e
            if not key:
                raise ValueError(f"evaluator.split_key_file: {self.split_key_file} is empty")
        else:
            key = os.environ.get(self.split_key_env, "").strip()
        return ({SPLIT_KEY_VAR: key} if key else {}) | corpus

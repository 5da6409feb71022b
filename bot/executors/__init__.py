"""Executors: where the runs the lifecycle asks for are made, one interface for every backend.

The stepper (bot.stepper) notes each run as pending on its record, hands it to an executor with `submit`, and
collects what ended with `poll`. An executor decides nothing and stores nothing: it makes runs.

    Inline, LocalPool  (bot.executors.pool)            one worker in the caller's thread, or N worker threads on
                                                       this machine, one GPU or a share of the cores each
    Slurm              (bot.executors.slurm)           one batch job per run on a Slurm cluster, results on the
                                                       shared filesystem
    GitHubActions      (bot.executors.github_actions)  one dispatch of the evaluate workflow per run, on a
                                                       self-hosted runner

A run ends as `Finished` (the runner's result: ok or not, it counts) or `Lost` (the run was never made to the end
for a reason of the machine, not the candidate: a job cancelled or preempted, a node failure, a dead worker). A
lost run is recorded on its record (`lost`) and asked for again; it never counts as the candidate's crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.core.records import RunResult, RunSpec

MAX_LOST = 3  # times one run may be lost (and submitted again) before it is recorded as a crash of the machine


@dataclass(frozen=True)
class Finished:
    spec: RunSpec
    result: RunResult  # with `job` and `node` set by the executor


@dataclass(frozen=True)
class Lost:
    spec: RunSpec
    job: str  # the executor's name for the attempt, e.g. "slurm 1234", "worker 2"
    node: str
    reason: str  # why the run did not end, with what the engine said (e.g. "CANCELLED by 0")


Outcome = Finished | Lost


class Executor(Protocol):
    slots: int  # how many runs it makes at once; the loop keeps at most this many submitted

    def submit(self, spec: RunSpec, timing: tuple[float, float] | None) -> RunSpec:
        """Start the run; returns `spec` as it is to be noted pending (with `run_id` where the engine gives a job
        id, and `requested_at`). `timing`: the champion's measured start-up/export and scoring seconds per split
        (runner.job.champion_timing), which the runner holds the candidate to; None before the champion ran."""
        ...

    def resume(self, spec: RunSpec) -> bool:
        """A run noted pending by an earlier process (an `arbot run` that was interrupted or died): True when this
        executor still makes it and `poll` will report it, False when it has to be submitted again."""
        ...

    def poll(self, timeout: float) -> list[Outcome]:
        """The runs that ended since the last call, waiting up to `timeout` seconds for the first."""
        ...

    def cancel(self, spec: RunSpec) -> None:
        """The run is no longer needed (its experiment was decided meanwhile): drop it if it has not started;
        one already running may be stopped or left to end (its result is then ignored)."""
        ...

    def busy(self) -> dict[str, str]:
        """What it is making now: worker (or job) -> the key of its run, for `arbot status`."""
        ...

    def close(self) -> None:
        """Stop: runs still in the making are abandoned (a worker's) or left running (a batch job's)."""
        ...

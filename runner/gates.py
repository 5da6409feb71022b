"""The runner's verdicts, as named checks: each gate reads what the runner measured of one run (`Outcome`) and
the limits the run was held to (`RunLimits`), and answers a `Verdict` (status and reason) or None.

`GATES` is the one ordered list: the runner fills the outcome phase by phase (guard, inspection, training,
copy-out, scoring) and asks `first_verdict` after each; a gate whose phase has not run yet answers None, so the
order of the list is the order of precedence. Reasons are built here from what the runner measured, never from
text the candidate wrote (its output stays in the record's log_tail)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from runner.limits import DiskUsage, Limits
from runner.process import ProcessOutcome

TRAINING_CONTRACT = "the training contract (docs/evaluator.md#training-script)"
NO_SUCH_FILE = "it does not exist"  # take_file's answer for a file the candidate never wrote
MAX_MODEL_BYTES = 4 << 30  # an exported model larger than this is not copied out of the sandbox
MAX_EVALUATOR_REASON = 500  # characters of the evaluator's reason kept (it may quote the model file)
MEMORY_SIGNS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "can't allocate memory", "out of memory")
PROCESS_SIGNS = ("Resource temporarily unavailable", "BlockingIOError", "can't start new thread")


class Verdict(NamedTuple):
    status: str  # a RunStatus other than ok
    reason: str


class ChampionTiming(NamedTuple):
    """The champion's measured times (runner.job.champion_timing, from its recorded runs)."""

    overhead: float  # training wall seconds beyond the budget: start-up and export
    score_per_split: float  # scoring seconds per split


@dataclass(frozen=True)
class BudgetLimit:
    """A candidate's training wall time, measured by the runner: over `reject` it is rejected (over_budget),
    at `kill` it is killed (timeout)."""

    allowance: float  # the champion's start-up and export time (its training wall time beyond the budget)
    tolerance: float
    reject: float
    kill: float


@dataclass(frozen=True)
class RunLimits:
    """What one run is held to."""

    allowed_paths: tuple[str, ...]
    budget: float
    grace: float
    held: BudgetLimit | None  # None: the champion itself, or no champion timing yet (budget + grace only)
    disk_cap: int  # bytes (target.max_disk_gb)
    artifact: str
    process: Limits  # memory, processes, file size of the sandbox
    score_deadline: float
    score_deadline_why: str

    @property
    def kill_at(self) -> float:
        """The training's wall-clock deadline."""
        return self.budget + self.grace if self.held is None else min(self.budget + self.grace, self.held.kill)


@dataclass
class Outcome:
    """What the runner measured of one run so far; each phase fills its part."""

    outside: list[str] = field(default_factory=list)  # changed paths outside target.allowed_paths
    irregular: dict[str, str] = field(default_factory=dict)  # changed path -> what it is, when not a regular file
    unreadable: str = ""  # why the candidate's change could not be read or exported
    inspection: str = ""  # why the inspection could not finish (depth, time or memory)
    training: ProcessOutcome | None = None
    disk: DiskUsage | None = None  # the work dir after training
    model: str | None = None  # after copy-out: "" when the model was taken, else why not
    score_timeout: float | None = None  # seconds after which scoring was killed
    score: dict | None = None  # the evaluator's answer


Gate = Callable[[Outcome, RunLimits], Verdict | None]


def outside_paths(o: Outcome, lim: RunLimits) -> Verdict | None:
    if o.outside:
        return Verdict("rejected", f"changes paths outside the allowed ones ({', '.join(lim.allowed_paths)}): "
                                   f"{', '.join(o.outside)}")
    return None


def irregular_files(o: Outcome, lim: RunLimits) -> Verdict | None:
    if o.irregular:
        return Verdict("rejected", "changes paths that are not regular files (only git modes 100644 and 100755 may "
                                   "change): " + ", ".join(f"{p} ({kind})" for p, kind in sorted(o.irregular.items())))
    return None


def unreadable_change(o: Outcome, lim: RunLimits) -> Verdict | None:
    return Verdict("rejected", f"the change cannot be read: {o.unreadable}") if o.unreadable else None


def uninspectable(o: Outcome, lim: RunLimits) -> Verdict | None:
    if o.inspection:
        return Verdict("rejected", f"inspection_limit: the change could not be inspected within the runner's limits "
                                   f"({o.inspection}); simplify the code")
    return None


def stopped(o: Outcome, lim: RunLimits) -> Verdict | None:
    if o.training and o.training.stopped and not o.training.stopped.startswith("disk_cap"):
        return Verdict("rejected", f"{o.training.stopped}; the run was killed while training")
    return None


def disk_cap(o: Outcome, lim: RunLimits) -> Verdict | None:
    """Over the cap while it trained (the watch killed it) or in what it left."""
    if o.training and o.training.stopped.startswith("disk_cap"):
        return Verdict("rejected", f"{o.training.stopped}; the run was killed while training")
    if o.training and not o.training.timed_out and o.disk is not None:
        why = disk_reason(o.disk, lim.disk_cap)
        return Verdict("rejected", why) if why else None
    return None


def timed_out(o: Outcome, lim: RunLimits) -> Verdict | None:
    if not (o.training and o.training.timed_out):
        return None
    held, budget = lim.held, lim.budget
    if held is not None and lim.kill_at < budget + lim.grace:
        why = (f"over_budget: training ran past {lim.kill_at:.1f} s and was killed; it is held to its budget of "
               f"{budget:g} s + {held.allowance:.1f} s start-up and export allowance (measured from the champion's "
               f"runs) + {held.tolerance:.1f} s tolerance")
    else:
        why = f"training ran past its budget of {budget:g} s plus {lim.grace:g} s grace and was killed"
    return Verdict("timeout", f"{why}; {budget_contract(budget)}")


def crashed(o: Outcome, lim: RunLimits) -> Verdict | None:
    """A crash is named as one even when it also ran long: it has no model to score (a memory bomb spends
    seconds filling its limit)."""
    if o.training and not o.training.timed_out and o.training.returncode != 0:
        return Verdict("crash", crash_reason(o.training, lim.process))
    return None


def over_budget(o: Outcome, lim: RunLimits) -> Verdict | None:
    held = lim.held
    if o.training and held is not None and o.training.wall_seconds > held.reject:
        return Verdict("rejected", (
            f"over_budget: training took {o.training.wall_seconds:.1f} s of wall time (measured by the runner), more "
            f"than its budget of {lim.budget:g} s + {held.allowance:.1f} s start-up and export allowance (measured "
            f"from the champion's runs) + {held.tolerance:.1f} s tolerance = {held.reject:.1f} s; "
            f"{budget_contract(lim.budget)}"))
    return None


def no_model(o: Outcome, lim: RunLimits) -> Verdict | None:
    return Verdict("crash", artifact_missing(lim.artifact, o.model)) if o.model else None


def scoring_timeout(o: Outcome, lim: RunLimits) -> Verdict | None:
    if o.score_timeout is not None:
        return Verdict("rejected", f"scoring_timeout: the evaluator was killed: scoring did not finish within its "
                                   f"deadline of {lim.score_deadline:g} s (killed after {o.score_timeout:.1f} s) "
                                   f"({lim.score_deadline_why})")
    return None


def model_refused(o: Outcome, lim: RunLimits) -> Verdict | None:
    if o.score is not None and o.score.get("status") != "ok":
        said = str(o.score.get("reason", ""))
        if len(said) > MAX_EVALUATOR_REASON:
            said = said[:MAX_EVALUATOR_REASON] + "..."
        return Verdict("rejected", f"the evaluator rejected the model: {said}")
    return None


GATES: tuple[Gate, ...] = (
    outside_paths, irregular_files, unreadable_change, uninspectable,  # before training
    stopped, disk_cap, timed_out, crashed, over_budget,  # the training process
    no_model,  # copy-out
    scoring_timeout, model_refused,  # scoring
)


def first_verdict(o: Outcome, lim: RunLimits, gates: tuple[Gate, ...] = GATES) -> Verdict | None:
    """The first gate's verdict, in the order of `gates`; None when every gate passes."""
    for gate in gates:
        if (verdict := gate(o, lim)) is not None:
            return verdict
    return None


# --- reasons ----------------------------------------------------------------------------------------------


def disk_reason(usage: DiskUsage, cap: int) -> str:
    """Why a work dir of this usage is over the run's disk cap (target.max_disk_gb), or "" when it is not."""
    if usage.unreadable:
        return f"disk_cap: the run made part of its work dir unreadable, so its disk use cannot be measured ({usage.unreadable})"
    if usage.bytes > cap:
        return (f"disk_cap: the run wrote {usage.bytes / 2**30:.2f} GiB in {usage.entries} files and directories, over "
                f"the cap of {cap / 2**30:g} GiB per run (target.max_disk_gb)")
    return ""


def budget_contract(budget: float) -> str:
    """What the contract says of --budget, for the reason of a run that ignored it."""
    return (f"{TRAINING_CONTRACT} requires the script to stop training within --budget seconds ({budget:g} here), "
            "then write its model and exit")


def artifact_missing(artifact: str, why: str) -> str:
    """Why a training that exited 0 has no artifact to score, naming the contract it broke."""
    if why == NO_SUCH_FILE:
        return (f"the training script exited 0 but wrote no out/{artifact}: {TRAINING_CONTRACT} requires it to write "
                f"its model into the --out directory as {artifact} (target.artifact in arbot.yml)")
    return (f"the training script's out/{artifact} is not usable: {why}; {TRAINING_CONTRACT} requires a regular file "
            f"of at most {MAX_MODEL_BYTES >> 30} GiB")


def crash_reason(outcome: ProcessOutcome, limits: Limits) -> str:
    """Why training failed: its exit, and the limit it hit where the runner saw one (a kill) or its output shows
    the sign of one. The runner's own words only: the candidate's output stays in log_tail."""
    code = outcome.returncode
    if outcome.killed_by or (code is not None and code > 128):
        sig = outcome.killed_by or code - 128
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        reason = f"training was killed by {name}"
    else:
        reason = f"training exited with code {code}"
    tail = outcome.log_tail
    if any(s in tail for s in MEMORY_SIGNS) or (outcome.killed_by or 0) == 9:
        reason += f" (out of memory; the limit is {limits.describe()})"
    elif any(s in tail for s in PROCESS_SIGNS):
        reason += f" (process or thread limit reached; the limit is {limits.describe()})"
    elif "File too large" in tail or (outcome.killed_by or 0) == 25:
        reason += f" (file size limit reached; the limit is {limits.describe()})"
    elif tail.startswith("bwrap:"):
        reason += " (its output starts as bubblewrap's errors do: the sandbox may have failed to start; see log_tail)"
    return reason

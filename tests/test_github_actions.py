"""The GitHub Actions executor on its own: what it makes of the workflow runs GitHub lists (a stand-in for the
four REST answers it reads; the whole protocol against the fake GitHub is in tests/test_github_driver.py)."""

from __future__ import annotations

import io
import zipfile
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from bot.core.records import RunResult, RunSpec
from bot.executors import Finished, Lost
from bot.executors.github_actions import CLOCK_SKEW, EVALUATE_RUN_NAME, RESULT_ARTIFACT, GitHubActions
from bot.github.forge import EVALUATE_WORKFLOW

SHA = "a" * 40
SPEC = RunSpec(role="exp-1", commit=SHA, champion="c" * 40, seed=0)


class Answers:
    """GitHub's answers as the executor reads them: dispatch (with or without a run id), the runs listed by name, one
    run, its artifact."""

    def __init__(self, run_details: bool = True):
        self.repo = SimpleNamespace(default_branch="main")
        self.run_details, self.runs, self.artifacts, self.dispatched = run_details, {}, {}, []

    def dispatch(self, workflow, ref, inputs):
        self.dispatched.append(inputs)
        return 7 if self.run_details else None

    def dispatched_runs(self, workflow, branch):
        return list(self.runs.values())

    def workflow_run(self, run_id):
        return self.runs[run_id]

    def run_artifact(self, run_id, name):
        return self.artifacts.get((run_id, name))


class Seconds:
    def __init__(self):
        self.seconds = []

    def record_runner_seconds(self, seconds: float) -> None:
        self.seconds.append(seconds)


def evaluate_run(run_id: int, key: str, status: str = "completed") -> dict:
    return {"id": run_id, "status": status, "conclusion": "success", "path": f".github/workflows/{EVALUATE_WORKFLOW}",
            "event": "workflow_dispatch", "head_branch": "main", "display_title": f"{EVALUATE_RUN_NAME} {key}",
            "created_at": datetime.now(timezone.utc).isoformat()}


def zipped(result: RunResult) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("result.json", result.model_dump_json())
    return out.getvalue()


def test_a_verified_run_is_finished_with_its_artifacts_result_and_its_runner_time_counted():
    gh, seconds = Answers(), Seconds()
    ex = GitHubActions(gh, slots=1, budget=seconds)
    noted = ex.submit(SPEC, (2.0, 1.0))
    assert noted.run_id == 7 and gh.dispatched[0]["champion_overhead"] == "2.00"
    gh.runs[7] = evaluate_run(7, SPEC.key, status="in_progress")
    assert ex.poll(0) == [] and ex.busy() == {"workflow run 7": SPEC.key}
    gh.runs[7] = evaluate_run(7, SPEC.key)
    gh.artifacts[(7, RESULT_ARTIFACT)] = zipped(RunResult(status="ok", commit=SHA, champion="c" * 40, seed=0,
                                                          metrics={"val_bpb": 3.1}, total_seconds=12.0))
    [done] = ex.poll(0)
    assert isinstance(done, Finished) and done.result.metrics == {"val_bpb": 3.1}
    assert done.result.job == "workflow run 7" and seconds.seconds == [12.0] and ex.poll(0) == []


def test_a_dispatch_github_lists_no_run_for_is_lost_and_not_followed_forever():
    """A server that answers a dispatch with no run id: in flight while GitHub may still be creating its run; once
    CLOCK_SKEW has passed with no run of its name listed (never started, or deleted), lost (the stepper hands it over
    again), and an earlier process's dispatch like it is not resumed, so it is dispatched again."""
    gh = Answers(run_details=False)
    noted = GitHubActions(gh, slots=1).submit(SPEC, None)
    assert noted.run_id is None and GitHubActions(gh, slots=1).resume(noted)  # just dispatched: GitHub may not list it yet
    old = noted.model_copy(update={"requested_at": (
        datetime.now(timezone.utc) - CLOCK_SKEW - timedelta(seconds=1)).isoformat(timespec="seconds")})
    assert not GitHubActions(gh, slots=1).resume(old)
    gh.runs[9] = evaluate_run(9, SPEC.key, status="queued")  # GitHub lists a run of that name, made since
    ex = GitHubActions(gh, slots=1)
    assert ex.resume(old)  # followed, by its name
    del gh.runs[9]  # then no longer listed (deleted by hand) before the executor asked again
    [lost] = ex.poll(0)
    assert isinstance(lost, Lost) and "no evaluate workflow run for this dispatch" in lost.reason
    assert ex.poll(0) == []  # reported once

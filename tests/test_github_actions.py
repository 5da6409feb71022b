"""The GitHub Actions executor on its own: what it makes of the workflow runs GitHub lists (a stand-in for the
REST answers it reads; the whole protocol against the fake GitHub is in tests/test_github_driver.py), and the
bounds on what it reads of a result artifact (real zips: a bomb, deep JSON, an unsupported compression)."""

from __future__ import annotations

import io
import struct
import zipfile
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core.records import RunResult, RunSpec
from bot.executors import Finished, Lost
from bot.executors.github_actions import (ARTIFACT_MAX_BYTES, EVALUATE_RUN_NAME, RESULT_ARTIFACT, RESULT_MAX_BYTES,
                                          START_TIMEOUT, GitHubActions, result_json)
from bot.github import report
from bot.github.forge import EVALUATE_WORKFLOW, ArtifactTooLarge

SHA = "a" * 40
SPEC = RunSpec(role="exp-1", commit=SHA, champion="c" * 40, seed=0)
BOT = "arbot-user"
ON_MAIN = "e" * 40


class Answers:
    """GitHub's answers as the executor reads them: dispatch (with or without a run id), the bot's runs listed by
    name, one run, its artifact."""

    def __init__(self, run_details: bool = True):
        self.repo = SimpleNamespace(default_branch="main")
        self.run_details, self.runs, self.artifacts, self.dispatched = run_details, {}, {}, []

    def login(self):
        return BOT

    def dispatch(self, workflow, ref, inputs):
        self.dispatched.append((ref, inputs))
        return (7 if self.run_details else None), datetime.now(timezone.utc).isoformat(timespec="seconds")

    def dispatched_runs(self, workflow, branch, actor):
        return [r for r in self.runs.values() if r["actor"]["login"] == actor]

    def workflow_run(self, run_id):
        return self.runs.get(run_id)

    def artifact(self, run_id, name):
        return {"id": 1} if (run_id, name) in self.artifacts else None

    def run_artifact(self, run_id, name, max_bytes):
        return self.artifacts.get((run_id, name))


class Seconds:
    def __init__(self):
        self.seconds = []

    def record_runner_seconds(self, seconds: float) -> None:
        self.seconds.append(seconds)


def evaluate_run(run_id: int, key: str, status: str = "completed", **changes) -> dict:
    return {"id": run_id, "status": status, "conclusion": "success", "path": f".github/workflows/{EVALUATE_WORKFLOW}",
            "event": "workflow_dispatch", "head_branch": "main", "head_sha": ON_MAIN,
            "display_title": f"{EVALUATE_RUN_NAME} {key}", "actor": {"login": BOT}, "triggering_actor": {"login": BOT},
            "created_at": datetime.now(timezone.utc).isoformat(), **changes}


def executor(gh, **kwargs) -> GitHubActions:
    return GitHubActions(gh, slots=1, on_default=lambda sha: sha == ON_MAIN, **kwargs)


def zipped(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def result_zip(result: RunResult) -> bytes:
    return zipped({"result.json": result.model_dump_json().encode()})


GOOD = RunResult(status="ok", commit=SHA, champion="c" * 40, seed=0, metrics={"val_bpb": 3.1}, total_seconds=12.0)


def test_a_verified_run_is_finished_with_its_artifacts_result_its_run_id_and_its_runner_time_counted():
    gh, seconds = Answers(), Seconds()
    ex = executor(gh, budget=seconds)
    noted = ex.submit(SPEC, (2.0, 1.0))
    [(ref, inputs)] = gh.dispatched
    assert noted.run_id == 7 and ref == "refs/heads/main" and inputs["champion_overhead"] == "2.00"
    gh.runs[7] = evaluate_run(7, SPEC.key, status="in_progress")
    assert ex.poll(0) == [] and ex.busy() == {"workflow run 7": SPEC.key}
    gh.runs[7] = evaluate_run(7, SPEC.key)
    gh.artifacts[(7, RESULT_ARTIFACT)] = result_zip(GOOD)
    [done] = ex.poll(0)
    assert isinstance(done, Finished) and done.result.metrics == {"val_bpb": 3.1}
    assert done.result.job == "workflow run 7" and done.result.run_id == 7
    assert seconds.seconds == [12.0] and ex.poll(0) == []
    assert ex.recheck(done.result) is None  # verified by this process: not asked again


@pytest.mark.parametrize("change, differ", [
    ({"head_branch": "main", "head_sha": "f" * 40}, "commit"),  # a tag named main: head_branch "main", not on main
    ({"actor": {"login": "mallory"}, "triggering_actor": {"login": "mallory"}}, "actor, triggering actor"),
    ({"triggering_actor": {"login": "mallory"}}, "triggering actor"),  # the bot's run, re-run by someone else
])
def test_a_run_not_dispatched_by_the_bot_on_the_default_branch_is_a_crash(change, differ):
    gh = Answers()
    ex = executor(gh)
    ex.submit(SPEC, None)
    gh.runs[7] = evaluate_run(7, SPEC.key, **change)
    gh.artifacts[(7, RESULT_ARTIFACT)] = result_zip(GOOD.model_copy(update={"metrics": {"val_bpb": 0.1}}))
    [done] = ex.poll(0)
    assert done.result.status == "crash" and done.result.run_id == 7
    assert done.result.reason.startswith(f"workflow run 7 does not count: its {differ} differ"), done.result.reason


def test_the_name_lookup_takes_only_the_bots_runs_created_since_the_dispatch():
    """Without run details the run is found by its name: a run of that name by anyone else, or by the bot before
    the dispatch (an earlier attempt), is not taken for it."""
    gh = Answers(run_details=False)
    ex = executor(gh)
    noted = ex.submit(SPEC, None)
    earlier = (datetime.fromisoformat(noted.requested_at) - timedelta(minutes=1)).isoformat()
    gh.runs[5] = evaluate_run(5, SPEC.key, actor={"login": "mallory"}, triggering_actor={"login": "mallory"})
    gh.runs[6] = evaluate_run(6, SPEC.key, created_at=earlier)
    assert ex.find_run(noted) is None and ex.poll(0) == []
    gh.runs[8] = evaluate_run(8, SPEC.key)
    assert ex.find_run(noted) == 8


def test_a_dispatch_github_lists_no_run_for_is_lost_and_not_followed_forever():
    """A server that answers a dispatch with no run id: in flight while GitHub may still be creating its run; once
    START_TIMEOUT has passed with no run of its name listed (never started, or deleted), lost (the stepper hands it
    over again, up to MAX_LOST times), and an earlier process's dispatch like it is not resumed."""
    gh = Answers(run_details=False)
    noted = executor(gh).submit(SPEC, None)
    assert noted.run_id is None and executor(gh).resume(noted)  # just dispatched: GitHub may not list it yet
    old = noted.model_copy(update={"requested_at": (
        datetime.now(timezone.utc) - START_TIMEOUT - timedelta(seconds=1)).isoformat(timespec="seconds")})
    assert not executor(gh).resume(old)
    gh.runs[9] = evaluate_run(9, SPEC.key, status="queued", created_at=old.requested_at)
    ex = executor(gh)
    assert ex.resume(old)  # followed, by its name
    del gh.runs[9]  # then no longer listed (deleted by hand) before the executor asked again
    [lost] = ex.poll(0)
    assert isinstance(lost, Lost) and "no evaluate workflow run for this dispatch" in lost.reason
    assert ex.poll(0) == []  # reported once


def test_a_run_cancelled_before_it_reported_is_lost_not_the_candidates_crash():
    gh = Answers()
    ex = executor(gh)
    ex.submit(SPEC, None)
    gh.runs[7] = evaluate_run(7, SPEC.key, conclusion="cancelled")
    [lost] = ex.poll(0)
    assert isinstance(lost, Lost) and "cancelled before it reported" in lost.reason


def test_rerun_is_only_for_a_run_that_ended_without_a_result():
    gh = Answers()
    ex = executor(gh)
    noted = ex.submit(SPEC, None)
    gh.runs[7] = evaluate_run(7, SPEC.key, status="in_progress")
    assert "still in_progress" in ex.why_not_again(noted)
    gh.runs[7] = evaluate_run(7, SPEC.key)
    gh.artifacts[(7, RESULT_ARTIFACT)] = result_zip(GOOD)
    assert "reported a result, which counts" in ex.why_not_again(noted)
    del gh.artifacts[(7, RESULT_ARTIFACT)]
    assert ex.why_not_again(noted) is None  # completed with nothing uploaded
    del gh.runs[7]
    assert ex.why_not_again(noted) is None  # GitHub has no such run


def test_a_recorded_run_is_rechecked_against_its_workflow_run():
    gh = Answers()
    ex = executor(gh)
    gh.runs[3] = evaluate_run(3, SPEC.key)
    run = GOOD.model_copy(update={"run_id": 3})
    assert ex.recheck(run) is None
    assert "names no workflow run" in ex.recheck(GOOD)
    assert "is not the run of" in ex.recheck(run.model_copy(update={"seed": 4}))  # a note moved to another seed
    gh.runs[4] = evaluate_run(4, SPEC.key, actor={"login": "mallory"})
    assert "does not count: its actor differ" in ex.recheck(run.model_copy(update={"run_id": 4}))
    assert "no workflow run 99" in ex.recheck(run.model_copy(update={"run_id": 99}))


# --- artifact bounds ----------------------------------------------------------------------------------------
def test_a_zip_bomb_is_refused_before_it_is_inflated():
    bomb = zipped({"result.json": b" " * (50 * 2**20)})  # 50 MB of spaces: about 50 KB zipped
    assert len(bomb) < 100_000
    with pytest.raises(report.BadResult, match=f"inflates to {50 * 2**20} bytes, over the {RESULT_MAX_BYTES}"):
        result_json(bomb)


def test_a_zip_that_lies_about_its_size_is_read_no_further_than_the_cap():
    data = zipped({"result.json": b" " * (RESULT_MAX_BYTES * 4)}, zipfile.ZIP_STORED)
    # the local header and the central directory both say 10 bytes: zipfile stops there and finds the CRC wrong
    lie = data.replace(struct.pack("<I", RESULT_MAX_BYTES * 4), struct.pack("<I", 10))
    with pytest.raises(report.BadResult):
        result_json(lie)


def test_deeply_nested_json_is_a_bad_result_not_an_exception():
    deep = zipped({"result.json": b"[" * 200_000 + b"]" * 200_000})
    with pytest.raises(report.BadResult, match="nested too deeply"):
        report.load_runs(result_json(deep))


def test_an_unsupported_compression_is_a_bad_result():
    data = bytearray(zipped({"result.json": GOOD.model_dump_json().encode()}))
    # compression method 99 (AES, which zipfile cannot read), in the local header and the central directory
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = data.index(signature) + offset
        data[at:at + 2] = struct.pack("<H", 99)
    with pytest.raises(report.BadResult, match="NotImplementedError"):
        result_json(bytes(data))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_are_a_result_or_a_bad_result(blob):
    """The class: whatever the artifact holds, reading it ends in a result or BadResult, never another exception."""
    for candidate in (blob, zipped({"result.json": blob})):
        try:
            report.load_runs(result_json(candidate))
        except report.BadResult:
            pass


def test_an_artifact_too_large_by_its_api_size_is_that_runs_crash():
    gh = Answers()

    def too_large(run_id, name, max_bytes):
        raise ArtifactTooLarge(f"artifact 1 (arbot-result) is {max_bytes + 1} bytes, over the {max_bytes} bytes allowed")

    gh.run_artifact = too_large
    ex = executor(gh)
    ex.submit(SPEC, None)
    gh.runs[7] = evaluate_run(7, SPEC.key)
    [done] = ex.poll(0)
    assert done.result.status == "crash" and f"over the {ARTIFACT_MAX_BYTES} bytes allowed" in done.result.reason

"""The GitHub Actions executor: one `workflow_dispatch` of the evaluate workflow per run, on a self-hosted runner.

`submit` dispatches the evaluate workflow of the default branch (a definition no pull request can change) with
the run's request; GitHub answers with the id of the workflow run it started (or, on a server without run
details, the run is found later by its name, `arbot-evaluate <request key>`). `poll` asks GitHub for each run
in flight; a completed one counts only once it proves to be the evaluate workflow of the default branch,
dispatched for this request, and then only its `arbot-result` artifact counts: check runs are for humans, and a
forged one changes nothing. A run that proves to be anything else, or left no result, is that run's crash.
"""

from __future__ import annotations

import io
import zipfile
from datetime import datetime, timedelta, timezone
from typing import Protocol

from pydantic import ValidationError

from bot.core.records import RunResult, RunSpec
from bot.executors import Finished, Lost, Outcome
from bot.github import report
from bot.github.forge import EVALUATE_WORKFLOW, GitHubForge

RESULT_ARTIFACT = "arbot-result"  # what the evaluate workflow's train job uploads: result.json, evaluate.log
EVALUATE_RUN_NAME = "arbot-evaluate"  # its run-name is "arbot-evaluate <request key>"
CLOCK_SKEW = timedelta(minutes=2)  # between the bot's clock and GitHub's, when a dispatched run is looked up by name


class RunnerSeconds(Protocol):
    """Where the runner time of each reported run is counted (bot.server.store.Budget)."""

    def record_runner_seconds(self, seconds: float) -> None: ...


def verify_run(run: dict, workflow: str, branch: str, key: str) -> str | None:
    """Why a workflow run is not the evaluate workflow of the default branch dispatched for request `key`."""
    checks = {"path": (run.get("path") or "").split("@")[0] == f".github/workflows/{workflow}",
              "event": run.get("event") == "workflow_dispatch", "branch": run.get("head_branch") == branch,
              "request": run.get("display_title") == f"{EVALUATE_RUN_NAME} {key}"}
    wrong = [name for name, ok in checks.items() if not ok]
    return None if not wrong else (f"its {', '.join(wrong)} differ from the evaluate workflow's ({run.get('path')}, "
                                   f"{run.get('event')}, {run.get('head_branch')}, {run.get('display_title')!r})")


def result_json(artifact: bytes | None) -> str:
    """result.json from the zip of the result artifact (BadResult when there is none)."""
    if artifact is None:
        raise report.BadResult(f"no {RESULT_ARTIFACT} artifact")
    try:
        with zipfile.ZipFile(io.BytesIO(artifact)) as z:
            return z.read("result.json").decode(errors="replace")
    except (zipfile.BadZipFile, KeyError) as e:
        raise report.BadResult(f"the {RESULT_ARTIFACT} artifact holds no result.json ({e})") from e


class GitHubActions:
    """Runs made by dispatched workflow runs. It keeps only the runs it was handed; the records keep the rest."""

    def __init__(self, forge: GitHubForge, slots: int, budget: RunnerSeconds | None = None):
        self.forge, self.slots, self.budget = forge, slots, budget
        self._runs: dict[str, RunSpec] = {}  # key -> spec (with the workflow run's id once known)

    def submit(self, spec: RunSpec, timing: tuple[float, float] | None) -> RunSpec:
        inputs = {"request": spec.key, "commit": spec.commit, "champion": spec.champion, "seed": str(spec.seed),
                  "splits": ",".join(spec.splits)}
        if spec.commit != spec.champion and timing is not None:  # the runner holds the candidate to the champion's times
            inputs |= {"champion_overhead": f"{timing[0]:.2f}", "champion_score_seconds": f"{timing[1]:.2f}"}
        requested_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        run_id = self.forge.dispatch(EVALUATE_WORKFLOW, self.forge.repo.default_branch, inputs)
        noted = spec.model_copy(update={"run_id": run_id, "requested_at": requested_at})
        self._runs[spec.key] = noted
        return noted

    def resume(self, spec: RunSpec) -> bool:
        """A dispatch noted by an earlier process (or another writer) is followed: by its run id, or by its name."""
        if spec.run_id is None and self.find_run(spec) is None and not self._recent(spec):
            return False
        self._runs[spec.key] = spec
        return True

    def poll(self, timeout: float) -> list[Outcome]:
        """The runs that completed (asked of GitHub now; a webhook says when to ask, so this never waits), and the
        dispatches GitHub never started a run for (lost: dispatched again)."""
        ended = []
        for key, spec in list(self._runs.items()):
            if spec.run_id is None and (run_id := self.find_run(spec)) is not None:
                spec = self._runs[key] = spec.model_copy(update={"run_id": run_id})
            if spec.run_id is None and not self._recent(spec):
                del self._runs[key]
                ended.append(Lost(spec, "dispatch", "", f"GitHub lists no evaluate workflow run for this dispatch "
                                  f"{CLOCK_SKEW.seconds // 60} minutes after it was made"))
                continue
            if (result := self._result(spec)) is not None:
                del self._runs[key]
                ended.append(Finished(spec, result))
                if self.budget is not None:
                    self.budget.record_runner_seconds(result.total_seconds)
        return ended

    def cancel(self, spec: RunSpec) -> None:
        """Forgotten: the workflow run may finish, and its result is not asked for."""
        self._runs.pop(spec.key, None)

    def busy(self) -> dict[str, str]:
        return {f"workflow run {s.run_id}": key for key, s in self._runs.items() if s.run_id is not None}

    def close(self) -> None:
        self._runs.clear()

    def _recent(self, spec: RunSpec) -> bool:
        """Dispatched so lately that GitHub may not list its run yet."""
        return spec.requested_at is not None and (datetime.now(timezone.utc)
                                                  - datetime.fromisoformat(spec.requested_at)) < CLOCK_SKEW

    def find_run(self, spec: RunSpec) -> int | None:
        """The workflow run of a dispatch GitHub answered with no run id (a server without return_run_details):
        the first run of the evaluate workflow named for this request and created since it was dispatched."""
        since = (datetime.fromisoformat(spec.requested_at) - CLOCK_SKEW if spec.requested_at
                 else datetime.min.replace(tzinfo=timezone.utc))
        runs = [(created, r["id"]) for r in self.forge.dispatched_runs(EVALUATE_WORKFLOW, self.forge.repo.default_branch)
                if r.get("display_title") == f"{EVALUATE_RUN_NAME} {spec.key}"
                and (created := datetime.fromisoformat(r["created_at"].replace("Z", "+00:00"))) >= since]
        return min(runs)[1] if runs else None

    def _result(self, spec: RunSpec) -> RunResult | None:
        """The run answering `spec`: the result artifact of its workflow run, once that run is completed and proves
        to be the evaluate workflow on the default branch, started by a dispatch for this request. None while in
        flight."""
        if spec.run_id is None:
            return None
        run = self.forge.workflow_run(spec.run_id)
        if run.get("status") != "completed":
            return None
        crash = lambda why: RunResult(status="crash", commit=spec.commit, champion=spec.champion,  # noqa: E731
                                      seed=spec.seed, splits=spec.splits, reason=why)
        wrong = verify_run(run, EVALUATE_WORKFLOW, self.forge.repo.default_branch, spec.key)
        if wrong:
            return crash(f"workflow run {spec.run_id} does not count: {wrong}")
        artifact = self.forge.run_artifact(spec.run_id, RESULT_ARTIFACT)
        try:
            runs = [RunResult.model_validate(r) for r in report.load_runs(result_json(artifact))]
        except (report.BadResult, ValidationError) as e:
            return crash(f"workflow run {spec.run_id} ({run.get('conclusion')}) left no result: {str(e)[:300]}")
        match = next((r for r in runs if (r.commit, r.seed, r.champion) == (spec.commit, spec.seed, spec.champion)), None)
        if match is None:
            return crash(f"workflow run {spec.run_id} reported no run of {spec.commit[:12]} seed {spec.seed} "
                         f"scored by {spec.champion[:12]}")
        return match.model_copy(update={"splits": spec.splits, "job": f"workflow run {spec.run_id}"})

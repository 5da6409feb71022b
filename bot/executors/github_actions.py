"""The GitHub Actions executor: one `workflow_dispatch` of the evaluate workflow per run, on a self-hosted runner.

`submit` dispatches the evaluate workflow of the default branch, named by its full ref `refs/heads/<default>` (a tag
of the same name is never taken for it), with the run's request; GitHub answers with the id of the workflow run it
started (or, on a server without run details, the run is found later by its name, `arbot-evaluate <request key>`,
among the bot's own runs created since the dispatch). `poll` asks GitHub for each run in flight (conditional
requests: an unchanged run costs no rate limit); a completed one counts only once it proves to be the evaluate
workflow, dispatched and started by the bot for this request on a commit of the default branch (`verify_run`), and
then only its `arbot-result` artifact counts, read within bounds (`result_json`): check runs are for humans, and a
forged one changes nothing. A run that proves to be anything else, or left no readable result, is that run's crash;
a dispatch GitHub never started a run for, or a run cancelled before it reported, is lost (dispatched again).
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Protocol

from pydantic import ValidationError

from bot.core.records import RunResult, RunSpec
from bot.executors import Finished, Lost, Outcome
from bot.github import report
from bot.github.forge import EVALUATE_WORKFLOW, GitHubForge, GitHubForgeError

RESULT_ARTIFACT = "arbot-result"  # what the evaluate workflow's train job uploads: result.json, evaluate.log
RESULT_FILE = "result.json"
EVALUATE_RUN_NAME = "arbot-evaluate"  # its run-name is "arbot-evaluate <request key>"
START_TIMEOUT = timedelta(minutes=2)  # a dispatch GitHub lists no run for after this is lost (dispatched again)
DISPATCH_SLACK = timedelta(seconds=5)  # a run is created while GitHub answers the dispatch, before the answer's Date
ARTIFACT_MAX_BYTES = 16 * 2**20  # the zip, by GitHub's size_in_bytes and as downloaded (evaluate.log rides along)
RESULT_MAX_BYTES = 2**20  # result.json inflated: a few runs' records


class RunnerSeconds(Protocol):
    """Where the runner time of each reported run is counted (bot.server.store.Budget)."""

    def record_runner_seconds(self, seconds: float) -> None: ...


def verify_run(run: dict, workflow: str, branch: str, title: str, actor: str,
               on_default: Callable[[str], bool]) -> str | None:
    """Why a workflow run is not the evaluate workflow dispatched and started by `actor` on a commit of the default
    branch `branch`, named `title` (the request). GitHub reports a tag's name as `head_branch`, so the branch name
    alone proves nothing: the commit must be on the default branch."""
    checks = {"path": (run.get("path") or "").split("@")[0] == f".github/workflows/{workflow}",
              "event": run.get("event") == "workflow_dispatch", "branch": run.get("head_branch") == branch,
              "request": run.get("display_title") == title,
              "actor": (run.get("actor") or {}).get("login") == actor,
              "triggering actor": (run.get("triggering_actor") or {}).get("login") == actor,
              "commit": bool(run.get("head_sha")) and on_default(run["head_sha"])}
    wrong = [name for name, ok in checks.items() if not ok]
    return None if not wrong else (
        f"its {', '.join(wrong)} differ from the evaluate workflow's ({run.get('path')}, {run.get('event')}, "
        f"{run.get('head_branch')}, {run.get('display_title')!r}, by {(run.get('actor') or {}).get('login')} / "
        f"{(run.get('triggering_actor') or {}).get('login')}, at {str(run.get('head_sha'))[:12]})")


def result_json(artifact: bytes | None) -> str:
    """result.json from the zip of the result artifact, inflated only when the zip says it is at most
    RESULT_MAX_BYTES and read no further than that (BadResult when there is none, or it cannot be read)."""
    if artifact is None:
        raise report.BadResult(f"no {RESULT_ARTIFACT} artifact")
    try:
        with zipfile.ZipFile(io.BytesIO(artifact)) as z:
            info = z.getinfo(RESULT_FILE)
            if info.file_size > RESULT_MAX_BYTES:
                raise report.BadResult(f"its {RESULT_FILE} inflates to {info.file_size} bytes, over the "
                                       f"{RESULT_MAX_BYTES} allowed")
            with z.open(info) as f:
                data = f.read(RESULT_MAX_BYTES + 1)
    except (zipfile.BadZipFile, KeyError, NotImplementedError, RuntimeError, zlib.error, EOFError, OSError) as e:
        # NotImplementedError: an unsupported compression method; RuntimeError: an encrypted entry
        raise report.BadResult(f"the {RESULT_ARTIFACT} artifact holds no readable {RESULT_FILE} "
                               f"({type(e).__name__}: {e})") from e
    if len(data) > RESULT_MAX_BYTES:
        raise report.BadResult(f"its {RESULT_FILE} inflates past the {RESULT_MAX_BYTES} bytes allowed")
    return data.decode(errors="replace")


def request_title(spec: RunSpec) -> str:
    return f"{EVALUATE_RUN_NAME} {spec.key}"


class GitHubActions:
    """Runs made by dispatched workflow runs. It keeps only the runs it was handed; the records keep the rest.

    `on_default(sha)`: whether a commit is on the default branch (the bot's mirror answers, with no API call)."""

    def __init__(self, forge: GitHubForge, slots: int, on_default: Callable[[str], bool],
                 budget: RunnerSeconds | None = None, before_dispatch: Callable[[], None] = lambda: None,
                 pull_of: Callable[[RunSpec], int | None] = lambda spec: None):
        """`before_dispatch`: called before each dispatch (the driver pushes the notes: the run is noted pending on
        GitHub first); `pull_of(spec)`: the adopted PR whose head the run trains, if any (the runner fetches it from
        refs/pull/<n>/head: a fork's head is on no branch of the repository)."""
        self.forge, self.slots, self.on_default, self.budget = forge, slots, on_default, budget
        self.before_dispatch, self.pull_of = before_dispatch, pull_of
        self._runs: dict[str, RunSpec] = {}  # key -> spec (with the workflow run's id once known)
        self._verified: dict[int, str] = {}  # workflow run id -> its display title, once it verified
        self.only: set[int] | None = None  # set by the driver: the only workflow runs `poll` asks about (None: all)

    @property
    def branch(self) -> str:
        return self.forge.repo.default_branch

    def submit(self, spec: RunSpec, timing: tuple[float, float] | None) -> RunSpec:
        inputs = {"request": spec.key, "commit": spec.commit, "champion": spec.champion, "seed": str(spec.seed),
                  "splits": ",".join(spec.splits)}
        if spec.commit != spec.champion and timing is not None:  # the runner holds the candidate to the champion's times
            inputs |= {"champion_overhead": f"{timing[0]:.2f}", "champion_score_seconds": f"{timing[1]:.2f}"}
        if (pull := self.pull_of(spec)) is not None:
            inputs["pull"] = str(pull)
        self.before_dispatch()
        run_id, requested_at = self.forge.dispatch(EVALUATE_WORKFLOW, f"refs/heads/{self.branch}", inputs)
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
        """The runs that completed (asked of GitHub now; a webhook says when to ask, and which run, so this never
        waits: `only`), and the dispatches GitHub never started a run for or whose run was cancelled before it
        reported (lost: dispatched again, up to MAX_LOST times)."""
        ended: list[Outcome] = []
        for key, spec in list(self._runs.items()):
            if spec.run_id is not None and self.only is not None and spec.run_id not in self.only:
                continue
            if spec.run_id is None and (run_id := self.find_run(spec)) is not None:
                spec = self._runs[key] = spec.model_copy(update={"run_id": run_id})
            if spec.run_id is None and not self._recent(spec):
                del self._runs[key]
                ended.append(Lost(spec, "dispatch", "", f"GitHub lists no evaluate workflow run for this dispatch "
                                  f"{START_TIMEOUT.seconds // 60} minutes after it was made"))
                continue
            if (outcome := self._outcome(spec)) is not None:
                del self._runs[key]
                ended.append(outcome)
                if isinstance(outcome, Finished) and self.budget is not None:
                    self.budget.record_runner_seconds(outcome.result.total_seconds)
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
        return spec.requested_at != "" and (datetime.now(timezone.utc)
                                            - datetime.fromisoformat(spec.requested_at)) < START_TIMEOUT

    def find_run(self, spec: RunSpec) -> int | None:
        """The workflow run of a dispatch GitHub answered with no run id (a server without return_run_details): the
        first run of the evaluate workflow on the default branch named for this request, dispatched by the bot and
        created since the dispatch (GitHub's clock: `requested_at` is the dispatch answer's Date)."""
        if not spec.requested_at:
            return None
        since = datetime.fromisoformat(spec.requested_at) - DISPATCH_SLACK
        runs = [(created, r["id"]) for r in self.forge.dispatched_runs(EVALUATE_WORKFLOW, self.branch, self.forge.login())
                if r.get("display_title") == request_title(spec)
                and (r.get("actor") or {}).get("login") == self.forge.login()
                and (created := datetime.fromisoformat(r["created_at"].replace("Z", "+00:00"))) >= since]
        return min(runs)[1] if runs else None

    def _verify(self, run: dict, title: str) -> str | None:
        wrong = verify_run(run, EVALUATE_WORKFLOW, self.branch, title, self.forge.login(), self.on_default)
        if wrong is None:
            self._verified[run["id"]] = title
        return wrong

    def _outcome(self, spec: RunSpec) -> Outcome | None:
        """The run answering `spec`: the result artifact of its workflow run, once that run is completed and proves
        to be the evaluate workflow of the default branch, started by the bot's dispatch for this request. None
        while in flight; Lost when GitHub has no such run, or it was cancelled before it reported."""
        if spec.run_id is None:
            return None
        job = f"workflow run {spec.run_id}"
        run = self.forge.workflow_run(spec.run_id)
        if run is None:
            return Lost(spec, job, "", f"GitHub has no {job} (deleted?)")
        if run.get("status") != "completed":
            return None
        crash = lambda why: Finished(spec, RunResult(  # noqa: E731
            status="crash", commit=spec.commit, champion=spec.champion, seed=spec.seed, splits=spec.splits,
            reason=why, job=job, run_id=spec.run_id))
        wrong = self._verify(run, request_title(spec))
        if wrong:
            return crash(f"{job} does not count: {wrong}")
        try:
            artifact = self.forge.run_artifact(spec.run_id, RESULT_ARTIFACT, ARTIFACT_MAX_BYTES)
            if artifact is None and run.get("conclusion") == "cancelled":
                return Lost(spec, job, "", f"{job} was cancelled before it reported a result")
            runs = [RunResult.model_validate(r) for r in report.load_runs(result_json(artifact))]
        except (report.BadResult, ValidationError, GitHubForgeError) as e:
            return crash(f"{job} ({run.get('conclusion')}) left no result: {str(e)[:300]}")
        match = next((r for r in runs if (r.commit, r.seed, r.champion) == (spec.commit, spec.seed, spec.champion)), None)
        if match is None:
            return crash(f"{job} reported no run of {spec.commit[:12]} seed {spec.seed} scored by {spec.champion[:12]}")
        return Finished(spec, match.model_copy(update={"splits": spec.splits, "job": job, "run_id": spec.run_id}))

    # --- what a human or a merge asks --------------------------------------------------------------------------
    def why_not_again(self, spec: RunSpec) -> str | None:
        """Why `/arbot rerun` may not dispatch this pending run again (None: it may): only a run that ended without
        a result is made again; one still queued or running may yet report, and one that reported counts."""
        run_id = spec.run_id if spec.run_id is not None else self.find_run(spec)
        if run_id is None:
            return None if not self._recent(spec) else "it was dispatched moments ago and GitHub may not list it yet"
        run = self.forge.workflow_run(run_id)
        if run is None:
            return None
        if run.get("status") != "completed":
            return f"workflow run {run_id} is still {run.get('status')}: it may yet report (cancel it to run it again)"
        if self.forge.artifact(run_id, RESULT_ARTIFACT) is not None:
            return f"workflow run {run_id} reported a result, which counts: it is not run again"
        return None

    def recheck(self, result: RunResult) -> str | None:
        """Why a recorded run does not prove to come from a verified workflow run of its commit, seed and splits
        (asked before a merge: a note can be edited). A run this process verified is not asked of GitHub again."""
        if result.run_id is None:
            return f"the run of {result.commit[:12]} seed {result.seed} names no workflow run"
        suffix = f":{result.commit[:12]}:seed-{result.seed}:{'+'.join(result.splits)}"
        title = self._verified.get(result.run_id)
        if title is None:
            run = self.forge.workflow_run(result.run_id)
            if run is None:
                return f"GitHub has no workflow run {result.run_id}"
            title = run.get("display_title") or ""
            if not (title.startswith(f"{EVALUATE_RUN_NAME} ") and title.endswith(suffix)):
                return f"workflow run {result.run_id} ({title!r}) is not the run of {suffix[1:]}"
            if (wrong := self._verify(run, title)) is not None:
                return f"workflow run {result.run_id} does not count: {wrong}"
        return None if title.endswith(suffix) else f"workflow run {result.run_id} ({title!r}) is not the run of {suffix[1:]}"

"""The GitHub mode driver against the fake GitHub, in the scripted world (tests/scripted.py, no training).

Every training run is one dispatch of arbot-evaluate.yml (the project's file, in the world's repository) on the
default branch; its workflow run uploads the `arbot-result` artifact, completes, and its report job posts an
`arbot/evaluate` check run for humans. Most tests play the workflow on each dispatch (ScriptedWorkflow); some hold
the dispatches and answer them by hand, to say when a run reports and what it says. Covered: restart recovery from
GitHub alone, one dispatch per run, which workflow runs count (forged check runs, other workflows, other
branches, other requests: none), missing or garbled results, tampered PRs and notes, `/arbot rerun`, the stale rule,
pause, the daily budget, max_in_flight, the review hold and approve, refused proposals kept on GitHub, the
serverless commands, and the webhook server running a campaign.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import git
import httpx
import pytest

from bot.config import Config
from bot.executors import MAX_LOST
from bot.forges.local import NOTES_REF, LocalForge
from bot.github import report
from bot.server.driver import Driver
from bot.surfaces.github import mirror
from bot.github.forge import GitHubForge, GitHubForgeError
from bot.core.policy import make_policy
from bot.proposers.failures import ProposalRejected, SpendCapReached
from bot.core.records import Cost, FailedProposal, RunResult, RunSpec
from bot.server.store import Budget, Store
from tests.fake_github.server import FakeGitHub
from tests.fake_github.serving import serving
from tests.scripted import ACTIONS_TOKEN, SCRIPT, ScriptedProposer, ScriptedWorkflow, Variant, make_world, result
from tests.test_github_forge import FAST, REPO, TOKEN, forge_for

WORLD = {
    "win": Variant(effect=-0.3),
    "win-again": Variant(effect=-0.2),
    "worse": Variant(effect=0.2),
    "crash": Variant(status="crash"),
    "flagged": Variant(effect=-0.3, flags=("timing: reads the clock",)),
}
OTHER_APP = "ghs_other_app"


def settings(policy: dict | None = None, **github) -> dict:
    """margin 0, one champion run, no holdout confirmation: a decision after two runs (unless `policy` says)."""
    return {"policy": policy or {"rule": "margin", "margin": 0.0, "baseline_runs": 1},
            "target": {"holdout_max_gap": None}, "github": {"repo": REPO, "max_in_flight": 1, **github}}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Proposer(ScriptedProposer):
    """The scripted proposer, which says so (a spend cap: fill stops) when its script is done. `first_slot`: a
    bot started later continues in the slots its predecessor left free."""

    def __init__(self, *names: str, first_slot: int = 0):
        super().__init__(*names)
        self.slot = first_slot

    def propose(self, ctx):
        if not self.names:
            raise SpendCapReached("the script has no more proposals")
        return super().propose(ctx)


@dataclass
class GitHub:
    fake: FakeGitHub
    url: str
    forge: GitHubForge
    tmp: Path
    store: Store
    workflow: ScriptedWorkflow
    played: int = 0

    def driver(self, *names: str, mirror_name: str = "mirror.git", proposer=None, paused: Callable[[], bool] = lambda: False,
               per_day: int | None = None, first_slot: int = 0, holder: str | None = None, lease_wait: float = 0,
               policy: dict | None = None, **github) -> Driver:
        cfg = Config.model_validate(settings(policy, **github))
        return Driver(self.forge, mirror(self.tmp / mirror_name), cfg, proposer or Proposer(*names, first_slot=first_slot),
                      make_policy(cfg.policy), budget=Budget(self.store, experiments_per_day=per_day), paused=paused,
                      holder=holder, lease_wait=lease_wait)

    # --- the evaluate workflow ---------------------------------------------------------------------------
    def auto(self) -> None:
        """Play the workflow on every dispatch from now on."""
        self.fake.on_dispatch = self.workflow

    def play(self) -> int:
        """Held dispatches: play each not played yet (the workflow ran, maybe while the bot was down)."""
        held = self.fake.dispatches[self.played:]
        for d in held:
            self.workflow(d)
        self.played = len(self.fake.dispatches)
        return len(held)

    def settle(self, d: Driver) -> None:
        """Advance until no run is asked for any more (auto mode)."""
        while True:
            self.fake.flush_dispatches()
            before = len(self.fake.dispatches)
            d.advance_all()
            self.fake.flush_dispatches()
            if len(self.fake.dispatches) == before:
                return

    def run_of(self, dispatch: dict) -> RunResult:
        """What the scripted world reports for a dispatch."""
        i = dispatch["inputs"]
        show = lambda sha: self.fake.git("show", f"{sha}:{SCRIPT}").stdout  # noqa: E731
        return result(WORLD, show(i["commit"]), show(i["champion"]), i["commit"], i["champion"], int(i["seed"]),
                      i["splits"].split(","))

    def post(self, check: dict, token: str = ACTIONS_TOKEN) -> None:
        httpx.post(f"{self.url}/api/v3/repos/{REPO}/check-runs", json=check,
                   headers={"Authorization": f"token {token}"}).raise_for_status()

    # --- what GitHub shows -----------------------------------------------------------------------------------
    def verdict(self, sha: str) -> str | None:
        """The latest arbot/verdict on a commit (a commit status: the bot uses a PAT here)."""
        states = [s["state"] for s in self.fake.statuses if s["sha"] == sha and s["context"] == "arbot/verdict"]
        return states[-1] if states else None

    def comment(self, number: int) -> str:
        bodies = [c["body"] for c in self.fake.comments.values() if c["issue"] == number and "arbot:results" in c["body"]]
        assert len(bodies) <= 1
        return bodies[0] if bodies else ""

    def note(self, sha: str) -> dict:
        return json.loads(self.fake.git("notes", "--ref=arbot", "show", sha).stdout)


def check_of(run: RunResult, request: str | None) -> dict:
    """The check run the report job posts for one run (report.py's rendering)."""
    check = report.render(report.load_runs(run.model_dump_json()), run.commit, [])
    if request is not None:
        check["external_id"] = request
    return check


@contextmanager
def github_world(tmp_path: Path, tokens: dict[str, str]) -> Iterator[tuple[FakeGitHub, str, GitHubForge, Store]]:
    """The scripted world's repository on a fake GitHub served over HTTP (`tokens`: more logins it knows), the
    bot's forge on it with the champion, labels and protection set up, and the bot's state store; on leaving, the
    fake must have seen no call or payload outside GitHub's contract."""
    world = make_world(tmp_path / "src", settings())
    fake = FakeGitHub(tmp_path / "remote", owner="octo-org", name="research", token=TOKEN)
    fake.tokens.update({ACTIONS_TOKEN: "github-actions[bot]", **tokens})
    world.git.push(str(fake.bare), "main:refs/heads/main")
    store = Store(tmp_path / "state.sqlite")
    try:
        with serving(fake.asgi) as url:
            forge = forge_for(url, fake)
            forge.ensure_champion()
            forge.ensure_labels()
            forge.protect_champion()
            yield fake, url, forge, store
    finally:
        fake.close()
        store.close()
    assert fake.all_violations == [], fake.all_violations


@pytest.fixture
def gh(tmp_path):
    with github_world(tmp_path, {OTHER_APP: "other-app[bot]"}) as (fake, url, forge, store):
        yield GitHub(fake, url, forge, tmp_path, store, ScriptedWorkflow(fake, url, REPO, WORLD))
        fake.flush_dispatches()


# --- restarts: the state is on GitHub ---------------------------------------------------------------------
def test_a_restarted_bot_rebuilds_its_state_from_github_and_finishes_the_decision(gh):
    fake = gh.fake
    start = fake.ref("champion")
    first = gh.driver("win")
    (rec,) = first.fill()  # max_in_flight 1
    assert first.fill() == [] and [p.number for p in first.forge.open_prs()] == [1]
    # the lifecycle asked for the champion's noise floor: one dispatch, on the default branch, noted first
    [d] = fake.dispatches
    assert d["ref"] == "refs/heads/main" and d["workflow"] == "arbot-evaluate.yml"
    assert d["inputs"] == {"request": f"champion:{start[:12]}:seed-0:val", "commit": start, "champion": start,
                           "seed": "0", "splits": "val", "champion_overhead": "", "champion_score_seconds": "", "pull": ""}
    assert [p["seed"] for p in gh.note(start)["pending"]] == [0]  # pushed before the dispatch
    head = fake.head_sha(fake.prs[1])
    assert head == rec.commit and gh.note(head)["id"] == "exp-1"
    gh.play()  # the workflow ran while the bot was down

    # a new bot with an empty mirror: the champion's run is collected from its workflow run, the candidate's dispatched
    second = gh.driver(mirror_name="second.git")
    assert second.lf.experiments() == []
    second.advance_all()
    assert [x["inputs"]["request"] for x in fake.dispatches[1:]] == [f"exp-1:{head[:12]}:seed-0:val"]
    assert [r.seed for r in second.lf.champion_record(start).runs] == [0] and second.lf.champion_record(start).pending == []
    gh.play()

    # and another: the candidate's run is in, the decision is made, the win merged through branch protection
    third = gh.driver("win-again", mirror_name="third.git", first_slot=1)
    third.advance_all()
    assert gh.verdict(head) == "success" and fake.prs[1].merged
    champion = fake.ref("champion")
    message = fake.message(champion)
    assert message.startswith("arbot: win (exp-1) (#1)")
    for trailer in ("Experiment: exp-1", "Metric: val_bpb=2.7000", "Baseline: val_bpb=3.0000", "Delta: -0.3000",
                    "Rule: margin", "Proposer: scripted", "Evaluator: scripted", "Seeds: 0", "PR: #1"):
        assert f"\n{trailer}\n" in message, message
    assert [r.commit for r in third.lf.champion_record(champion).runs] == [head]  # the win measures the champion
    assert "**win (margin)**" in gh.comment(1)
    # the next experiment: opened on the new champion, its run dispatched (the champion needs none)
    assert fake.prs[2].title == "win-again" and fake.prs[2].state == "open"
    assert fake.dispatches[-1]["inputs"]["champion"] == champion and len(fake.dispatches) == 3
    exp1 = next(r for r in third.lf.experiments() if r.id == "exp-1")
    assert exp1.decision.verdict == "win" and exp1.merged_as == champion and exp1.pending == []
    # the audit trail on GitHub is the local one: `arbot log` reads it from a clone with the notes fetched
    remote = LocalForge(git.Repo(fake.bare))
    assert [(sha, t["Experiment"], t["PR"]) for sha, t in remote.champion_log()] == [(champion, "exp-1", "#1")]
    assert [(r.id, r.decision and r.decision.verdict, r.merged_as) for r in remote.experiments()] == [
        ("exp-1", "win", champion), ("exp-2", None, None)]
    # repeating is safe, on this bot or yet another: nothing is posted, merged, opened or dispatched twice
    counts = lambda: (len(fake.statuses), len(fake.prs), len(fake.dispatches), len(fake.comments),  # noqa: E731
                      fake.ref("champion"))
    before = counts()
    third.advance_all()
    gh.driver(mirror_name="fourth.git").advance_all()
    assert counts() == before


def test_a_pending_run_is_dispatched_once(gh):
    fake = gh.fake
    d = gh.driver("worse")
    d.fill()
    assert len(fake.dispatches) == 1
    # webhooks, `arbot decide`, a restart: none dispatches a run again while it is pending
    d.advance_all()
    d.advance_all()
    d.advance_pr(1)
    gh.driver(mirror_name="other.git").advance_all()
    assert len(fake.dispatches) == 1
    gh.play()
    d.advance_all()
    d.advance_all()
    assert len(fake.dispatches) == 2 and fake.dispatches[1]["inputs"]["request"].startswith("exp-1:")
    gh.driver(mirror_name="other.git").advance_all()
    assert len(fake.dispatches) == 2
    gh.play()
    d.advance_all()
    rec = d.lf.experiments()[0]
    assert rec.decision.verdict == "loss" and [r.seed for r in rec.runs] == [0] and rec.pending == []
    assert fake.prs[1].state == "closed" and fake.prs[1].labels == ["arbot", "arbot:loss"]
    assert gh.verdict(rec.commit) == "failure" and "**loss (margin)**" in gh.comment(1)
    keys = [x["inputs"]["request"] for x in fake.dispatches]
    assert len(keys) == len(set(keys)) == 2 and {x["head_branch"] for x in fake.dispatches} == {"main"}


def answer(gh, dispatch: dict, run: RunResult | None = None, conclusion: str = "success",
           files: dict[str, bytes] | None = None) -> None:
    """The workflow run of `dispatch` ends: `files` (default: result.json of `run`, the world's run when None) as
    its arbot-result artifact (no artifact when files is empty), then completed with `conclusion`."""
    run = run or gh.run_of(dispatch)
    files = {"result.json": run.model_dump_json().encode()} if files is None else files
    if files:
        gh.fake.add_artifact(dispatch["id"], "arbot-result", files)
    gh.fake.complete_run(dispatch["id"], conclusion)


def test_check_runs_count_for_nothing_only_the_dispatched_workflow_run_does(gh):
    """Finding 1: a forged `arbot/evaluate` check run, from any app and with any external_id, changes nothing;
    the result is read from the artifact of the workflow run the bot dispatched, once GitHub says it completed."""
    fake = gh.fake
    start = fake.ref("champion")
    d = gh.driver("win")
    d.fill()
    [dispatch] = fake.dispatches
    request = dispatch["inputs"]["request"]
    run = gh.run_of(dispatch)

    def unchanged():
        d.advance_all()
        champion = d.lf.champion_record(start)
        assert champion.runs == [] and [s.key for s in champion.pending] == [request] and len(fake.dispatches) == 1

    for token in (OTHER_APP, ACTIONS_TOKEN):  # another app with checks: write; a workflow with the Actions token
        gh.post(check_of(run, request), token=token)
        unchanged()
    fake.start_run(dispatch["id"])
    unchanged()  # in progress
    fake.add_artifact(dispatch["id"], "arbot-result", {"result.json": run.model_dump_json().encode()})
    unchanged()  # the artifact is there, the run not completed yet
    fake.complete_run(dispatch["id"])
    d.advance_all()
    assert [r.seed for r in d.lf.champion_record(start).runs] == [0] and d.lf.champion_record(start).pending == []
    assert len(fake.dispatches) == 2  # the candidate's run, now


def attacker_run(fake, like: dict, **changes) -> int:
    """A workflow run the attacker made GitHub start (a pull_request run of an edited workflow, another workflow,
    a dispatch of their own), shaped like the bot's run `like` but for `changes`."""
    run_id = fake.next_id()
    fake.runs[run_id] = {**fake.runs[like["id"]], "id": run_id, **changes}
    return run_id



def test_without_run_details_the_dispatched_run_is_found_by_its_name(gh):
    """A server that answers a dispatch with 204 and no run id (older GitHub Enterprise): the bot finds each run by
    the evaluate workflow's run name for its request, created since it dispatched, and the campaign completes.
    A run of that name from before the dispatch (an earlier attempt) is not taken for it."""
    fake = gh.fake
    fake.run_details = False
    gh.auto()
    start = fake.ref("champion")
    d = gh.driver("win")
    d.fill()
    assert [s.run_id for s in d.lf.champion_record(start).pending] == [None]
    gh.settle(d)
    [rec] = d.lf.experiments()
    assert rec.decision.verdict == "win" and fake.prs[1].merged
    counted = {r.seed for r in d.lf.champion_record(start).runs} | {r.seed for r in rec.runs}
    assert counted == {0} and len(fake.dispatches) == 2
    # dispatched again ten minutes later (`/arbot rerun`): the runs of that name from before are not its run
    later = (datetime.now(timezone.utc) + timedelta(minutes=10)).isoformat(timespec="seconds")
    again = RunSpec(role="champion", commit=start, champion=start, seed=0, requested_at=later)
    fake.runs[999] = {**fake.runs[fake.dispatches[0]["id"]], "id": 999, "created_at": "2026-01-01T00:00:00Z"}
    assert d.stepper.executor.find_run(again) is None
    assert d.stepper.executor.find_run(again.model_copy(update={"requested_at": "2025-12-31T00:00:00+00:00"})) == 999


@pytest.mark.parametrize("kind", ["pull_request", "other workflow", "other branch", "other request"])
def test_a_result_from_any_other_workflow_run_does_not_count(gh, kind):
    """Finding 1: an attacker who can write notes points the pending run at a workflow run they control, whose
    artifact claims a big win; the run is checked with GET /actions/runs/{id} and counts as that run's crash: the
    experiment is closed as a crash with the reason, nothing merges, the champion's record keeps its honest run."""
    fake = gh.fake
    start = fake.ref("champion")
    d = gh.driver("win")
    d.fill()
    answer(gh, fake.dispatches[0])
    d.advance_all()
    dispatch = fake.dispatches[-1]
    key = dispatch["inputs"]["request"]
    forged = gh.run_of(dispatch).model_copy(update={"metrics": {"val_bpb": 0.5}})
    changes = {"pull_request": {"event": "pull_request", "head_branch": "arbot/exp-1"},
               "other workflow": {"path": ".github/workflows/evil.yml", "workflow": "evil.yml"},
               "other branch": {"head_branch": "arbot/exp-1"},
               "other request": {"display_title": key.replace("seed-0", "seed-7")}}[kind]
    evil = attacker_run(fake, dispatch, **changes)
    fake.add_artifact(evil, "arbot-result", {"result.json": forged.model_dump_json().encode()})
    fake.complete_run(evil)
    rec = d.lf.experiments()[0]
    rec.pending = [s.model_copy(update={"run_id": evil}) for s in rec.pending]
    d.lf.save(rec)  # pushed to GitHub, as a writer of refs/notes/arbot could
    d.advance_all()  # the bot that dispatched the run follows the run it dispatched, whatever the note says
    assert d.lf.experiments()[0].runs == []
    d = gh.driver()  # restarted, it knows the dispatch only from the note: the run named there is verified
    d.advance_all()
    rec = d.lf.experiments()[0]
    (run,) = rec.runs
    differ = {"pull_request": "event, branch", "other workflow": "path", "other branch": "branch",
              "other request": "request"}[kind]
    assert run.status == "crash" and run.reason.startswith(
        f"workflow run {evil} does not count: its {differ} differ from the evaluate workflow's"), run.reason
    assert rec.decision.verdict == "crash" and fake.prs[1].state == "closed" and not fake.prs[1].merged
    assert gh.verdict(rec.commit) == "failure" and fake.ref("champion") == start
    assert [r.metrics for r in d.lf.champion_record(start).runs] == [{"val_bpb": 3.0}]


@pytest.mark.parametrize("answer_kind", ["missing", "garbled", "invalid", "another seed", "another champion",
                                         "zip bomb", "deep JSON", "unsupported compression", "oversize"])
def test_a_run_without_a_usable_result_is_that_runs_crash(gh, answer_kind, monkeypatch):
    """Whatever the artifact holds, the run is that run's crash with the reason: never an exception out of the
    driver, never a bot that fails on every event."""
    fake = gh.fake
    d = gh.driver("win")
    d.fill()
    answer(gh, fake.dispatches[0])
    d.advance_all()
    dispatch = fake.dispatches[-1]
    head, run_id = dispatch["inputs"]["commit"], dispatch["id"]
    good = gh.run_of(dispatch).model_dump_json()
    if answer_kind == "missing":  # the train job died before uploading
        files, conclusion = {}, "failure"
        reason = f"workflow run {run_id} (failure) left no result: no arbot-result artifact"
    elif answer_kind == "garbled":
        files, conclusion = {"result.json": good.replace('"status":"ok"', '"status":"pwned"').encode()}, "success"
        reason = f"workflow run {run_id} (success) left no result: the result is not a run record"
    elif answer_kind == "invalid":
        files, conclusion = {"result.json": good.replace('"seed":0', '"seed":"zero"').encode()}, "success"
        reason = f"workflow run {run_id} (success) left no result: 1 validation error for RunResult"
    elif answer_kind == "zip bomb":  # about 50 KB zipped
        files, conclusion = {"result.json": b" " * (50 * 2**20)}, "success"
        reason = f"workflow run {run_id} (success) left no result: its result.json inflates to {50 * 2**20} bytes"
    elif answer_kind == "deep JSON":
        files, conclusion = {"result.json": b"[" * 100_000 + b"]" * 100_000}, "success"
        reason = f"workflow run {run_id} (success) left no result: the result is JSON nested too deeply"
    elif answer_kind == "unsupported compression":
        files, conclusion = {"result.json": good.encode()}, "success"
        reason = f"workflow run {run_id} (success) left no result: the arbot-result artifact holds no readable"
    elif answer_kind == "oversize":  # GitHub's size_in_bytes says so: never downloaded
        monkeypatch.setattr("bot.executors.github_actions.ARTIFACT_MAX_BYTES", 4096)
        files, conclusion = {"result.json": good.encode(), "evaluate.log": random.randbytes(8192)}, "success"
        reason = f"workflow run {run_id} (success) left no result: artifact "
    else:
        field = {"another seed": {"seed": 1}, "another champion": {"champion": head}}[answer_kind]
        files = {"result.json": gh.run_of(dispatch).model_copy(update=field).model_dump_json().encode()}
        conclusion = "success"
        reason = f"workflow run {run_id} reported no run of {head[:12]} seed 0 scored by"
    if answer_kind == "unsupported compression":  # method 99 (AES), which zipfile cannot inflate
        artifact = fake.add_artifact(dispatch["id"], "arbot-result", files)
        blob = bytearray(fake.artifacts[artifact]["zip"])
        for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
            blob[blob.index(signature) + offset:blob.index(signature) + offset + 2] = (99).to_bytes(2, "little")
        fake.artifacts[artifact]["zip"] = bytes(blob)
        files = {}
    downloads = dict(fake.downloads)
    answer(gh, dispatch, files=files, conclusion=conclusion)
    d.advance_all()
    rec = d.lf.experiments()[0]
    (run,) = rec.runs
    if answer_kind == "oversize":
        assert "bytes, over the 4096 bytes allowed" in run.reason and fake.downloads == downloads  # never downloaded
    assert (run.status, run.seed, run.commit) == ("crash", 0, head) and run.reason.startswith(reason), run.reason
    assert rec.decision.verdict == "crash" and rec.decision.rule == "crash" and rec.pending == []
    assert fake.prs[1].state == "closed" and fake.prs[1].labels == ["arbot", "arbot:crash"]
    assert gh.verdict(head) == "failure" and f"### {rec.id}: **crash**\n" in gh.comment(1)  # not "crash (crash)"
    assert len(fake.dispatches) == 2  # a crash is final: no other run is asked for


def test_a_champion_that_does_not_train_is_said_on_the_pr(gh):
    """One failed champion run may be the machine's: it is made again with the next seed. A second failure is
    the champion's own: said on the PR, and nothing more is asked for."""
    fake = gh.fake
    d = gh.driver("win")
    d.fill()
    [dispatch] = fake.dispatches
    answer(gh, dispatch, files={}, conclusion="failure")
    d.advance_all()
    assert "the champion fails" not in gh.comment(1)
    [again] = fake.dispatches[1:]
    assert again["inputs"]["commit"] == dispatch["inputs"]["commit"] and again["inputs"]["seed"] == "1"
    answer(gh, again, files={}, conclusion="failure")
    d.advance_all()
    assert "### exp-1: the champion fails" in gh.comment(1) and "left no result" in gh.comment(1)
    assert fake.prs[1].state == "open" and len(fake.dispatches) == 2 and d.lf.experiments()[0].decision is None


def test_a_pushed_or_edited_experiment_is_rejected_and_never_merged(gh):
    """Finding 1: a commit pushed onto the experiment's branch (here one that edits the evaluate workflow and the
    evaluator) makes the PR's head not the commit measured; and a note naming a commit that changes files outside
    target.allowed_paths is refused on the mirror. Both: `tampered`, verdict failure, closed, champion untouched."""
    fake = gh.fake
    gh.auto()
    start = fake.ref("champion")
    d = gh.driver("win", "win-again", max_in_flight=2)
    d.fill()
    fake.flush_dispatches()
    exp1, exp2 = d.lf.experiments()
    # exp-1: the attacker pushes a commit editing the workflow and the evaluator onto arbot/exp-1
    work = gh.tmp / "attacker"
    repo = git.Repo.clone_from(str(fake.bare), work, branch="arbot/exp-1")
    (work / ".github" / "workflows").mkdir(parents=True, exist_ok=True)
    (work / ".github" / "workflows" / "arbot-evaluate.yml").write_text("on: pull_request\n")
    (work / "evaluator.py").write_text("SCORE = 0.0\n")
    repo.git.add(A=True)
    repo.git.commit("-m", "helpful tweak", env={"GIT_AUTHOR_NAME": "x", "GIT_AUTHOR_EMAIL": "x@x",
                                               "GIT_COMMITTER_NAME": "x", "GIT_COMMITTER_EMAIL": "x@x"})
    repo.git.push("origin", "arbot/exp-1")
    # exp-2: the attacker moves its note onto that commit (the branch is left alone)
    evil, measured = repo.head.commit.hexsha, exp2.commit
    exp2.commit = evil
    d.lf.save(exp2)
    d.local.git.notes(f"--ref={NOTES_REF}", "remove", measured)
    d.push_notes()
    gh.settle(d)
    first, second = (next(r for r in d.lf.experiments() if r.id == i) for i in ("exp-1", "exp-2"))
    assert (first.decision.verdict, first.decision.rule) == ("rejected", "tampered")
    assert first.decision.reason.startswith(f"PR #1's head is {evil[:12]}, not the experiment's commit"), first.decision.reason
    assert (second.decision.verdict, second.decision.rule) == ("rejected", "tampered")
    assert "changes .github/workflows/arbot-evaluate.yml, evaluator.py, outside target.allowed_paths" in second.decision.reason
    for n in (1, 2):
        assert fake.prs[n].state == "closed" and not fake.prs[n].merged
    assert gh.verdict(exp1.commit) == "failure" and gh.verdict(evil) == "failure"
    assert fake.ref("champion") == start and "**rejected (tampered)**" in gh.comment(1)
    assert all(r.commit == start for r in d.lf.champion_record(start).runs)  # no run of evil in the champion's notes


def test_two_bots_filling_at_once_never_exceed_max_in_flight(gh):
    """`arbot serve` and the scheduled workflow (two writers, two mirrors) fill at the same moment: under the lease
    on the repository, the second counts after the first has opened its experiment, so one PR is open, not two."""
    bots = [gh.driver("win", "worse", mirror_name=f"{name}.git", holder=name, lease_wait=60, max_in_flight=1)
            for name in ("arbot serve", "arbot-propose workflow")]
    opened: list[list] = []
    errors: list[BaseException] = []

    def fill(d: Driver) -> None:
        try:
            opened.append(d.fill())
        except BaseException as e:  # noqa: BLE001 - asserted below
            errors.append(e)

    threads = [threading.Thread(target=fill, args=(d,)) for d in bots]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(opened) == 2
    assert sorted(len(recs) for recs in opened) == [0, 1]
    assert [n for n, pr in gh.fake.prs.items() if pr.state == "open"] == [1]


def test_a_win_github_refuses_to_merge_is_retried_until_it_lands(gh):
    """Wins never stall: the team also requires its own CI check, which has not passed yet, so GitHub refuses the
    merge. The PR says so and stays open with its win; once the check passes, the next event merges it."""
    fake, headers = gh.fake, {"Authorization": f"token {TOKEN}"}
    gh.auto()
    start = fake.ref("champion")
    httpx.put(f"{gh.url}/api/v3/repos/{REPO}/branches/champion/protection", headers=headers, json={
        "required_status_checks": {"strict": True, "checks": [{"context": "arbot/verdict", "app_id": -1},
                                                              {"context": "ci/lint", "app_id": -1}]},
        "enforce_admins": None, "required_pull_request_reviews": None, "restrictions": None}).raise_for_status()
    d = gh.driver("win")
    d.fill()
    gh.settle(d)
    [rec] = d.lf.experiments()
    assert rec.decision.verdict == "win" and rec.merged_as is None and fake.prs[1].state == "open"
    assert ('**Not merged yet**: GitHub refused the merge (PR #1 was not merged (405): Required status check '
            '"ci/lint" is expected.)') in gh.comment(1)
    d.advance_all()  # still refused: nothing changes, nothing is lost
    assert fake.ref("champion") == start and fake.prs[1].state == "open"
    httpx.post(f"{gh.url}/api/v3/repos/{REPO}/statuses/{rec.commit}", headers=headers,
               json={"state": "success", "context": "ci/lint"}).raise_for_status()
    d.advance_all()
    [rec] = d.lf.experiments()
    assert fake.prs[1].merged and rec.merged_as == fake.ref("champion") != start


def comments(gh, number: int) -> list[str]:
    """The bot's comments on a PR besides the results one, oldest first."""
    return [c["body"] for c in gh.fake.comments.values() if c["issue"] == number and "arbot:results" not in c["body"]]


def test_rerun_is_only_for_a_run_that_ended_without_a_result(gh):
    """`/arbot rerun` cannot trade a reported result for another draw: a run still queued may yet report, and one
    that reported counts, so neither is dispatched again (the PR says why); a run that ended without a result is,
    and only the new attempt's result counts."""
    fake = gh.fake
    start = fake.ref("champion")
    d = gh.driver("win", "worse")
    d.fill()
    [first] = fake.dispatches
    assert d.rerun(1) == [] and len(fake.dispatches) == 1
    assert f"workflow run {first['id']} is still queued: it may yet report" in comments(gh, 1)[-1]
    answer(gh, first)  # it reported, and the bot has not taken the result in yet
    assert d.rerun(1) == [] and len(fake.dispatches) == 1
    assert f"workflow run {first['id']} reported a result, which counts" in comments(gh, 1)[-1]
    d.advance_all()
    assert [r.run_id for r in d.lf.champion_record(start).runs] == [first["id"]]
    candidate = fake.dispatches[-1]
    fake.complete_run(candidate["id"], "failure")  # the runner died before it uploaded anything
    assert d.rerun(1) == [candidate["inputs"]["request"]] and fake.dispatches[-1]["inputs"] == candidate["inputs"]
    answer(gh, fake.dispatches[-1])
    d.advance_all()
    exp1 = d.lf.experiments()[0]
    assert fake.prs[1].merged and [r.run_id for r in exp1.runs] == [fake.dispatches[2]["id"]]
    assert d.rerun(1) == [] and comments(gh, 1)[-1].endswith("- nothing is pending")
    fake.git("update-ref", "refs/heads/feature", start)
    human = gh.forge.repo.create_pull(base="champion", head="feature", title="a human's PR", body="")
    with pytest.raises(GitHubForgeError, match="is not an arbot experiment"):
        d.rerun(human.number)


def test_a_dispatch_that_never_starts_is_dispatched_again_then_reported_lost(gh, monkeypatch):
    """GitHub took the dispatch and never started a run: after START_TIMEOUT it is dispatched again, MAX_LOST times
    in all, then reported on the PR as lost (the machine's failure, never the candidate's verdict) and left for
    `/arbot rerun`, which dispatches it once the runners work."""
    monkeypatch.setattr("bot.executors.github_actions.START_TIMEOUT", timedelta(0))
    fake = gh.fake
    fake.run_details = False
    fake.on_dispatch = lambda dispatch: fake.runs.pop(dispatch["id"])  # accepted, never started
    start = fake.ref("champion")
    d = gh.driver("win")
    d.fill()
    for _ in range(4):
        fake.flush_dispatches()
        d.advance_all()
    assert len(fake.dispatches) == MAX_LOST and len(d.lf.champion_record(start).lost) == MAX_LOST
    assert "**A run was lost**: the run champion:" in comments(gh, 1)[-1]
    rec = d.lf.experiments()[0]
    assert rec.decision is None and fake.prs[1].state == "open"
    gh.driver(mirror_name="other.git").advance_all()  # another writer does not dispatch it again either
    assert len(fake.dispatches) == MAX_LOST
    fake.flush_dispatches()
    fake.on_dispatch = None  # the runners are fixed
    assert d.rerun(1) == [f"champion:{start[:12]}:seed-0:val"] and len(fake.dispatches) == MAX_LOST + 1
    gh.auto()
    gh.workflow(fake.dispatches[-1])
    gh.settle(d)
    assert d.lf.experiments()[0].decision.verdict == "win" and fake.prs[1].merged


MALLORY = "ghp_mallory"


def as_mallory(gh) -> dict:
    """A collaborator with write access (or a coding agent with a write token), who is not the bot."""
    gh.fake.tokens[MALLORY] = "mallory"
    gh.fake.collaborators["mallory"] = "write"
    return {"Authorization": f"token {MALLORY}"}


def test_a_run_from_a_tag_named_like_the_default_branch_does_not_count(gh):
    """Mallory tags her own commit `main` and dispatches the evaluate workflow from the tag: GitHub reports the
    tag's name as the run's head_branch, so it looks like a run of main. Pointed at from the note, it is verified
    (its actor and commit are not the bot's dispatch on main) and counts as that run's crash; nothing merges."""
    fake = gh.fake
    headers = as_mallory(gh)
    start = fake.ref("champion")
    d = gh.driver("win")
    d.fill()
    answer(gh, fake.dispatches[0])
    d.advance_all()
    dispatch = fake.dispatches[-1]
    main = fake.ref("main")
    evil = fake.git("commit-tree", f"{main}^{{tree}}", "-p", main, "-m", "an edited workflow").stdout.strip()
    fake.git("update-ref", "refs/tags/main", evil)
    httpx.post(f"{gh.url}/api/v3/repos/{REPO}/actions/workflows/arbot-evaluate.yml/dispatches", headers=headers,
               json={"ref": "refs/tags/main", "inputs": dispatch["inputs"]}).raise_for_status()
    tagged = fake.dispatches[-1]["id"]
    assert fake.runs[tagged]["head_branch"] == "main" and fake.runs[tagged]["actor"] == "mallory"
    forged = gh.run_of(dispatch).model_copy(update={"metrics": {"val_bpb": 0.5}})
    fake.add_artifact(tagged, "arbot-result", {"result.json": forged.model_dump_json().encode()})
    fake.complete_run(tagged)
    rec = d.lf.experiments()[0]
    rec.pending = [s.model_copy(update={"run_id": tagged}) for s in rec.pending]
    d.lf.save(rec)
    d = gh.driver()
    d.advance_all()
    rec = d.lf.experiments()[0]
    (run,) = rec.runs
    assert run.status == "crash" and run.reason.startswith(
        f"workflow run {tagged} does not count: its actor, triggering actor, commit differ"), run.reason
    assert rec.decision.verdict == "crash" and not fake.prs[1].merged and fake.ref("champion") == start


def test_the_name_lookup_never_takes_someone_elses_run(gh):
    """Without run details the bot finds its run by name: Mallory's run of the same name, made just after the
    bot's dispatch and reporting a far better champion, is not taken; the bot's own run is."""
    fake = gh.fake
    headers = as_mallory(gh)
    fake.run_details = False
    start = fake.ref("champion")
    d = gh.driver("win")
    d.fill()
    [mine] = fake.dispatches
    httpx.post(f"{gh.url}/api/v3/repos/{REPO}/actions/workflows/arbot-evaluate.yml/dispatches", headers=headers,
               json={"ref": "main", "inputs": mine["inputs"]}).raise_for_status()
    theirs = fake.dispatches[-1]
    forged = gh.run_of(mine).model_copy(update={"metrics": {"val_bpb": 9.0}})  # a worse baseline: anything wins
    answer(gh, theirs, run=forged)
    d.advance_all()
    assert d.lf.champion_record(start).runs == [] and len(fake.dispatches) == 2
    answer(gh, mine)
    d.advance_all()
    assert [(r.run_id, r.metrics) for r in d.lf.champion_record(start).runs] == [(mine["id"], {"val_bpb": 3.0})]


def test_a_win_whose_recorded_run_does_not_verify_is_not_merged(gh):
    """Each run a win was decided on is verified again before the merge: a note that moved a run onto another
    workflow run (here Mallory's) rejects the win as tampered."""
    fake = gh.fake
    headers = as_mallory(gh)
    d = gh.driver("win")
    d.fill()
    answer(gh, fake.dispatches[0])
    d.advance_all()
    candidate = fake.dispatches[-1]
    httpx.post(f"{gh.url}/api/v3/repos/{REPO}/actions/workflows/arbot-evaluate.yml/dispatches", headers=headers,
               json={"ref": "main", "inputs": candidate["inputs"]}).raise_for_status()
    theirs = fake.dispatches[-1]["id"]
    start = fake.ref("champion")
    champion = d.lf.champion_record(start)
    champion.runs = [r.model_copy(update={"run_id": theirs}) for r in champion.runs]
    d.lf.save(champion)  # pushed, as a writer of refs/notes/arbot could
    answer(gh, candidate)
    d.advance_all()
    rec = d.lf.experiments()[0]
    assert rec.decision.verdict == "rejected" and rec.decision.rule == "tampered", rec.decision
    assert f"workflow run {theirs}" in rec.decision.reason and not fake.prs[1].merged


# --- the stale rule -----------------------------------------------------------------------------------------
def test_an_experiment_measured_on_an_old_champion_is_closed_and_opened_again(gh):
    fake = gh.fake
    gh.auto()
    start = fake.ref("champion")
    d = gh.driver("win")
    d.fill()
    fake.flush_dispatches()
    # champion moves by hand (a commit pushed to champion) before the experiment is decided
    tree = fake.git("rev-parse", f"{start}^{{tree}}").stdout.strip()
    moved = fake.git("commit-tree", tree, "-p", start, "-m", "by hand").stdout.strip()
    fake.git("update-ref", "refs/heads/champion", moved, start)
    gh.settle(d)
    stale, fresh = d.lf.experiments()
    assert (stale.decision.verdict, stale.decision.rule) == ("rejected", "stale")
    assert stale.decision.reason == (f"champion moved from {start[:12]} to {moved[:12]} before this was merged; "
                                     "measured again as exp-2")
    assert fake.prs[1].state == "closed" and not fake.prs[1].merged and fake.prs[1].labels == ["arbot", "arbot:crash"]
    assert gh.verdict(stale.commit) == "failure" and "**rejected (stale)**" in gh.comment(1)
    assert fake.ref("arbot/exp-1") == stale.commit  # the branch is kept; never updated
    # the same change, a new experiment and PR on the new champion, measured there (its champion too) and merged
    assert fresh.proposal.files == stale.proposal.files and fresh.parent == moved
    assert fake.prs[2].head == "arbot/exp-2" and fake.prs[2].merged and fresh.decision.verdict == "win"
    assert [r.seed for r in d.lf.champion_record(moved).runs] == [0]
    assert "\nExperiment: exp-2\n" in fake.message(fake.ref("champion"))
    assert [x["inputs"]["champion"] for x in fake.dispatches] == [start, moved, moved]


def two_in_flight_exp1_wins(gh, other: str) -> tuple[Driver, str, dict]:
    """Two GPU runners: both experiments' runs are dispatched at once (the champion's shared); exp-1's runner
    reports first and it wins while exp-2 (`other`) still trains on the old champion. Returns the driver, the old
    champion and exp-2's dispatch."""
    fake = gh.fake
    start = fake.ref("champion")
    d = gh.driver("win", other, max_in_flight=2)
    d.fill()
    assert [x["inputs"]["request"].split(":")[0] for x in fake.dispatches] == ["champion"]  # one for both
    gh.play()
    d.advance_all()
    dispatched = {x["inputs"]["request"].split(":")[0]: x for x in fake.dispatches}
    assert sorted(dispatched) == ["champion", "exp-1", "exp-2"]  # both experiments' runs in flight together
    gh.workflow(dispatched["exp-1"])  # the first runner reports; exp-2's is still training
    d.advance_all()
    exp1, exp2 = (next(r for r in d.lf.experiments() if r.id == i) for i in ("exp-1", "exp-2"))
    assert exp1.merged_as and fake.prs[1].merged and fake.ref("champion") == exp1.merged_as
    # exp-2 waits for its run, which finishes on the champion it was asked against
    assert exp2.decision is None and exp2.pending and fake.prs[2].state == "open"
    assert len(fake.dispatches) == 3
    return d, start, dispatched["exp-2"]


def test_two_runners_two_experiments_in_flight_one_wins_the_other_is_measured_again(gh):
    """exp-2's run reports a win on the old champion: that counts for nothing on the new one, so exp-2 is closed
    as stale and its change measured again on the new champion, where it wins too."""
    fake = gh.fake
    d, start, exp2_run = two_in_flight_exp1_wins(gh, "win-again")
    gh.workflow(exp2_run)
    gh.played = 3
    d.advance_all()
    exp1, stale, fresh = (next(r for r in d.lf.experiments() if r.id == i) for i in ("exp-1", "exp-2", "exp-3"))
    assert (stale.decision.rule, stale.decision.reason) == ("stale", (
        f"champion moved from {start[:12]} to {exp1.merged_as[:12]} before this was merged; measured again as exp-3"))
    assert fake.prs[2].state == "closed" and not fake.prs[2].merged and not stale.pending
    assert [r.champion for r in stale.runs] == [start]  # its run, kept on its record, measured on the old champion
    gh.auto()
    gh.play()
    gh.settle(d)
    fresh = next(r for r in d.lf.experiments() if r.id == "exp-3")
    assert fresh.parent == exp1.merged_as and fresh.proposal.hypothesis == "win-again"  # the change, on the new champion
    assert "# arbot-test: win\n" in fresh.proposal.files[SCRIPT] and "# arbot-test: win-again\n" in fresh.proposal.files[SCRIPT]
    assert (fresh.decision.verdict, fake.prs[3].merged) == ("win", True)
    assert "\nExperiment: exp-3\n" in fake.message(fake.ref("champion"))
    requests = [x["inputs"]["request"] for x in fake.dispatches]
    assert len(requests) == len(set(requests))  # none twice
    assert [r.seed for r in d.lf.champion_record(start).runs] == [0]


def test_two_runners_the_other_loses_on_the_champion_it_was_measured_on_and_is_not_measured_again(gh):
    """exp-2's run reports a loss on the old champion: decided against the champion it was measured on, the loss
    stands; its PR is closed as a loss and nothing is dispatched again for it."""
    fake = gh.fake
    d, start, exp2_run = two_in_flight_exp1_wins(gh, "worse")
    gh.workflow(exp2_run)
    gh.played = 3
    gh.settle(d)
    exp1, lost = (next(r for r in d.lf.experiments() if r.id == i) for i in ("exp-1", "exp-2"))
    assert [r.id for r in d.lf.experiments()] == ["exp-1", "exp-2"]  # no replay
    assert (lost.decision.verdict, lost.parent) == ("loss", start)
    assert f"measured on {start[:12]}" in lost.decision.reason
    assert f"since moved to {exp1.merged_as[:12]}" in lost.decision.reason
    assert fake.prs[2].state == "closed" and "arbot:loss" in fake.prs[2].labels and not fake.prs[2].merged
    assert len(fake.dispatches) == 3  # champion, exp-1, exp-2: nothing measured again


def test_a_second_promising_experiment_waits_for_the_first_and_frees_its_runner(gh):
    """The noise-aware policy (a screen, then more runs): exp-1 and exp-2 both pass their screens on one champion.
    exp-1 asked for its further runs first, so exp-2 is deferred, holds no runner, and a third experiment is
    opened in its place; exp-1 wins and exp-2 is measured again having spent only its screen."""
    fake = gh.fake
    start = fake.ref("champion")
    played: set[int] = set()

    def play(prefix: str = "") -> None:
        for i, x in enumerate(list(fake.dispatches)):
            if i not in played and x["inputs"]["request"].startswith(prefix):
                played.add(i)
                gh.workflow(x)

    d = gh.driver("win", "win-again", "worse", max_in_flight=2, policy={"rule": "noise_aware"})
    d.fill()
    play("champion:")  # the noise floor
    d.advance_all()  # both screens dispatched
    play("exp-1:")
    d.advance_all()  # exp-1 passed its screen and asks for more runs (held)
    play("exp-2:")
    d.advance_all()  # exp-2 passed too: deferred, and a third experiment opened in its place
    recs = {r.id: r for r in d.lf.experiments()}
    assert recs["exp-1"].pending and recs["exp-2"].decision is None and not recs["exp-2"].pending
    assert len(recs["exp-2"].runs) == 1 and recs["exp-3"].parent == start and recs["exp-3"].pending
    gh.auto()
    play()
    gh.settle(d)
    recs = {r.id: r for r in d.lf.experiments()}
    win, deferred = recs["exp-1"], recs["exp-2"]
    assert win.merged_as and len(win.runs) > 1
    assert deferred.decision.rule == "stale" and [r.seed for r in deferred.runs] == [0]  # its screen alone
    assert sum(x["inputs"]["request"].startswith("exp-2:") for x in fake.dispatches) == 1  # one dispatch for it
    fresh = next(r for r in recs.values() if r.parent == win.merged_as and r.proposal.hypothesis == "win-again")
    assert fresh.decision is not None and f"measured again as {fresh.id}" in deferred.decision.reason


# --- proposing: pause, budget, max_in_flight, the review hold -----------------------------------------------------
def test_pause_budget_and_max_in_flight(gh):
    fake = gh.fake
    gh.auto()
    paused = {"on": True}
    d = gh.driver("worse", "crash", "win", "win-again", max_in_flight=2, per_day=3, paused=lambda: paused["on"])
    assert d.fill() == [] and fake.prs == {}  # paused
    paused["on"] = False
    assert [r.id for r in d.fill()] == ["exp-1", "exp-2"] and d.fill() == []  # max_in_flight
    paused["on"] = True
    gh.settle(d)
    assert [(n, p.state, p.labels) for n, p in fake.prs.items()] == [
        (1, "closed", ["arbot", "arbot:loss"]), (2, "closed", ["arbot", "arbot:crash"])]  # paused: nothing new
    paused["on"] = False
    gh.settle(d)
    assert len(fake.prs) == 3 and fake.prs[3].merged  # resumed: one more, then the daily cap (3 experiments)
    assert d.budget.exhausted().startswith("daily cap reached: 3 of 3 experiments")
    assert d.fill() == [] and len(fake.prs) == 3
    # runner time counts every run collected: the champion's, and one per experiment (10 s each in this world)
    assert d.budget.state()["runner_minutes_today"] == round(4 * 10 / 60, 2)


def test_a_flagged_win_waits_for_approval_and_does_not_count_as_in_flight(gh):
    fake = gh.fake
    gh.auto()
    start = fake.ref("champion")
    d = gh.driver("flagged", "worse")
    d.fill()
    gh.settle(d)
    held, loss = d.lf.experiments()
    assert held.decision.verdict == "win" and held.review == "needed"
    assert "held for human review, the diff touches: timing" in held.decision.reason
    # neutral arbot/verdict (a commit status `success` with a PAT): a human may merge it, the bot does not
    assert gh.verdict(held.commit) == "success" and fake.prs[1].state == "open" and fake.prs[1].auto_merge is None
    assert fake.ref("champion") == start and "Held for a human" in gh.comment(1) and "/arbot approve" in gh.comment(1)
    # a held win is not in flight: the next experiment ran meanwhile (max_in_flight 1)
    assert loss.decision.verdict == "loss" and fake.prs[2].state == "closed"
    with pytest.raises(GitHubForgeError, match=r"PR #2 \(exp-2\) is not a win waiting for review"):
        d.approve(2)
    approved = d.approve(1)  # what `/arbot approve` runs
    assert approved.review == "approved" and fake.prs[1].merged
    assert "\nExperiment: exp-1\n" in fake.message(fake.ref("champion"))
    with pytest.raises(GitHubForgeError, match="not a win waiting for review"):
        d.approve(1)


class Refusing:
    """An LLM proposer whose answers all fail validation, then hits its spend cap."""

    name = "llm"

    def __init__(self):
        self.calls = 0

    def propose(self, ctx):
        self.calls += 1
        record = FailedProposal(proposer="llm", model="m", champion=ctx.champion, hypothesis=f"idea {self.calls}",
                                stage="smoke", reason="the smoke run failed", cost=Cost(usd=0.25), at=now())
        if self.calls == 1:
            raise ProposalRejected("every answer failed the cascade", record)
        raise SpendCapReached("llm.max_usd_per_day reached", record.model_copy(update={"stage": "spend_cap"}))


def test_refused_proposals_are_kept_on_github(gh):
    fake = gh.fake
    start = fake.ref("champion")
    proposer = Refusing()
    d = gh.driver(proposer=proposer)
    assert d.fill() == [] and proposer.calls == 2  # refused, then the spend cap stops proposing
    assert fake.prs == {} and fake.dispatches == []
    # pushed to GitHub at once, as a note on the champion under refs/notes/arbot-proposals
    assert fake.git("rev-parse", "--verify", "-q", "refs/notes/arbot-proposals", check=False).returncode == 0
    noted = json.loads(fake.git("notes", "--ref=arbot-proposals", "show", start).stdout)
    assert [(p["hypothesis"], p["stage"]) for p in noted["items"]] == [("idea 1", "smoke"), ("idea 2", "spend_cap")]
    # another machine's bot sees them: the day's spend holds across machines (the LLM proposer's daily cap)
    fresh = gh.driver(mirror_name="fresh.git")
    fresh.sync()
    assert [p.hypothesis for p in fresh.lf.failed_proposals()] == ["idea 1", "idea 2"]
    assert fresh.lf.spent_today() == 0.5 and LocalForge(fresh.local).spent_today() == 0.5
    # and adds to them without losing any (the notes push is never forced)
    fresh.fill()
    assert len(json.loads(fake.git("notes", "--ref=arbot-proposals", "show", start).stdout)["items"]) == 2  # a spend cap: none
    again = gh.driver(mirror_name="fresh.git", proposer=Refusing())
    again.fill()
    assert len(json.loads(fake.git("notes", "--ref=arbot-proposals", "show", start).stdout)["items"]) == 4


def test_build_driver_gives_the_llm_proposer_the_runners_sandbox(tmp_path):
    from bot.forges.local import LocalForge as Local
    from bot.github.forge import connect
    from bot.proposers.factory import MixProposer
    from bot.proposers.llm import LLMProposer
    from bot.server.app import ServerSettings
    from bot.server.run import build_driver
    from runner.job import Runner

    for proposer in ("llm", {"llm": 0.5, "search": 0.5}):
        cfg = Config.model_validate({"run": {"proposer": proposer}, "github": {"repo": REPO},
                                     "llm": {"model": "m", "base_url": "http://127.0.0.1:9/v1"}})
        store = Store(tmp_path / "state.sqlite")
        forge = connect(cfg.github, {"ARBOT_GITHUB_TOKEN": TOKEN})  # contacts nothing
        driver = build_driver(cfg, tmp_path, forge, store, ServerSettings(secret="", state_path=store.path, repo=REPO),
                              mirror_path=tmp_path / "bot.git")
        llm = driver.proposer if isinstance(driver.proposer, LLMProposer) else driver.proposer.members["llm"]
        assert isinstance(driver.proposer, LLMProposer if proposer == "llm" else MixProposer)
        sandbox = llm.smoke.sandbox  # the smoke runs train in the runner's sandbox, as in `arbot run`
        assert callable(sandbox) and sandbox.__func__ is Runner.sandbox
        assert Path(sandbox.__self__.repo.git_dir) == tmp_path / "bot.git"
        box = sandbox()
        assert hasattr(box, "wrap") and hasattr(box, "prepare") and sandbox() is box  # probed once
        spent = llm._spent_today  # the daily spend cap reads the mirror's notes
        assert isinstance(spent.__self__, Local) and Path(spent.__self__.repo.git_dir) == tmp_path / "bot.git"
        store.close()


# --- serverless: `arbot propose` and `arbot decide` ----------------------------------------------------------
def test_serverless_commands_propose_and_decide(gh, monkeypatch):
    """`arbot propose` and `arbot decide [--pr N]`: what a scheduled workflow runs instead of the server."""
    import yaml
    from typer.testing import CliRunner

    import bot.github.forge as forge_module
    from bot.cli import app

    fake = gh.fake
    root = gh.tmp / "src"

    def better(dispatch, run):  # a world where any change (the search proposer's) beats the champion
        if run.commit != run.champion:
            run = run.model_copy(update={"metrics": {"val_bpb": run.metrics["val_bpb"] - 0.5}})
        return run

    fake.on_dispatch = ScriptedWorkflow(fake, gh.url, REPO, WORLD, tamper=better)
    (root / "arbot.yml").write_text(yaml.safe_dump(settings(base_url=f"{gh.url}/api/v3")))
    real_connect = forge_module.connect
    monkeypatch.setenv("ARBOT_GITHUB_TOKEN", TOKEN)
    monkeypatch.setattr(forge_module, "connect", lambda cfg, **kw: real_connect(cfg, git_url=str(fake.bare), **kw, **FAST))
    cli = lambda *args: CliRunner().invoke(app, [*args, "--repo", str(root)])  # noqa: E731
    out = cli("propose")
    assert out.exit_code == 0, out.output
    assert "opened exp-1 (arbot/exp-1)" in out.output and fake.prs[1].labels == ["arbot"]
    assert len(fake.dispatches) == 1  # the champion's noise floor
    assert "nothing opened" in cli("propose").output  # max_in_flight 1
    fake.flush_dispatches()
    out = cli("decide")
    assert "exp-1: measuring, 0 runs made, 1 in flight" in out.output and len(fake.dispatches) == 2
    fake.flush_dispatches()
    out = cli("decide", "--pr", "1")
    assert out.exit_code == 0, out.output
    assert out.output.startswith("exp-1: win (margin)") and fake.prs[1].merged
    assert "opened exp-2" in cli("propose").output
    assert (root / ".arbot" / "github.git").is_dir() and (root / ".arbot" / "server.sqlite").is_file()
    out = cli("decide", "--pr", "9")
    assert out.exit_code == 2 and "GitHub answered 404" in out.output


def test_git_errors_never_show_the_token(gh):
    import traceback

    d = gh.driver()
    d.forge.git_url = "https://127.0.0.1:9/octo-org/research.git"  # nothing listens there
    assert "x-access-token:ghp_test@" in d.forge.git_remote()
    with pytest.raises(GitHubForgeError) as e:
        d.sync()
    assert "ghp_test" not in "".join(traceback.format_exception(e.value))


# --- the server: webhooks from GitHub drive the driver ---------------------------------------------------------
def test_the_webhook_server_runs_a_campaign(gh):
    """`arbot serve`'s app, dispatcher and driver: signed webhooks from the fake are the only trigger after start."""
    from bot.server.app import PAUSED_FLAG, ServerSettings, create_app
    from bot.server.dispatch import Dispatcher

    from tests.test_server import comment, delivery

    fake, store = gh.fake, gh.store
    gh.auto()
    store.set_flag(PAUSED_FLAG, "1")  # started paused: no webhook may be lost before the fake knows the bot's URL
    d = gh.driver("win", "worse", per_day=2, paused=lambda: store.flag(PAUSED_FLAG) == "1")
    app = create_app(ServerSettings(secret="s3cret", state_path=store.path, repo=REPO, experiments_per_day=2),
                     Dispatcher(store, repo=REPO, driver=d), store, on_start=d.advance_all, progress=d.progress)
    with serving(app) as bot_url:
        fake.hooks.url, fake.hooks.secret = f"{bot_url}/webhook", "s3cret"
        resume = comment("/arbot resume")  # a maintainer's comment, as GitHub delivers it
        resume["repository"]["full_name"] = REPO
        body, headers = delivery(resume, "issue_comment", "d-resume", secret="s3cret")
        assert httpx.post(f"{bot_url}/webhook", content=body, headers=headers).status_code == 202
        deadline = time.monotonic() + 60
        while not (2 in fake.prs and fake.prs[2].state == "closed"):
            assert time.monotonic() < deadline, {n: (p.state, p.merged) for n, p in fake.prs.items()}
            time.sleep(0.05)
        fake.flush_dispatches()
        fake.hooks.flush()
        while httpx.get(f"{bot_url}/healthz").json()["queue"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = httpx.get(f"{bot_url}/healthz").json()
    assert fake.prs[1].merged and fake.prs[2].labels == ["arbot", "arbot:loss"]
    assert health["deliveries"]["failed"] == 0 and health["budget"]["experiments_today"] == 2
    assert health["paused"] is False and health["budget"]["exhausted"]
    kinds = {x.event for x in fake.hooks.deliveries}
    assert {"check_run", "pull_request"} <= kinds and all(x.status in (200, 202) for x in fake.hooks.deliveries)
    assert len(fake.dispatches) == 3  # the champion, then one run per experiment
    research = health["research"]  # the research as /healthz shows it: nothing in flight, one step up
    assert research["in_flight"] == [] and research["queued"] == 0 and research["runs_per_hour"] > 0
    assert (research["stale_rate"], research["decided"]) == (0.0, 2)
    assert [step["experiment"] for step in research["trajectory"]] == ["start", "exp-1"]


def test_an_exhausted_search_stops_proposing_without_failing_events_and_says_so(gh):
    """The search proposer with one other value to try: its experiment, then nothing left on this champion. Later
    events propose nothing and raise nothing; /healthz's research state says why."""
    from bot.config import KnobRange, SearchConfig
    from bot.proposers.search import SearchProposer

    gh.auto()
    search = SearchProposer(SearchConfig(knobs={"DEPTH": KnobRange(choices=[2, 3])}, exclude=["LEARNING_RATE"]))
    d = gh.driver(proposer=search, policy={"rule": "margin", "margin": 10.0, "baseline_runs": 1})
    gh.settle(d)
    [only] = d.lf.experiments()
    assert only.proposal.params["DEPTH"] == 3 and only.decision.verdict == "loss"
    assert d.advance_all() == [] and d.fill() == [] and len(gh.fake.prs) == 1
    assert "exhausted" in d.progress()["proposing_stopped"]

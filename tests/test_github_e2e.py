"""GitHub mode end to end: `arbot setup` on a fresh repository, then the bot (the webhook server, its dispatcher and
the driver) against the fake GitHub (real HTTP, a real bare repository, signed webhooks, every call checked against
GitHub's contract), with real training.

Every run the lifecycle asks for is one dispatch of arbot-evaluate.yml on the default branch, which the test plays
from the workflow file itself on each dispatch: the `train` job's steps (the inputs checked, the real `arbot evaluate`
on a tiny model in a checkout of the default branch), its `arbot-result` artifact uploaded, the `report` job's steps
(report.py with --external-id), the check run posted with the Actions token, then the run completed. The bot learns
of it through the workflow_run webhook and reads the artifact of the run it dispatched.

The policy is the default one (noise_aware, 3 baseline runs, a holdout confirmation of a win), so the extra seeds
and the holdout run are more dispatches. The campaign: two experiments opened at start (max_in_flight 2, a daily cap
of 2); the first wins and is merged through branch protection with its trailers and PR; the second, whose run on the
old champion passes the screen there, is closed as stale and its change opened again on the new champion, where it
loses and is closed with its label.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import git
import httpx
import pytest
import yaml

from bot.config import Config
from bot.server.driver import Driver
from bot.surfaces.github import mirror
from bot.knobs import find_knobs, set_knobs
from bot.core.policy import make_policy
from bot.proposers.failures import SpendCapReached
from bot.core.records import HOLDOUT_SEEDS, KnobChange, Proposal, RunResult
from bot.server.app import PAUSED_FLAG, ServerSettings, create_app
from bot.server.dispatch import Dispatcher
from bot.server.store import Budget, Store
from tests.conftest import make_repo, tiny_config
from tests.fake_github.server import FakeGitHub
from tests.fake_github.serving import serving
from tests.scripted import ACTIONS_TOKEN
from tests.test_github_forge import FAST, REPO, TOKEN, forge_for

ROOT = Path(__file__).resolve().parent.parent
EVALUATE = ROOT / ".github" / "workflows" / "arbot-evaluate.yml"
VENV = Path(sys.executable).parent.parent  # this project's venv: the workflow's installed arbot in both jobs
SECRET = "e2e-secret"
RUN_URL = "http://github.test"


class EditProposer:
    """Proposes the given edits of target/train.py in order (tests only); a spend cap once they are done."""

    name = "scripted"

    def __init__(self, *edits):
        self.edits = list(edits)

    def propose(self, ctx):
        if not self.edits:
            raise SpendCapReached("the script has no more proposals")
        hypothesis, edit = self.edits.pop(0)
        script = ctx.files[ctx.script_path]
        new = edit(script)
        before = {k.name: k.value for k in find_knobs(script)}
        knobs = [KnobChange(name=k.name, old=before[k.name], new=k.value) for k in find_knobs(new)
                 if k.name in before and before[k.name] != k.value]
        return Proposal(proposer=self.name, hypothesis=hypothesis, rationale=f"scripted: {hypothesis}",
                        files={ctx.script_path: new}, knobs=knobs)


def after_knobs(code: str):
    def edit(s: str) -> str:
        lines = s.splitlines(keepends=True)
        last = find_knobs(s)[-1].line
        return "".join(lines[:last] + [code + "\n"] + lines[last:])
    return edit


class Workflow:
    """arbot-evaluate.yml on a dispatch, played from the file: its `run:` steps as written (bash -eo pipefail, the
    job's env with the inputs), the `uses:` steps done the way those actions do them."""

    def __init__(self, fake: FakeGitHub, url: str, work: Path):
        self.fake, self.url, self.work = fake, url, work
        self.jobs = yaml.safe_load(EVALUATE.read_text())["jobs"]
        self.played: list[dict] = []  # {dispatch, result (the train job's JSON), check (the posted check run)}
        self.errors: list[BaseException] = []

    def __call__(self, dispatch: dict) -> None:
        try:
            self._play(dispatch)
        except BaseException as e:  # noqa: BLE001 - the test waits on the bot; it must hear of this at once
            self.errors.append(e)
            raise

    @staticmethod
    def _env(job: dict, inputs: dict, **extra: str) -> dict:
        env = {k: str(v).replace("${{ inputs.", "").replace(" }}", "") for k, v in job["env"].items()}
        env = {k: inputs[v] for k, v in env.items()}  # each value is `${{ inputs.NAME }}`: asserted in test_workflows
        path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # python3: the test's, stdlib only is used
        return {**os.environ, "PATH": path, "GITHUB_SERVER_URL": RUN_URL, "GITHUB_REPOSITORY": REPO, **env, **extra}

    @staticmethod
    def _run(step: dict, cwd: Path, env: dict) -> subprocess.CompletedProcess:
        r = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"step {step['name']!r} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        return r

    def _notes(self, dest: Path) -> None:
        """actions/checkout of refs/notes/arbot (continue-on-error: absent before the first note)."""
        dest.mkdir(parents=True)
        if self.fake.git("rev-parse", "--verify", "-q", "refs/notes/arbot", check=False).returncode == 0:
            archive = subprocess.run(["git", "--git-dir", str(self.fake.bare), "archive", "--format=tar",
                                      "refs/notes/arbot"], capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)

    def _play(self, dispatch: dict) -> None:
        inputs = dispatch["inputs"]
        job = self.work / f"run-{dispatch['id']}"
        # --- train: a checkout of the default branch (the dispatch's ref) with every branch's history ---------------
        train = self.jobs["train"]
        checkout = job / "train"
        subprocess.run(["git", "clone", "-q", "--branch", dispatch["head_branch"], str(self.fake.bare), str(checkout)],
                       check=True)
        if inputs["pull"]:  # "Fetch the adopted pull request's head": actions/checkout of refs/pull/<n>/head
            pull = checkout / ".arbot-pull"
            subprocess.run(["git", "clone", "-q", "--no-checkout", str(self.fake.bare), str(pull)], check=True)
            subprocess.run(["git", "-C", str(pull), "fetch", "-q", "origin", f"+refs/pull/{inputs['pull']}/head:refs/pr"],
                           check=True)
            subprocess.run(["git", "-C", str(pull), "checkout", "-q", "--detach", "refs/pr"], check=True)
        # "Install arbot (ARBOT_PACKAGE)": this project's venv stands in for the installed arbot
        (checkout / ".venv").symlink_to(VENV)
        env = self._env(train, inputs)
        for step in train["steps"]:
            if "run" in step and not step["name"].startswith("Install"):
                self._run(step, checkout, env)
        # "Upload the result": the arbot-result artifact of this run (what the bot reads)
        self.fake.add_artifact(dispatch["id"], "arbot-result", {
            name: (checkout / name).read_bytes() for name in ("result.json", "evaluate.log") if (checkout / name).exists()})
        # --- report: the installed arbot's report module, the notes and the artifact as data ----------------------
        report = self.jobs["report"]
        work = job / "report"
        work.mkdir()
        (work / ".venv").symlink_to(VENV)  # "Install arbot's report script": this project's venv stands in
        self._notes(work / ".arbot-notes")
        (work / "artifact").mkdir()
        for name in ("result.json", "evaluate.log"):
            if (checkout / name).exists():
                shutil.copy(checkout / name, work / "artifact" / name)
        env = self._env(report, inputs, GITHUB_RUN_ID=str(dispatch["id"]), GITHUB_STEP_SUMMARY=str(job / "summary.md"))
        render = next(s for s in report["steps"] if s.get("name", "").startswith("Render"))
        self._run(render, work, env)
        check = json.loads((work / "check-run.json").read_text())
        # "Post the check run": gh api ... --input check-run.json, with the job's token (the github-actions app)
        httpx.post(f"{self.url}/api/v3/repos/{REPO}/check-runs", json=check,
                   headers={"Authorization": f"token {ACTIONS_TOKEN}"}).raise_for_status()
        self.fake.complete_run(dispatch["id"], "success")  # the workflow_run webhook
        result = json.loads((checkout / "result.json").read_text())
        self.played.append({"dispatch": dispatch, "result": result, "check": check})


def wait_for(condition, what: str, workflow: Workflow, timeout: float = 900.0):
    deadline = time.monotonic() + timeout
    while True:
        if workflow.errors:
            raise AssertionError(f"the evaluate workflow failed while waiting for {what}") from workflow.errors[0]
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, (
            f"timed out waiting for {what}; {len(workflow.played)} of {len(workflow.fake.dispatches)} dispatched runs "
            f"played: {[p['dispatch']['inputs']['request'] for p in workflow.played]}")
        time.sleep(0.1)


def verdict(fake: FakeGitHub, sha: str) -> str | None:
    states = [s["state"] for s in fake.statuses if s["sha"] == sha and s["context"] == "arbot/verdict"]
    return states[-1] if states else None


def results_comment(fake: FakeGitHub, number: int) -> str:
    bodies = [c["body"] for c in fake.comments.values() if c["issue"] == number and "<!-- arbot:results -->" in c["body"]]
    assert len(bodies) <= 1
    return bodies[0] if bodies else ""


def slow_research_on_github(tmp_path: Path, cfg: dict) -> tuple[git.Repo, FakeGitHub]:
    """A fresh repository whose champion learns far too slowly, with the evaluate workflow, and the fake GitHub to push
    it to (octo-org/research)."""
    research = make_repo(tmp_path / "research", cfg, script_edit=lambda s: set_knobs(s, {"LEARNING_RATE": 1e-6}))
    (tmp_path / "research" / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(EVALUATE, tmp_path / "research" / ".github" / "workflows")
    research.git.add(A=True)
    research.index.commit("the evaluate workflow")
    return research, FakeGitHub(tmp_path / "remote", owner="octo-org", name="research", token=TOKEN)


@pytest.mark.slow
def test_github_mode_end_to_end(tmp_path, monkeypatch):
    import bot.github.forge as forge_module
    from typer.testing import CliRunner

    from bot.cli import app as cli

    # A fresh repository: a champion that learns far too slowly, with the evaluate workflow, pushed to the fake GitHub.
    # the default policy; a holdout gap this wide is never exceeded by chance at this size (its rule: test_lifecycle)
    cfg = tiny_config(target={"holdout_max_gap": 0.5}, github={"repo": REPO, "max_in_flight": 2, "experiments_per_day": 2})
    del cfg["policy"]
    research, fake = slow_research_on_github(tmp_path, cfg)
    fake.tokens[ACTIONS_TOKEN] = "github-actions[bot]"
    research.git.push(str(fake.bare), "main:refs/heads/main")
    start = research.head.commit.hexsha
    store = Store(tmp_path / "bot" / "server.sqlite")
    real_connect = forge_module.connect
    workflow = None
    try:
        with serving(fake.asgi) as url:
            # --- arbot setup -----------------------------------------------------------------------------
            config_file = tmp_path / "arbot-github.yml"
            full = {**cfg, "github": {**cfg["github"], "base_url": f"{url}/api/v3"}}
            config_file.write_text(yaml.safe_dump(full))
            monkeypatch.setenv("ARBOT_GITHUB_TOKEN", TOKEN)
            monkeypatch.setattr(forge_module, "connect",
                                lambda c, **kw: real_connect(c, git_url=str(fake.bare), **kw, **FAST))
            result = CliRunner().invoke(cli, ["setup", "--repo", str(research.working_tree_dir), "--config", str(config_file)])
            assert result.exit_code == 0, result.output
            assert f"created branch champion at {start[:12]}" in result.output and "protected champion" in result.output
            rules = fake.protection["champion"]  # a PAT: the verdict's source cannot be pinned (docs/github.md)
            assert rules["checks"] == [{"context": "arbot/verdict", "app_id": None}] and rules["strict"]
            assert rules["reviews"]["require_code_owner_reviews"] and fake.allow_auto_merge

            # --- the bot: webhook server + dispatcher + driver; the workflow plays each dispatch ---------------------
            workflow = Workflow(fake, url, tmp_path / "runner")
            fake.on_dispatch = workflow
            config = Config.model_validate(full)
            proposer = EditProposer(
                ("learning rate 3e-3", lambda s: set_knobs(s, {"LEARNING_RATE": 3e-3})),
                ("scale the learning rate by 30", after_knobs("LEARNING_RATE = LEARNING_RATE * 30")),
            )
            settings = ServerSettings(secret=SECRET, state_path=store.path, repo=REPO, experiments_per_day=2)
            driver = Driver(forge_for(url, fake), mirror(tmp_path / "bot" / "github.git"), config, proposer,
                            make_policy(config.policy), budget=Budget(store, experiments_per_day=2),
                            paused=lambda: store.flag(PAUSED_FLAG) == "1")
            bot = create_app(settings, Dispatcher(store, repo=REPO, driver=driver), store, on_start=driver.advance_all)
            with serving(bot) as bot_url:
                fake.hooks.url, fake.hooks.secret = f"{bot_url}/webhook", SECRET
                health = lambda: httpx.get(f"{bot_url}/healthz").json()  # noqa: E731
                # At start the bot rebuilds its state from GitHub (nothing yet) and opens max_in_flight experiments;
                # the lifecycle asks for the champion's noise floor first.
                wait_for(lambda: len(fake.prs) == 2, "two experiment PRs", workflow)
                pr1, pr2 = fake.prs[1], fake.prs[2]
                assert pr1.title == "learning rate 3e-3" and pr1.labels == ["arbot"] and pr1.base == "champion"
                assert "Experiment: exp-1" in pr1.body and start in pr1.body and "| `LEARNING_RATE` |" in pr1.body
                assert pr2.head == "arbot/exp-2" and fake.ref("arbot/exp-2") != fake.ref("arbot/exp-1")
                head1, head2 = fake.head_sha(pr1), fake.head_sha(pr2)
                wait_for(lambda: fake.dispatches, "the champion's run dispatched", workflow)
                # a champion's val runs are scored on holdout too: their gaps are the references a win is held to
                assert fake.dispatches[0]["inputs"] == {"request": f"champion:{start[:12]}:seed-0:val+holdout",
                                                        "commit": start, "champion": start, "seed": "0",
                                                        "splits": "val,holdout",
                                                        "champion_overhead": "", "champion_score_seconds": "", "pull": ""}
                assert fake.dispatches[0]["ref"] == "refs/heads/main"
                wait_for(lambda: health()["budget"]["experiments_today"] == 2, "both experiments counted", workflow)

                # --- PR 1: the champion measured, then the candidate: a win, merged through branch protection ----------
                wait_for(lambda: fake.prs[1].merged, "PR 1 merged", workflow)
                assert verdict(fake, head1) == "success"
                champion = fake.ref("champion")
                assert champion == fake.prs[1].merge_commit_sha and fake.is_ancestor(start, champion)
                message = fake.message(champion)
                assert message.startswith("arbot: learning rate 3e-3 (exp-1) (#1)")
                for trailer in ("Experiment: exp-1", "Metric: val_bpb=", "Baseline: val_bpb=", "Delta: -", "Rule: confirm",
                                "Proposer: scripted", "Evaluator: ", "Seeds: 0", "PR: #1"):
                    assert f"\n{trailer}" in message, message
                assert "Evaluator: unknown" not in message  # the fingerprint of the real evaluator
                comment1 = wait_for(lambda: results_comment(fake, 1), "PR 1 results comment", workflow)
                assert "**win (confirm" in comment1 and "xychart-beta" in comment1 and '"start", "exp-1"' in comment1

                # --- PR 2 was measured on the old champion: closed as stale, its change opened again as PR 3 ------------
                wait_for(lambda: 3 in fake.prs and fake.prs[2].state == "closed", "PR 2 closed, PR 3 opened", workflow)
                assert not fake.prs[2].merged and fake.prs[2].labels == ["arbot", "arbot:crash"]
                assert "**rejected (stale)**" in results_comment(fake, 2) and "measured again as exp-3" in results_comment(fake, 2)
                assert verdict(fake, head2) == "failure" and fake.ref("arbot/exp-2") == head2  # kept, never updated
                pr3 = fake.prs[3]
                head3 = fake.head_sha(pr3)
                assert pr3.title == "scale the learning rate by 30" and pr3.head == "arbot/exp-3"
                assert fake.git("rev-parse", f"{head3}^").stdout.strip() == champion  # on the new champion
                note = json.loads(fake.git("notes", "--ref=arbot", "show", champion).stdout)
                assert note["kind"] == "champion" and note["experiment"] == "exp-1"
                assert {r["commit"] for r in note["runs"]} == {head1}  # the win's runs measure the new champion
                start_note = json.loads(fake.git("notes", "--ref=arbot", "show", start).stdout)
                assert {0, 1, 2} <= {r["seed"] for r in start_note["runs"] if r["seed"] < HOLDOUT_SEEDS}  # 3 baseline runs
                assert {r["commit"] for r in start_note["runs"]} == {start}

                # --- PR 3: measured on the new champion (whose measurement it already has): a loss, closed -------------
                wait_for(lambda: fake.prs[3].state == "closed", "PR 3 closed", workflow)
                assert verdict(fake, head3) == "failure" and not fake.prs[3].merged
                assert fake.prs[3].labels == ["arbot", "arbot:loss"]
                comment3 = results_comment(fake, 3)
                assert "### exp-3: **loss" in comment3 and "xychart-beta" in comment3
                assert fake.ref("arbot/exp-3") == head3 and fake.ref("champion") == champion

                # --- the daily cap (2 experiments; a replay is no new proposal) stops proposing; the bot goes idle -----
                wait_for(lambda: len(workflow.played) == len(fake.dispatches), "every dispatched run played", workflow)
                fake.flush_dispatches()
                fake.hooks.flush()
                wait_for(lambda: health()["queue"] == 0, "the bot to go idle", workflow)
                state = health()
                assert state["deliveries"]["failed"] == 0, state
                assert state["budget"]["experiments_today"] == 2 and state["budget"]["exhausted"]
                assert state["budget"]["runner_minutes_today"] > 0
                assert len(fake.prs) == 3
    finally:
        fake.close()
        store.close()
    assert fake.all_violations == [], fake.all_violations
    # every run was one dispatch on the default branch, each request once, each answered by its own workflow run
    requests = [d["inputs"]["request"] for d in fake.dispatches]
    assert len(requests) == len(set(requests)) and {d["head_branch"] for d in fake.dispatches} == {"main"}
    assert requests[0] == f"champion:{start[:12]}:seed-0:val+holdout"  # scored on holdout too
    by_role = lambda role: [r for r in requests if r.startswith(f"{role}:")]  # noqa: E731
    assert len(by_role("exp-1")) >= 2 and by_role("exp-2") and by_role("exp-3")  # a win takes more than one seed
    assert any(r.endswith(":val+holdout") for r in by_role("exp-1"))  # its holdout confirmation: a dispatch too
    exp3_inputs = [d["inputs"] for d in fake.dispatches if d["inputs"]["request"].startswith("exp-3:")]
    assert [i["champion"] for i in exp3_inputs] == [champion] * len(by_role("exp-3"))
    # its champion's measured times go with each candidate run: the runner holds it to them (docs/security.md)
    assert all(float(i["champion_overhead"]) >= 0 and float(i["champion_score_seconds"]) > 0 for i in exp3_inputs)
    assert {r["id"]: r["status"] for r in fake.runs.values()} == {d["id"]: "completed" for d in fake.dispatches}
    for played in workflow.played:
        run, check, inputs = played["result"], played["check"], played["dispatch"]["inputs"]
        assert run["status"] == "ok" and run["commit"] == inputs["commit"] and run["seed"] == int(inputs["seed"]), run
        assert run["steps"] > 0 and run["evaluator_fingerprint"] and ",".join(run["splits"]) == inputs["splits"]
        assert check["external_id"] == inputs["request"]
        assert check["details_url"] == f"{RUN_URL}/{REPO}/actions/runs/{played['dispatch']['id']}"
    evaluate = [r for r in fake.check_runs if r["name"] == "arbot/evaluate"]
    assert sorted(r["external_id"] for r in evaluate) == sorted(requests)
    assert {r["creator"] for r in evaluate} == {"github-actions[bot]"}
    # the baseline column of a candidate's check run is its champion's note, read by report.py in the report job
    first = next(p for p in workflow.played if p["dispatch"]["inputs"]["request"].startswith("exp-1:"))
    assert " runs)" in first["check"]["output"]["summary"]
    # every experiment is a record in the notes on GitHub
    notes = [json.loads(fake.git("notes", "--ref=arbot", "show", line.split()[1]).stdout)
             for line in fake.git("notes", "--ref=arbot", "list").stdout.splitlines()]
    records = {n["id"]: n for n in notes if n.get("kind") == "experiment"}
    assert sorted(records) == ["exp-1", "exp-2", "exp-3"]
    assert records["exp-1"]["decision"]["rule"].startswith("confirm") and records["exp-1"]["pending"] == []
    assert records["exp-2"]["decision"]["rule"] == "stale" and records["exp-2"]["pending"] == []
    exp3 = records["exp-3"]
    assert exp3["decision"]["verdict"] == "loss" and RunResult.model_validate(exp3["runs"][0]).commit == head3

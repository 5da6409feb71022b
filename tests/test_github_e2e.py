"""GitHub mode end to end: `arbot setup` on a fresh repository, then the bot (webhook server + driver) against the
fake GitHub (real HTTP, a real bare repository, signed webhooks, every call checked against GitHub's contract).

The test plays the evaluate workflow, the way arbot-evaluate.yml does it: the `train` job runs the real
`arbot evaluate` on a tiny model in a clone at the champion (and the champion too at a seed its note lacks),
the `report` job runs report.py and posts the check run with the Actions token.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from bot.config import Config
from bot.github.driver import Driver, mirror
from bot.knobs import find_knobs, set_knobs
from bot.policy import make_policy
from bot.records import KnobChange, Proposal, RunResult
from bot.server.app import PAUSED_FLAG, ServerSettings, create_app
from bot.server.dispatch import Dispatcher
from bot.server.store import Budget, Store
from tests.conftest import make_repo, tiny_config
from tests.fake_github.server import FakeGitHub
from tests.fake_github.serving import serving
from tests.test_github_forge import FAST, REPO, TOKEN, forge_for

ROOT = Path(__file__).resolve().parent.parent
ARBOT = Path(sys.executable).parent / "arbot"
ACTIONS_TOKEN = "ghs_actions"
SECRET = "e2e-secret"


class ScriptedProposer:
    """Proposes the given edits of target/train.py in order (tests only)."""

    name = "scripted"

    def __init__(self, *edits):
        self.edits = list(edits)

    def propose(self, ctx):
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


def wait_for(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Workflow:
    """arbot-evaluate.yml, played: the train job (real `arbot evaluate`) and the report job (report.py)."""

    def __init__(self, fake: FakeGitHub, url: str, work: Path):
        self.fake, self.url, self.work = fake, url, work
        self.runs = 0

    def _notes(self, dest: Path) -> Path:
        """actions/checkout of refs/notes/arbot (absent before the first note)."""
        dest.mkdir(parents=True, exist_ok=True)
        if self.fake.git("rev-parse", "--verify", "-q", "refs/notes/arbot", check=False).returncode == 0:
            archive = subprocess.run(["git", "--git-dir", str(self.fake.bare), "archive", "--format=tar",
                                      "refs/notes/arbot"], capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return dest

    def _evaluate(self, clone: Path, commit: str, champion: str, seed: int) -> dict:
        r = subprocess.run([str(ARBOT), "evaluate", commit, "--champion", champion, "--seed", str(seed), "--json",
                            "--repo", str(clone)], capture_output=True, text=True, timeout=300)
        assert r.stdout.strip(), r.stderr[-3000:]
        return json.loads(r.stdout)

    def train(self, head: str, base: str, seed: int = 0) -> Path:
        """The train job: a clone at the champion; the head and, when its note lacks the seed, the champion."""
        self.runs += 1
        job = self.work / f"job-{self.runs}"
        clone = job / "checkout"
        subprocess.run(["git", "clone", "-q", str(self.fake.bare), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "-q", "--detach", base], check=True)
        notes = self._notes(job / ".arbot-notes")
        needs = subprocess.run([sys.executable, str(ROOT / "bot/github/report.py"), "needs-champion-run", "--notes",
                                str(notes), "--champion-sha", base, "--seed", str(seed)], capture_output=True).returncode == 0
        jobs = [(head, base)] + ([(base, base)] if needs else [])
        with ThreadPoolExecutor(len(jobs)) as pool:
            results = list(pool.map(lambda j: self._evaluate(clone, j[0], j[1], seed), jobs))
        (job / "result.json").write_text(json.dumps(results if needs else results[0]))
        return job

    def report(self, job: Path, head: str, base: str, run_id: int) -> dict:
        """The report job: report.py from the champion's checkout, then POST the check run as github-actions."""
        notes = self._notes(job / "report-notes")
        out = job / "check-run.json"
        subprocess.run([sys.executable, "-I", str(ROOT / "bot/github/report.py"), "--result", str(job / "result.json"),
                        "--head-sha", head, "--champion-sha", base, "--notes", str(notes), "--details-url",
                        f"http://github.test/{REPO}/actions/runs/{run_id}", "--out", str(out)], check=True)
        check = json.loads(out.read_text())
        r = httpx.post(f"{self.url}/api/v3/repos/{REPO}/check-runs", json=check,
                       headers={"Authorization": f"token {ACTIONS_TOKEN}"})
        r.raise_for_status()
        return check


def verdict(fake: FakeGitHub, sha: str) -> str | None:
    states = [s["state"] for s in fake.statuses if s["sha"] == sha and s["context"] == "arbot/verdict"]
    return states[-1] if states else None


def results_comment(fake: FakeGitHub, number: int) -> str:
    bodies = [c["body"] for c in fake.comments.values() if c["issue"] == number and "<!-- arbot:results -->" in c["body"]]
    assert len(bodies) <= 1
    return bodies[0] if bodies else ""


@pytest.mark.slow
def test_github_mode_end_to_end(tmp_path, monkeypatch):
    import bot.github.forge as forge_module
    from typer.testing import CliRunner

    from bot.cli import app as cli

    # A fresh repository: a champion that learns far too slowly, on main, pushed to the fake GitHub.
    cfg = tiny_config(target={"holdout_max_gap": None}, github={"repo": REPO, "max_in_flight": 2})
    research = make_repo(tmp_path / "research", cfg, script_edit=lambda s: set_knobs(s, {"LEARNING_RATE": 1e-6}))
    fake = FakeGitHub(tmp_path / "remote", owner="octo-org", name="research", token=TOKEN)
    fake.tokens[ACTIONS_TOKEN] = "github-actions[bot]"
    research.git.push(str(fake.bare), "main:refs/heads/main")
    start = research.head.commit.hexsha
    store = Store(tmp_path / "bot" / "server.sqlite")
    real_connect = forge_module.connect
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
            assert fake.protection["champion"] == {"strict": True, "contexts": ["arbot/verdict"], "enforce_admins": False}

            # --- the bot: webhook server + driver ----------------------------------------------------------
            config = Config.model_validate(full)
            forge = forge_for(url, fake)
            proposer = ScriptedProposer(
                ("learning rate 3e-3", lambda s: set_knobs(s, {"LEARNING_RATE": 3e-3})),
                ("scale the learning rate by 30", after_knobs("LEARNING_RATE = LEARNING_RATE * 30")),
                ("weight decay 0.05", lambda s: set_knobs(s, {"WEIGHT_DECAY": 0.05})),
                ("gradient clip 0.5", lambda s: set_knobs(s, {"GRAD_CLIP": 0.5})),
            )
            settings = ServerSettings(secret=SECRET, state_path=store.path, repo=REPO, experiments_per_day=10)
            driver = Driver(forge, mirror(tmp_path / "bot" / "github.git"), config, proposer, make_policy(config.policy),
                            budget=Budget(store, experiments_per_day=10),
                            paused=lambda: store.flag(PAUSED_FLAG) == "1")
            bot = create_app(settings, Dispatcher(store, repo=REPO, driver=driver), store, on_start=driver.recover)
            with serving(bot) as bot_url:
                fake.hooks.url, fake.hooks.secret = f"{bot_url}/webhook", SECRET
                # At start the bot rebuilds its state from GitHub and opens max_in_flight experiments.
                wait_for(lambda: len(fake.prs) == 2, "two experiment PRs")
                pr1, pr2 = fake.prs[1], fake.prs[2]
                assert pr1.title == "learning rate 3e-3" and pr1.labels == ["arbot"] and pr1.base == "champion"
                assert "Experiment: exp-1" in pr1.body and start in pr1.body and "| `LEARNING_RATE` |" in pr1.body
                assert pr2.head == "arbot/exp-2" and fake.ref("arbot/exp-2") != fake.ref("arbot/exp-1")
                head1, old_head2 = fake.head_sha(pr1), fake.head_sha(pr2)
                wait_for(lambda: httpx.get(f"{bot_url}/healthz").json()["budget"]["experiments_today"] == 2,
                         "both experiments counted in the budget")  # counted right after the PR is opened

                # --- PR 1: evaluated (the champion too: it has no measurement yet), a win, merged ------------
                workflow = Workflow(fake, url, tmp_path / "runner")
                job1 = workflow.train(head1, start)
                runs1 = json.loads((job1 / "result.json").read_text())
                assert [r["commit"] for r in runs1] == [head1, start]  # the champion measured at seed 0
                check1 = workflow.report(job1, head1, start, run_id=1)
                assert check1["conclusion"] == "success", check1["output"]
                wait_for(lambda: fake.prs[1].merged, "PR 1 merged")
                assert verdict(fake, head1) == "success"
                champion = fake.ref("champion")
                assert champion == fake.prs[1].merge_commit_sha and fake.is_ancestor(start, champion)
                message = fake.message(champion)
                assert message.startswith("arbot: learning rate 3e-3 (exp-1) (#1)")
                for trailer in ("Experiment: exp-1", "Metric: val_bpb=", "Baseline: val_bpb=", "Delta: -", "Proposer: scripted",
                                "Evaluator: ", "Seeds: 0", "PR: #1"):
                    assert f"\n{trailer}" in message, message
                comment1 = wait_for(lambda: results_comment(fake, 1), "PR 1 results comment")
                assert "**win**" in comment1 and "xychart-beta" in comment1 and '"start", "exp-1"' in comment1

                # The merge: PR 2 was measured on nothing yet and is now stale: brought up to date, the next
                # experiment is opened, the new champion's measurement is its win's runs (a note on GitHub).
                wait_for(lambda: fake.head_sha(fake.prs[2]) != old_head2, "PR 2 brought up to date")
                new_head2 = fake.head_sha(fake.prs[2])
                assert fake.is_ancestor(champion, new_head2) and fake.prs[2].state == "open"
                wait_for(lambda: 3 in fake.prs, "the next experiment (PR 3)")
                assert fake.prs[3].title == "weight decay 0.05" and fake.prs[3].state == "open"
                note = json.loads(fake.git("notes", "--ref=arbot", "show", champion).stdout)
                assert note["kind"] == "champion" and note["experiment"] == "exp-1"
                assert [r["commit"] for r in note["runs"]] == [head1]
                start_note = json.loads(fake.git("notes", "--ref=arbot", "show", start).stdout)
                assert [(r["commit"], r["seed"]) for r in start_note["runs"]] == [(start, 0)]

                # --- PR 2: a late result for its old head (measured on the old champion) is never decided;
                # the updated head is evaluated again, on the new champion, before anything can merge --------
                assert verdict(fake, new_head2) is None
                with ThreadPoolExecutor(2) as pool:
                    late, fresh = pool.map(lambda a: workflow.train(*a), [(old_head2, start), (new_head2, champion)])
                assert json.loads((fresh / "result.json").read_text())["commit"] == new_head2  # champion measured
                old_bpb = json.loads((late / "result.json").read_text())["metrics"]["val_bpb"]
                assert old_bpb < start_note["runs"][0]["metrics"]["val_bpb"]  # it would have won on the old champion
                workflow.report(late, old_head2, start, run_id=2)
                fake.hooks.flush()
                wait_for(lambda: httpx.get(f"{bot_url}/healthz").json()["queue"] == 0, "the late result handled")
                assert verdict(fake, old_head2) is None and fake.prs[2].state == "open"
                workflow.report(fresh, new_head2, champion, run_id=3)
                wait_for(lambda: fake.prs[2].state == "closed", "PR 2 closed")
                assert verdict(fake, new_head2) == "failure" and not fake.prs[2].merged
                assert fake.prs[2].labels == ["arbot", "arbot:loss"]
                comment2 = results_comment(fake, 2)
                assert "### exp-2: **loss**" in comment2 and "xychart-beta" in comment2
                assert fake.ref("arbot/exp-2") == new_head2  # the branch is kept
                assert fake.ref("champion") == champion

                # --- keep going: the next experiment is opened, max_in_flight stays 2 --------------------------
                wait_for(lambda: 4 in fake.prs, "the next experiment (PR 4)")
                assert sorted(n for n, p in fake.prs.items() if p.state == "open") == [3, 4]
                fake.hooks.flush()
                wait_for(lambda: httpx.get(f"{bot_url}/healthz").json()["queue"] == 0, "the bot to go idle")
                health = httpx.get(f"{bot_url}/healthz").json()
                assert health["deliveries"]["failed"] == 0, health
                assert health["budget"]["experiments_today"] == 4 and health["budget"]["runner_minutes_today"] > 0
    finally:
        fake.hooks.close()
        store.close()
    assert fake.all_violations == [], fake.all_violations
    # every experiment is a record in the notes on GitHub
    records = {json.loads(fake.git("notes", "--ref=arbot", "show", sha).stdout).get("id")
               for sha in [line.split()[1] for line in fake.git("notes", "--ref=arbot", "list").stdout.splitlines()]}
    assert {"exp-1", "exp-2", "exp-3", "exp-4"} <= records
    exp2 = next(json.loads(fake.git("notes", "--ref=arbot", "show", line.split()[1]).stdout)
                for line in fake.git("notes", "--ref=arbot", "list").stdout.splitlines()
                if json.loads(fake.git("notes", "--ref=arbot", "show", line.split()[1]).stdout).get("id") == "exp-2")
    assert exp2["decision"]["verdict"] == "loss" and RunResult.model_validate(exp2["runs"][0]).commit == new_head2

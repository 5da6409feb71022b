"""GitHub mode end to end on examples/digits, the target whose metric (accuracy) is maximized: `arbot setup`, then
the bot (webhook server, dispatcher, driver) against the fake GitHub, each dispatched run played from
arbot-evaluate.yml with real training and the example's own evaluator (tests/test_github_e2e.py's helpers).

Kept cheap (a few dispatches, 1 s runs): the margin rule with one champion run and no holdout confirmation (the
default noise_aware rule and the holdout run on this target: tests/test_example_digits.py; the dispatch flow in
full: tests/test_github_e2e.py). One experiment at a time, two a day: the first raises val_accuracy and is merged
through branch protection with its trailers; the second, measured on the new champion, lowers it and is closed.
"""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
import yaml

from bot.config import Config
from bot.server.driver import Driver
from bot.surfaces.github import mirror
from bot.knobs import set_knobs
from bot.core.policy import make_policy
from bot.core.records import Decision
from bot.server.app import PAUSED_FLAG, ServerSettings, create_app
from bot.server.dispatch import Dispatcher
from bot.server.store import Budget, Store
from tests.fake_github.server import FakeGitHub
from tests.fake_github.serving import serving
from tests.scripted import ACTIONS_TOKEN
from tests.test_example_digits import SEED_LR, example_repo, metric_value
from tests.test_github_e2e import EVALUATE, SECRET, EditProposer, Workflow, results_comment, verdict, wait_for
from tests.test_github_forge import FAST, REPO, TOKEN, forge_for


@pytest.mark.slow
def test_github_mode_merges_a_higher_accuracy_and_closes_a_lower_one(tmp_path, monkeypatch):
    import bot.github.forge as forge_module
    from typer.testing import CliRunner

    from bot.cli import app as cli

    # the example as a user copies it, with the evaluate workflow, and a champion that barely learns
    github = {"repo": REPO, "max_in_flight": 1, "experiments_per_day": 2}
    research = example_repo(tmp_path / "research", SEED_LR, target={"budget_seconds": 1, "holdout_max_gap": None},
                            policy={"rule": "margin", "margin": 0.05, "baseline_runs": 1}, github=github)
    (tmp_path / "research" / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(EVALUATE, tmp_path / "research" / ".github" / "workflows")
    research.git.add(A=True)
    research.index.commit("the evaluate workflow")
    cfg = yaml.safe_load((tmp_path / "research" / "arbot.yml").read_text())
    fake = FakeGitHub(tmp_path / "remote", owner="octo-org", name="research", token=TOKEN)
    fake.tokens[ACTIONS_TOKEN] = "github-actions[bot]"
    research.git.push(str(fake.bare), "main:refs/heads/main")
    start = research.head.commit.hexsha
    store = Store(tmp_path / "bot" / "server.sqlite")
    real_connect = forge_module.connect
    try:
        with serving(fake.asgi) as url:
            config_file = tmp_path / "arbot-github.yml"
            full = {**cfg, "github": {**github, "base_url": f"{url}/api/v3"}}
            config_file.write_text(yaml.safe_dump(full))
            monkeypatch.setenv("ARBOT_GITHUB_TOKEN", TOKEN)
            monkeypatch.setattr(forge_module, "connect",
                                lambda c, **kw: real_connect(c, git_url=str(fake.bare), **kw, **FAST))
            setup = CliRunner().invoke(cli, ["setup", "--repo", str(research.working_tree_dir), "--config", str(config_file)])
            assert setup.exit_code == 0, setup.output

            workflow = Workflow(fake, url, tmp_path / "runner")
            fake.on_dispatch = workflow
            config = Config.model_validate(full)
            proposer = EditProposer(
                ("Raise LEARNING_RATE to 3e-3", lambda s: set_knobs(s, {"LEARNING_RATE": 3e-3})),
                ("Lower LEARNING_RATE to 1e-6", lambda s: set_knobs(s, {"LEARNING_RATE": 1e-6})),
            )
            settings = ServerSettings(secret=SECRET, state_path=store.path, repo=REPO, experiments_per_day=2)
            driver = Driver(forge_for(url, fake), mirror(tmp_path / "bot" / "github.git"), config, proposer,
                            make_policy(config.policy), budget=Budget(store, experiments_per_day=2),
                            paused=lambda: store.flag(PAUSED_FLAG) == "1")
            bot = create_app(settings, Dispatcher(store, repo=REPO, driver=driver), store, on_start=driver.advance_all)
            with serving(bot) as bot_url:
                fake.hooks.url, fake.hooks.secret = f"{bot_url}/webhook", SECRET
                health = lambda: httpx.get(f"{bot_url}/healthz").json()  # noqa: E731

                # --- PR 1: the champion's run, then the candidate's: accuracy up, merged with its trailers --------
                wait_for(lambda: 1 in fake.prs and fake.prs[1].merged, "PR 1 merged", workflow)
                head1 = fake.head_sha(fake.prs[1])
                assert verdict(fake, head1) == "success"
                champion = fake.ref("champion")
                assert champion == fake.prs[1].merge_commit_sha and fake.is_ancestor(start, champion)
                message = fake.message(champion)
                trailers = dict(line.split(": ", 1) for line in message.splitlines() if ": " in line)
                metric, baseline = metric_value(trailers["Metric"]), metric_value(trailers["Baseline"])
                assert trailers["Experiment"] == "exp-1" and trailers["PR"] == "#1" and trailers["Rule"] == "margin"
                assert metric > 0.8 and baseline < 0.5 and trailers["Delta"].startswith("+")
                assert float(trailers["Delta"]) == pytest.approx(metric - baseline, abs=2e-4)
                assert trailers["Evaluator"] != "unknown"
                comment1 = wait_for(lambda: results_comment(fake, 1), "PR 1 results comment", workflow)
                assert "**win (margin)**" in comment1 and "val_accuracy" in comment1 and "xychart-beta" in comment1

                # --- PR 2: opened on the new champion, accuracy down: a loss, closed with its label --------------
                wait_for(lambda: 2 in fake.prs and fake.prs[2].state == "closed", "PR 2 closed", workflow)
                pr2 = fake.prs[2]
                head2 = fake.head_sha(pr2)
                assert pr2.title == "Lower LEARNING_RATE to 1e-6" and not pr2.merged
                assert fake.git("rev-parse", f"{head2}^").stdout.strip() == champion
                assert verdict(fake, head2) == "failure" and pr2.labels == ["arbot", "arbot:loss"]
                comment2 = results_comment(fake, 2)
                assert "### exp-2: **loss" in comment2 and "val_accuracy" in comment2
                assert fake.ref("champion") == champion and fake.ref("arbot/exp-2") == head2

                # --- the daily cap (2) stops proposing; the bot goes idle ----------------------------------------
                wait_for(lambda: len(workflow.played) == len(fake.dispatches), "every dispatched run played", workflow)
                fake.flush_dispatches()
                fake.hooks.flush()
                wait_for(lambda: health()["queue"] == 0, "the bot to go idle", workflow)
                state = health()
                assert state["deliveries"]["failed"] == 0 and state["budget"]["exhausted"], state
                assert len(fake.prs) == 2
    finally:
        fake.close()
        store.close()
    assert fake.all_violations == [], fake.all_violations
    # one run per dispatch: the champion's, then one for each experiment (its run measures the next champion)
    requests = [d["inputs"]["request"] for d in fake.dispatches]
    assert [r.split(":")[0] for r in requests] == ["champion", "exp-1", "exp-2"]
    for played in workflow.played:
        run, check = played["result"], played["check"]
        assert run["status"] == "ok" and run["sandbox"] == "bwrap" and set(run["metrics"]) == {"val_accuracy"}, run
        assert "val_accuracy" in check["output"]["summary"] and "bpb" not in json.dumps(check)
    notes = [json.loads(fake.git("notes", "--ref=arbot", "show", line.split()[1]).stdout)
             for line in fake.git("notes", "--ref=arbot", "list").stdout.splitlines()]
    decisions = {n["id"]: Decision.model_validate(n["decision"]) for n in notes if n.get("kind") == "experiment"}
    assert decisions["exp-1"].verdict == "win" and decisions["exp-1"].delta > 0 < decisions["exp-1"].effect
    assert decisions["exp-2"].verdict == "loss" and decisions["exp-2"].delta < 0 > decisions["exp-2"].effect

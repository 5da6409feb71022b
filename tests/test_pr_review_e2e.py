"""Outside PRs evaluated end to end with real training: the bot's webhook server, dispatcher and driver against the
fake GitHub, each dispatch of arbot-evaluate.yml played from the workflow file itself (tests/test_github_e2e.py's
Workflow: the real `arbot evaluate` on the tiny model in a checkout of the default branch, the adopted PR's head
fetched by the workflow's own steps from refs/pull/<n>/head).

A person's PR from a branch of this repository, labelled by a maintainer: a win, merged by the bot with its trailers.
A fork's PR, approved by a maintainer's `/arbot evaluate`: a loss, commented and labelled, left open.
"""

from __future__ import annotations

import time

import httpx
import pytest

from bot.config import Config
from bot.core.policy import make_policy
from bot.knobs import set_knobs
from bot.server.app import ServerSettings, create_app
from bot.server.dispatch import Dispatcher
from bot.server.driver import Driver
from bot.server.store import Budget, Store
from bot.surfaces.github import mirror
from tests.conftest import tiny_config
from tests.fake_github.serving import serving
from tests.scripted import ACTIONS_TOKEN
from tests.test_github_driver import Proposer
from tests.test_github_e2e import Workflow, results_comment, slow_research_on_github, verdict, wait_for
from tests.test_github_forge import REPO, forge_for
from tests.test_pr_review import clone_as_someone

SECRET = "pr-e2e"
DEV, MAINTAINER, STRANGER = "dev", "maintainer", "stranger"


@pytest.mark.slow
def test_outside_prs_are_evaluated_with_real_training(tmp_path):
    cfg = tiny_config(target={"holdout_max_gap": None}, github={"repo": REPO})
    research, fake = slow_research_on_github(tmp_path, cfg)
    fake.tokens[ACTIONS_TOKEN] = "github-actions[bot]"
    for login in (DEV, MAINTAINER, STRANGER):
        fake.tokens[f"ghp_{login}"] = login
    fake.collaborators.update({DEV: "write", MAINTAINER: "maintain"})
    research.git.push(str(fake.bare), "main:refs/heads/main")
    store = Store(tmp_path / "state.sqlite")
    try:
        with serving(fake.asgi) as url:
            forge = forge_for(url, fake)
            start, _ = forge.ensure_champion()
            forge.ensure_labels()
            forge.protect_champion()
            config = Config.model_validate({**cfg, "github": {**cfg["github"], "base_url": f"{url}/api/v3"}})
            driver = Driver(forge, mirror(tmp_path / "bot.git"), config, Proposer(), make_policy(config.policy),
                            budget=Budget(store))
            workflow = Workflow(fake, url, tmp_path / "runner")
            fake.on_dispatch = workflow
            dispatcher = Dispatcher(store, repo=REPO, driver=driver, can_write=forge.has_write_access,
                                    bot_login="arbot-user")
            app = create_app(ServerSettings(secret=SECRET, state_path=store.path, repo=REPO), dispatcher, store,
                             on_start=driver.advance_all)
            work = clone_as_someone(fake, tmp_path / "work")

            def commit(lr: float) -> str:
                work.git.fetch("-q", "origin", "+refs/heads/champion:refs/remotes/origin/champion")
                work.git.checkout("-q", "--detach", "origin/champion")
                script = tmp_path / "work" / "target" / "train.py"
                script.write_text(set_knobs(script.read_text(), {"LEARNING_RATE": lr}))
                work.git.add(A=True)
                work.index.commit(f"learning rate {lr:g}")
                return work.head.commit.hexsha

            def as_user(user: str, method: str, path: str, body: dict) -> dict:
                r = httpx.request(method, f"{url}/api/v3/repos/{REPO}{path}", json=body,
                                  headers={"Authorization": f"token ghp_{user}"})
                r.raise_for_status()
                return r.json()

            with serving(app) as bot_url:
                fake.hooks.url, fake.hooks.secret = f"{bot_url}/webhook", SECRET
                health = lambda: httpx.get(f"{bot_url}/healthz").json()  # noqa: E731
                wait_for(lambda: fake.dispatches and all(r["status"] == "completed" for r in fake.runs.values()),
                         "the champion's noise floor", workflow)
                floor = len(fake.dispatches)

                # --- DEV's PR from a branch here, labelled by the maintainer: a win, merged with the trailers -------
                win = commit(3e-3)
                work.git.push("-q", "origin", f"{win}:refs/heads/dev/lr")
                n = as_user(DEV, "POST", "/pulls", {"title": "learning rate 3e-3", "head": "dev/lr", "base": "champion",
                                                    "body": "a faster learning rate"})["number"]
                time.sleep(1)
                fake.hooks.flush()
                assert len(fake.dispatches) == floor  # not labelled, author not listed: untouched
                as_user(MAINTAINER, "POST", f"/issues/{n}/labels", {"labels": ["arbot"]})
                wait_for(lambda: fake.prs[n].merged, "the adopted PR merged", workflow, timeout=600)
                assert verdict(fake, win) == "success"
                message = fake.message(fake.ref("champion"))
                for trailer in ("Experiment: exp-1", "Metric: val_bpb=", "Delta: -", "Proposer: pr", f"Author: {DEV}",
                                f"PR: #{n}", "Evaluator: "):
                    assert f"\n{trailer}" in message, message
                assert "Evaluator: unknown" not in message

                # --- STRANGER's fork PR: nothing runs until the maintainer's `/arbot evaluate`; a loss -------------
                worse = commit(1e-7)
                m = fake.next_pr_number()
                work.git.push("-q", "origin", f"{worse}:refs/pull/{m}/head")
                fake.open_fork_pr(STRANGER, "patch-1", worse, "learning rate 1e-7")
                as_user(STRANGER, "POST", f"/issues/{m}/comments", {"body": "/arbot evaluate"})  # no write access
                time.sleep(1)
                fake.hooks.flush()
                wait_for(lambda: health()["queue"] == 0, "the bot idle", workflow)
                assert not [d for d in fake.dispatches if d["inputs"]["commit"] == worse]
                as_user(MAINTAINER, "POST", f"/issues/{m}/comments", {"body": "/arbot evaluate"})
                wait_for(lambda: "arbot:loss" in fake.prs[m].labels, "the fork PR's loss", workflow, timeout=600)
                assert fake.prs[m].state == "open" and verdict(fake, worse) == "failure"
                assert "### exp-2: **loss" in results_comment(fake, m)
                runs = [p for p in workflow.played if p["dispatch"]["inputs"]["commit"] == worse]
                assert runs and all(p["dispatch"]["inputs"]["pull"] == str(m) and p["result"]["status"] == "ok"
                                    and p["result"]["commit"] == worse for p in runs)
                fake.flush_dispatches()
                fake.hooks.flush()
                wait_for(lambda: health()["queue"] == 0, "the bot idle", workflow)
                assert health()["deliveries"]["failed"] == 0
    finally:
        fake.close()
        store.close()
    assert fake.all_violations == [], fake.all_violations
    assert start != fake.ref("champion")

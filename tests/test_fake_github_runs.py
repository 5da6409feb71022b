"""The fake GitHub's workflow runs, artifacts, Actions check runs, auto-merge setting and app-pinned branch protection,
through the forge and PyGithub over real HTTP, refusals included, each call checked against GitHub's contract."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from github import GithubException

from bot.executors.github_actions import ARTIFACT_MAX_BYTES as MAX
from bot.github.forge import EVALUATE_WORKFLOW, GitHubForgeError, squash_message
from tests.fake_github.server import NOT_AUTHORIZED, FakeGitHub
from tests.fake_github.serving import serving
from tests.test_fake_github_dispatch import EVALUATE
from tests.test_github_forge import (APP_ID, INSTALLATION, REPO, TOKEN, add_evaluate_workflow, app_fake, app_forge_for,  # noqa: F401
                                     experiment, fake, forge_for, local)

ACTIONS, OTHER = "ghs_actions", "ghs_other"


def inputs(commit: str, seed: int = 0, request: str | None = None) -> dict[str, str]:
    return {"request": request or f"champion:{commit[:12]}:seed-{seed}:val", "commit": commit, "champion": commit,
            "seed": str(seed), "splits": "val"}


def runs(forge, workflow: str | int = EVALUATE_WORKFLOW, **query) -> dict:
    _, data = forge.gh.requester.requestJsonAndCheck("GET", f"{forge.repo.url}/actions/workflows/{workflow}/runs",
                                                     parameters=query or None)
    return data


def check_run(url: str, token: str, sha: str, name: str = "arbot/verdict", conclusion: str = "success", **extra):
    r = httpx.post(f"{url}/api/v3/repos/{REPO}/check-runs", headers={"Authorization": f"token {token}"},
                   json={"name": name, "head_sha": sha, "status": "completed", "conclusion": conclusion,
                         "output": {"title": "t", "summary": "s"}, **extra})
    r.raise_for_status()
    return r.json()


# --- workflow runs ------------------------------------------------------------------------------------------
def test_a_dispatch_creates_a_queued_workflow_run_the_test_completes(fake, local):
    add_evaluate_workflow(local, fake)
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        champion, _ = forge.ensure_champion()
        run_id = forge.dispatch(EVALUATE_WORKFLOW, "champion", inputs(champion))[0]
        [d] = fake.dispatches
        assert run_id == d["id"]
        run = forge.workflow_run(run_id)
        assert {k: run[k] for k in ("id", "name", "path", "event", "head_branch", "head_sha", "display_title", "status",
                                    "conclusion", "run_attempt", "run_number", "workflow_id")} == {
            "id": run_id, "name": "arbot-evaluate", "path": ".github/workflows/arbot-evaluate.yml",
            "event": "workflow_dispatch", "head_branch": "champion", "head_sha": champion,
            "display_title": f"arbot-evaluate champion:{champion[:12]}:seed-0:val",  # run-name, inputs substituted
            "status": "queued", "conclusion": None, "run_attempt": 1, "run_number": 1,
            "workflow_id": fake.workflow_id(EVALUATE_WORKFLOW)}
        assert run["actor"]["login"] == run["triggering_actor"]["login"] == "arbot-user"
        assert run["html_url"].endswith(f"/{REPO}/actions/runs/{run_id}") and run["head_commit"]["id"] == champion
        # PyGithub reads it too
        assert forge.repo.get_workflow_run(run_id).status == "queued"
        fake.start_run(run_id)
        assert forge.workflow_run(run_id)["status"] == "in_progress"
        fake.complete_run(run_id, "failure")
        done = forge.repo.get_workflow_run(run_id)
        assert (done.status, done.conclusion, done.head_sha) == ("completed", "failure", champion)
        assert forge.workflow_run(999_999) is None  # GitHub answers 404
        # conditional requests: the same answer again is a 304 Not Modified, which the forge answers from its copy
        assert forge.workflow_run(run_id) == forge.workflow_run(run_id)
        assert fake.not_modified == [f"/repos/{REPO}/actions/runs/{run_id}"]
        fake.start_run(run_id)
        assert forge.workflow_run(run_id)["status"] == "in_progress" and len(fake.not_modified) == 1


def test_runs_are_listed_newest_first_with_githubs_filters(fake, local):
    add_evaluate_workflow(local, fake)
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        champion, _ = forge.ensure_champion()
        (Path(local.working_tree_dir) / "README.md").write_text("moved on\n")
        local.git.add(A=True)
        main = local.index.commit("main moves on").hexsha
        local.git.push(str(fake.bare), "main:refs/heads/main")
        a = forge.dispatch(EVALUATE_WORKFLOW, "champion", inputs(champion, 0))[0]
        b = forge.dispatch(EVALUATE_WORKFLOW, "main", inputs(main, 1))[0]
        c = forge.dispatch(EVALUATE_WORKFLOW, "champion", inputs(champion, 2))[0]
        fake.complete_run(a)
        fake.complete_run(b, "cancelled")
        every = runs(forge)
        assert every["total_count"] == 3 and [r["id"] for r in every["workflow_runs"]] == [c, b, a]
        assert [r["run_number"] for r in every["workflow_runs"]] == [3, 2, 1]
        assert [r["id"] for r in runs(forge, branch="champion")["workflow_runs"]] == [c, a]
        assert [r["id"] for r in runs(forge, status="completed")["workflow_runs"]] == [b, a]
        assert [r["id"] for r in runs(forge, status="success")["workflow_runs"]] == [a]  # a conclusion
        assert [r["id"] for r in runs(forge, status="queued", branch="champion")["workflow_runs"]] == [c]
        assert runs(forge, event="push")["total_count"] == 0
        assert [r["id"] for r in runs(forge, event="workflow_dispatch", head_sha=main)["workflow_runs"]] == [b]
        page = runs(forge, per_page=1)
        assert page["total_count"] == 3 and [r["id"] for r in page["workflow_runs"]] == [c]
        assert [r["id"] for r in runs(forge, fake.workflow_id(EVALUATE_WORKFLOW))["workflow_runs"]] == [c, b, a]
        for unknown in ("nope.yml", 424242):
            with pytest.raises(GithubException) as e:
                runs(forge, unknown)
            assert e.value.status == 404


def test_display_title_is_the_workflow_name_without_run_name(fake, local):
    workflows = Path(local.working_tree_dir) / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "named.yml").write_text(EVALUATE)
    (workflows / "nameless.yml").write_text("on: workflow_dispatch\njobs:\n  j:\n    runs-on: x\n    steps: [{run: 'true'}]\n")
    local.git.add(A=True)
    local.index.commit("workflows")
    local.git.push(str(fake.bare), "main:refs/heads/main")
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        named = forge.dispatch("named.yml", "main", {"head": "h", "champion": "c"})[0]
        nameless = forge.dispatch("nameless.yml", "main", {})[0]
        assert forge.workflow_run(named)["display_title"] == forge.workflow_run(named)["name"] == "arbot-evaluate"
        assert forge.workflow_run(nameless)["name"] == ".github/workflows/nameless.yml"
        assert forge.workflow_run(nameless)["display_title"] == ".github/workflows/nameless.yml"


# --- artifacts ------------------------------------------------------------------------------------------------
def test_artifacts_download_through_a_short_lived_redirect(fake, local):
    add_evaluate_workflow(local, fake)
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        champion, _ = forge.ensure_champion()
        run_id = forge.dispatch(EVALUATE_WORKFLOW, "champion", inputs(champion))[0]
        assert forge.run_artifact(run_id, "arbot-result", MAX) is None  # nothing uploaded yet
        first = fake.add_artifact(run_id, "arbot-result", {"result.json": b'{"old": true}'})
        artifact = fake.add_artifact(run_id, "arbot-result", {"result.json": b'{"status": "ok"}', "evaluate.log": b"log\n"})
        fake.add_artifact(run_id, "other", {"x": b"y"})
        fake.complete_run(run_id)

        _, listed = forge.gh.requester.requestJsonAndCheck("GET", f"{forge.repo.url}/actions/runs/{run_id}/artifacts",
                                                           parameters={"name": "arbot-result"})
        assert listed["total_count"] == 2 and [a["id"] for a in listed["artifacts"]] == [first, artifact]
        a = listed["artifacts"][1]
        assert a["expired"] is False and a["size_in_bytes"] == len(fake.artifacts[artifact]["zip"])
        assert a["archive_download_url"] == f"{url}/api/v3/repos/{REPO}/actions/artifacts/{artifact}/zip"
        assert a["workflow_run"] == {**a["workflow_run"], "id": run_id, "head_branch": "champion", "head_sha": champion}
        # PyGithub's WorkflowRun lists them too
        assert sorted(x.name for x in forge.repo.get_workflow_run(run_id).get_artifacts()) == ["arbot-result", "arbot-result", "other"]

        # the forge: the newest artifact of that name, as the zip's bytes
        blob = forge.run_artifact(run_id, "arbot-result", MAX)
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            assert z.read("result.json") == b'{"status": "ok"}' and z.read("evaluate.log") == b"log\n"
        assert forge.run_artifact(run_id, "missing", MAX) is None

        # GitHub's answer: 302 to a URL that needs no credentials and expires
        auth = {"Authorization": f"token {TOKEN}"}
        r = httpx.get(a["archive_download_url"], headers=auth)
        assert r.status_code == 302 and r.content == b""
        location = r.headers["location"]
        assert location.startswith(f"{url}/_artifacts/{artifact}/") and location.endswith(".zip")
        assert httpx.get(location).content == fake.artifacts[artifact]["zip"]  # no Authorization header
        token = location.rsplit("/", 1)[1].removesuffix(".zip")
        fake.downloads[token] = (artifact, time.monotonic() - 1)  # a minute later
        assert httpx.get(location).status_code == 403
        assert httpx.get(f"{url}/_artifacts/{artifact}/guessed.zip").status_code == 403
        assert httpx.get(f"{url}/api/v3/repos/{REPO}/actions/artifacts/{artifact}/tar", headers=auth).status_code == 404

        # an expired artifact is listed as such, never downloaded (410 Gone)
        old = fake.add_artifact(run_id, "stale", {"x": b"y"}, expired=True)
        assert forge.run_artifact(run_id, "stale", MAX) is None
        r = httpx.get(f"{url}/api/v3/repos/{REPO}/actions/artifacts/{old}/zip", headers=auth)
        assert r.status_code == 410
        with pytest.raises(GithubException) as e:
            forge.gh.requester.requestJsonAndCheck("GET", f"{forge.repo.url}/actions/runs/999999/artifacts")
        assert e.value.status == 404


def test_a_failed_download_is_an_error(fake, local, monkeypatch):
    add_evaluate_workflow(local, fake)
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        champion, _ = forge.ensure_champion()
        run_id = forge.dispatch(EVALUATE_WORKFLOW, "champion", inputs(champion))[0]
        fake.add_artifact(run_id, "arbot-result", {"result.json": b"{}"})
        monkeypatch.setattr("tests.fake_github.server.DOWNLOAD_SECONDS", -1)  # the URL has expired when fetched
        with pytest.raises(GitHubForgeError, match="failed: 403"):
            forge.run_artifact(run_id, "arbot-result", MAX)


# --- check runs by the Actions token --------------------------------------------------------------------------
def test_the_actions_token_cannot_set_details_url(tmp_path, local, app_fake):
    fake = app_fake()
    fake.tokens[ACTIONS] = "github-actions[bot]"
    with serving(fake.asgi) as url:
        forge = app_forge_for(url, fake, tmp_path)
        champion, _ = forge.ensure_champion()
        sent = "http://github.test/octo-org/research/actions/runs/77"
        by_actions = check_run(url, ACTIONS, champion, "arbot/evaluate", details_url=sent)
        assert by_actions["details_url"] == by_actions["html_url"] == fake.check_page(by_actions["id"]) != sent
        assert by_actions["app"]["slug"] == "github-actions" and by_actions["app"]["id"] == 15368
        # an App's own installation token keeps it
        forge.post_check(champion, "arbot/verdict", "success", "win", "", details_url="https://example.test/x")
        assert forge.check(champion, "arbot/verdict").details_url == "https://example.test/x"
        assert forge.check(champion, "arbot/evaluate", app_slug="github-actions").details_url == fake.check_page(by_actions["id"])


# --- auto-merge -----------------------------------------------------------------------------------------------
def test_auto_merge_is_refused_as_github_refuses_it(fake, local):
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        champion, _ = forge.ensure_champion()
        forge.protect_champion()
        rec = experiment(local, champion, 1, "0.005")
        pr = forge.open_pr(rec, local)
        title, body = squash_message(rec, {"Experiment": "exp-1"}, pr.number)

        def refusal() -> str:
            with pytest.raises(GithubException) as e:
                forge.pr(pr.number).enable_automerge(merge_method="SQUASH", commit_headline=title, commit_body=body,
                                                     expected_head_oid=rec.commit)
            return str(e.value)

        assert forge.repo.allow_auto_merge is False  # a new repository's setting
        assert "Auto merge is not allowed for this repository" in refusal()
        assert forge.enable_automerge(pr, rec.commit, title, body) is False
        assert forge.ensure_auto_merge() is True and forge.gh.get_repo(REPO).allow_auto_merge is True
        assert [b for m, p, b in fake.requests if m == "PATCH"] == [{"allow_auto_merge": True}]
        # every requirement met (protected, arbot/verdict passing, up to date): nothing to wait for
        forge.post_check(rec.commit, "arbot/verdict", "success", "win", "")
        assert "Pull request Pull request is in clean status" in refusal()
        assert forge.enable_automerge(pr, rec.commit, title, body) is False
        sha = forge.merge(pr, rec.commit, title, body)  # the forge's fallback: a merge with the head guard
        assert fake.ref("champion") == sha and fake.prs[pr.number].merged

        # with a requirement pending, auto-merge waits for it and merges then
        local.git.fetch(str(fake.bare), "champion")
        rec2 = experiment(local, sha, 2, "0.004")
        pr2 = forge.open_pr(rec2, local)
        title2, body2 = squash_message(rec2, {"Experiment": "exp-2"}, pr2.number)
        assert forge.enable_automerge(pr2, rec2.commit, title2, body2) is True
        assert fake.prs[pr2.number].state == "open"
        forge.post_check(rec2.commit, "arbot/verdict", "success", "win", "")
        assert fake.prs[pr2.number].merged and fake.message(fake.ref("champion")).startswith(title2)


# --- branch protection pinned to the App -----------------------------------------------------------------------
def test_the_pinned_check_and_the_push_restrictions_hold(tmp_path, local, app_fake):
    fake = app_fake()
    fake.tokens[OTHER] = "other-app[bot]"
    with serving(fake.asgi) as url:
        bot = app_forge_for(url, fake, tmp_path)
        human = forge_for(url, fake)  # a PAT of a repository admin
        champion, _ = bot.ensure_champion()
        assert bot.protect_champion(*bot.app()) == [
            "requires arbot/verdict from the app arbot-app", "branches must be up to date",
            "only arbot-app may push to or merge into it", "code owners must review changes to their paths"]
        rec = experiment(local, champion, 1, "0.005")
        pr = bot.open_pr(rec, local)
        title, body = squash_message(rec, {"Experiment": "exp-1"}, pr.number)

        # arbot/verdict from another app, or a user's commit status of that name, does not count
        check_run(url, OTHER, rec.commit)
        human.post_check(rec.commit, "arbot/verdict", "success", "win", "")  # a PAT: a commit status
        with pytest.raises(GitHubForgeError) as e:
            bot.merge(bot.pr(pr.number), rec.commit, title, body)
        assert "405" in str(e.value) and 'Required status check "arbot/verdict" was not set by the expected GitHub app.' in str(e.value)

        bot.post_check(rec.commit, "arbot/verdict", "success", "win", "")  # the App's own check run
        # only the App may merge into champion: the human's merge is refused as GitHub refuses a restricted push
        with pytest.raises(GithubException) as e:
            human.pr(pr.number).merge(commit_title=title, commit_message=body, merge_method="squash", sha=rec.commit)
        assert e.value.status == 405 and e.value.data["message"] == NOT_AUTHORIZED
        sha = bot.merge(bot.pr(pr.number), rec.commit, title, body)
        assert fake.ref("champion") == sha and fake.prs[pr.number].merged


def test_deprecated_contexts_pin_the_app_that_last_posted_the_check(fake, local):
    """`contexts` alone lets GitHub pick the source: the App that recently posted the check (kubernetes-sigs/prow#915);
    `checks` with `app_id: -1` means any source. Sending both is refused (a contract violation here)."""
    fake.tokens[OTHER] = "other-app[bot]"
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        champion, _ = forge.ensure_champion()
        check_run(url, OTHER, champion)
        protection = f"{forge.repo.url}/branches/champion/protection"
        rest = {"enforce_admins": None, "required_pull_request_reviews": None, "restrictions": None}
        forge.gh.requester.requestJsonAndCheck("PUT", protection, input={
            "required_status_checks": {"strict": True, "contexts": ["arbot/verdict"]}, **rest})
        _, read = forge.gh.requester.requestJsonAndCheck("GET", protection)
        assert read["required_status_checks"]["checks"] == [{"context": "arbot/verdict", "app_id": fake.app_id_of("other-app")}]
        assert forge.protect_champion() == ["requires arbot/verdict from any source (a PAT cannot pin an app)",
                                            "code owners must review changes to their paths"]
        _, read = forge.gh.requester.requestJsonAndCheck("GET", protection)
        assert read["required_status_checks"]["checks"] == [{"context": "arbot/verdict", "app_id": None}]
        r = httpx.put(f"{url}/api/v3/repos/{REPO}/branches/champion/protection", headers={"Authorization": f"token {TOKEN}"},
                      json={"required_status_checks": {"strict": True, "contexts": ["a"], "checks": [{"context": "a"}]}, **rest})
        assert r.status_code == 500 and "request PUT" in r.json()["message"]
    assert len(fake.violations) == 1
    fake.violations.clear()


def test_get_app_needs_the_apps_jwt(tmp_path, local, app_fake):
    fake = app_fake()
    with serving(fake.asgi) as url:
        assert app_forge_for(url, fake, tmp_path).app() == (APP_ID, "arbot-app")
        assert forge_for(url, fake).app() is None
        r = httpx.get(f"{url}/api/v3/app", headers={"Authorization": f"token {TOKEN}"})
        assert r.status_code == 401

"""`arbot setup` (bot/github/setup.py) against the fake GitHub over real HTTP, with a PAT and with the GitHub App: what
it changes, that a second run changes nothing, and the protection it pins. Every call is checked against GitHub's
contract (the `fake` fixture asserts no violation)."""

from __future__ import annotations

from pathlib import Path

import pytest
from github import GithubException

import git

from bot.doctor import FAIL, OK, check_default_protection, check_tag_ruleset
from bot.github.setup import codeowners, run_setup
from tests.fake_github.server import ORG_ONLY, FakeGitHub
from tests.fake_github.serving import serving
from tests.test_github_forge import (APP_ID, FAST, INSTALLATION, REPO, TOKEN, app_fake, app_forge_for, app_key, fake,  # noqa: F401
                                     forge_for, local)

NOTHING = ("nothing to change: champion, labels (arbot, arbot:loss, arbot:crash), protection (arbot/verdict required on "
           "champion, pull requests on main), the tag ruleset and auto-merge are in place")
RULESET = ("no tag may be named like its branches (refs/tags/arbot/exp-*, refs/tags/champion, refs/tags/main: ruleset "
           "'arbot: no tags named like branches')")


def test_arbot_setup_with_a_pat_is_idempotent_and_says_what_it_changed(fake, local):
    root = Path(local.working_tree_dir)
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        assert forge.app() is None  # a PAT: no App to pin
        first = run_setup(forge, root, owner="@octo-org/research-leads")
        assert first[0].startswith("created branch champion at ")
        assert first[1:] == [
            "created label arbot", "created label arbot:loss", "created label arbot:crash",
            "protected champion: requires arbot/verdict from any source (a PAT cannot pin an app)",
            "protected champion: branches must be up to date",
            "protected champion: code owners must review changes to their paths",
            "protected main: changes only through pull requests",
            "protected main: code owners must review changes to their paths",
            "protected main: only research-leads may push to or merge into it",
            RULESET,
            "allowed auto-merge on the repository",
            "wrote .github/CODEOWNERS (owner @octo-org/research-leads for /evaluator/, /.github/): commit it to the "
            "default branch and bring it into champion"]
        assert run_setup(forge, root, owner="@octo-org/research-leads") == [NOTHING]
    rules = fake.protection["champion"]
    assert rules["checks"] == [{"context": "arbot/verdict", "app_id": None}] and rules["strict"]
    assert rules["restrictions"] is None  # nothing to name: the PAT's verdicts are a user's statuses
    assert rules["reviews"] == {"dismiss_stale_reviews": False, "require_code_owner_reviews": True,
                                "required_approving_review_count": 0, "require_last_push_approval": False}
    assert fake.allow_auto_merge
    [put] = [b for m, p, b in fake.requests if m == "PUT" and p.endswith("/champion/protection")]
    assert put["required_status_checks"] == {"strict": True, "checks": [{"context": "arbot/verdict", "app_id": -1}]}
    text = (root / ".github" / "CODEOWNERS").read_text()
    assert "/evaluator/ @octo-org/research-leads\n/.github/ @octo-org/research-leads\n" in text
    assert codeowners("* @me\n/evaluator/ @me\n", "@x").endswith("/.github/ @x\n")
    assert codeowners("/evaluator/ @a\n/.github/ @a\n", "@x") == "/evaluator/ @a\n/.github/ @a\n"


def test_arbot_setup_with_the_app_pins_the_app(app_fake, tmp_path):
    fake = app_fake()
    with serving(fake.asgi) as url:
        forge = app_forge_for(url, fake, tmp_path)
        assert forge.app() == (APP_ID, "arbot-app")  # GET /app with the App's JWT
        lines = run_setup(forge)
        assert lines[4:] == ["protected champion: requires arbot/verdict from the app arbot-app",
                             "protected champion: branches must be up to date",
                             "protected champion: only arbot-app may push to or merge into it",
                             "protected champion: code owners must review changes to their paths",
                             "protected main: changes only through pull requests",
                             "protected main: code owners must review changes to their paths",
                             "protected main: only administrators may push to or merge into it",
                             RULESET,
                             "allowed auto-merge on the repository"]
        assert run_setup(forge) == [NOTHING]
        # GitHub's own read-back: the check pinned to the App's id, the App alone in the push restrictions
        _, protection = forge.gh.requester.requestJsonAndCheck("GET", f"{forge.repo.url}/branches/champion/protection")
    assert protection["required_status_checks"]["checks"] == [{"context": "arbot/verdict", "app_id": APP_ID}]
    assert [a["slug"] for a in protection["restrictions"]["apps"]] == ["arbot-app"]
    assert protection["restrictions"]["users"] == [] and protection["restrictions"]["teams"] == []
    assert protection["required_pull_request_reviews"]["require_code_owner_reviews"] is True
    assert ("GET", "/app") in [(m, p) for m, p, _ in fake.requests]


def test_a_personal_repository_cannot_restrict_pushes(app_fake, tmp_path):
    """GitHub keeps push restrictions for organizations: on a user's repository setup pins the check only."""
    fake = app_fake("User")
    with serving(fake.asgi) as url:
        forge = app_forge_for(url, fake, tmp_path)
        lines = run_setup(forge)
        assert "protected champion: requires arbot/verdict from the app arbot-app" in lines
        assert not any("may push" in line for line in lines)
        assert fake.protection["champion"]["restrictions"] is None
        assert run_setup(forge) == [NOTHING]
        body = {"required_status_checks": None, "enforce_admins": None, "required_pull_request_reviews": None,
                "restrictions": {"users": [], "teams": [], "apps": ["arbot-app"]}}
        with pytest.raises(GithubException) as e:
            forge.gh.requester.requestJsonAndCheck("PUT", f"{forge.repo.url}/branches/champion/protection", input=body)
        assert e.value.status == 422 and e.value.data["message"] == ORG_ONLY


def test_protection_changes_only_what_differs_and_keeps_other_checks(app_fake, tmp_path):
    fake = app_fake()
    with serving(fake.asgi) as url:
        forge = app_forge_for(url, fake, tmp_path)
        forge.ensure_champion()
        # a protection someone made by hand: their own required check, linear history, no strict
        body = {"required_status_checks": {"strict": False, "checks": [{"context": "ci", "app_id": -1}]},
                "enforce_admins": True, "required_pull_request_reviews": None, "restrictions": None,
                "required_linear_history": True}
        forge.gh.requester.requestJsonAndCheck("PUT", f"{forge.repo.url}/branches/champion/protection", input=body)
        # first with no App named (as with a PAT), then pinned to the App: each time only the difference
        assert forge.protect_champion() == ["requires arbot/verdict from any source (a PAT cannot pin an app)",
                                            "branches must be up to date", "code owners must review changes to their paths"]
        assert forge.protect_champion(APP_ID, "arbot-app") == ["requires arbot/verdict from the app arbot-app",
                                                               "only arbot-app may push to or merge into it"]
        assert forge.protect_champion(APP_ID, "arbot-app") == []
    rules = fake.protection["champion"]
    assert rules["checks"] == [{"context": "ci", "app_id": None}, {"context": "arbot/verdict", "app_id": APP_ID}]
    assert rules["required_linear_history"] and rules["enforce_admins"] and rules["strict"]


def test_arbot_setup_command(fake, local, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    import bot.github.forge as forge_module
    from bot.cli import app

    root = Path(local.working_tree_dir)
    real_connect = forge_module.connect
    with serving(fake.asgi) as url:
        (root / "arbot.yml").write_text(yaml.safe_dump({"github": {"repo": REPO, "base_url": f"{url}/api/v3"}}))
        monkeypatch.setenv("ARBOT_GITHUB_TOKEN", TOKEN)
        monkeypatch.setattr(forge_module, "connect", lambda cfg, **kw: real_connect(cfg, git_url=str(fake.bare), **kw, **FAST))
        result = CliRunner().invoke(app, ["setup", "--repo", str(root)])
        assert result.exit_code == 0, result.output
        assert "created branch champion" in result.output and "protected champion" in result.output
        assert "allowed auto-merge on the repository" in result.output
        again = CliRunner().invoke(app, ["setup", "--repo", str(root)])
        assert again.exit_code == 0 and again.output.split() == NOTHING.split()
        monkeypatch.setenv("ARBOT_GITHUB_TOKEN", "wrong")
        result = CliRunner().invoke(app, ["setup", "--repo", str(root)])
        assert result.exit_code == 2 and "GitHub answered 401" in result.output


def test_setup_protects_the_default_branch_and_refuses_tags_named_like_branches(fake, local, tmp_path):
    """Threats: a workflow pushed to the default branch (the bot's own dispatch would run it, and its result would
    count) and a tag named like it (GitHub reports the tag's name as the run's branch). Doctor names both while
    they are open; after `arbot setup` the fake GitHub refuses both pushes, as GitHub's protection and ruleset do."""
    clone = git.Repo.clone_from(str(fake.bare), tmp_path / "mallory")
    with clone.config_writer() as cw:
        cw.set_value("user", "name", "mallory")
        cw.set_value("user", "email", "mallory@example.com")
    workflow = Path(clone.working_tree_dir) / ".github" / "workflows" / "arbot-evaluate.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text("on: workflow_dispatch\njobs: {train: {runs-on: self-hosted, steps: [{run: echo win}]}}\n")
    clone.git.add(A=True)
    clone.index.commit("an evaluate workflow that reports a win")
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        default, tags = check_default_protection(forge), check_tag_ruleset(forge)
        assert default.status == FAIL and "changes the evaluate workflow the bot dispatches" in default.detail
        assert tags.status == FAIL and "A tag named like a branch passes for it" in tags.detail
        run_setup(forge, owner="@octo-org/research-leads")
        assert check_default_protection(forge).status == OK and check_tag_ruleset(forge).status == OK
    with pytest.raises(git.GitCommandError, match="Changes must be made through a pull request"):
        clone.git.push("origin", "main:refs/heads/main")
    with pytest.raises(git.GitCommandError, match="Cannot create ref due to creations being restricted"):
        clone.git.push("origin", "main:refs/tags/main")
    clone.git.push("origin", "main:refs/heads/mallory/feature")  # any other branch: a pull request from it is reviewed
    assert fake.ref("main") != clone.head.commit.hexsha and fake.git("tag").stdout == ""
    rules = fake.protection["main"]
    assert rules["reviews"]["require_code_owner_reviews"] and rules["restrictions"] == {
        "users": [], "teams": ["research-leads"], "apps": []}
    [ruleset] = fake.rulesets
    assert (ruleset["target"], ruleset["enforcement"], ruleset["rules"]) == ("tag", "active", [{"type": "creation"}])

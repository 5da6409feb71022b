"""`arbot setup` (bot/github/setup.py) against the fake GitHub over real HTTP, with a PAT and with the GitHub App: what
it changes, that a second run changes nothing, and the protection it pins. Every call is checked against GitHub's
contract (the `fake` fixture asserts no violation)."""

from __future__ import annotations

from pathlib import Path

import pytest
from github import GithubException

from bot.github.setup import codeowners, run_setup
from tests.fake_github.server import ORG_ONLY, FakeGitHub
from tests.fake_github.serving import serving
from tests.test_github_forge import (APP_ID, FAST, INSTALLATION, REPO, TOKEN, app_fake, app_forge_for, app_key, fake,  # noqa: F401
                                     forge_for, local)

NOTHING = ("nothing to change: champion, labels (arbot, arbot:loss, arbot:crash), protection (arbot/verdict required) "
           "and auto-merge are in place")


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
    [put] = [b for m, p, b in fake.requests if m == "PUT" and p.endswith("/protection")]
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

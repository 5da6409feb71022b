"""The fake GitHub's workflow_dispatch (POST .../actions/workflows/{workflow_id}/dispatches), through PyGithub's
requester as the bot calls it: GitHub's checks and messages, the recorded dispatch, the on_dispatch callback that
plays the workflow, and check runs keeping their external_id. Every call is checked against GitHub's contract."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from github import GithubException

from tests.fake_github.server import FakeGitHub
from tests.fake_github.serving import serving
from tests.test_github_forge import REPO, fake, forge_for, local  # noqa: F401  (fixtures)

EVALUATE = """\
name: arbot-evaluate
on:
  pull_request:
    branches: [champion]
  workflow_dispatch:
    inputs:
      head:
        description: the candidate commit
        required: true
        type: string
      champion:
        description: the champion commit
        required: true
      seed:
        required: false
        default: "0"
      attempt:
        type: number
        default: 1
      champion_runs:
        type: boolean
        default: false
      device:
        type: choice
        options: [gpu, cpu]
        default: gpu
      note:
        required: false
jobs:
  train:
    runs-on: [self-hosted, gpu]
    steps:
      - run: echo "${{ inputs.head }}"
"""

NO_DISPATCH = """\
name: ci
on:
  push:
    branches: [main]
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - run: true
"""


def add_workflows(local, fake: FakeGitHub) -> str:
    """Commit the two workflow files on main and push main to the fake; the new main sha."""
    root = Path(local.working_tree_dir) / ".github" / "workflows"
    root.mkdir(parents=True)
    (root / "arbot-evaluate.yml").write_text(EVALUATE)
    (root / "ci.yml").write_text(NO_DISPATCH)
    local.git.add(A=True)
    sha = local.index.commit("workflows").hexsha
    local.git.push(str(fake.bare), "main:refs/heads/main")
    return sha


def post_dispatch(forge, workflow, body):
    return forge.gh.requester.requestJsonAndCheck("POST", f"{forge.repo.url}/actions/workflows/{workflow}/dispatches",
                                                  input=body)


def test_a_dispatch_is_recorded_with_defaults_and_played_by_the_callback(fake, local):
    main = add_workflows(local, fake)
    played: list[tuple[dict, str]] = []
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        champion, _ = forge.ensure_champion()
        assert champion == main
        fake.tokens["ghs_actions"] = "github-actions[bot]"

        def play(dispatch: dict) -> None:
            """The evaluate workflow's report job: a check run over HTTP (the callback is off the request path)."""
            played.append((dispatch, threading.current_thread().name))
            r = httpx.post(f"{url}/api/v3/repos/{REPO}/check-runs", headers={"Authorization": "token ghs_actions"},
                           json={"name": "arbot/evaluate", "head_sha": dispatch["inputs"]["head"], "status": "completed",
                                 "conclusion": "success", "external_id": f"run-{dispatch['id']}",
                                 "details_url": f"http://github.test/{REPO}/actions/runs/{dispatch['id']}",
                                 "output": {"title": "val_bpb 1.2", "summary": "played"}})
            r.raise_for_status()

        fake.on_dispatch = play
        headers, data = post_dispatch(forge, "arbot-evaluate.yml",
                                      {"ref": "champion", "inputs": {"head": main, "champion": champion, "seed": "2"}})
        assert data is None  # 204 No Content
        fake.flush_dispatches()

        [d] = fake.dispatches
        assert d == {"id": d["id"], "workflow": "arbot-evaluate.yml", "workflow_id": fake.workflow_id("arbot-evaluate.yml"),
                     "ref": "refs/heads/champion", "head_branch": "champion", "sha": champion, "user": "arbot-user",
                     "inputs": {"head": main, "champion": champion, "seed": "2", "attempt": "1",
                                "champion_runs": "false", "device": "gpu", "note": ""}}
        assert [p for p, _ in played] == [d] and played[0][1].startswith("fake-github-actions")
        [run] = fake.check_runs
        assert run["external_id"] == f"run-{d['id']}"

        # the check run keeps its external_id when listed, as on GitHub; the details_url sent with the Actions token is
        # ignored (actions/github-script#143): the Details link is the check run's own page
        _, listed = forge.gh.requester.requestJsonAndCheck("GET", f"{forge.repo.url}/commits/{main}/check-runs",
                                                           parameters={"check_name": "arbot/evaluate"})
        [cr] = listed["check_runs"]
        assert cr["external_id"] == f"run-{d['id']}" and cr["details_url"] == cr["html_url"] == fake.check_page(cr["id"])
        assert fake.hooks.deliveries[-1].payload["check_run"]["external_id"] == f"run-{d['id']}"

        # by numeric workflow id, with refs/heads/NAME, asking for the run's details (200 instead of 204)
        workflow_id = fake.workflow_id("arbot-evaluate.yml")
        _, details = post_dispatch(forge, workflow_id, {"ref": "refs/heads/main", "return_run_details": True,
                                                        "inputs": {"head": "h", "champion": "c", "device": "cpu",
                                                                   "champion_runs": "true"}})
        fake.flush_dispatches()
        second = fake.dispatches[-1]
        assert details["workflow_run_id"] == second["id"] != d["id"]
        assert details["run_url"].endswith(f"/repos/{REPO}/actions/runs/{second['id']}")
        assert second["ref"] == "refs/heads/main" and second["sha"] == main and second["workflow"] == "arbot-evaluate.yml"
        assert second["inputs"]["device"] == "cpu" and second["inputs"]["champion_runs"] == "true"
        assert len(played) == 2 and len(fake.check_runs) == 2
        assert set(fake.workflows) == {"arbot-evaluate.yml", "ci.yml"}  # the default branch's workflows have ids
        with pytest.raises(GithubException) as e:
            post_dispatch(forge, fake.workflows["ci.yml"], {"ref": "main"})
        assert e.value.status == 422 and e.value.data["message"] == "Workflow does not have 'workflow_dispatch' trigger"

        # the callback is optional
        fake.on_dispatch = None
        post_dispatch(forge, "arbot-evaluate.yml", {"ref": "main", "inputs": {"head": "h", "champion": "c"}})
        fake.flush_dispatches()
        assert len(fake.dispatches) == 3 and len(played) == 2
    fake.close()


@pytest.mark.parametrize("workflow, body, status, message", [
    ("arbot-evaluate.yml", {"ref": "main", "inputs": {"head": "h", "champion": "c", "nope": "x"}},
     422, 'Unexpected inputs provided: ["nope"]'),
    ("arbot-evaluate.yml", {"ref": "main", "inputs": {"head": "h", "champion": "c", "nope": "x", "other": "y"}},
     422, 'Unexpected inputs provided: ["nope", "other"]'),
    ("ci.yml", {"ref": "main"}, 422, "Workflow does not have 'workflow_dispatch' trigger"),
    ("arbot-evaluate.yml", {"ref": "no-such-branch", "inputs": {"head": "h", "champion": "c"}},
     422, "No ref found for: no-such-branch"),
    ("arbot-evaluate.yml", {"ref": "MAIN_SHA", "inputs": {"head": "h", "champion": "c"}},
     422, "No ref found for: MAIN_SHA"),  # a commit sha is not a ref
    ("missing.yml", {"ref": "main"}, 404, "Not Found"),
    ("999999", {"ref": "main"}, 404, "Not Found"),  # an unknown numeric workflow id
    ("arbot-evaluate.yml", {"ref": "main", "inputs": {"head": "h"}}, 422, "Required input 'champion' not provided"),
    ("arbot-evaluate.yml", {"ref": "main", "inputs": {"head": "h", "champion": "c", "device": "tpu"}},
     422, "Provided value 'tpu' for input 'device' not in the list of allowed values"),
    ("arbot-evaluate.yml", {"ref": "main", "inputs": {"head": "h", "champion": "c", "seed": 2}},
     422, "Invalid request.\n\nFor 'additionalProperties', 2 is not a string."),
])
def test_github_refuses_a_dispatch_with_its_message(fake, local, workflow, body, status, message):
    main = add_workflows(local, fake)
    message = message.replace("MAIN_SHA", main)
    body = {**body, "ref": body["ref"].replace("MAIN_SHA", main)}
    calls: list[dict] = []
    fake.on_dispatch = calls.append
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        with pytest.raises(GithubException) as e:
            post_dispatch(forge, workflow, body)
        assert e.value.status == status and e.value.data["message"] == message
        fake.flush_dispatches()
    assert fake.dispatches == [] and calls == []
    fake.close()


def test_more_than_25_inputs_break_the_contract(fake, local):
    add_workflows(local, fake)
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        with pytest.raises(GithubException) as e:
            post_dispatch(forge, "arbot-evaluate.yml", {"ref": "main", "inputs": {f"i{n}": "x" for n in range(26)}})
        assert e.value.status == 500
    [violation] = fake.violations
    assert violation.endswith("has too many properties at inputs") and fake.dispatches == []
    fake.violations.clear()
    fake.close()


@pytest.mark.parametrize("text, inputs", [
    ("on: workflow_dispatch\n", {}),
    ("on: [push, workflow_dispatch]\n", {}),
    ("on:\n  workflow_dispatch:\n", {}),
    ('"on":\n  workflow_dispatch:\n    inputs:\n      a: {default: x}\n', {"a": {"default": "x"}}),
    ("true:\n  workflow_dispatch:\n    inputs:\n      a: {}\n", {"a": {}}),  # what PyYAML makes of `on`
    ("on: push\n", None),
    ("on: [push]\n", None),
    ("on:\n  push:\n", None),
    ("not: [valid\n", None),
])
def test_the_trigger_is_read_with_every_spelling_of_on(text, inputs):
    trigger = FakeGitHub._dispatch_trigger(text)
    assert (None if trigger is None else trigger.get("inputs") or {}) == inputs

"""The PyGithub forge against the fake GitHub (real HTTP, real git), every call checked against GitHub's OpenAPI."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import git
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.config import GitHubConfig
from bot.github.forge import (EVALUATE_WORKFLOW, RESULTS_MARKER, GitHubForgeError, connect, pr_body,
                              results_comment, squash_message, trajectory_chart, verdict_check)
from bot.core.records import DEFAULT_METRIC, Decision, ExperimentRecord, KnobChange, Metric, Proposal
from tests.fake_github.server import FakeGitHub
from tests.fake_github.serving import serving

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "ghp_test"
REPO = "octo-org/research"
# PyGithub waits 0.25 s between requests and 1 s between writes (GitHub's guidance); not against the fake.
FAST = {"retry": None, "timeout": 10, "seconds_between_requests": None, "seconds_between_writes": None}


def script(lr: str, depth: int) -> str:
    return f"LR = {lr}\n# far enough apart\n# for git to merge\n# changes to both\nDEPTH = {depth}\n"


@pytest.fixture
def local(tmp_path) -> git.Repo:
    repo = git.Repo.init(tmp_path / "local", initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "arbot test")
        cw.set_value("user", "email", "test@example.com")
    (tmp_path / "local" / "target").mkdir()
    (tmp_path / "local" / "target" / "train.py").write_text(script("0.01", 2))
    (tmp_path / "local" / "README.md").write_text("research\n")
    repo.git.add(A=True)
    repo.index.commit("initial")
    return repo


@pytest.fixture
def fake(tmp_path, local):
    fake = FakeGitHub(tmp_path / "remote", owner="octo-org", name="research", token=TOKEN)
    local.git.push(str(fake.bare), "main:refs/heads/main")
    yield fake
    fake.hooks.close()
    assert fake.all_violations == [], fake.all_violations


def forge_for(url: str, fake: FakeGitHub, **config):
    cfg = GitHubConfig.model_validate({"repo": REPO, "base_url": f"{url}/api/v3", **config})
    return connect(cfg, {"ARBOT_GITHUB_TOKEN": TOKEN}, git_url=str(fake.bare), **FAST)


APP_ID, INSTALLATION = 123, 42


def app_key(tmp_path: Path) -> str:
    """A new RSA key for the App: the private key written to tmp_path/app.pem; the public PEM (for the fake)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "app.pem").write_bytes(pem)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture
def app_fake(tmp_path, local):
    """A fake with the GitHub App `arbot-app` (id APP_ID) installed; owner_type as the test's parameter, if any."""
    fakes = []

    def make(owner_type: str = "Organization") -> FakeGitHub:
        fake = FakeGitHub(tmp_path / f"remote-{len(fakes)}", app=(APP_ID, app_key(tmp_path), INSTALLATION),
                          owner_type=owner_type)
        local.git.push(str(fake.bare), "main:refs/heads/main")
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.close()
        assert fake.all_violations == [], fake.all_violations


def app_config(url: str, tmp_path: Path) -> GitHubConfig:
    return GitHubConfig.model_validate({"repo": REPO, "base_url": f"{url}/api/v3", "auth": {
        "app_id": APP_ID, "private_key_path": str(tmp_path / "app.pem"), "installation_id": INSTALLATION}})


def app_forge_for(url: str, fake: FakeGitHub, tmp_path: Path):
    """The forge as the GitHub App (installation token; its JWT for GET /app)."""
    return connect(app_config(url, tmp_path), {}, git_url=str(fake.bare), **FAST)


def experiment(local: git.Repo, base: str, number: int, lr: str, depth: int = 2) -> ExperimentRecord:
    """A commit changing LR (and DEPTH) on top of `base`, as an experiment record (the local forge makes these)."""
    tree_dir = Path(local.working_tree_dir)
    local.git.checkout("-q", "--detach", base)
    text = script(lr, depth)
    (tree_dir / "target" / "train.py").write_text(text)
    local.git.add(A=True)
    commit = local.index.commit(f"lr {lr}").hexsha
    local.git.checkout("-q", "main")
    proposal = Proposal(proposer="search", hypothesis=f"learning rate {lr}", rationale="a smaller step is steadier",
                        files={"target/train.py": text},
                        knobs=[KnobChange(name="LR", old=0.01, new=float(lr))])
    return ExperimentRecord(id=f"exp-{number}", number=number, branch=f"arbot/exp-{number}", commit=commit, parent=base,
                            proposal=proposal)


def win() -> Decision:
    return Decision(verdict="win", rule="margin", reason="better by 0.0100", champion_mean=1.25, candidate_mean=1.24,
                    effect=0.01, champion_runs=2, candidate_runs=2)


def test_setup_is_idempotent(fake, local):
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        sha, created = forge.ensure_champion()
        assert created and sha == local.head.commit.hexsha == fake.ref("champion")
        assert forge.ensure_labels() == ["arbot", "arbot:loss", "arbot:crash"]
        assert forge.protect_champion() == ["requires arbot/verdict from any source (a PAT cannot pin an app)",
                                            "branches must be up to date", "code owners must review changes to their paths"]
        assert fake.protection["champion"]["strict"] and fake.protection["champion"]["contexts"] == ["arbot/verdict"]
        assert fake.protection["champion"]["checks"] == [{"context": "arbot/verdict", "app_id": None}]  # sent as -1
        assert forge.ensure_auto_merge() is True and fake.allow_auto_merge
        # again: nothing changes
        assert forge.ensure_champion() == (sha, False)
        assert forge.ensure_labels() == []
        assert forge.protect_champion() == []
        assert forge.ensure_auto_merge() is False
        assert [m for m, p, _ in fake.requests if p.endswith("/protection")] == ["GET", "PUT", "GET"]


def test_a_win_is_auto_merged_with_its_trailers_and_a_stale_pr_cannot_merge(fake, local):
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        champion, _ = forge.ensure_champion()
        forge.ensure_labels()
        forge.protect_champion()
        rec1, rec2 = experiment(local, champion, 1, "0.005"), experiment(local, champion, 2, "0.01", depth=3)
        pr1 = forge.open_pr(rec1, local)
        assert forge.open_pr(rec1, local).number == pr1.number  # idempotent: found by head branch
        pr2 = forge.open_pr(rec2, local)
        assert [p.number for p in forge.open_prs()] == [pr2.number, pr1.number]
        assert fake.prs[pr1.number].labels == ["arbot"] and fake.ref("arbot/exp-1") == rec1.commit
        assert "| `LR` | 0.01 | 0.005 |" in fake.prs[pr1.number].body and "Experiment: exp-1" in fake.prs[pr1.number].body

        # PAT: commit statuses stand in for check runs
        forge.post_check(rec1.commit, "arbot/evaluate", "success", "val_bpb 1.2400", "table")
        assert forge.check(rec1.commit, "arbot/evaluate").conclusion == "success"
        assert forge.check(rec1.commit, "arbot/verdict") is None

        title, body = squash_message(rec1, {"Experiment": "exp-1", "Metric": "val_bpb=1.2400"}, pr1.number)
        assert forge.enable_automerge(pr1, rec1.commit, title, body) is False  # "Auto merge is not allowed ..."
        forge.ensure_auto_merge()
        assert forge.enable_automerge(pr1, rec1.commit, title, body) is True
        assert fake.prs[pr1.number].state == "open"  # waits for arbot/verdict
        forge.post_check(rec1.commit, "arbot/verdict", "success", "win", "better")
        merged = fake.prs[pr1.number]
        assert merged.merged and fake.ref("champion") == merged.merge_commit_sha
        message = fake.message(merged.merge_commit_sha)
        assert message.startswith(f"arbot: learning rate 0.005 (exp-1) (#{pr1.number})")
        assert "Experiment: exp-1\nMetric: val_bpb=1.2400\nPR: #1" in message

        # PR 2 was measured on the old champion: branch protection ("up to date") refuses it; the bot never updates
        # it (the lifecycle closes it as stale and opens its change again on the new champion)
        forge.post_check(rec2.commit, "arbot/verdict", "success", "win", "")
        with pytest.raises(GitHubForgeError, match="not up to date"):
            forge.merge(forge.pr(pr2.number), rec2.commit, "t", "m")
        assert fake.ref("arbot/exp-2") == rec2.commit and fake.prs[pr2.number].state == "open"


def test_merge_without_auto_merge_uses_the_sha_guard(fake, local):
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        champion, _ = forge.ensure_champion()
        rec = experiment(local, champion, 1, "0.005")
        pr = forge.open_pr(rec, local)
        forge.ensure_auto_merge()
        assert forge.enable_automerge(pr, rec.commit, "t", "b") is False  # unprotected: "clean status"
        with pytest.raises(GitHubForgeError, match="409"):
            forge.merge(pr, "f" * 40, "t", "m")
        sha = forge.merge(pr, rec.commit, "arbot: lr (exp-1) (#1)", "Experiment: exp-1\n")
        assert fake.ref("champion") == sha and fake.prs[pr.number].merged


def test_results_comment_is_upserted_and_a_loss_closed(fake, local):
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        champion, _ = forge.ensure_champion()
        forge.ensure_labels()
        rec = experiment(local, champion, 1, "0.5")
        pr = forge.open_pr(rec, local)
        cid, created = forge.upsert_comment(pr.number, "first")
        assert created
        forge.pr(pr.number).create_issue_comment("a human remark")
        assert forge.upsert_comment(pr.number, "second") == (cid, False)
        assert fake.comments[cid]["body"] == f"{RESULTS_MARKER}\nsecond"
        loss = Decision(verdict="loss", rule="margin", reason="worse by 0.2", champion_mean=1.25, candidate_mean=1.45,
                        effect=-0.2, champion_runs=1, candidate_runs=1)
        forge.close_as(forge.pr(pr.number), "loss", results_comment(rec, loss, [("start", 1.25)], DEFAULT_METRIC))
        state = fake.prs[pr.number]
        assert state.state == "closed" and not state.merged and state.labels == ["arbot", "arbot:loss"]
        assert len([c for c in fake.comments.values() if RESULTS_MARKER in c["body"]]) == 1
        assert "**loss" in fake.comments[cid]["body"]
        assert fake.ref("arbot/exp-1") == rec.commit  # the branch is kept
        assert forge.has_write_access("arbot-user") and not forge.has_write_access("stranger")


def test_github_app_auth_writes_check_runs(tmp_path, local):
    fake = FakeGitHub(tmp_path / "remote", app=(APP_ID, app_key(tmp_path), INSTALLATION))
    local.git.push(str(fake.bare), "main:refs/heads/main")
    with serving(fake.asgi) as url:
        forge = app_forge_for(url, fake, tmp_path)
        assert forge.use_checks
        champion, _ = forge.ensure_champion()
        forge.post_check(champion, "arbot/evaluate", "failure", "evaluation failed", "crash", text="```\nlog\n```")
        check = forge.check(champion, "arbot/evaluate")
        assert check.conclusion == "failure" and check.summary == "crash"
        assert fake.check_runs[0]["output"]["text"] == "```\nlog\n```"
        # the report job of the workflow posts arbot/evaluate with the Actions token: only that one counts
        fake.tokens["ghs_actions"] = "github-actions[bot]"
        httpx.post(f"{url}/api/v3/repos/{REPO}/check-runs", headers={"Authorization": "token ghs_actions"},
                   json={"name": "arbot/evaluate", "head_sha": champion, "status": "completed", "conclusion": "success",
                         "output": {"title": "val_bpb 1.2", "summary": "from the workflow"}}).raise_for_status()
        assert forge.check(champion, "arbot/evaluate", app_slug="github-actions").summary == "from the workflow"
        assert forge.check(champion, "arbot/evaluate", app_slug="someone-else") is None
        forge.git_url = "https://ghe.example.test/octo-org/research.git"
        assert forge.git_remote().startswith("https://x-access-token:ghs_installation")  # the installation token
    assert ("POST", "/app/installations/42/access_tokens") in [(m, p) for m, p, _ in fake.requests]
    fake.hooks.close()
    assert fake.all_violations == []


def test_bad_credentials_and_contract_violations_are_caught(fake):
    with serving(fake.asgi) as url:
        cfg = GitHubConfig.model_validate({"repo": REPO, "base_url": f"{url}/api/v3"})
        with pytest.raises(GitHubForgeError, match="ARBOT_GITHUB_TOKEN"):
            connect(cfg, {})
        assert connect(cfg, {"ARBOT_GITHUB_TOKEN": "ghp_x"}).git_remote() == "https://127.0.0.1/octo-org/research.git".replace(
            "https://", "https://x-access-token:ghp_x@")  # GHE: the git host is the API's host
        bad = connect(cfg, {"ARBOT_GITHUB_TOKEN": "wrong"}, **FAST)
        with pytest.raises(Exception, match="401"):
            bad.champion()
        r = httpx.post(f"{url}/api/v3/repos/{REPO}/labels", json={"colour": "red"}, headers={"Authorization": f"token {TOKEN}"})
        assert r.status_code == 500 and "'name' is a required property" in r.json()["message"]
        r = httpx.delete(f"{url}/api/v3/repos/{REPO}", headers={"Authorization": f"token {TOKEN}"})
        assert r.status_code == 500 and "not an operation of the extracted OpenAPI subset" in r.json()["message"]
    assert len(fake.violations) == 2
    fake.violations.clear()


def test_rendering():
    rec = ExperimentRecord(id="exp-3", number=3, branch="arbot/exp-3", commit="a" * 40, parent="b" * 40,
                           proposal=Proposal(proposer="search", hypothesis="deeper", files={},
                                             knobs=[KnobChange(name="DEPTH", old=2, new=3)]))
    body = pr_body(rec)
    assert body.startswith("<!-- arbot:experiment exp-3 -->") and "| `DEPTH` | 2 | 3 |" in body and "b" * 40 in body
    title, message = squash_message(rec, {"Experiment": "exp-3"}, 12)
    assert title == "arbot: deeper (exp-3) (#12)" and message == "Experiment: exp-3\nPR: #12\n"
    chart = trajectory_chart([("start", 1.3), ("exp-1", 1.25), ("exp-3", 1.2)], DEFAULT_METRIC)
    assert "xychart-beta" in chart and 'x-axis ["start", "exp-1", "exp-3"]' in chart and "line [1.3000, 1.2500, 1.2000]" in chart
    assert 'title "champion val_bpb (lower is better)"' in chart
    comment = results_comment(rec, win(), [("start", 1.25), ("exp-3", 1.24)], DEFAULT_METRIC)
    assert comment.startswith(RESULTS_MARKER) and "| 1.2400 | 1.2500 | -0.0100 | 2 / 2 | n/a |" in comment
    assert trajectory_chart([], DEFAULT_METRIC) == ""


def test_rendering_a_maximized_metric():
    """PR comment, chart and verdict follow evaluator.metric, .direction and .precision: a win raises the metric."""
    acc = Metric(name="acc", direction="maximize", precision=3)
    rec = ExperimentRecord(id="exp-4", number=4, branch="arbot/exp-4", commit="a" * 40, parent="b" * 40,
                           proposal=Proposal(proposer="llm", hypothesis="wider", files={}))
    up = Decision(verdict="win", rule="confirm:pooled", reason="better", metric="val_acc", champion_mean=0.91,
                  candidate_mean=0.935, effect=0.025, champion_runs=3, candidate_runs=2, p_value=0.001)
    comment = results_comment(rec, up, [("start", 0.9), ("exp-4", 0.935)], acc)
    assert "| val_acc | champion | delta |" in comment and "| 0.935 | 0.910 | +0.025 | 2 / 3 | 0.001 |" in comment
    assert 'title "champion val_acc (higher is better)"' in comment and "line [0.900, 0.935]" in comment
    assert verdict_check(up, acc).title == "win: val_acc 0.935 vs 0.910 (+0.025)"
    # a decision made outside the policy carries no metric name: the configured one is shown
    assert verdict_check(Decision(verdict="crash", rule="crash", reason="x"), acc).title == "crash: val_acc n/a vs n/a"


def test_push_to_the_bare_repository_is_never_forced(fake, local):
    forge_local = local
    champion = local.head.commit.hexsha
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        rec = experiment(local, champion, 1, "0.1")
        forge.push(forge_local, rec.commit, rec.branch)
        other = experiment(local, champion, 1, "0.2")
        with pytest.raises(GitHubForgeError, match="push"):
            forge.push(forge_local, other.commit, rec.branch)
    assert subprocess.run(["git", "--git-dir", str(fake.bare), "rev-parse", "arbot/exp-1"], capture_output=True,
                          text=True).stdout.strip() == rec.commit


def test_the_fake_sends_signed_webhooks_the_server_routes(fake, local, tmp_path):
    """fake GitHub -> signed, schema-checked webhooks -> `arbot serve`'s app -> the actions the bot must take."""
    from bot.server.app import ServerSettings, create_app
    from bot.server.events import Evaluated, Ignored, PullRequestClosed, route

    actions = []
    handler = lambda event: actions.append((event.delivery_id, route(event, repo=REPO)))  # noqa: E731
    bot = create_app(ServerSettings(secret="s3cret", state_path=tmp_path / "bot.sqlite", repo=REPO), handler)
    with serving(fake.asgi) as url, serving(bot) as bot_url:
        fake.hooks.url, fake.hooks.secret = f"{bot_url}/webhook", "s3cret"
        forge = forge_for(url, fake)
        champion, _ = forge.ensure_champion()
        forge.protect_champion()
        forge.ensure_auto_merge()
        rec = experiment(local, champion, 1, "0.005")
        pr = forge.open_pr(rec, local)
        forge.post_check(rec.commit, "arbot/evaluate", "success", "val_bpb 1.24", "table")
        title, body = squash_message(rec, {"Experiment": "exp-1"}, pr.number)
        forge.enable_automerge(pr, rec.commit, title, body)
        forge.post_check(rec.commit, "arbot/verdict", "success", "win", "")
        fake.hooks.flush()
        assert [d.status for d in fake.hooks.deliveries] == [202] * 5
        assert fake.hooks.redeliver(fake.hooks.deliveries[-1]) == 200  # handled once
        deadline = time.monotonic() + 10
        while len(actions) < 5:
            assert time.monotonic() < deadline, actions
            time.sleep(0.05)
    kinds = [type(a).__name__ for _, a in actions]
    assert kinds == ["Ignored", "Ignored", "Evaluated", "Ignored", "PullRequestClosed"], actions
    assert actions[1][1] == Ignored("pull_request.labeled: the bot dispatches its runs itself")  # its own label
    assert actions[2][1] == Evaluated(head_sha=rec.commit, conclusion="success", source="status")
    assert actions[3][1] == Ignored("status 'arbot/verdict' is not arbot/evaluate")
    closed = actions[4][1]
    assert isinstance(closed, PullRequestClosed) and closed.merged and closed.merge_sha == fake.ref("champion")


def test_the_extract_covers_every_operation_the_fake_serves():
    """The committed OpenAPI extract holds every operation listed in the script, and the fake serves no other."""
    import importlib.util
    import re

    from tests.fake_github.contract import openapi, operation
    from tests.fake_github.server import ROUTES

    spec = importlib.util.spec_from_file_location("extract_openapi", Path(__file__).parent.parent / "scripts" / "extract_openapi.py")
    extract = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extract)
    paths = openapi()["paths"]
    assert all(method in paths[path] for method, path in extract.OPERATIONS)
    listed = {(m, p) for m, p in extract.OPERATIONS}
    for method, rx, _ in ROUTES:
        sample = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: {"pull_number": "1", "issue_number": "1", "comment_id": "1",
                                                           "sha": "a" * 40}.get(m.group(1), "x"), rx.pattern)
        template, _ = operation(method, f"/repos/o/r{sample}")
        assert (method, template) in listed
    # the closure keeps every $ref resolvable
    refs: set[str] = set()
    extract.refs(openapi(), refs)
    for ref in refs:
        extract.pointer(openapi(), ref)


def test_the_verdict_check_lets_only_a_win_merge():
    """arbot/verdict: success for a win (branch protection lets it merge), neutral for a win held for review,
    failure for anything else. The decision itself is the lifecycle's (bot.core.lifecycle)."""
    check = verdict_check(win(), DEFAULT_METRIC)
    assert check.conclusion == "success" and check.title == "win: val_bpb 1.2400 vs 1.2500 (-0.0100)"
    assert check.summary == "better by 0.0100\n\nRule: margin"
    held = verdict_check(win(), DEFAULT_METRIC, held=True)
    assert held.conclusion == "neutral" and held.title == "held for review: win: val_bpb 1.2400 vs 1.2500 (-0.0100)"
    loss = win().model_copy(update={"verdict": "loss", "effect": -0.01, "candidate_mean": 1.26, "reason": "worse"})
    lost = verdict_check(loss, DEFAULT_METRIC)
    assert lost.conclusion == "failure" and lost.title.startswith("loss: val_bpb 1.2600")
    crash = verdict_check(Decision(verdict="crash", rule="crash", reason="exit 1"), DEFAULT_METRIC)
    assert crash.conclusion == "failure" and crash.title == "crash: val_bpb n/a vs n/a"
    stale = verdict_check(win().model_copy(update={"verdict": "rejected", "rule": "stale"}), DEFAULT_METRIC)
    assert stale.conclusion == "failure" and stale.summary.endswith("Rule: stale")
    assert not (Path(__file__).parent.parent / "bot" / "github" / "decide.py").exists()


def add_evaluate_workflow(local: git.Repo, fake: FakeGitHub) -> str:
    """The project's arbot-evaluate.yml committed on main and pushed: GitHub dispatches the file of the ref."""
    workflows = Path(local.working_tree_dir) / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / EVALUATE_WORKFLOW).write_text((ROOT / ".github" / "workflows" / EVALUATE_WORKFLOW).read_text())
    local.git.add(A=True)
    sha = local.index.commit("the evaluate workflow").hexsha
    local.git.push(str(fake.bare), "main:refs/heads/main")
    return sha


def test_dispatch_starts_the_evaluate_workflow_with_the_run_request(fake, local):
    from github import GithubException

    add_evaluate_workflow(local, fake)
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        champion, _ = forge.ensure_champion()
        inputs = {"request": f"exp-1:{champion[:12]}:seed-3:val+holdout", "commit": champion, "champion": champion,
                  "seed": "3", "splits": "val,holdout"}
        run_id = forge.dispatch(EVALUATE_WORKFLOW, "champion", inputs)[0]
        # the request body as GitHub received it, and the workflow_dispatch event it made
        [body] = [b for m, p, b in fake.requests if m == "POST" and p.endswith("/dispatches")]
        assert body == {"ref": "champion", "inputs": inputs, "return_run_details": True}
        [d] = fake.dispatches
        assert run_id == d["id"] and forge.workflow_run(run_id)["display_title"] == f"arbot-evaluate {inputs['request']}"
        defaults = {"champion_overhead": "", "champion_score_seconds": "", "pull": ""}  # the optional inputs, as declared
        assert d["inputs"] == {**inputs, **defaults} and d["workflow"] == EVALUATE_WORKFLOW and d["ref"] == "refs/heads/champion"
        assert d["sha"] == champion and d["user"] == "arbot-user"
        # splits defaults to val (the workflow's default)
        forge.dispatch(EVALUATE_WORKFLOW, "champion", {k: v for k, v in inputs.items() if k != "splits"})
        assert fake.dispatches[-1]["inputs"]["splits"] == "val"
        # the workflow declares exactly its inputs: anything else is refused, as GitHub does
        for extra in ({"pr": "1"}, {"attempt": "2"}):
            with pytest.raises(GithubException) as e:
                forge.dispatch(EVALUATE_WORKFLOW, "champion", {**inputs, **extra})
            assert e.value.status == 422 and "Unexpected inputs provided" in e.value.data["message"]
        with pytest.raises(GithubException) as e:
            forge.dispatch(EVALUATE_WORKFLOW, "champion", {k: v for k, v in inputs.items() if k != "request"})
        assert e.value.status == 422 and e.value.data["message"] == "Required input 'request' not provided"
        with pytest.raises(GithubException) as e:
            forge.dispatch(EVALUATE_WORKFLOW, "no-such-branch", inputs)
        assert e.value.status == 422
        assert len(fake.dispatches) == 2


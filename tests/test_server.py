"""The webhook server of GitHub mode: signatures, queueing, durable dedup, /healthz; real HTTP against uvicorn."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from bot.config import Config
from bot.server.app import ServerSettings, create_app
from bot.server.dispatch import Dispatcher
from bot.server.events import ChampionMoved, Command, Evaluated, Ignored, Ping, PullRequestClosed, parse_command, route
from bot.server.run import build_app, settings_from_config
from bot.server.store import Budget, Store
from bot.server.webhooks import Event, WebhookError, delivery_headers, parse, sign, verify_signature
from tests.fake_github.contract import webhook_example
from tests.fake_github.serving import serving

SECRET = "It's a Secret to Everybody"
REPO = "Codertocat/Hello-World"  # the repository of the community webhook examples


# --- payloads shaped like GitHub's (the @octokit/webhooks-examples extract) ------------------------
def check_run_completed(name="arbot/evaluate", conclusion="success", pr=7, base="champion") -> dict:
    p = webhook_example("check_run$completed")
    p["check_run"]["name"], p["check_run"]["conclusion"] = name, conclusion
    p["check_run"]["pull_requests"] = [{"number": pr, "id": 1, "url": "", "head": {"ref": "arbot/exp-1", "sha": "a" * 40, "repo": {}},
                                        "base": {"ref": base, "sha": "b" * 40, "repo": {}}}]
    p["check_run"]["head_sha"] = "a" * 40
    return p


def pull_request(action="closed", merged=True, labels=("arbot",), base="champion") -> dict:
    p = webhook_example("pull_request$closed" if action == "closed" else "pull_request$opened")
    p["action"] = action
    p["pull_request"]["merged"] = merged
    p["pull_request"]["labels"] = [{"id": i, "name": n, "color": "ededed"} for i, n in enumerate(labels)]
    p["pull_request"]["base"]["ref"] = base
    p["pull_request"]["head"]["ref"] = "arbot/exp-3"
    return p


def comment(body="/arbot pause", association="OWNER") -> dict:
    p = webhook_example("issue_comment$created")
    p["comment"]["body"], p["comment"]["author_association"] = body, association
    return p


def delivery(payload: dict, event: str, delivery_id: str, secret: str = SECRET) -> tuple[bytes, dict]:
    body = json.dumps(payload).encode()
    return body, delivery_headers(secret, event, delivery_id, body)


# --- pure parts -----------------------------------------------------------------------------------
def test_signature_is_hmac_sha256_of_the_raw_body():
    # GitHub's documented test vector (docs: "Validating webhook deliveries").
    assert sign(SECRET, b"Hello, World!") == "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    verify_signature(SECRET, b"Hello, World!", sign(SECRET, b"Hello, World!"))
    for header in (None, "", "sha256=00", sign("other", b"Hello, World!"), sign(SECRET, b"Hello, World")):
        with pytest.raises(WebhookError) as e:
            verify_signature(SECRET, b"Hello, World!", header)
        assert e.value.status == 401
    with pytest.raises(WebhookError):
        verify_signature("", b"x", sign("", b"x"))  # no secret configured: refuse everything


def test_parse_needs_event_and_delivery_headers():
    body, headers = delivery({"zen": "hi"}, "ping", "d-1")
    event = parse(headers, body, SECRET)
    assert (event.name, event.delivery_id, event.kind) == ("ping", "d-1", "ping")
    assert Event.from_json(event.to_json()) == event
    for missing in ("X-GitHub-Event", "X-GitHub-Delivery"):
        h = {k: v for k, v in headers.items() if k != missing}
        with pytest.raises(WebhookError) as e:
            parse(h, body, SECRET)
        assert e.value.status == 400
    with pytest.raises(WebhookError):
        parse(delivery_headers(SECRET, "ping", "d", b"[1]"), b"[1]", SECRET)


def test_route_maps_events_to_actions():
    ev = lambda payload, name: Event(name, "d", payload)  # noqa: E731
    a = route(ev(check_run_completed(), "check_run"), repo=REPO)
    assert a == Evaluated(head_sha="a" * 40, conclusion="success", source="check_run")
    assert not hasattr(a, "pr")  # a run is found by its request (the check run's external_id), not by a PR
    assert isinstance(route(ev(check_run_completed(name="lint"), "check_run"), repo=REPO), Ignored)
    # a champion's run has no PR at all, and a run on a commit no PR into champion has is still a run
    assert route(ev(check_run_completed(base="main"), "check_run"), repo=REPO) == a
    no_pr = check_run_completed()
    no_pr["check_run"]["pull_requests"] = []
    assert route(ev(no_pr, "check_run"), repo=REPO) == a
    # the evaluate workflow's run completed (GitHub's workflow_run webhook): the nudge that comes when the result
    # can be read; any other workflow's run, or a run still going, is not
    from tests.fake_github.contract import webhook_example

    done = webhook_example("workflow_run$completed")
    done["repository"]["full_name"] = REPO
    done["workflow_run"].update(path=".github/workflows/arbot-evaluate.yml", head_sha="b" * 40, conclusion="failure")
    assert route(ev(done, "workflow_run"), repo=REPO) == Evaluated(head_sha="b" * 40, conclusion="failure",
                                                                  source="workflow_run", run_id=done["workflow_run"]["id"])
    done["workflow_run"]["path"] = ".github/workflows/ci.yml"
    assert route(ev(done, "workflow_run"), repo=REPO) == Ignored("workflow run of '.github/workflows/ci.yml', "
                                                                "not arbot-evaluate.yml")
    done["action"] = "in_progress"
    assert route(ev(done, "workflow_run"), repo=REPO) == Ignored("workflow_run.in_progress")
    queued = check_run_completed()
    queued["action"] = "created"
    assert route(ev(queued, "check_run"), repo=REPO) == Ignored("check_run.created")
    assert isinstance(route(ev(check_run_completed(), "check_run"), repo="someone/else"), Ignored)

    closed = route(ev(pull_request(), "pull_request"), repo=REPO)
    assert isinstance(closed, PullRequestClosed) and closed.merged and closed.head_ref == "arbot/exp-3"
    assert isinstance(route(ev(pull_request(labels=()), "pull_request")), Ignored)
    assert isinstance(route(ev(pull_request(base="main"), "pull_request")), Ignored)
    opened = route(ev(pull_request(action="opened"), "pull_request"))
    assert isinstance(opened, Ignored) and "dispatches its runs itself" in opened.reason  # no run on PR events

    cmd = route(ev(comment(), "issue_comment"), repo=REPO)
    assert isinstance(cmd, Command) and cmd.command == "pause" and cmd.user == "Codertocat" and not cmd.is_pr
    approve = comment("/arbot approve\nread the diff: the timing change is fine")
    approve["issue"]["pull_request"] = {"url": "x"}
    cmd = route(ev(approve, "issue_comment"), repo=REPO)
    assert cmd == Command(command="approve", issue=approve["issue"]["number"], is_pr=True, user="Codertocat",
                          association="OWNER")
    assert isinstance(route(ev(comment(association="NONE"), "issue_comment")), Ignored)
    assert isinstance(route(ev(comment(body="nice work"), "issue_comment")), Ignored)
    assert isinstance(route(ev(comment(), "issue_comment"), bot_login="Codertocat"), Ignored)

    push = webhook_example("push$event")
    push["ref"] = "refs/heads/champion"
    assert isinstance(route(ev(push, "push")), ChampionMoved)
    push["ref"] = "refs/heads/main"
    assert isinstance(route(ev(push, "push")), Ignored)
    assert isinstance(route(ev(webhook_example("ping$event"), "ping")), Ping)
    status = webhook_example("status$event")
    status["context"], status["state"] = "arbot/evaluate", "failure"
    assert route(ev(status, "status")) == Evaluated(head_sha=status["sha"], conclusion="failure", source="status")
    status["state"] = "pending"
    assert isinstance(route(ev(status, "status")), Ignored)
    # a workflow is known by its path, not by its name (any workflow may call itself arbot-evaluate)
    workflow_run = {"action": "completed", "workflow_run": {"name": "arbot-evaluate", "conclusion": "success"},
                    "repository": {"full_name": REPO}}
    assert route(ev(workflow_run, "workflow_run"), repo=REPO) == Ignored("workflow run of None, not arbot-evaluate.yml")
    assert isinstance(route(ev({}, "star")), Ignored)


def test_parse_command():
    assert parse_command("/arbot pause\nbecause the runner is down") == "pause"
    assert parse_command("  /arbot rerun ") == "rerun"
    assert parse_command("/arbot approve") == "approve"
    assert parse_command("/arbot explode") is None
    assert parse_command("please /arbot pause") is None
    assert parse_command("") is None


def test_store_and_budget(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    e = Event("ping", "d-1", {})
    assert store.add(e) and not store.add(e)
    assert store.pending() == [e] and store.state("d-1") == "queued"
    store.finish("d-1")
    assert store.pending() == [] and store.counts()["done"] == 1
    budget = Budget(store, experiments_per_day=2, runner_minutes_per_day=10)
    assert budget.exhausted() is None
    budget.record_experiment()
    budget.record_runner_seconds(120)
    assert budget.state()["experiments_today"] == 1 and budget.state()["runner_minutes_today"] == 2.0
    budget.record_experiment()
    assert "2 of 2 experiments" in budget.exhausted() and budget.state()["exhausted"]
    budget.record_runner_seconds(3600)
    assert Budget(store, runner_minutes_per_day=10).exhausted().startswith("daily cap reached: 62.0 of 10 runner")
    store.close()


# --- over HTTP ------------------------------------------------------------------------------------
class Recorder:
    """A handler that records deliveries; fails on demand."""

    def __init__(self, fail: set[str] = frozenset()):
        self.events: list[Event] = []
        self.fail = set(fail)
        self.cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()
        if event.delivery_id in self.fail:
            raise RuntimeError("boom")

    def wait(self, n: int, timeout: float = 10) -> list[str]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.events) >= n, timeout), self.events
        return [e.delivery_id for e in self.events]


def settings(tmp_path, **kw) -> ServerSettings:
    return ServerSettings(secret=SECRET, state_path=tmp_path / "state.sqlite", repo=REPO, **kw)


def wait_state(store: Store, delivery_id: str, state: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while store.state(delivery_id) != state:
        assert time.monotonic() < deadline, (delivery_id, store.state(delivery_id))
        time.sleep(0.02)


def test_unsigned_or_wrongly_signed_deliveries_get_401(tmp_path):
    handler = Recorder()
    with serving(create_app(settings(tmp_path), handler)) as url:
        body, headers = delivery(check_run_completed(), "check_run", "d-401")
        unsigned = {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}
        r = httpx.post(f"{url}/webhook", content=body, headers=unsigned)
        assert r.status_code == 401 and "unsigned" in r.json()["error"]
        for bad in (sign("wrong secret", body), sign(SECRET, body + b" "), "sha1=" + "0" * 40):
            r = httpx.post(f"{url}/webhook", content=body, headers={**headers, "X-Hub-Signature-256": bad})
            assert r.status_code == 401
        # tampered body, original signature
        r = httpx.post(f"{url}/webhook", content=body.replace(b"success", b"failure"), headers=headers)
        assert r.status_code == 401
        assert httpx.get(f"{url}/healthz").json()["deliveries"] == {"queued": 0, "done": 0, "failed": 0}
    assert handler.events == []


def test_signed_delivery_is_queued_and_a_redelivery_handled_once(tmp_path):
    handler = Recorder()
    app = create_app(settings(tmp_path), handler)
    with serving(app) as url:
        body, headers = delivery(check_run_completed(), "check_run", "d-1")
        r = httpx.post(f"{url}/webhook", content=body, headers=headers)
        assert r.status_code == 202 and r.json() == {"queued": "d-1", "event": "check_run.completed"}
        assert handler.wait(1) == ["d-1"]
        wait_state(app.state.store, "d-1", "done")
        r = httpx.post(f"{url}/webhook", content=body, headers=headers)  # GitHub's redelivery: same id, same body
        assert r.status_code == 200 and r.json() == {"duplicate": "d-1", "state": "done"}
        body2, headers2 = delivery(comment(), "issue_comment", "d-2")
        assert httpx.post(f"{url}/webhook", content=body2, headers=headers2).status_code == 202
        assert handler.wait(2) == ["d-1", "d-2"]
        wait_state(app.state.store, "d-2", "done")
        health = httpx.get(f"{url}/healthz").json()
    assert [e.delivery_id for e in handler.events] == ["d-1", "d-2"]
    assert handler.events[0].payload["check_run"]["name"] == "arbot/evaluate"
    assert health["status"] == "ok" and health["queue"] == 0 and health["deliveries"]["done"] == 2
    assert health["paused"] is False and health["budget"]["exhausted"] is False


def test_restart_keeps_dedup_state_and_runs_what_was_left(tmp_path):
    first = Recorder()
    body, headers = delivery(check_run_completed(), "check_run", "d-1")
    with serving(create_app(settings(tmp_path), first)) as url:
        assert httpx.post(f"{url}/webhook", content=body, headers=headers).status_code == 202
        first.wait(1)
    # A delivery accepted just before a crash: recorded as queued, never handled.
    store = Store(tmp_path / "state.sqlite")
    wait_state(store, "d-1", "done")
    store.add(Event("pull_request", "d-crash", pull_request()))
    store.close()

    second = Recorder()
    app = create_app(settings(tmp_path), second)
    with serving(app) as url:
        assert second.wait(1) == ["d-crash"]  # resumed at start
        r = httpx.post(f"{url}/webhook", content=body, headers=headers)
        assert r.status_code == 200 and r.json()["duplicate"] == "d-1"
        wait_state(app.state.store, "d-crash", "done")
        time.sleep(0.2)
    assert [e.delivery_id for e in second.events] == ["d-crash"]


def test_failed_delivery_is_logged_with_its_id_and_retried_on_redelivery(tmp_path, caplog):
    handler = Recorder(fail={"d-bad"})
    app = create_app(settings(tmp_path), handler)
    with caplog.at_level(logging.INFO, logger="arbot.server"), serving(app) as url:
        body, headers = delivery(check_run_completed(), "check_run", "d-bad")
        assert httpx.post(f"{url}/webhook", content=body, headers=headers).status_code == 202
        wait_state(app.state.store, "d-bad", "failed")
        assert app.state.store.error("d-bad") == "RuntimeError: boom"
        assert httpx.get(f"{url}/healthz").json()["deliveries"]["failed"] == 1
        handler.fail.clear()
        r = httpx.post(f"{url}/webhook", content=body, headers=headers)
        assert r.status_code == 202 and r.json()["retry"] is True
        wait_state(app.state.store, "d-bad", "done")
    assert len(handler.events) == 2
    assert any("d-bad" in rec.getMessage() and "boom" in rec.getMessage() and rec.levelno == logging.ERROR
               for rec in caplog.records)


def test_pause_comment_and_config_switch_show_on_healthz(tmp_path):
    store = Store(tmp_path / "state.sqlite")
    app = create_app(settings(tmp_path, experiments_per_day=0), Dispatcher(store, repo=REPO), store)
    with serving(app) as url:
        assert httpx.get(f"{url}/healthz").json()["paused"] is False
        body, headers = delivery(comment("/arbot pause"), "issue_comment", "d-p")
        assert httpx.post(f"{url}/webhook", content=body, headers=headers).status_code == 202
        wait_state(store, "d-p", "done")
        health = httpx.get(f"{url}/healthz").json()
        assert health["paused"] is True
        assert health["budget"]["exhausted"] and "0 of 0 experiments" in health["budget"]["reason"]
        body, headers = delivery(comment("/arbot resume"), "issue_comment", "d-r")
        httpx.post(f"{url}/webhook", content=body, headers=headers)
        wait_state(store, "d-r", "done")
        assert httpx.get(f"{url}/healthz").json()["paused"] is False
        # No driver (no credentials): an evaluation is recorded as failed with the reason (a redelivery runs it later).
        body, headers = delivery(check_run_completed(), "check_run", "d-e")
        httpx.post(f"{url}/webhook", content=body, headers=headers)
        wait_state(store, "d-e", "failed")
        assert "needs the GitHub driver" in store.error("d-e")
    paused_app = create_app(settings(tmp_path, paused=True), Recorder())
    with serving(paused_app) as url:
        assert httpx.get(f"{url}/healthz").json()["paused"] is True


def test_commands_need_write_access_when_github_can_be_asked(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    asked = []
    dispatcher = Dispatcher(store, repo=REPO, can_write=lambda user: asked.append(user) or user == "maintainer")
    dispatcher(Event("issue_comment", "d-1", comment("/arbot pause")))  # from Codertocat: OWNER, but no write access
    assert store.flag("paused") is None and asked == ["Codertocat"]
    c = comment("/arbot pause")
    c["comment"]["user"]["login"] = "maintainer"
    dispatcher(Event("issue_comment", "d-2", c))
    assert store.flag("paused") == "1"
    store.close()


class DriverStub:
    """Records the driver methods the dispatcher calls (bot.server.driver.Driver's entry points)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args, **_: self.calls.append((name, *args))


def test_the_dispatcher_hands_every_action_to_the_driver_then_advances_all(tmp_path):
    store, driver = Store(tmp_path / "s.sqlite"), DriverStub()
    dispatch = Dispatcher(store, repo=REPO, driver=driver)

    def calls(event_name: str, payload: dict) -> list[tuple]:
        driver.calls.clear()
        dispatch(Event(event_name, "d-1", payload))  # called directly: no delivery dedup here
        return list(driver.calls)

    on_pr = lambda body: {**comment(body), "issue": {**comment(body)["issue"], "pull_request": {"url": "x"}}}  # noqa: E731
    number = comment()["issue"]["number"]
    merged = pull_request("closed", merged=True)["pull_request"]["number"]
    push = {"ref": "refs/heads/champion", "before": "b" * 40, "after": "c" * 40, "repository": {"full_name": REPO}}
    # the evaluate workflow's run completed: that run is read, and the experiments carried on
    done = webhook_example("workflow_run$completed")
    done["repository"]["full_name"] = REPO
    done["workflow_run"]["path"] = ".github/workflows/arbot-evaluate.yml"
    assert calls("workflow_run", done) == [("advance_all", (done["workflow_run"]["id"],))]
    # its report job's check run (or commit status, with a PAT) comes before the run completes: no run is read
    assert calls("check_run", check_run_completed()) == [("advance_all", ())]
    status = webhook_example("status$event")
    status["context"], status["state"] = "arbot/evaluate", "success"
    assert calls("status", status) == [("advance_all", ())]
    # a merge (auto-merge or a human) is recorded first; a PR closed unmerged just advances
    assert calls("pull_request", pull_request("closed", merged=True)) == [("record_merged_pr", merged),
                                                                         ("advance_all", ())]
    assert calls("pull_request", pull_request("closed", merged=False)) == [("pr_closed", merged), ("advance_all", ())]
    assert calls("issue_comment", on_pr("/arbot evaluate")) == [("adopt", number), ("advance_all", ())]
    # champion moved by hand: the lifecycle replays what was measured on the old one
    assert calls("push", push) == [("advance_all", ())]
    # commands on a PR
    assert calls("issue_comment", on_pr("/arbot rerun")) == [("rerun", number), ("advance_all", ())]
    assert calls("issue_comment", on_pr("/arbot approve")) == [("approve", number), ("advance_all", ())]
    assert calls("issue_comment", comment("/arbot approve")) == [("advance_all", ())]  # an issue: nothing to approve
    # pause and resume are the store's switch; resume proposes at once
    assert calls("issue_comment", comment("/arbot pause")) == [] and store.flag("paused") == "1"
    assert calls("issue_comment", comment("/arbot resume")) == [("fill",)] and store.flag("paused") is None
    # nothing for the driver
    workflow_run = {"action": "completed", "workflow_run": {"name": "arbot-evaluate"}, "repository": {"full_name": REPO}}
    assert calls("workflow_run", workflow_run) == []
    assert calls("check_run", check_run_completed(name="lint")) == []
    assert calls("pull_request", pull_request(action="opened")) == []
    assert calls("ping", webhook_example("ping$event")) == []
    store.close()


def test_a_failing_driver_action_fails_the_delivery(tmp_path):
    """An approve on a PR that is not held raises: the delivery is recorded as failed, with the reason."""
    from bot.github.forge import GitHubForgeError

    class Refusing(DriverStub):
        def approve(self, number):
            raise GitHubForgeError(f"PR #{number} (exp-1) is not a win waiting for review")

    store, driver = Store(tmp_path / "state.sqlite"), Refusing()
    app = create_app(settings(tmp_path), Dispatcher(store, repo=REPO, driver=driver), store, on_start=driver.advance_all)
    with serving(app) as url:
        approve = comment("/arbot approve")
        approve["issue"]["pull_request"] = {"url": "x"}
        body, headers = delivery(approve, "issue_comment", "d-a")
        assert httpx.post(f"{url}/webhook", content=body, headers=headers).status_code == 202
        wait_state(store, "d-a", "failed")
        assert store.error("d-a") == "GitHubForgeError: PR #1 (exp-1) is not a win waiting for review"
    assert driver.calls == [("advance_all",)]  # on start only: the failed approve advanced nothing


def test_settings_need_the_webhook_secret(tmp_path):
    cfg = Config.model_validate({"github": {"repo": REPO, "state_path": "state/s.sqlite"}})
    with pytest.raises(Exception, match="ARBOT_WEBHOOK_SECRET"):
        settings_from_config(cfg, tmp_path, environ={})
    s = settings_from_config(cfg, tmp_path, environ={"ARBOT_WEBHOOK_SECRET": "x"})
    assert s.state_path == tmp_path / "state" / "s.sqlite" and s.repo == REPO
    app = build_app(cfg, tmp_path, environ={"ARBOT_WEBHOOK_SECRET": "x"})  # contacts nothing
    assert app.state.worker.handler.can_write is None  # no token: author_association only
    app = build_app(cfg, tmp_path, environ={"ARBOT_WEBHOOK_SECRET": "x", "ARBOT_GITHUB_TOKEN": "t"})
    assert app.state.worker.handler.can_write.__name__ == "has_write_access"  # built, not called
    driver = app.state.worker.handler.driver
    assert driver is not None and app.state.worker.on_start == driver.advance_all  # a restart rebuilds from GitHub
    assert (tmp_path / ".arbot" / "github.git").is_dir()  # the bot's mirror


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_arbot_serve_command(tmp_path):
    port = free_port()
    env = {**os.environ, "ARBOT_WEBHOOK_SECRET": SECRET}
    arbot = Path(sys.executable).parent / "arbot"
    proc = subprocess.Popen([str(arbot), "serve", "--host", "127.0.0.1", "--port", str(port), "--repo", str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
                time.sleep(0.2)
        assert health["status"] == "ok"
        body, headers = delivery(webhook_example("ping$event"), "ping", "d-ping")
        assert httpx.post(f"http://127.0.0.1:{port}/webhook", content=body, headers={**headers, "X-Hub-Signature-256": "sha256=0"}).status_code == 401
        assert httpx.post(f"http://127.0.0.1:{port}/webhook", content=body, headers=headers).status_code == 202
        assert httpx.post(f"http://127.0.0.1:{port}/webhook", content=body, headers=headers).status_code == 200
    finally:
        proc.terminate()
        proc.wait(20)
    assert (tmp_path / ".arbot" / "server.sqlite").exists()


def test_the_worker_catches_up_when_no_delivery_comes(tmp_path):
    """`on_start` (GitHub mode: advance_all) runs at start, then again after `every` idle seconds, so a merge
    GitHub refused once, or a run whose webhook was lost, is picked up without another event."""
    from bot.server.app import Worker

    store = Store(tmp_path / "state.sqlite")
    calls: list[float] = []
    handled: list[str] = []

    def catch_up():
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("GitHub answered 502")  # a failed catch-up is logged; the worker goes on

    worker = Worker(store, lambda e: handled.append(e.delivery_id), on_start=catch_up, every=0.05)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while len(calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        event = Event(name="ping", delivery_id="d-1", payload={"zen": "z"})
        store.add(event)
        worker.put(event)
        while not handled and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
        store.close()
    assert len(calls) >= 4 and handled == ["d-1"]

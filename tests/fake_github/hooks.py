"""Webhook deliveries from the fake GitHub: payloads built from the community examples, checked against
@octokit/webhooks-schemas (the extract in webhook-schemas-subset.json), signed and POSTed like GitHub does.

Deliveries go out from one background thread, in order, so the fake's request handlers never wait on the bot.
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from dataclasses import dataclass, field

import httpx

from bot.server.webhooks import delivery_headers
from tests.fake_github.contract import ContractError, validate_webhook, webhook_example

# Fields newer webhook schemas require on a repository that the community examples predate.
REPOSITORY_DEFAULTS = {"is_template": False, "web_commit_signoff_required": False, "topics": [],
                       "visibility": "private", "custom_properties": {}}
REACTIONS = {"url": "https://api.github.test/reactions", "total_count": 0, "+1": 0, "-1": 0, "laugh": 0,
             "hooray": 0, "confused": 0, "heart": 0, "rocket": 0, "eyes": 0}  # newer schemas require them


@dataclass
class Delivery:
    id: str
    event: str
    payload: dict
    status: int | None = None
    answer: str = ""


@dataclass
class Hooks:
    url: str | None = None
    secret: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="fake-github-hooks", daemon=True)
        self._thread.start()

    def emit(self, definition: str, event: str, payload: dict) -> Delivery:
        """Validate the payload against its schema, then queue its delivery."""
        try:
            validate_webhook(definition, payload)
        except ContractError as e:
            self.violations.append(str(e))
        d = Delivery(id=str(uuid.uuid4()), event=event, payload=payload)
        self.deliveries.append(d)
        self._queue.put(d)
        return d

    def redeliver(self, delivery: Delivery) -> int:
        """GitHub's "Redeliver": the same delivery id and body again; returns the HTTP status."""
        return self._post(delivery)

    def flush(self, timeout: float = 10) -> None:
        """Wait until every queued delivery was posted."""
        done = threading.Event()
        self._queue.put(done)  # type: ignore[arg-type]
        assert done.wait(timeout), "webhook deliveries did not finish"

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)

    def _post(self, d: Delivery) -> int:
        body = json.dumps(d.payload).encode()
        r = httpx.post(self.url, content=body, headers=delivery_headers(self.secret, d.event, d.id, body), timeout=10)
        d.status, d.answer = r.status_code, r.text
        return r.status_code

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            if self.url:
                try:
                    self._post(item)
                except httpx.HTTPError as e:
                    item.answer = f"{type(e).__name__}: {e}"


def repository(full_name: str, private: bool = True) -> dict:
    owner, name = full_name.split("/")
    repo = webhook_example("pull_request$synchronize")["repository"]
    repo.update(REPOSITORY_DEFAULTS, name=name, full_name=full_name, private=private)
    repo["owner"]["login"] = owner
    return repo


def sender(login: str) -> dict:
    s = webhook_example("pull_request$synchronize")["sender"]
    s.update(login=login, type="Bot" if login.endswith("[bot]") else "User")
    return s


def pull_request_payload(action: str, full_name: str, pr: dict, user: str, before: str | None = None,
                         label: dict | None = None) -> tuple[str, dict]:
    """(schema definition, payload) of a pull_request event; `pr` is the REST PR JSON of the fake, `user` the sender
    (who pushed, labelled, opened), `before` the head a synchronize moved from, `label` the one a `labeled` added."""
    definition = "pull_request$closed" if action == "closed" else "pull_request$synchronize"
    p = webhook_example(definition)
    p["action"] = action
    p["number"] = pr["number"]
    wpr = p["pull_request"]
    for key in ("number", "id", "node_id", "title", "body", "state", "merged", "merged_at", "merge_commit_sha",
                "closed_at", "html_url", "url", "issue_url", "mergeable"):
        wpr[key] = pr[key]
    wpr["labels"] = [{**lab, "description": lab.get("description") or ""} for lab in pr["labels"]]
    wpr["auto_merge"] = None
    wpr["user"] = {**wpr["user"], "login": pr["user"]["login"], "type": pr["user"]["type"]}
    wpr["author_association"] = pr["author_association"]
    for side in ("head", "base"):
        wpr[side].update(ref=pr[side]["ref"], sha=pr[side]["sha"], label=pr[side]["label"])
        wpr[side]["repo"] = repository(pr[side]["repo"]["full_name"])
        wpr[side]["repo"]["fork"] = pr[side]["repo"]["fork"]
    if action == "synchronize":
        p["before"], p["after"] = before or p.get("before") or "0" * 40, pr["head"]["sha"]
    if action not in ("closed", "synchronize"):
        p.pop("before", None)
        p.pop("after", None)
        definition = f"pull_request${action}"
    if action == "labeled":
        p["label"] = {**label, "description": label.get("description") or ""}
    p["repository"] = repository(full_name)
    p["sender"] = sender(user)
    return definition, p


def issue_comment_payload(full_name: str, pr: dict, comment: dict, user: str) -> tuple[str, dict]:
    """issue_comment.created for a comment of the fake on a PR (`pr`, `comment`: its REST JSON)."""
    p = webhook_example("issue_comment$created")
    issue = p["issue"]
    issue.update(number=pr["number"], title=pr["title"], state=pr["state"], locked=False,
                 labels=[{**lab, "description": lab.get("description") or ""} for lab in pr["labels"]],
                 pull_request={"url": pr["url"], "html_url": pr["html_url"], "diff_url": pr["diff_url"],
                               "patch_url": pr["patch_url"], "merged_at": pr["merged_at"]})
    issue["user"] = {**issue["user"], "login": pr["user"]["login"]}
    issue.update(active_lock_reason=None, reactions=REACTIONS)
    c = p["comment"]
    c.update(id=comment["id"], body=comment["body"], author_association=comment["author_association"],
             created_at=comment["created_at"], updated_at=comment["updated_at"], performed_via_github_app=None,
             reactions=REACTIONS)
    c["user"] = {**c["user"], "login": user, "type": "Bot" if user.endswith("[bot]") else "User"}
    p["repository"] = repository(full_name)
    p["sender"] = sender(user)
    return "issue_comment$created", p


def check_run_payload(full_name: str, run: dict, prs: list[dict], user: str) -> tuple[str, dict]:
    """check_run.completed for a run of the fake; `prs` are the open PRs whose head is the run's sha."""
    p = webhook_example("check_run$completed")
    cr = p["check_run"]
    cr.update(id=run["id"], name=run["name"], head_sha=run["head_sha"], status="completed", conclusion=run["conclusion"],
              details_url=run.get("details_url") or cr.get("details_url"), external_id=run.get("external_id") or "")
    cr["check_suite"]["head_sha"] = run["head_sha"]
    cr["pull_requests"] = [{"id": pr["id"], "number": pr["number"], "url": pr["url"],
                            "head": {"ref": pr["head"]["ref"], "sha": pr["head"]["sha"], "repo": _mini_repo(full_name)},
                            "base": {"ref": pr["base"]["ref"], "sha": pr["base"]["sha"], "repo": _mini_repo(full_name)}}
                           for pr in prs]
    cr["check_suite"]["pull_requests"] = cr["pull_requests"]
    p["repository"] = repository(full_name)
    p["sender"] = sender(user)
    return "check_run$completed", p


def workflow_run_payload(full_name: str, run: dict, user: str) -> tuple[str, dict]:
    """workflow_run.completed for a workflow run of the fake (its dict in fake.runs)."""
    p = webhook_example("workflow_run$completed")
    wr = p["workflow_run"]
    wr.update({key: run[key] for key in ("id", "name", "path", "event", "head_branch", "head_sha", "display_title",
                                         "status", "conclusion", "run_attempt", "run_number", "workflow_id",
                                         "created_at", "updated_at", "run_started_at")})
    wr.update(pull_requests=[], actor=sender(run["actor"]), triggering_actor=sender(run["triggering_actor"]))
    wr["head_commit"]["id"] = run["head_sha"]
    p["workflow"].update(id=run["workflow_id"], name=run["name"], path=run["path"])
    p["repository"] = repository(full_name)
    wr["repository"] = wr["head_repository"] = {**wr["repository"], "full_name": full_name,
                                                "name": full_name.split("/")[1]}
    p["sender"] = sender(user)
    return "workflow_run$completed", p


def _mini_repo(full_name: str) -> dict:
    return {"id": abs(hash(full_name)) % 10**8, "name": full_name.split("/")[1], "url": f"https://api.github.test/repos/{full_name}"}


def status_payload(full_name: str, status: dict, user: str) -> tuple[str, dict]:
    """A `status` event for a commit status the fake stored."""
    p = webhook_example("status$event")
    p.update(id=status["id"], sha=status["sha"], state=status["state"], context=status["context"],
             description=status.get("description"), target_url=status.get("target_url"),
             name=full_name, created_at=status["created_at"], updated_at=status["created_at"])
    p["commit"]["sha"] = status["sha"]
    p["repository"] = repository(full_name)
    p["sender"] = sender(user)
    return "status$event", p

"""A stateful fake of the GitHub REST API (and the one GraphQL mutation arbot uses), for one repository.

Refs and merges are real: the repository is a bare git repository the bot pushes to, and merges,
squashes are made with git there. PRs, labels, comments, check runs, statuses, branch
protection, auto-merge, workflow runs and artifacts are kept in memory and behave like GitHub's for the cases
arbot meets:
- merge (PUT .../merge) honours the `sha` guard (409), required checks and "up to date" protection (405), and the
  branch's push `restrictions` (405 "You're not authorized to push to this branch. ...");
- branch protection (PUT .../protection) keeps `checks[].app_id`: a required check pinned to an App is satisfied
  only by a check run of that App ("Required status check "X" was not set by the expected GitHub app." otherwise);
  `restrictions` are refused on a user-owned repository (422, GitHub's message); code-owner review settings are
  stored and read back but not enforced (arbot's PRs change only target/, which no code owner owns). Not modelled:
  administrators bypassing the rules while `enforce_admins` is off (GitHub's default), teams, pushes to the bare
  repository (never checked against protection);
- auto-merge (GraphQL enablePullRequestAutoMerge) needs the repository's allow_auto_merge (false by default, as on
  a new repository; PATCH /repos/{owner}/{repo} sets it) and a pull request that is not already mergeable
  ("Pull request Pull request is in clean status"); it merges (squash, with the given headline and body) as soon as
  the requirements hold, and is cancelled when the head moves;
- workflow dispatch (POST .../actions/workflows/{workflow_id}/dispatches) reads the workflow file from the git tree
  of the ref, checks its `on.workflow_dispatch` inputs like GitHub does (422 with GitHub's messages), creates a
  queued workflow run (GET .../actions/runs/{run_id}, GET .../actions/workflows/{workflow_id}/runs), records the
  dispatch in `dispatches` and hands it to `on_dispatch` (if set) on a background thread: no job runs here, the
  test plays it, then calls complete_run() and add_artifact(). `flush_dispatches()` waits for those callbacks;
- artifacts (GET .../actions/runs/{run_id}/artifacts) download like GitHub's: GET .../actions/artifacts/{id}/zip
  answers 302 to a short-lived, unauthenticated URL (here /_artifacts/<id>/<token>.zip on the fake itself);
- a workflow run started from a tag reports the tag's name as `head_branch`, as GitHub does (a tag named like the
  default branch looks like it); `actor` and `triggering_actor` are who dispatched it;
- conditional requests: every GET answers with an ETag, and a request whose If-None-Match names the current one
  answers 304 Not Modified with no body (counted in `not_modified`), as GitHub does;
- rulesets (POST/GET .../rulesets): a tag ruleset with a `creation` rule refuses to create tags its
  `conditions.ref_name.include` patterns match (POST .../git/refs: 422; a git push: declined by the pre-receive hook);
- pushes to the bare repository go through a pre-receive hook that enforces branch protection as GitHub does for a
  user who is not an administrator: a protected branch that requires pull requests takes no direct push ("protected
  branch hook declined"); the hook reads the rules from `rules.json` in the bare repository, which the fake keeps;
- a check run created with the Actions token (login github-actions[bot]) loses the `details_url` it was sent, as on
  GitHub (actions/github-script#143, LouisBrunner/checks-action#18): it points to the check run's own page.
Every request and response is validated against the OpenAPI subset GitHub publishes (contract.py); a
violation answers 500 and is kept in `violations`, which the tests assert to be empty.
Only the operations of scripts/extract_openapi.py's OPERATIONS exist here.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import re
import secrets
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import jwt
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.fake_github.contract import ContractError, load, operation, validate_request, validate_response
from tests.fake_github.hooks import (Hooks, check_run_payload, issue_comment_payload, pull_request_payload, status_payload,
                                     workflow_run_payload)

AUTOMERGE_INPUT = {"pullRequestId", "mergeMethod", "commitHeadline", "commitBody", "expectedHeadOid",
                   "authorEmail", "clientMutationId"}  # EnablePullRequestAutoMergeInput (GraphQL schema)
ZERO = "0" * 40
ACTIONS_LOGIN = "github-actions[bot]"  # who the Actions GITHUB_TOKEN acts as
ACTIONS_APP_ID = 15368  # the github-actions app's id on github.com
DOWNLOAD_SECONDS = 60  # "This URL expires after 1 minute" (GET .../actions/artifacts/{id}/{archive_format})
NOT_AUTHORIZED = ("You're not authorized to push to this branch. "
                  "Visit https://docs.github.com/articles/about-protected-branches/ for more information.")
BOOLEAN_RULES = ("required_linear_history", "allow_force_pushes", "allow_deletions", "block_creations",
                 "required_conversation_resolution", "lock_branch", "allow_fork_syncing")
ORG_ONLY = "Only organization repositories can have users and team restrictions"
ROLES = ("read", "triage", "write", "maintain", "admin")  # collaborator roles, least to most
EXPRESSION = re.compile(r"\$\{\{\s*(?:github\.event\.)?inputs\.([A-Za-z_][\w-]*)\s*\}\}")


PRE_RECEIVE = """#!{python}
# The fake GitHub's rules on pushes (tests/fake_github/server.py writes rules.json): a branch whose protection
# requires pull requests takes no direct push; a tag a ruleset's creation rule covers is not created.
import fnmatch, json, os, sys
rules = json.load(open("rules.json")) if os.path.exists("rules.json") else {{"pull_request_only": [], "no_creation": []}}
refused = []
for line in sys.stdin:
    old, new, ref = line.split()
    if ref.startswith("refs/heads/") and ref[len("refs/heads/"):] in rules["pull_request_only"]:
        refused.append(f"{{ref}}: Changes must be made through a pull request.")
    if old == "0" * 40 and any(fnmatch.fnmatchcase(ref, p) for p in rules["no_creation"]):
        refused.append(f"{{ref}}: Cannot create ref due to creations being restricted.")
for why in refused:
    print(f"remote: error: GH013: Repository rule violations found for {{why}}", file=sys.stderr)
if refused:
    print("remote: error: protected branch hook declined", file=sys.stderr)
sys.exit(1 if refused else 0)
"""


def now(offset: timedelta = timedelta(0)) -> str:
    return (datetime.now(timezone.utc) + offset).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Redirect:
    """A 302 answer with this Location (the REST handler returns it without a body)."""

    location: str


class HTTPError(Exception):
    def __init__(self, status: int, message: str, **extra):
        self.status, self.body = status, {"message": message, "documentation_url": "https://docs.github.com/rest",
                                          **extra}


@dataclass
class PR:
    number: int
    title: str
    body: str
    head: str
    base: str
    user: str
    state: str = "open"
    merged: bool = False
    merge_commit_sha: str | None = None
    labels: list[str] = field(default_factory=list)
    auto_merge: dict | None = None
    created_at: str = field(default_factory=now)
    closed_at: str | None = None
    merged_at: str | None = None
    last_head: str = ""  # the head sha while the branch existed
    fork: str | None = None  # owner/name of the fork its head is in (None: a branch of this repository)


class FakeGitHub:
    def __init__(self, root: Path, owner: str = "octo-org", name: str = "research", token: str = "ghp_test",
                 login: str = "arbot-user", app: tuple[int, str, int] | None = None, app_slug: str = "arbot-app",
                 owner_type: str = "Organization"):
        """`app` = (app_id, public key PEM, installation_id) enables GitHub App auth; the App is `app_slug` and its
        installation tokens act as `<app_slug>[bot]`. `owner_type` "User" makes a personal repository (no push
        restrictions)."""
        self.owner, self.name, self.full_name = owner, name, f"{owner}/{name}"
        self.owner_type = owner_type
        self.bare = root / f"{name}.git"
        subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(self.bare)], check=True)
        hook = self.bare / "hooks" / "pre-receive"
        hook.write_text(PRE_RECEIVE.format(python=sys.executable))
        hook.chmod(0o755)
        self.tokens = {token: login}
        self.app = app
        self.app_slug = app_slug
        # The App's permissions and events (GET /app); its installation on this repository has them too, and is
        # answered by GET /repos/{owner}/{repo}/installation while `installed`.
        self.app_permissions = {"actions": "write", "checks": "write", "contents": "write", "issues": "write",
                                "metadata": "read", "pull_requests": "write"}
        self.app_events = ["check_run", "issue_comment", "pull_request", "push", "workflow_run"]
        self.installed = True
        self.lock = threading.RLock()
        self.prs: dict[int, PR] = {}
        self.comments: dict[int, dict] = {}
        self.labels: dict[str, dict] = {}
        self.check_runs: list[dict] = []
        self.statuses: list[dict] = []
        self.protection: dict[str, dict] = {}
        self.collaborators: dict[str, str] = {login: "admin"}
        self.allow_auto_merge = False  # a new repository's setting; PATCH /repos/{owner}/{repo} changes it
        # False: a server that answers a dispatch with 204 and no run id whatever it was asked (older GitHub Enterprise)
        self.run_details = True
        self.default_branch = "main"
        self.requests: list[tuple[str, str, Any]] = []
        self.calls: list[tuple[str, str, str]] = []  # each authenticated request: method, path, who (login, or "app")
        # workflow_dispatch events accepted (POST .../actions/workflows/{workflow_id}/dispatches), oldest first:
        # {id (the new workflow run's id), workflow (file name), workflow_id, ref (refs/heads/NAME or
        # refs/tags/NAME), head_branch, sha (the ref's commit at dispatch time), inputs (every declared input, as
        # strings, defaults filled in), user}
        self.dispatches: list[dict] = []
        # Called with each accepted dispatch (a copy), one at a time in dispatch order, on a worker thread (never in
        # the request handler, so it may call the fake over HTTP). Wait for it with flush_dispatches().
        self.on_dispatch: Callable[[dict], Any] | None = None
        self.workflows: dict[str, int] = {}  # workflow file name -> numeric workflow id (see workflow_id())
        # Workflow runs, one per accepted dispatch, by id: {id, workflow (file name), workflow_id, name, path, event,
        # head_branch, head_sha, display_title, actor, triggering_actor, status, conclusion, run_attempt, run_number,
        # created_at, updated_at, run_started_at}. Tests move them on with start_run() and complete_run().
        self.runs: dict[int, dict] = {}
        # Artifacts by id: {id, run_id, name, zip (bytes), created_at, expires_at, expired}; see add_artifact().
        self.artifacts: dict[int, dict] = {}
        self.downloads: dict[str, tuple[int, float]] = {}  # token -> (artifact id, expiry time.monotonic())
        self._actions: ThreadPoolExecutor | None = None
        self._played: list[Future] = []
        self.violations: list[str] = []
        self.not_modified: list[str] = []  # paths answered 304 Not Modified (conditional GETs)
        self.rulesets: list[dict] = []  # POST .../rulesets bodies, with id and timestamps
        self._ids = 100
        self.api = ""  # set from the first request: http://127.0.0.1:PORT/api/v3
        self.hooks = Hooks()  # set hooks.url and hooks.secret to send signed webhooks to a bot
        self.app_ = self._build()

    # --- git --------------------------------------------------------------------------------------
    def git(self, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        import os

        e = {**os.environ, "GIT_AUTHOR_NAME": "GitHub", "GIT_AUTHOR_EMAIL": "noreply@github.com",
             "GIT_COMMITTER_NAME": "GitHub", "GIT_COMMITTER_EMAIL": "noreply@github.com", **(env or {})}
        return subprocess.run(["git", "--git-dir", str(self.bare), *args], check=check, capture_output=True, text=True, env=e)

    def ref(self, branch: str) -> str | None:
        r = self.git("rev-parse", "--verify", "-q", f"refs/heads/{branch}^{{commit}}", check=False)
        return r.stdout.strip() or None

    def is_ancestor(self, a: str, b: str) -> bool:
        return self.git("merge-base", "--is-ancestor", a, b, check=False).returncode == 0

    def merge_tree(self, base: str, head: str) -> str | None:
        r = self.git("merge-tree", "--write-tree", base, head, check=False)
        return r.stdout.split()[0] if r.returncode == 0 else None

    def message(self, sha: str) -> str:
        return self.git("log", "-1", "--format=%B", sha).stdout

    def head_sha(self, pr: PR) -> str:
        """The PR's head: its branch here, or for a fork refs/pull/<n>/head (what GitHub keeps of a fork's head,
        fetchable from this repository); the branch's head is mirrored to refs/pull/<n>/head as GitHub does."""
        if pr.fork is not None:
            pr.last_head = self.git("rev-parse", "--verify", "-q", f"refs/pull/{pr.number}/head", check=False).stdout.strip()
            return pr.last_head
        sha = self.ref(pr.head)
        if sha and sha != pr.last_head:
            self.git("update-ref", f"refs/pull/{pr.number}/head", sha)
        if sha:
            pr.last_head = sha
        return pr.last_head

    def association(self, login: str) -> str:
        """A user's author_association here: OWNER (the repository's owner), COLLABORATOR (any collaborator role),
        else CONTRIBUTOR."""
        if login == self.owner:
            return "OWNER"
        return "COLLABORATOR" if login in self.collaborators else "CONTRIBUTOR"

    # --- what people and agents do (tests call these; each emits GitHub's webhook) ---------------------------------
    def open_fork_pr(self, author: str, ref: str, sha: str, title: str, body: str = "") -> PR:
        """`author` opens a PR from their fork `<author>/<name>` (branch `ref`, whose commit `sha` the test pushed
        to refs/pull/<n>/head of this repository first: `next_pr_number`) into champion."""
        with self.lock:
            number = self.next_pr_number()
            assert self.git("rev-parse", "--verify", "-q", f"refs/pull/{number}/head", check=False).stdout.strip() == sha
            pr = PR(number=number, title=title, body=body, head=ref, base="champion", user=author,
                    fork=f"{author}/{self.name}")
            self.prs[number] = pr
        self._emit_pr("opened", pr, author)
        return pr

    def next_pr_number(self) -> int:
        return max([*self.prs, *[c["issue"] for c in self.comments.values()], 0]) + 1

    def push_pr(self, number: int, sha: str, user: str) -> None:
        """`user` pushes `sha` to the PR's head (its branch, or the fork's: refs/pull/<n>/head): pull_request
        synchronize, and auto-merge cancelled as GitHub does."""
        pr = self.prs[number]
        before = self.head_sha(pr)
        self.git("update-ref", f"refs/pull/{number}/head" if pr.fork else f"refs/heads/{pr.head}", sha)
        self.head_sha(pr)
        self.run_automerge()
        self._emit_pr("synchronize", pr, user, before=before)

    def write_rules(self) -> None:
        """rules.json for the pre-receive hook: the branches that take changes only through pull requests, and the ref
        patterns no one may create."""
        rules = {"pull_request_only": sorted(b for b, p in self.protection.items() if p["reviews"] is not None),
                 "no_creation": self.creation_refused()}
        (self.bare / "rules.json").write_text(json.dumps(rules))

    def creation_refused(self) -> list[str]:
        """The ref patterns an active ruleset's `creation` rule covers (`~DEFAULT_BRANCH` as refs/heads/<default>)."""
        out = []
        for r in self.rulesets:
            if r["enforcement"] == "active" and any(rule.get("type") == "creation" for rule in r.get("rules") or []):
                include = ((r.get("conditions") or {}).get("ref_name") or {}).get("include") or []
                out += [f"refs/heads/{self.default_branch}" if p == "~DEFAULT_BRANCH" else p for p in include]
        return out

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    # --- Actions: workflow_dispatch ---------------------------------------------------------------------
    def workflow_id(self, file: str) -> int:
        """The numeric id GitHub gives the workflow `.github/workflows/<file>` (stable for this fake)."""
        with self.lock:
            if file not in self.workflows:
                self.workflows[file] = self.next_id()
            return self.workflows[file]

    def start_run(self, run_id: int) -> None:
        """A runner picked the run up: status in_progress."""
        with self.lock:
            run = self.runs[run_id]
            run.update(status="in_progress", updated_at=now())

    def complete_run(self, run_id: int, conclusion: str = "success") -> None:
        """The run ended: status completed with this conclusion (success, failure, cancelled, timed_out, ...);
        the workflow_run.completed webhook goes out, as GitHub sends it to Apps with actions: read."""
        with self.lock:
            run = self.runs[run_id]
            run.update(status="completed", conclusion=conclusion, updated_at=now())
            definition, payload = workflow_run_payload(self.full_name, run, run["actor"])
        self.hooks.emit(definition, "workflow_run", payload)

    def add_artifact(self, run_id: int, name: str, files: dict[str, bytes], expired: bool = False) -> int:
        """Upload an artifact to the run (actions/upload-artifact): `files` (path in the zip -> content) zipped;
        its id. An expired artifact is listed with expired true and its download answers 410, as on GitHub."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            for path, content in files.items():
                z.writestr(path, content)
        with self.lock:
            if run_id not in self.runs:
                raise KeyError(f"no workflow run {run_id}")
            artifact_id = self.next_id()
            self.artifacts[artifact_id] = {"id": artifact_id, "run_id": run_id, "name": name, "zip": buffer.getvalue(),
                                           "created_at": now(), "expires_at": now(timedelta(days=90)),
                                           "expired": expired}
            return artifact_id

    def app_id_of(self, slug: str) -> int:
        """The numeric id of the App `slug`: the fake's own App, github-actions (15368 on github.com), or a stable
        made-up id for any other app."""
        if self.app and slug == self.app_slug:
            return int(self.app[0])
        if slug == "github-actions":
            return ACTIONS_APP_ID
        return 2_000_000 + zlib.crc32(slug.encode()) % 1_000_000

    def flush_dispatches(self, timeout: float = 30) -> None:
        """Wait until every on_dispatch callback queued so far has returned; re-raise the first one that raised."""
        while True:
            with self.lock:
                played, self._played = self._played, []
            if not played:
                return
            for future in played:
                future.result(timeout)

    def close(self) -> None:
        """Stop the background threads (webhook deliveries and on_dispatch callbacks)."""
        if self._actions is not None:
            self._actions.shutdown(wait=True)
            self._actions = None
        self.hooks.close()

    def _play(self, dispatch: dict) -> None:
        """Hand a dispatch to on_dispatch on the single worker thread (in order, outside the request handler)."""
        callback = self.on_dispatch
        if callback is None:
            return
        if self._actions is None:
            self._actions = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fake-github-actions")
        self._played.append(self._actions.submit(callback, json.loads(json.dumps(dispatch))))

    # --- JSON shaped like GitHub's (from the OpenAPI examples) ------------------------------------------
    def example(self, name: str, **subs: str) -> dict:
        text = json.dumps(load("openapi-subset.json")["components"]["examples"][name]["value"])
        text = text.replace("https://api.github.com/repos/octocat/Hello-World", f"{self.api}/repos/{self.full_name}")
        text = text.replace("https://github.com/octocat/Hello-World", f"http://github.test/{self.full_name}")
        text = text.replace("octocat/Hello-World", self.full_name)
        for old, new in subs.items():
            text = text.replace(old, new)
        return json.loads(text)

    def user(self, login: str) -> dict:
        u = self.example("pull-request")["user"]
        u.update(login=login, id=abs(hash(login)) % 10**6, node_id=f"U_{login}", type="Bot" if "[bot]" in login else "User")
        return u

    def label_json(self, name: str) -> dict:
        lab = self.labels[name]
        d = self.example("label")
        d.update(id=lab["id"], node_id=f"LA_{lab['id']}", name=name, color=lab["color"],
                 description=lab.get("description"), default=False, url=f"{self.api}/repos/{self.full_name}/labels/{name}")
        return d

    def repo_json(self, user: str | None = None) -> dict:
        """The repository; `permissions` are the requesting user's, from their collaborator role."""
        d = self.example("full-repository-default-response")
        d.update(name=self.name, full_name=self.full_name, default_branch=self.default_branch, private=True,
                 allow_auto_merge=self.allow_auto_merge, language=None, license=None, fork=False)
        for fork_only in ("source", "parent", "template_repository"):
            d.pop(fork_only, None)
        d["owner"].update(login=self.owner, type=self.owner_type)
        role = self.collaborators.get(user or "", "read")
        d["permissions"] = {key: ROLES.index(role) >= ROLES.index(needed) for key, needed in
                            (("admin", "admin"), ("maintain", "maintain"), ("push", "write"), ("triage", "triage"),
                             ("pull", "read"))}
        return d

    def pr_json(self, pr: PR) -> dict:
        d = self.example("pull-request", **{"/1347": f"/{pr.number}", "6dcb09b5b57875f334f61aebed695e2e4193db5e": self.head_sha(pr) or ZERO})
        base_sha = self.ref(pr.base) or ZERO
        head_sha = self.head_sha(pr)
        mergeable = pr.state == "open" and bool(head_sha) and self.merge_tree(base_sha, head_sha) is not None
        d.update(number=pr.number, id=pr.number + 5000, node_id=f"PR_{pr.number}", state=pr.state, title=pr.title,
                 body=pr.body, merged=pr.merged, merged_at=pr.merged_at, merge_commit_sha=pr.merge_commit_sha,
                 closed_at=pr.closed_at, created_at=pr.created_at, updated_at=now(), locked=False,
                 active_lock_reason=None, draft=False, mergeable=mergeable if pr.state == "open" else None,
                 mergeable_state="clean" if mergeable else "dirty", labels=[self.label_json(n) for n in pr.labels],
                 requested_teams=[], requested_reviewers=[], assignees=[], assignee=None, milestone=None,
                 user=self.user(pr.user), auto_merge=pr.auto_merge and {**pr.auto_merge, "enabled_by": self.user(pr.auto_merge["by"])},
                 merged_by=None, maintainer_can_modify=False)
        if d["auto_merge"]:
            d["auto_merge"].pop("by", None)
        d["author_association"] = self.association(pr.user)
        for side, ref, sha in (("head", pr.head, head_sha), ("base", pr.base, base_sha)):
            full = pr.fork if side == "head" and pr.fork else self.full_name
            owner = full.split("/")[0]
            d[side].update(ref=ref, sha=sha, label=f"{owner}:{ref}", user=self.user(owner))
            d[side]["repo"].update(name=full.split("/")[1], full_name=full, fork=full != self.full_name)
            d[side]["repo"]["owner"]["login"] = owner
        return d

    def check_page(self, check_run_id: int) -> str:
        """The check run's own page (its html_url)."""
        return f"http://github.test/{self.full_name}/runs/{check_run_id}"

    def check_json(self, run: dict) -> dict:
        d = self.example("check-run-example-of-completed-conclusion")
        d.update(id=run["id"], node_id=f"CR_{run['id']}", name=run["name"], head_sha=run["head_sha"], status=run["status"],
                 conclusion=run.get("conclusion"), started_at=run["started_at"], completed_at=run.get("completed_at"),
                 details_url=run.get("details_url"), external_id=run.get("external_id", ""), pull_requests=[],
                 url=f"{self.api}/repos/{self.full_name}/check-runs/{run['id']}", html_url=self.check_page(run["id"]))
        slug = run["creator"].removesuffix("[bot]")
        d["app"].update(slug=slug, name=slug, id=self.app_id_of(slug), node_id=f"APP_{slug}")
        out = run.get("output") or {}
        d["output"] = {"title": out.get("title"), "summary": out.get("summary"), "text": out.get("text"),
                       "annotations_count": 0, "annotations_url": f"{d['url']}/annotations"}
        return d

    def status_json(self, s: dict) -> dict:
        d = self.example("status")
        d.update(id=s["id"], node_id=f"ST_{s['id']}", state=s["state"], context=s["context"],
                 description=s.get("description"), target_url=s.get("target_url"), created_at=s["created_at"],
                 updated_at=s["created_at"], url=f"{self.api}/repos/{self.full_name}/statuses/{s['sha']}",
                 creator=self.user(s["creator"]))
        return d

    def comment_json(self, c: dict) -> dict:
        d = self.example("issue-comment", **{"/1347": f"/{c['issue']}"})
        d.update(id=c["id"], node_id=f"IC_{c['id']}", body=c["body"], user=self.user(c["user"]),
                 created_at=c["created_at"], updated_at=c["updated_at"], author_association=self.association(c["user"]),
                 url=f"{self.api}/repos/{self.full_name}/issues/comments/{c['id']}")
        return d

    def ref_json(self, ref: str, sha: str) -> dict:
        d = self.example("git-ref")
        d.update(ref=ref, node_id=f"REF_{ref}", url=f"{self.api}/repos/{self.full_name}/git/{ref}")
        d["object"].update(sha=sha, url=f"{self.api}/repos/{self.full_name}/git/commits/{sha}")
        return d

    def branch_json(self, branch: str, sha: str) -> dict:
        d = self.example("branch-get")
        d.update(name=branch, protected=branch in self.protection,
                 protection_url=f"{self.api}/repos/{self.full_name}/branches/{branch}/protection")
        d["_links"]["self"] = f"{self.api}/repos/{self.full_name}/branches/{branch}"
        d["commit"].update(sha=sha, url=f"{self.api}/repos/{self.full_name}/commits/{sha}")
        return d

    def protection_json(self, branch: str) -> dict:
        """GET .../protection as GitHub answers it: `checks[].app_id` null where any source counts."""
        p = self.protection[branch]
        url = f"{self.api}/repos/{self.full_name}/branches/{branch}/protection"
        d: dict[str, Any] = {
            "url": url,
            "enforce_admins": {"url": f"{url}/enforce_admins", "enabled": p["enforce_admins"]},
            "required_signatures": {"url": f"{url}/required_signatures", "enabled": False},
            **{key: {"enabled": p[key]} for key in BOOLEAN_RULES},
        }
        if p["status_checks"]:
            d["required_status_checks"] = {
                "url": f"{url}/required_status_checks", "strict": p["strict"], "contexts": p["contexts"],
                "contexts_url": f"{url}/required_status_checks/contexts", "checks": [dict(c) for c in p["checks"]]}
        if p["reviews"] is not None:
            d["required_pull_request_reviews"] = {"url": f"{url}/required_pull_request_reviews", **p["reviews"]}
        if p["restrictions"] is not None:
            r = p["restrictions"]
            d["restrictions"] = {
                "url": f"{url}/restrictions", "users_url": f"{url}/restrictions/users",
                "teams_url": f"{url}/restrictions/teams", "apps_url": f"{url}/restrictions/apps",
                "users": [self.user(login) for login in r["users"]], "teams": [self.team_json(t) for t in r["teams"]],
                "apps": [self.integration_json(slug) for slug in r["apps"]]}
        return d

    def team_json(self, slug: str) -> dict:
        """A team of the owner organization (membership is not modelled: a team restricts no one's push here)."""
        url = f"{self.api}/orgs/{self.owner}/teams/{slug}"
        return {"id": zlib.crc32(slug.encode()), "node_id": f"T_{slug}", "url": url, "members_url": f"{url}/members{{/member}}",
                "name": slug, "slug": slug, "description": None, "permission": "push", "privacy": "closed",
                "notification_setting": "notifications_enabled", "html_url": f"http://github.test/orgs/{self.owner}/teams/{slug}",
                "repositories_url": f"{url}/repos", "parent": None, "type": "organization"}

    def integration_json(self, slug: str) -> dict:
        """An App as GET /app (and a protection's restrictions) shows it."""
        d = self.example("integration")
        d.update(id=self.app_id_of(slug), slug=slug, name=slug, node_id=f"APP_{slug}",
                 html_url=f"http://github.test/apps/{slug}", owner=self.user(self.owner),
                 permissions=dict(self.app_permissions), events=list(self.app_events))
        d["owner"]["type"] = self.owner_type
        return d

    def installation_json(self) -> dict:
        """The App's installation on the owner, as GET /repos/{owner}/{repo}/installation shows it."""
        d = self.example("installation")
        d.update(id=self.app[2], app_id=self.app[0], app_slug=self.app_slug, target_type=self.owner_type,
                 repository_selection="selected", permissions=dict(self.app_permissions), events=list(self.app_events),
                 access_tokens_url=f"{self.api}/app/installations/{self.app[2]}/access_tokens",
                 html_url=f"http://github.test/organizations/{self.owner}/settings/installations/{self.app[2]}")
        d["account"].update(login=self.owner, type=self.owner_type)
        return d

    def run_json(self, run: dict) -> dict:
        """A workflow run (GET .../actions/runs/{run_id}), from GitHub's example with this run's fields."""
        d = self.example("workflow-run")
        base = f"{self.api}/repos/{self.full_name}/actions/runs/{run['id']}"
        d.update({key: run[key] for key in ("id", "name", "path", "event", "head_branch", "head_sha", "display_title",
                                            "status", "conclusion", "run_attempt", "run_number", "workflow_id",
                                            "created_at", "updated_at", "run_started_at")})
        d.update(node_id=f"WFR_{run['id']}", check_suite_id=run["id"] + 7000, check_suite_node_id=f"CS_{run['id']}",
                 url=base, html_url=f"http://github.test/{self.full_name}/actions/runs/{run['id']}",
                 jobs_url=f"{base}/jobs", logs_url=f"{base}/logs", artifacts_url=f"{base}/artifacts",
                 cancel_url=f"{base}/cancel", rerun_url=f"{base}/rerun", previous_attempt_url=None,
                 check_suite_url=f"{self.api}/repos/{self.full_name}/check-suites/{run['id'] + 7000}",
                 workflow_url=f"{self.api}/repos/{self.full_name}/actions/workflows/{run['workflow_id']}",
                 pull_requests=[], referenced_workflows=[], actor=self.user(run["actor"]),
                 triggering_actor=self.user(run["triggering_actor"]), head_repository_id=d["repository"]["id"])
        fmt = "%H%n%T%n%aI%n%an%n%ae%n%cn%n%ce%n%B"
        log = self.git("log", "-1", f"--format={fmt}", run["head_sha"]).stdout
        sha, tree, timestamp, an, ae, cn, ce, message = log.split("\n", 7)
        d["head_commit"] = {"id": sha, "tree_id": tree, "message": message.rstrip("\n"), "timestamp": timestamp,
                            "author": {"name": an, "email": ae}, "committer": {"name": cn, "email": ce}}
        for key in ("repository", "head_repository"):
            d[key].update(name=self.name, full_name=self.full_name, private=True,
                          url=f"{self.api}/repos/{self.full_name}", html_url=f"http://github.test/{self.full_name}")
            d[key]["owner"].update(login=self.owner, type=self.owner_type)
        return d

    def artifact_json(self, a: dict) -> dict:
        d = self.example("artifact-paginated")["artifacts"][0]
        run = self.runs[a["run_id"]]
        url = f"{self.api}/repos/{self.full_name}/actions/artifacts/{a['id']}"
        d.update(id=a["id"], node_id=f"AR_{a['id']}", name=a["name"], size_in_bytes=len(a["zip"]), url=url,
                 archive_download_url=f"{url}/zip", expired=a["expired"], created_at=a["created_at"],
                 updated_at=a["created_at"], expires_at=a["expires_at"],
                 digest=f"sha256:{hashlib.sha256(a['zip']).hexdigest()}")
        d["workflow_run"] = {"id": run["id"], "repository_id": d["workflow_run"]["repository_id"],
                             "head_repository_id": d["workflow_run"]["head_repository_id"],
                             "head_branch": run["head_branch"], "head_sha": run["head_sha"]}
        return d

    # --- rules ------------------------------------------------------------------------------------------
    def check_passed(self, sha: str, context: str, app_id: int | None = None) -> bool:
        """Whether the required check `context` passes on `sha`: the latest check run of that name (of the App
        `app_id` when the protection pins one), else, when no App is pinned, the latest commit status of that
        context. Commit statuses never satisfy a pinned check here (the bot posts statuses only with a PAT, as a
        user; GitHub also attributes a status created with an App's installation token to that App, which the fake
        does not model)."""
        runs = [r for r in self.check_runs if r["head_sha"] == sha and r["name"] == context
                and (app_id is None or self.app_id_of(r["creator"].removesuffix("[bot]")) == app_id)]
        if runs:
            return max(runs, key=lambda r: r["id"]).get("conclusion") in ("success", "neutral", "skipped")
        if app_id is not None:
            return False
        statuses = [s for s in self.statuses if s["sha"] == sha and s["context"] == context]
        return bool(statuses) and statuses[-1]["state"] == "success"

    def blockers(self, pr: PR) -> list[str]:
        """Why GitHub would not merge this PR now (empty: it would), whoever merges it (see may_push)."""
        if pr.state != "open":
            return ["Pull Request is not open"]
        head, base = self.head_sha(pr), self.ref(pr.base)
        if not head or not base:
            return ["Head or base branch is missing"]
        if self.merge_tree(base, head) is None:
            return ["Pull Request is not mergeable (merge conflict)"]
        rules = self.protection.get(pr.base)
        if not rules:
            return []
        out = []
        for check in rules["checks"]:
            context, app_id = check["context"], check["app_id"]
            if self.check_passed(head, context, app_id):
                continue
            if app_id is not None and self.check_passed(head, context):  # kubernetes-sigs/prow#915
                out.append(f'Required status check "{context}" was not set by the expected GitHub app.')
            else:
                out.append(f'Required status check "{context}" is expected.')
        if rules["strict"] and not self.is_ancestor(base, head):
            out.append("Head branch is not up to date with the base branch")
        return out

    def may_push(self, branch: str, user: str) -> bool:
        """Whether `user` (a login, or `<slug>[bot]` for an App) passes the branch's push restrictions, which also
        govern merges into it. Teams are not modelled; nor is the administrators' bypass (enforce_admins off)."""
        restrictions = (self.protection.get(branch) or {}).get("restrictions")
        if restrictions is None:
            return True
        app = user.removesuffix("[bot]") if user.endswith("[bot]") else None
        return user in restrictions["users"] or app in restrictions["apps"]

    def squash(self, pr: PR, title: str, message: str, user: str) -> str:
        head, base = self.head_sha(pr), self.ref(pr.base)
        tree = self.merge_tree(base, head)
        sha = self.git("commit-tree", tree, "-p", base, "-m", f"{title}\n\n{message}".rstrip() + "\n").stdout.strip()
        self.git("update-ref", f"refs/heads/{pr.base}", sha, base)
        pr.state, pr.merged, pr.merge_commit_sha, pr.merged_at, pr.closed_at = "closed", True, sha, now(), now()
        pr.auto_merge = None
        self._emit_pr("closed", pr, user)
        return sha

    # --- webhooks ---------------------------------------------------------------------------------------
    def _emit_pr(self, action: str, pr: PR, user: str, before: str | None = None, label: dict | None = None) -> None:
        definition, payload = pull_request_payload(action, self.full_name, self.pr_json(pr), user, before=before,
                                                   label=label)
        self.hooks.emit(definition, "pull_request", payload)

    def emit_check_run(self, run: dict, user: str) -> None:
        prs = [self.pr_json(p) for p in self.prs.values() if p.state == "open" and self.head_sha(p) == run["head_sha"]]
        definition, payload = check_run_payload(self.full_name, run, prs, user)
        self.hooks.emit(definition, "check_run", payload)

    def run_automerge(self) -> None:
        """Merge every PR whose auto-merge is on and whose requirements now hold (GitHub does this on events)."""
        for pr in list(self.prs.values()):
            if pr.auto_merge is None or pr.state != "open":
                continue
            if pr.auto_merge.get("expected") and self.head_sha(pr) != pr.auto_merge["expected"]:
                pr.auto_merge = None  # the head moved after auto-merge was enabled: it is cancelled
                continue
            if not self.blockers(pr) and self.may_push(pr.base, pr.auto_merge["by"]):
                am = pr.auto_merge
                self.squash(pr, am["commit_title"] or pr.title, am["commit_message"] or "", am["by"])

    # --- the app ----------------------------------------------------------------------------------------
    def _auth(self, request: Request, path: str) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, cred = header.partition(" ")
        if path == "/app" or path.startswith("/app/") or path.endswith("/installation"):  # the App's JWT
            if not self.app or scheme.lower() != "bearer":
                raise HTTPError(401, "A JSON web token could not be decoded")
            try:
                claims = jwt.decode(cred, self.app[1], algorithms=["RS256"])
            except jwt.PyJWTError as e:
                raise HTTPError(401, f"A JSON web token could not be decoded: {e}") from e
            if str(claims.get("iss")) != str(self.app[0]):
                raise HTTPError(401, "'Issuer' claim ('iss') must be an Integer")
            return "app"
        if scheme.lower() not in ("token", "bearer") or cred not in self.tokens:
            raise HTTPError(401, "Bad credentials")
        return self.tokens[cred]

    def _build(self) -> FastAPI:
        app = FastAPI(title="fake GitHub")

        @app.api_route("/api/v3/{path:path}", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
        async def rest(path: str, request: Request):
            self.api = str(request.base_url).rstrip("/") + "/api/v3"
            path = "/" + path
            raw = await request.body()
            body = json.loads(raw) if raw else None
            method = request.method.lower()
            self.requests.append((method.upper(), path, body))
            try:
                validate_request(method, path, body)
            except ContractError as e:
                self.violations.append(str(e))
                return JSONResponse({"message": f"fake GitHub: {e}"}, status_code=500)
            try:
                with self.lock:
                    user = self._auth(request, path)
                    self.calls.append((method.upper(), path, user))
                    status, out = self.dispatch(method, path, body, dict(request.query_params), user)
            except HTTPError as e:
                status, out = e.status, e.body
            try:
                operation(method, path)
                validate_response(method, path, status, None if isinstance(out, Redirect) else out)
            except ContractError as e:
                self.violations.append(str(e))
                return JSONResponse({"message": f"fake GitHub: {e}"}, status_code=500)
            if status == 204:
                return Response(status_code=204)
            if isinstance(out, Redirect):
                return Response(status_code=status, headers={"Location": out.location})
            if method == "get" and status == 200:
                etag = f'W/"{hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()[:32]}"'
                if request.headers.get("if-none-match") == etag:
                    self.not_modified.append(path)
                    return Response(status_code=304, headers={"ETag": etag})
                return JSONResponse(out, status_code=status, headers={"ETag": etag})
            return JSONResponse(out, status_code=status)

        @app.get("/_artifacts/{artifact_id}/{file}")
        async def download(artifact_id: int, file: str):
            """The short-lived download URL an artifact's 302 points to: no credentials, the token in the path."""
            with self.lock:
                token = file.removesuffix(".zip")
                issued = self.downloads.get(token)
                if issued is None or issued[0] != artifact_id or time.monotonic() > issued[1]:
                    return Response("the download URL is unknown or expired", status_code=403, media_type="text/plain")
                return Response(self.artifacts[artifact_id]["zip"], media_type="application/zip")

        @app.post("/api/graphql")
        async def graphql(request: Request):
            body = await request.json()
            self.requests.append(("POST", "/graphql", body))
            with self.lock:
                try:
                    user = self._auth(request, "/graphql")
                except HTTPError as e:
                    return JSONResponse(e.body, status_code=e.status)
                self.calls.append(("POST", "/graphql", user))
                return JSONResponse(self.graphql(body, user))

        return app

    @property
    def asgi(self) -> FastAPI:
        return self.app_

    @property
    def all_violations(self) -> list[str]:
        """Every request, response and webhook that broke GitHub's published contract."""
        return self.violations + self.hooks.violations

    # --- REST operations --------------------------------------------------------------------------------
    def dispatch(self, method: str, path: str, body: Any, query: dict, user: str) -> tuple[int, Any]:
        if path.startswith("/app/installations/"):
            return self.op_installation_token(int(path.split("/")[3]))
        if path == "/app":
            return self.op_get_app()
        if path == "/user":
            return self.op_get_user(user)
        prefix = f"/repos/{self.full_name}"
        if not (path == prefix or path.startswith(prefix + "/")):
            raise HTTPError(404, "Not Found")
        rest = path[len(prefix):]
        for m, rx, name in ROUTES:
            match = rx.fullmatch(rest)
            if m == method and match:
                return getattr(self, name)(body=body or {}, query=query, user=user, **match.groupdict())
        raise HTTPError(404, "Not Found")

    def op_installation_token(self, installation_id: int):
        if not self.app or not self.installed or installation_id != self.app[2]:
            raise HTTPError(404, "Not Found")
        token = f"ghs_installation{self.next_id()}"
        self.tokens[token] = f"{self.app_slug}[bot]"
        self.collaborators.setdefault(f"{self.app_slug}[bot]", "write")
        d = self.example("installation-token")
        d.update(token=token, expires_at="2099-01-01T00:00:00Z")
        d.pop("repositories", None)
        return 201, d

    def op_get_user(self, user: str):
        """GET /user: the authenticated user (a PAT's); an installation token is no user (403)."""
        if user.endswith("[bot]"):
            raise HTTPError(403, "Resource not accessible by integration")
        d = self.example("private-user-response-with-public-profile-information")
        d.update({k: v for k, v in self.user(user).items() if k in d})
        return 200, d

    def op_get_app(self):
        """GET /app with the App's JWT (_auth checked it)."""
        return 200, self.integration_json(self.app_slug)

    def op_get_repo(self, user: str, **_):
        return 200, self.repo_json(user)

    def op_get_installation(self, **_):
        """GET /repos/{owner}/{repo}/installation with the App's JWT (_auth checked it)."""
        if not self.installed:
            raise HTTPError(404, "Not Found")
        return 200, self.installation_json()

    def op_update_repo(self, body: dict, user: str, **_):
        """PATCH /repos/{owner}/{repo}: allow_auto_merge is kept (the other settings are accepted and ignored)."""
        if "allow_auto_merge" in body:
            self.allow_auto_merge = bool(body["allow_auto_merge"])
        return 200, self.repo_json(user)

    def op_get_branch(self, branch: str, **_):
        sha = self.ref(branch)
        if not sha:
            raise HTTPError(404, "Branch not found")
        return 200, self.branch_json(branch, sha)

    def op_get_ref(self, ref: str, **_):
        sha = self.git("rev-parse", "--verify", "-q", f"refs/{ref}", check=False).stdout.strip()
        if not sha:
            raise HTTPError(404, "Not Found")
        return 200, self.ref_json(f"refs/{ref}", sha)

    def op_create_ref(self, body: dict, **_):
        ref, sha = body["ref"], body["sha"]
        if any(fnmatch.fnmatchcase(ref, p) for p in self.creation_refused()):
            raise HTTPError(422, "Repository rule violations found\n\nCannot create ref due to creations being restricted.")
        if not ref.startswith("refs/") or self.git("cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode:
            raise HTTPError(422, "Reference update failed")
        if self.git("update-ref", ref, sha, ZERO, check=False).returncode:
            raise HTTPError(422, "Reference already exists")
        return 201, self.ref_json(ref, sha)

    def op_list_pulls(self, query: dict, **_):
        state = query.get("state", "open")
        out = []
        for pr in sorted(self.prs.values(), key=lambda p: -p.number):
            if state != "all" and pr.state != state:
                continue
            if "head" in query and query["head"] != f"{(pr.fork or self.full_name).split('/')[0]}:{pr.head}":
                continue
            if "base" in query and query["base"] != pr.base:
                continue
            out.append(self.pr_json(pr))
        return 200, out

    def op_create_pull(self, body: dict, user: str, **_):
        head, base = body["head"].split(":")[-1], body["base"]
        if not self.ref(head) or not self.ref(base):
            raise HTTPError(422, "Validation Failed", errors=[{"resource": "PullRequest", "field": "head", "code": "invalid"}])
        if any(p.head == head and p.base == base and p.state == "open" for p in self.prs.values()):
            raise HTTPError(422, "Validation Failed", errors=[{"resource": "PullRequest", "code": "custom",
                                                               "message": f"A pull request already exists for {self.owner}:{head}."}])
        number = self.next_pr_number()
        pr = PR(number=number, title=body["title"], body=body.get("body") or "", head=head, base=base, user=user)
        self.prs[number] = pr
        self._emit_pr("opened", pr, user)
        return 201, self.pr_json(pr)

    def _pr(self, number: str) -> PR:
        pr = self.prs.get(int(number))
        if pr is None:
            raise HTTPError(404, "Not Found")
        return pr

    def op_get_pull(self, pull_number: str, **_):
        return 200, self.pr_json(self._pr(pull_number))

    def op_update_pull(self, pull_number: str, body: dict, user: str, **_):
        pr = self._pr(pull_number)
        for key in ("title", "body"):
            if key in body:
                setattr(pr, key, body[key])
        if body.get("state") == "closed" and pr.state == "open":
            pr.state, pr.closed_at, pr.auto_merge = "closed", now(), None
            self._emit_pr("closed", pr, user)
        elif body.get("state") == "open" and pr.state == "closed" and not pr.merged:
            pr.state, pr.closed_at = "open", None
        return 200, self.pr_json(pr)

    def op_merge(self, pull_number: str, body: dict, user: str, **_):
        pr = self._pr(pull_number)
        if body.get("sha") and body["sha"] != self.head_sha(pr):
            raise HTTPError(409, "Head branch was modified. Review and try the merge again.")
        if pr.state == "open" and not self.may_push(pr.base, user):
            raise HTTPError(405, NOT_AUTHORIZED)  # claroline/Distribution#492, pascalgn/automerge-action#3
        blockers = self.blockers(pr)
        if blockers:
            raise HTTPError(405, blockers[0])
        method = body.get("merge_method", "merge")
        if method != "squash":
            raise HTTPError(405, f"Merge method {method} is not allowed by this fake (arbot squashes)")
        sha = self.squash(pr, body.get("commit_title") or f"{pr.title} (#{pr.number})", body.get("commit_message") or "", user)
        return 200, {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}

    def _issue(self, number: str) -> int:
        self._pr(number)  # issues here are the PRs' issues
        return int(number)

    def op_list_comments(self, issue_number: str, **_):
        n = self._issue(issue_number)
        return 200, [self.comment_json(c) for c in sorted(self.comments.values(), key=lambda c: c["id"]) if c["issue"] == n]

    def op_create_comment(self, issue_number: str, body: dict, user: str, **_):
        c = {"id": self.next_id(), "issue": self._issue(issue_number), "body": body["body"], "user": user,
             "created_at": now(), "updated_at": now()}
        self.comments[c["id"]] = c
        pr = self.prs[c["issue"]]
        definition, payload = issue_comment_payload(self.full_name, self.pr_json(pr), self.comment_json(c), user)
        self.hooks.emit(definition, "issue_comment", payload)
        return 201, self.comment_json(c)

    def op_update_comment(self, comment_id: str, body: dict, **_):
        c = self.comments.get(int(comment_id))
        if c is None:
            raise HTTPError(404, "Not Found")
        c.update(body=body["body"], updated_at=now())
        return 200, self.comment_json(c)

    def _ensure_label(self, name: str, color: str = "ededed", description: str | None = None) -> None:
        if name not in self.labels:
            self.labels[name] = {"id": self.next_id(), "name": name, "color": color, "description": description}

    def op_add_labels(self, issue_number: str, body: Any, user: str, **_):
        pr = self._pr(issue_number)
        names = body.get("labels", []) if isinstance(body, dict) else body
        for item in names:
            name = item["name"] if isinstance(item, dict) else item
            self._ensure_label(name)
            if name not in pr.labels:
                pr.labels.append(name)
                self._emit_pr("labeled", pr, user, label=self.label_json(name))
        return 200, [self.label_json(n) for n in pr.labels]

    def op_list_labels(self, **_):
        return 200, [self.label_json(n) for n in self.labels]

    def op_create_label(self, body: dict, **_):
        if body["name"] in self.labels:
            raise HTTPError(422, "Validation Failed", errors=[{"resource": "Label", "code": "already_exists", "field": "name"}])
        self._ensure_label(body["name"], body.get("color", "ededed"), body.get("description"))
        return 201, self.label_json(body["name"])

    def op_get_label(self, name: str, **_):
        from urllib.parse import unquote

        name = unquote(name)
        if name not in self.labels:
            raise HTTPError(404, "Not Found")
        return 200, self.label_json(name)

    def op_create_check_run(self, body: dict, user: str, **_):
        if not user.endswith("[bot]"):
            raise HTTPError(403, "You must authenticate via a GitHub App.")
        # GitHub ignores the details_url of a check run made with the Actions GITHUB_TOKEN: its Details link opens the
        # check run's own page, ".../runs/<id>?check_suite_focus=true", "same as if the param was not passed"
        # (actions/github-script#143, LouisBrunner/checks-action#18 and #21). The fake stores that page (the webhook
        # schema wants a string there): neither the URL sent nor the workflow run can be read back from it.
        check_run_id = self.next_id()
        details_url = self.check_page(check_run_id) if user == ACTIONS_LOGIN else body.get("details_url")
        run = {"id": check_run_id, "name": body["name"], "head_sha": body["head_sha"],
               "status": body.get("status", "queued"), "conclusion": body.get("conclusion"),
               "output": body.get("output"), "details_url": details_url,
               "external_id": body.get("external_id", ""), "started_at": now(), "creator": user,
               "completed_at": now() if body.get("conclusion") else None}
        if run["conclusion"]:
            run["status"] = "completed"
        self.check_runs.append(run)
        if run["status"] == "completed":
            self.emit_check_run(run, user)
        self.run_automerge()
        return 201, self.check_json(run)

    def _commit(self, ref: str) -> str:
        sha = self.git("rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False).stdout.strip()
        if not sha:
            raise HTTPError(404, "No commit found for SHA")
        return sha

    def op_list_check_runs(self, ref: str, query: dict, **_):
        sha = self._commit(ref)
        runs = [self.check_json(r) for r in self.check_runs
                if r["head_sha"] == sha and ("check_name" not in query or r["name"] == query["check_name"])]
        return 200, {"total_count": len(runs), "check_runs": runs}

    def op_create_status(self, sha: str, body: dict, user: str, **_):
        self._commit(sha)
        s = {"id": self.next_id(), "sha": sha, "state": body["state"], "context": body.get("context", "default"),
             "description": body.get("description"), "target_url": body.get("target_url"), "created_at": now(),
             "creator": user}
        self.statuses.append(s)
        definition, payload = status_payload(self.full_name, s, user)
        self.hooks.emit(definition, "status", payload)
        self.run_automerge()
        return 201, self.status_json(s)

    def op_combined_status(self, ref: str, **_):
        sha = self._commit(ref)
        latest: dict[str, dict] = {}
        for s in self.statuses:
            if s["sha"] == sha:
                latest[s["context"]] = s
        states = {s["state"] for s in latest.values()}
        state = "failure" if states & {"failure", "error"} else "pending" if (not states or "pending" in states) else "success"
        d = self.example("combined-commit-status")
        d.update(state=state, sha=sha, total_count=len(latest), statuses=[self.status_json(s) for s in latest.values()],
                 commit_url=f"{self.api}/repos/{self.full_name}/commits/{sha}", url=f"{self.api}/repos/{self.full_name}/commits/{sha}/status")
        d["repository"].update(name=self.name, full_name=self.full_name)
        return 200, d

    def op_get_protection(self, branch: str, **_):
        if branch not in self.protection:
            raise HTTPError(404, "Branch not protected")
        return 200, self.protection_json(branch)

    def op_put_protection(self, branch: str, body: dict, **_):
        """PUT .../protection replaces the whole protection. A required check named in the deprecated `contexts`, or
        in `checks` without an app_id, is pinned to the App that last posted a check run of that name (any source
        when none did); `app_id: -1` means any source (read back as null). `restrictions`, and the users and teams of
        review dismissal or bypass lists, exist only on organization repositories (422 otherwise)."""
        if not self.ref(branch):
            raise HTTPError(404, "Branch not found")
        reviews = body.get("required_pull_request_reviews")
        if self.owner_type != "Organization" and (body.get("restrictions") is not None or any(
                (reviews or {}).get(key) for key in ("dismissal_restrictions", "bypass_pull_request_allowances"))):
            raise HTTPError(422, ORG_ONLY)  # what GitHub answers even for empty lists or apps only
        checks_body = body.get("required_status_checks")
        checks = []
        named = [{"context": name} for name in (checks_body or {}).get("contexts") or []]
        for c in (checks_body or {}).get("checks") or named:
            app_id = c.get("app_id", self._recent_app(c["context"]))
            checks.append({"context": c["context"], "app_id": None if app_id in (None, -1) else app_id})
        restrictions = body.get("restrictions")
        self.protection[branch] = {
            "status_checks": checks_body is not None, "strict": bool((checks_body or {}).get("strict")),
            "checks": checks, "contexts": sorted({c["context"] for c in checks}),
            "enforce_admins": bool(body.get("enforce_admins")),
            "reviews": None if reviews is None else {
                "dismiss_stale_reviews": bool(reviews.get("dismiss_stale_reviews")),
                "require_code_owner_reviews": bool(reviews.get("require_code_owner_reviews")),
                "required_approving_review_count": int(reviews.get("required_approving_review_count", 0)),
                "require_last_push_approval": bool(reviews.get("require_last_push_approval"))},
            "restrictions": None if restrictions is None else {
                "users": list(restrictions.get("users") or []), "teams": list(restrictions.get("teams") or []),
                "apps": list(restrictions.get("apps") or [])},
            **{key: bool(body.get(key)) for key in BOOLEAN_RULES},
        }
        self.write_rules()
        d = self.example("branch-protection-update")
        for key in ("required_status_checks", "required_pull_request_reviews", "restrictions"):
            d.pop(key, None)
        d.update(self.protection_json(branch))
        return 200, d

    def ruleset_json(self, r: dict) -> dict:
        d = {key: r[key] for key in ("id", "name", "target", "enforcement", "created_at", "updated_at")}
        d.update(node_id=f"RRS_{r['id']}", source=self.full_name, source_type="Repository",
                 bypass_actors=r.get("bypass_actors") or [], conditions=r.get("conditions"), rules=r.get("rules") or [],
                 current_user_can_bypass="never",
                 _links={"self": {"href": f"{self.api}/repos/{self.full_name}/rulesets/{r['id']}"},
                         "html": {"href": f"http://github.test/{self.full_name}/rules/{r['id']}"}})
        return d

    def op_list_rulesets(self, **_):
        """GET .../rulesets: the repository's rulesets, without their rules and conditions (as GitHub lists them)."""
        return 200, [{k: v for k, v in self.ruleset_json(r).items() if k not in ("rules", "conditions", "bypass_actors")}
                     for r in self.rulesets]

    def op_get_ruleset(self, ruleset_id: str, **_):
        r = next((r for r in self.rulesets if r["id"] == int(ruleset_id)), None)
        if r is None:
            raise HTTPError(404, "Not Found")
        return 200, self.ruleset_json(r)

    def op_create_ruleset(self, body: dict, **_):
        """POST .../rulesets: kept as sent; a name already used answers 422, as on GitHub."""
        if any(r["name"] == body["name"] for r in self.rulesets):
            raise HTTPError(422, "Validation Failed", errors=["Name must be unique"])
        r = {**body, "id": self.next_id(), "target": body.get("target", "branch"), "created_at": now(),
             "updated_at": now()}
        self.rulesets.append(r)
        self.write_rules()
        return 201, self.ruleset_json(r)

    def _recent_app(self, context: str) -> int | None:
        """The App that most recently posted a check run named `context` (None: none did)."""
        runs = [r for r in self.check_runs if r["name"] == context]
        return self.app_id_of(max(runs, key=lambda r: r["id"])["creator"].removesuffix("[bot]")) if runs else None

    def op_permission(self, username: str, **_):
        permission = self.collaborators.get(username)
        if permission is None:
            raise HTTPError(404, "Not Found")
        u = self.user(username)
        u["role_name"] = permission
        return 200, {"permission": permission, "role_name": permission, "user": u}

    def _dispatch_ref(self, ref: str) -> tuple[str, str]:
        """(full ref, sha) for a branch or tag name, or refs/heads/NAME / refs/tags/NAME; 422 like GitHub otherwise."""
        candidates = [ref] if ref.startswith(("refs/heads/", "refs/tags/")) else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
        for full in candidates:
            sha = self.git("rev-parse", "--verify", "-q", f"{full}^{{commit}}", check=False).stdout.strip()
            if sha:
                return full, sha
        raise HTTPError(422, f"No ref found for: {ref}")  # a commit sha is no ref either, as on GitHub

    @staticmethod
    def _workflow_doc(text: str) -> dict:
        """The parsed workflow file ({} when it is not a YAML mapping)."""
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            return {}
        return doc if isinstance(doc, dict) else {}

    @classmethod
    def _dispatch_trigger(cls, text: str) -> dict | None:
        """The `on.workflow_dispatch` mapping of a workflow file ({} when it has no inputs), None without the trigger.
        PyYAML (YAML 1.1) reads the key `on` as the boolean True: both spellings are looked up."""
        doc = cls._workflow_doc(text)
        if not doc:
            return None
        on = doc.get("on", doc.get(True))
        if on == "workflow_dispatch" or (isinstance(on, list) and "workflow_dispatch" in on):
            return {}
        if isinstance(on, dict) and "workflow_dispatch" in on:
            trigger = on["workflow_dispatch"]
            return trigger if isinstance(trigger, dict) else {}
        return None

    @staticmethod
    def _input_string(value: Any) -> str:
        """A workflow input default as the string github.event.inputs holds (booleans are 'true'/'false')."""
        if isinstance(value, bool):
            return "true" if value else "false"
        return "" if value is None else str(value)

    def op_dispatch_workflow(self, workflow_id: str, body: dict, user: str, **_):
        """Create a workflow_dispatch event, with GitHub's checks and messages (422 unless noted):
        - workflow_id: a file name under .github/workflows/ or a numeric id (workflow_id(); the default branch's
          workflow files all have one); unknown: 404 Not Found;
        - ref: a branch or tag (short or refs/heads/…, refs/tags/…): "No ref found for: X";
        - the file at that ref: missing, 404 Not Found; no `on.workflow_dispatch`:
          "Workflow does not have 'workflow_dispatch' trigger";
        - inputs: strings only ("Invalid request.\n\nFor 'additionalProperties', 1 is not a string."), declared only
          ('Unexpected inputs provided: ["x"]'), required ones present unless they have a default
          ("Required input 'x' not provided"), choice and boolean values among the allowed ones ("Provided value 'v'
          for input 'x' not in the list of allowed values"). More than 25 inputs break the contract's maxProperties:
          the contract check answers 500 and records a violation, as for every request that breaks the contract.
        204 without a body, or 200 with the run's id and URLs when return_run_details is true."""
        file = self._workflow_file(workflow_id)
        full_ref, sha = self._dispatch_ref(body["ref"])
        blob = None if "/" in file else self.git("cat-file", "blob", f"{sha}:.github/workflows/{file}", check=False)
        if blob is None or blob.returncode:
            raise HTTPError(404, "Not Found")
        trigger = self._dispatch_trigger(blob.stdout)
        if trigger is None:
            raise HTTPError(422, "Workflow does not have 'workflow_dispatch' trigger")
        declared = trigger.get("inputs") or {}
        given = body.get("inputs") or {}
        for value in given.values():
            if not isinstance(value, str):
                ruby = "nil" if value is None else json.dumps(value)
                raise HTTPError(422, f"Invalid request.\n\nFor 'additionalProperties', {ruby} is not a string.")
        unexpected = [name for name in given if name not in declared]
        if unexpected:
            raise HTTPError(422, f"Unexpected inputs provided: {json.dumps(unexpected)}")
        inputs: dict[str, str] = {}
        for name, spec in declared.items():
            spec = spec if isinstance(spec, dict) else {}
            if name in given:
                value = given[name]
            elif "default" in spec:
                value = self._input_string(spec["default"])
            elif spec.get("required"):
                raise HTTPError(422, f"Required input '{name}' not provided")
            else:
                value = "false" if spec.get("type") == "boolean" else ""
            allowed = {"boolean": ["true", "false"], "choice": [str(o) for o in spec.get("options") or []]}.get(spec.get("type"))
            if allowed is not None and value not in allowed:
                raise HTTPError(422, f"Provided value '{value}' for input '{name}' not in the list of allowed values")
            inputs[name] = value
        run_id = self.next_id()
        dispatch = {"id": run_id, "workflow": file, "workflow_id": self.workflow_id(file), "ref": full_ref,
                    "head_branch": full_ref.split("/", 2)[2], "sha": sha, "inputs": inputs, "user": user}
        doc = self._workflow_doc(blob.stdout)
        name = str(doc.get("name") or f".github/workflows/{file}")  # GitHub names a nameless workflow by its path
        run_name = doc.get("run-name")
        title = EXPRESSION.sub(lambda m: inputs.get(m.group(1), ""), str(run_name)) if run_name else name
        self.runs[run_id] = {
            "id": run_id, "workflow": file, "workflow_id": dispatch["workflow_id"], "name": name,
            "path": f".github/workflows/{file}", "event": "workflow_dispatch", "head_branch": dispatch["head_branch"],
            "head_sha": sha, "display_title": title, "actor": user, "triggering_actor": user, "status": "queued",
            "conclusion": None, "run_attempt": 1,
            "run_number": 1 + sum(r["workflow_id"] == dispatch["workflow_id"] for r in self.runs.values()),
            "created_at": now(), "updated_at": now(), "run_started_at": now()}
        self.dispatches.append(dispatch)
        self._play(dispatch)
        if body.get("return_run_details") and self.run_details:
            return 200, {"workflow_run_id": run_id, "run_url": f"{self.api}/repos/{self.full_name}/actions/runs/{run_id}",
                         "html_url": f"http://github.test/{self.full_name}/actions/runs/{run_id}"}
        return 204, None

    def _workflow_file(self, workflow_id: str) -> str:
        """The file name under .github/workflows/ that `workflow_id` (a file name or a numeric id) names; 404 for an
        unknown numeric id (GitHub knows the default branch's workflows, and those that ran, by id)."""
        from urllib.parse import unquote

        workflow_id = unquote(workflow_id)
        if not workflow_id.isdigit():
            return workflow_id
        listed = self.git("ls-tree", "--name-only", f"refs/heads/{self.default_branch}:.github/workflows", check=False)
        for name in sorted(listed.stdout.splitlines()):
            self.workflow_id(name)
        file = next((f for f, i in self.workflows.items() if i == int(workflow_id)), None)
        if file is None:
            raise HTTPError(404, "Not Found")
        return file

    def _run(self, run_id: str) -> dict:
        run = self.runs.get(int(run_id))
        if run is None:
            raise HTTPError(404, "Not Found")
        return run

    @staticmethod
    def _page(items: list, query: dict) -> list:
        """One page of `items` (per_page up to 100, default 30; page from 1)."""
        per_page = min(max(int(query.get("per_page", 30)), 1), 100)
        page = max(int(query.get("page", 1)), 1)
        return items[(page - 1) * per_page:page * per_page]

    def op_get_run(self, run_id: str, **_):
        return 200, self.run_json(self._run(run_id))

    def op_list_workflow_runs(self, workflow_id: str, query: dict, **_):
        """The workflow's runs, newest first, filtered by event, branch, status (a status or a conclusion), actor
        and head_sha as GitHub does; one page."""
        file = self._workflow_file(workflow_id)
        exists = self.git("cat-file", "-e", f"refs/heads/{self.default_branch}:.github/workflows/{file}", check=False)
        if file not in self.workflows and exists.returncode:
            raise HTTPError(404, "Not Found")
        runs = [r for r in sorted(self.runs.values(), key=lambda r: -r["id"]) if r["workflow"] == file
                and query.get("event", r["event"]) == r["event"]
                and query.get("branch", r["head_branch"]) == r["head_branch"]
                and query.get("actor", r["actor"]) == r["actor"]
                and query.get("head_sha", r["head_sha"]) == r["head_sha"]
                and ("status" not in query or query["status"] in (r["status"], r["conclusion"]))]
        return 200, {"total_count": len(runs), "workflow_runs": [self.run_json(r) for r in self._page(runs, query)]}

    def op_list_run_artifacts(self, run_id: str, query: dict, **_):
        """The run's artifacts (by name when `name` is given), oldest first; one page."""
        run = self._run(run_id)
        found = [a for a in sorted(self.artifacts.values(), key=lambda a: a["id"])
                 if a["run_id"] == run["id"] and query.get("name", a["name"]) == a["name"]]
        if query.get("direction") == "desc":
            found.reverse()
        return 200, {"total_count": len(found), "artifacts": [self.artifact_json(a) for a in self._page(found, query)]}

    def op_download_artifact(self, artifact_id: str, archive_format: str, **_):
        """302 to a download URL valid for a minute (no credentials needed there); 410 once the artifact expired."""
        artifact = self.artifacts.get(int(artifact_id))
        if artifact is None or archive_format != "zip":  # "The :archive_format must be zip."
            raise HTTPError(404, "Not Found")
        if artifact["expired"]:
            raise HTTPError(410, "Artifact has expired")
        token = secrets.token_urlsafe(16)
        self.downloads[token] = (artifact["id"], time.monotonic() + DOWNLOAD_SECONDS)
        return 302, Redirect(f"{self.api.removesuffix('/api/v3')}/_artifacts/{artifact['id']}/{token}.zip")

    # --- GraphQL: enablePullRequestAutoMerge only --------------------------------------------------------
    def graphql(self, body: dict, user: str) -> dict:
        query = body.get("query", "")
        m = re.search(r"mutation\s+\w*\s*\(\$input:\s*(\w+)!\)\s*\{\s*(\w+)\(input:\s*\$input\)", query)
        if not m or m.group(2) != "enablePullRequestAutoMerge" or m.group(1) != "EnablePullRequestAutoMergeInput":
            self.violations.append(f"graphql: unsupported operation {query[:120]!r}")
            return {"errors": [{"message": "fake GitHub supports only enablePullRequestAutoMerge"}]}
        data = (body.get("variables") or {}).get("input") or {}
        unknown = set(data) - AUTOMERGE_INPUT
        if unknown or "pullRequestId" not in data:
            self.violations.append(f"graphql: bad EnablePullRequestAutoMergeInput {sorted(data)}")
            return {"errors": [{"message": f"bad input fields {sorted(unknown)}"}]}
        pr = next((p for p in self.prs.values() if f"PR_{p.number}" == data["pullRequestId"]), None)
        if pr is None:
            return {"data": {"enablePullRequestAutoMerge": None},
                    "errors": [{"type": "NOT_FOUND", "message": f"Could not resolve to a node with the global id of '{data['pullRequestId']}'"}]}
        error = None
        if not self.allow_auto_merge:
            # viperproject/viperserver#358, SirAllap/agentglass#331: "GraphQL: Auto merge is not allowed for this
            # repository (enablePullRequestAutoMerge)" while the repository's allow_auto_merge is false
            error = "Auto merge is not allowed for this repository"
        elif pr.state != "open":
            error = "Pull request is closed"
        elif data.get("expectedHeadOid") and data["expectedHeadOid"] != self.head_sha(pr):
            error = "Head sha didn't match expected"
        elif not self.blockers(pr):
            # nothing left to wait for (no protection, or every requirement already met): GitHub refuses with the
            # doubled prefix, type UNPROCESSABLE (peter-evans/enable-pull-request-automerge#1118, rjwalters/loom#3379)
            error = "Pull request Pull request is in clean status"
        elif not self.protection.get(pr.base):
            # a conflict and nothing required: not observed, modelled on the "clean" and "unstable" answers
            error = "Pull request Pull request is in dirty status"
        if error:
            return {"data": {"enablePullRequestAutoMerge": None}, "errors": [{"type": "UNPROCESSABLE", "message": error}]}
        pr.auto_merge = {"by": user, "merge_method": data.get("mergeMethod", "MERGE").lower(),
                         "commit_title": data.get("commitHeadline"), "commit_message": data.get("commitBody"),
                         "expected": data.get("expectedHeadOid")}
        self.run_automerge()
        return {"data": {"enablePullRequestAutoMerge": {"clientMutationId": data.get("clientMutationId"),
                                                        "actor": {"login": user, "avatarUrl": "", "resourcePath": f"/{user}",
                                                                  "url": f"http://github.test/{user}"}}}}


def _routes() -> list[tuple[str, re.Pattern, str]]:
    table = [
        ("get", "", "op_get_repo"),
        ("patch", "", "op_update_repo"),
        ("get", "/installation", "op_get_installation"),
        ("get", "/branches/(?P<branch>[^/]+)", "op_get_branch"),
        ("get", "/branches/(?P<branch>.+)/protection", "op_get_protection"),
        ("put", "/branches/(?P<branch>.+)/protection", "op_put_protection"),
        ("get", "/git/ref/(?P<ref>.+)", "op_get_ref"),
        ("post", "/git/refs", "op_create_ref"),
        ("get", "/pulls", "op_list_pulls"),
        ("post", "/pulls", "op_create_pull"),
        ("get", "/pulls/(?P<pull_number>\\d+)", "op_get_pull"),
        ("patch", "/pulls/(?P<pull_number>\\d+)", "op_update_pull"),
        ("put", "/pulls/(?P<pull_number>\\d+)/merge", "op_merge"),
        ("get", "/issues/(?P<issue_number>\\d+)/comments", "op_list_comments"),
        ("post", "/issues/(?P<issue_number>\\d+)/comments", "op_create_comment"),
        ("patch", "/issues/comments/(?P<comment_id>\\d+)", "op_update_comment"),
        ("post", "/issues/(?P<issue_number>\\d+)/labels", "op_add_labels"),
        ("get", "/labels", "op_list_labels"),
        ("post", "/labels", "op_create_label"),
        ("get", "/labels/(?P<name>[^/]+)", "op_get_label"),
        ("post", "/check-runs", "op_create_check_run"),
        ("get", "/commits/(?P<ref>.+)/check-runs", "op_list_check_runs"),
        ("post", "/statuses/(?P<sha>[0-9a-f]{40})", "op_create_status"),
        ("get", "/commits/(?P<ref>.+)/status", "op_combined_status"),
        ("get", "/collaborators/(?P<username>[^/]+)/permission", "op_permission"),
        ("post", "/actions/workflows/(?P<workflow_id>[^/]+)/dispatches", "op_dispatch_workflow"),
        ("get", "/actions/workflows/(?P<workflow_id>[^/]+)/runs", "op_list_workflow_runs"),
        ("get", "/actions/runs/(?P<run_id>\\d+)", "op_get_run"),
        ("get", "/actions/runs/(?P<run_id>\\d+)/artifacts", "op_list_run_artifacts"),
        ("get", "/actions/artifacts/(?P<artifact_id>\\d+)/(?P<archive_format>[^/]+)", "op_download_artifact"),
        ("get", "/rulesets", "op_list_rulesets"),
        ("post", "/rulesets", "op_create_ruleset"),
        ("get", "/rulesets/(?P<ruleset_id>\\d+)", "op_get_ruleset"),
    ]
    return [(m, re.compile(p), name) for m, p, name in table]


ROUTES = _routes()

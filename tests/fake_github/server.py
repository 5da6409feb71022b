"""A stateful fake of the GitHub REST API (and the one GraphQL mutation arbot uses), for one repository.

Refs and merges are real: the repository is a bare git repository the bot pushes to, and merges,
squashes are made with git there. PRs, labels, comments, check runs, statuses, branch
protection and auto-merge are kept in memory and behave like GitHub's for the cases arbot meets:
- merge (PUT .../merge) honours the `sha` guard (409), required checks and "up to date" protection (405);
- auto-merge (GraphQL enablePullRequestAutoMerge) needs a protected base; it merges (squash, with the
  given headline and body) as soon as the requirements hold, and is cancelled when the head moves;
- workflow dispatch (POST .../actions/workflows/{workflow_id}/dispatches) reads the workflow file from the git tree
  of the ref, checks its `on.workflow_dispatch` inputs like GitHub does (422 with GitHub's messages), records the
  dispatch in `dispatches` and hands it to `on_dispatch` (if set) on a background thread: no workflow runs here,
  the test plays it. `flush_dispatches()` waits for those callbacks.
Every request and response is validated against the OpenAPI subset GitHub publishes (contract.py); a
violation answers 500 and is kept in `violations`, which the tests assert to be empty.
Only the operations of scripts/extract_openapi.py's OPERATIONS exist here.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import jwt
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.fake_github.contract import ContractError, load, operation, validate_request, validate_response
from tests.fake_github.hooks import Hooks, check_run_payload, pull_request_payload, status_payload

AUTOMERGE_INPUT = {"pullRequestId", "mergeMethod", "commitHeadline", "commitBody", "expectedHeadOid",
                   "authorEmail", "clientMutationId"}  # EnablePullRequestAutoMergeInput (GraphQL schema)
ZERO = "0" * 40


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


class FakeGitHub:
    def __init__(self, root: Path, owner: str = "octo-org", name: str = "research", token: str = "ghp_test",
                 login: str = "arbot-user", app: tuple[int, str, int] | None = None):
        """`app` = (app_id, public key PEM, installation_id) enables GitHub App auth."""
        self.owner, self.name, self.full_name = owner, name, f"{owner}/{name}"
        self.bare = root / f"{name}.git"
        subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(self.bare)], check=True)
        self.tokens = {token: login}
        self.app = app
        self.lock = threading.RLock()
        self.prs: dict[int, PR] = {}
        self.comments: dict[int, dict] = {}
        self.labels: dict[str, dict] = {}
        self.check_runs: list[dict] = []
        self.statuses: list[dict] = []
        self.protection: dict[str, dict] = {}
        self.collaborators: dict[str, str] = {login: "admin"}
        self.allow_auto_merge = True
        self.default_branch = "main"
        self.requests: list[tuple[str, str, Any]] = []
        # workflow_dispatch events accepted (POST .../actions/workflows/{workflow_id}/dispatches), oldest first:
        # {id (the new workflow run's id), workflow (file name), workflow_id, ref (refs/heads/NAME or
        # refs/tags/NAME), head_branch, sha (the ref's commit at dispatch time), inputs (every declared input, as
        # strings, defaults filled in), user}
        self.dispatches: list[dict] = []
        # Called with each accepted dispatch (a copy), one at a time in dispatch order, on a worker thread (never in
        # the request handler, so it may call the fake over HTTP). Wait for it with flush_dispatches().
        self.on_dispatch: Callable[[dict], Any] | None = None
        self.workflows: dict[str, int] = {}  # workflow file name -> numeric workflow id (see workflow_id())
        self._actions: ThreadPoolExecutor | None = None
        self._played: list[Future] = []
        self.violations: list[str] = []
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
        sha = self.ref(pr.head)
        if sha:
            pr.last_head = sha
        return pr.last_head

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

    def repo_json(self, full: bool = True) -> dict:
        d = self.example("full-repository-default-response")
        d.update(name=self.name, full_name=self.full_name, default_branch=self.default_branch, private=True,
                 allow_auto_merge=self.allow_auto_merge, language=None, license=None, fork=False)
        for fork_only in ("source", "parent", "template_repository"):
            d.pop(fork_only, None)
        d["owner"]["login"] = self.owner
        d.setdefault("permissions", {"admin": True, "maintain": True, "push": True, "triage": True, "pull": True})
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
        for side, ref, sha in (("head", pr.head, head_sha), ("base", pr.base, base_sha)):
            d[side].update(ref=ref, sha=sha, label=f"{self.owner}:{ref}", user=self.user(self.owner))
            d[side]["repo"].update(name=self.name, full_name=self.full_name)
            d[side]["repo"]["owner"]["login"] = self.owner
        return d

    def check_json(self, run: dict) -> dict:
        d = self.example("check-run-example-of-completed-conclusion")
        d.update(id=run["id"], node_id=f"CR_{run['id']}", name=run["name"], head_sha=run["head_sha"], status=run["status"],
                 conclusion=run.get("conclusion"), started_at=run["started_at"], completed_at=run.get("completed_at"),
                 details_url=run.get("details_url"), external_id=run.get("external_id", ""), pull_requests=[],
                 url=f"{self.api}/repos/{self.full_name}/check-runs/{run['id']}")
        slug = run["creator"].removesuffix("[bot]")
        d["app"].update(slug=slug, name=slug, id=abs(hash(slug)) % 10**6, node_id=f"APP_{slug}")
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
                 created_at=c["created_at"], updated_at=c["updated_at"], author_association="OWNER",
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
        p = self.protection[branch]
        url = f"{self.api}/repos/{self.full_name}/branches/{branch}/protection"
        return {
            "url": url,
            "required_status_checks": {"url": f"{url}/required_status_checks", "strict": p["strict"],
                                       "contexts": p["contexts"], "contexts_url": f"{url}/required_status_checks/contexts",
                                       "checks": [{"context": c, "app_id": None} for c in p["contexts"]]},
            "enforce_admins": {"url": f"{url}/enforce_admins", "enabled": p["enforce_admins"]},
        }

    # --- rules ------------------------------------------------------------------------------------------
    def check_passed(self, sha: str, context: str) -> bool:
        runs = [r for r in self.check_runs if r["head_sha"] == sha and r["name"] == context]
        if runs:
            return max(runs, key=lambda r: r["id"]).get("conclusion") in ("success", "neutral", "skipped")
        statuses = [s for s in self.statuses if s["sha"] == sha and s["context"] == context]
        return bool(statuses) and statuses[-1]["state"] == "success"

    def blockers(self, pr: PR) -> list[str]:
        """Why GitHub would not merge this PR now (empty: it would)."""
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
        out = [f'Required status check "{c}" is expected.' for c in rules["contexts"] if not self.check_passed(head, c)]
        if rules["strict"] and not self.is_ancestor(base, head):
            out.append("Head branch is not up to date with the base branch")
        return out

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
    def _emit_pr(self, action: str, pr: PR, user: str) -> None:
        definition, payload = pull_request_payload(action, self.full_name, self.pr_json(pr), user)
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
            if not self.blockers(pr):
                am = pr.auto_merge
                self.squash(pr, am["commit_title"] or pr.title, am["commit_message"] or "", am["by"])

    # --- the app ----------------------------------------------------------------------------------------
    def _auth(self, request: Request, path: str) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, cred = header.partition(" ")
        if path.startswith("/app/"):
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
                    status, out = self.dispatch(method, path, body, dict(request.query_params), user)
            except HTTPError as e:
                status, out = e.status, e.body
            try:
                operation(method, path)
                validate_response(method, path, status, out)
            except ContractError as e:
                self.violations.append(str(e))
                return JSONResponse({"message": f"fake GitHub: {e}"}, status_code=500)
            if status == 204:
                return Response(status_code=204)
            return JSONResponse(out, status_code=status)

        @app.post("/api/graphql")
        async def graphql(request: Request):
            body = await request.json()
            self.requests.append(("POST", "/graphql", body))
            with self.lock:
                try:
                    user = self._auth(request, "/graphql")
                except HTTPError as e:
                    return JSONResponse(e.body, status_code=e.status)
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
        if not self.app or installation_id != self.app[2]:
            raise HTTPError(404, "Not Found")
        token = f"ghs_installation{self.next_id()}"
        self.tokens[token] = "arbot-app[bot]"
        self.collaborators.setdefault("arbot-app[bot]", "write")
        d = self.example("installation-token")
        d.update(token=token, expires_at="2099-01-01T00:00:00Z")
        d.pop("repositories", None)
        return 201, d

    def op_get_repo(self, **_):
        return 200, self.repo_json()

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
            if "head" in query and query["head"] != f"{self.owner}:{pr.head}":
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
        number = max([*self.prs, *[c["issue"] for c in self.comments.values()], 0]) + 1
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

    def op_add_labels(self, issue_number: str, body: Any, **_):
        pr = self._pr(issue_number)
        names = body.get("labels", []) if isinstance(body, dict) else body
        for item in names:
            name = item["name"] if isinstance(item, dict) else item
            self._ensure_label(name)
            if name not in pr.labels:
                pr.labels.append(name)
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
        run = {"id": self.next_id(), "name": body["name"], "head_sha": body["head_sha"],
               "status": body.get("status", "queued"), "conclusion": body.get("conclusion"),
               "output": body.get("output"), "details_url": body.get("details_url"),
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
        if not self.ref(branch):
            raise HTTPError(404, "Branch not found")
        checks = body.get("required_status_checks") or {}
        contexts = list(checks.get("contexts") or []) + [c["context"] for c in checks.get("checks") or []]
        self.protection[branch] = {"strict": bool(checks.get("strict")), "contexts": sorted(set(contexts)),
                                   "enforce_admins": bool(body.get("enforce_admins"))}
        d = self.example("branch-protection-update")
        d.update(self.protection_json(branch))
        return 200, d

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
    def _dispatch_trigger(text: str) -> dict | None:
        """The `on.workflow_dispatch` mapping of a workflow file ({} when it has no inputs), None without the trigger.
        PyYAML (YAML 1.1) reads the key `on` as the boolean True: both spellings are looked up."""
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            return None
        if not isinstance(doc, dict):
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
        from urllib.parse import unquote

        workflow_id = unquote(workflow_id)
        if workflow_id.isdigit():
            listed = self.git("ls-tree", "--name-only", f"refs/heads/{self.default_branch}:.github/workflows", check=False)
            for name in sorted(listed.stdout.splitlines()):  # GitHub knows the default branch's workflows by id
                self.workflow_id(name)
            file = next((f for f, i in self.workflows.items() if i == int(workflow_id)), None)
            if file is None:
                raise HTTPError(404, "Not Found")
        else:
            file = workflow_id
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
        self.dispatches.append(dispatch)
        self._play(dispatch)
        if body.get("return_run_details"):
            return 200, {"workflow_run_id": run_id, "run_url": f"{self.api}/repos/{self.full_name}/actions/runs/{run_id}",
                         "html_url": f"http://github.test/{self.full_name}/actions/runs/{run_id}"}
        return 204, None

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
            error = "Auto merge is not allowed for this repository"
        elif pr.state != "open":
            error = "Pull request is closed"
        elif not self.protection.get(pr.base):
            error = "Pull request is in clean status"  # GitHub's answer when nothing is required
        elif data.get("expectedHeadOid") and data["expectedHeadOid"] != self.head_sha(pr):
            error = "Head sha didn't match expected"
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
    ]
    return [(m, re.compile(p), name) for m, p, name in table]


ROUTES = _routes()

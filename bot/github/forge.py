"""The GitHub forge: experiments as pull requests into `champion`, decided by check runs, merged by GitHub.

Everything goes through PyGithub (REST, plus the one GraphQL mutation that enables auto-merge), so any
base URL works: https://api.github.com or a GitHub Enterprise Server's https://HOST/api/v3. Branches are
pushed with git (GitPython) to `git_url`. Authentication:
- a GitHub App installation (Auth.AppAuth -> installation token): check runs are used;
- a personal access token: only Apps can write check runs, so commit statuses stand in for them.
Never the Actions GITHUB_TOKEN: PRs opened with it start no workflows.

Every write is idempotent (found again before it is made): PRs by head branch, the results comment by a
hidden marker, labels by name, so a restarted bot repeats nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import EllipsisType
from urllib.parse import urlparse

import git
import httpx
from github import Auth, Github, GithubException, GithubIntegration
from github.PullRequest import PullRequest
from github.Repository import Repository

from bot.config import GitHubConfig
from bot.core.records import Decision, ExperimentRecord, Metric, verdict_text

log = logging.getLogger("arbot.github")

VERDICT_CHECK = "arbot/verdict"  # success only for a win: branch protection requires it on champion
EVALUATE_WORKFLOW = "arbot-evaluate.yml"  # .github/workflows/: one training run per dispatch
LABEL = "arbot"
LABELS = {  # name: (color, description)
    "arbot": ("5319e7", "an arbot experiment"),
    "arbot:loss": ("fbca04", "arbot: measured, not better than the champion"),
    "arbot:crash": ("d73a4a", "arbot: the experiment crashed, timed out or was rejected"),
}
TAG_RULESET = "arbot: no tags named like branches"
RESULTS_MARKER = "<!-- arbot:results -->"
EXPERIMENT_MARKER = "<!-- arbot:experiment {id} -->"
CONCLUSION_TO_STATE = {"success": "success", "failure": "failure", "neutral": "success", "cancelled": "error",
                       "timed_out": "error", "action_required": "failure", "skipped": "success"}
WRITE_PERMISSIONS = {"admin", "maintain", "write"}
PULL_BRANCH = "pull/"  # an adopted PR's experiment branch is pull/<number>: its head, fetched from refs/pull/<n>/head


def pull_number(branch: str) -> int | None:
    """The PR number of an adopted PR's experiment branch (pull/<n>), else None (the bot's own branch)."""
    rest = branch.removeprefix(PULL_BRANCH)
    return int(rest) if rest != branch and rest.isdigit() else None


class GitHubForgeError(RuntimeError):
    pass


class ArtifactTooLarge(GitHubForgeError):
    """An artifact over the size the bot reads (by GitHub's size_in_bytes, or by what the download sent)."""


@dataclass(frozen=True)
class Check:
    """A check run (App) or commit status (PAT), as the forge reads it back."""

    name: str
    conclusion: str | None  # success, failure, ... or None while pending
    summary: str = ""
    details_url: str | None = None
    id: int | None = None


def connect(config: GitHubConfig, environ: Mapping[str, str] | None = None, *, git_url: str | None = None,
            champion_branch: str = "champion", branch_prefix: str = "arbot/exp-", **github_kwargs) -> "GitHubForge":
    """A forge from the `github:` config: App auth when app_id, private key and installation id are set, else a PAT.

    Contacts nothing until the first call. `github_kwargs` go to PyGithub's Github (e.g. retry, timeout).
    """
    env = os.environ if environ is None else environ
    if not config.repo:
        raise GitHubForgeError("github.repo is not set: name the repository as owner/name in arbot.yml")
    a = config.auth
    app_auth = None
    if a.is_app:
        key = Path(a.private_key_path).expanduser().read_text()
        app_auth = Auth.AppAuth(a.app_id, key)
        auth = app_auth.get_installation_auth(a.installation_id)
        token_for_git = lambda: auth.token  # noqa: E731 - the installation token, fetched and renewed by PyGithub
        use_checks = True
    else:
        token = env.get(a.token_env)
        if not token:
            raise GitHubForgeError(
                f"no GitHub credentials: set {a.token_env} to a personal access token, or configure a GitHub App "
                f"(github.auth.app_id, private_key_path, installation_id)"
            )
        auth = Auth.Token(token)
        token_for_git = token
        use_checks = False
    gh = Github(auth=auth, base_url=config.base_url.rstrip("/"), **github_kwargs)
    return GitHubForge(gh, config.repo, use_checks=use_checks, git_url=git_url, token=token_for_git,
                       base_url=config.base_url, champion_branch=champion_branch, branch_prefix=branch_prefix,
                       app_auth=app_auth, github_kwargs=github_kwargs)


def web_host(base_url: str) -> str:
    """github.com for the public API, else the Enterprise host (https://HOST/api/v3 -> HOST)."""
    host = urlparse(base_url).hostname or "github.com"
    return "github.com" if host == "api.github.com" else host


class GitHubForge:
    def __init__(self, gh: Github, repo: str, *, use_checks: bool, git_url: str | None = None,
                 token: str | Callable[[], str] | None = None,
                 base_url: str = "https://api.github.com", champion_branch: str = "champion",
                 branch_prefix: str = "arbot/exp-", app_auth: Auth.AppAuth | None = None,
                 github_kwargs: Mapping | None = None):
        self.gh = gh
        self.base_url = base_url.rstrip("/")
        self.app_auth = app_auth  # the App's own credentials (JWT), for GET /app; None with a PAT
        self.github_kwargs = dict(github_kwargs or {})
        self._app: tuple[int, str] | None = None
        self.full_name = repo
        self.owner = repo.split("/")[0]
        self.use_checks = use_checks
        self.git_url = git_url or f"https://{web_host(base_url)}/{repo}.git"
        self.token = token
        self.champion_branch = champion_branch
        self.branch_prefix = branch_prefix
        self._repo: Repository | None = None
        self._login: str | None = None
        self._etags: dict[tuple, tuple[str, dict]] = {}  # conditional GETs: (url, parameters) -> (ETag, answer)
        self._comments: dict[int, tuple[int, str] | None] = {}  # PR -> its results comment (id, body); None: none
        self._posted: dict[tuple[str, str], str] = {}  # (sha, check name) -> the conclusion this process posted

    @property
    def repo(self) -> Repository:
        if self._repo is None:
            self._repo = self.gh.get_repo(self.full_name)
        return self._repo

    # --- git --------------------------------------------------------------------------------------
    def _token(self) -> str | None:
        return self.token() if callable(self.token) else self.token

    def git_remote(self) -> str:
        """The URL git pushes to, with the token (PAT or App installation token) for https remotes."""
        token = self._token()
        if token and self.git_url.startswith("https://"):
            return self.git_url.replace("https://", f"https://x-access-token:{token}@", 1)
        return self.git_url

    def push(self, local: git.Repo, sha: str, branch: str) -> None:
        """Push `sha` to refs/heads/<branch>; never forced, so a branch that moved elsewhere is an error."""
        remote = self.git_remote()
        try:
            local.git.push(remote, f"{sha}:refs/heads/{branch}")
        except git.GitCommandError as e:
            token = self._token() if remote != self.git_url else None
            detail = str(e.stderr) if not token else str(e.stderr).replace(token, "***")
            raise GitHubForgeError(f"git push of {branch} failed: {detail}") from None  # e's command holds the token

    # --- setup (arbot setup) ----------------------------------------------------------------------
    def champion(self) -> str:
        return self.repo.get_branch(self.champion_branch).commit.sha

    def ensure_champion(self, sha: str | None = None) -> tuple[str, bool]:
        """Create the champion branch (from `sha`, else the default branch's head); (sha, created)."""
        try:
            return self.champion(), False
        except GithubException as e:
            if e.status != 404:  # GitHub answers 404 "Branch not found"
                raise
        if sha is None:
            sha = self.repo.get_branch(self.repo.default_branch).commit.sha
        self.repo.create_git_ref(f"refs/heads/{self.champion_branch}", sha)
        return sha, True

    def ensure_labels(self) -> list[str]:
        """Create the arbot labels that are missing; the names created."""
        created = []
        for name, (color, description) in LABELS.items():
            try:
                self.repo.get_label(name)
            except GithubException as e:
                if e.status != 404:
                    raise
                self.repo.create_label(name, color, description)
                created.append(name)
        return created

    def app(self) -> tuple[int, str] | None:
        """(id, slug) of the GitHub App the forge acts as (GET /app with the App's JWT), or None with a PAT."""
        if self.app_auth is None:
            return None
        if self._app is None:
            integration = GithubIntegration(auth=self.app_auth, base_url=self.base_url, **self.github_kwargs)
            app = integration.get_app()
            self._app = (app.id, app.slug)
        return self._app

    def protect_champion(self, app_id: int | None = None, app_slug: str | None = None, apply: bool = True) -> list[str]:
        """Branch protection on champion that pins the bot; idempotent: reads the protection back, changes only what
        differs and returns what it changed (empty: nothing); with apply=False only says what it would change
        (`arbot doctor`).

        - `arbot/verdict` required, from the App `app_id` only (`checks: [{context, app_id}]`; the deprecated
          `contexts` is not sent: GitHub refuses both at once), with branches up to date (`strict`). Without an App
          (a PAT, whose verdicts are commit statuses made by a user) any source counts: `app_id: -1`.
        - With `app_slug` on an organization repository: push restrictions naming only the App, so nobody else may
          push to or merge into champion (GitHub keeps restrictions for organizations only; administrators bypass
          them while `enforce_admins` is off, GitHub's default, which is kept as it is).
        - Code-owner reviews (`require_code_owner_reviews`; no approval count required): a PR that changes a path of
          .github/CODEOWNERS (the evaluator, the workflows) waits for its owner.
        Other required checks and rules already there are kept."""
        url, current = self._protection(self.champion_branch)
        changes = []
        status = current.get("required_status_checks") or {}
        checks = [c for c in status.get("checks") or [] if c.get("context") != VERDICT_CHECK]
        verdict = next((c for c in status.get("checks") or [] if c.get("context") == VERDICT_CHECK), None)
        source = f"the app {app_slug or app_id}" if app_id is not None else "any source (a PAT cannot pin an app)"
        if verdict is None or verdict.get("app_id") != app_id:
            changes.append(f"requires {VERDICT_CHECK} from {source}")
        if not status.get("strict"):
            changes.append("branches must be up to date")
        have = _restrictions(current)
        want = have
        if app_slug and self.repo.owner.type == "Organization":
            want = {"users": [], "teams": [], "apps": [app_slug]}
            if have != want:
                changes.append(f"only {app_slug} may push to or merge into it")
        reviews = current.get("required_pull_request_reviews")
        if not (reviews or {}).get("require_code_owner_reviews"):
            changes.append("code owners must review changes to their paths")
        if not changes or not apply:
            return changes
        required = {"strict": True, "checks": [*checks, {"context": VERDICT_CHECK, "app_id": app_id}]}
        self._put_protection(url, current, required, want)
        return changes

    def _put_protection(self, url: str, current: dict, required: dict | None, restrictions: dict | None) -> None:
        """PUT a branch's protection: these required checks and push restrictions, code-owner review on, every
        other rule as `current` has it. Sent through the requester: PyGithub's edit_protection sends null for
        unset booleans, which GitHub's published schema does not allow, and cannot send `checks` with app ids."""
        flag = lambda key: bool((current.get(key) or {}).get("enabled"))  # noqa: E731
        reviews = current.get("required_pull_request_reviews") or {}
        body = {
            "required_status_checks": None if required is None else {"strict": bool(required.get("strict")), "checks": [
                {"context": c["context"], "app_id": -1 if c.get("app_id") is None else c["app_id"]}
                for c in required.get("checks") or []]},
            "enforce_admins": flag("enforce_admins"),
            "required_pull_request_reviews": {
                "dismiss_stale_reviews": bool(reviews.get("dismiss_stale_reviews")),
                "require_code_owner_reviews": True,
                "required_approving_review_count": int(reviews.get("required_approving_review_count") or 0),
                "require_last_push_approval": bool(reviews.get("require_last_push_approval"))},
            "restrictions": restrictions,
            **{key: flag(key) for key in ("required_linear_history", "allow_force_pushes", "allow_deletions",
                                          "required_conversation_resolution", "block_creations", "lock_branch",
                                          "allow_fork_syncing")},
        }
        self.gh.requester.requestJsonAndCheck("PUT", url, input=body)

    def _protection(self, branch: str) -> tuple[str, dict]:
        """(URL, current protection) of a branch; {} when it is not protected."""
        url = f"{self.repo.url}/branches/{branch}/protection"
        try:
            return url, self.gh.requester.requestJsonAndCheck("GET", url)[1]
        except GithubException as e:
            if e.status != 404:  # GitHub answers 404 "Branch not protected"
                raise
            return url, {}

    def protect_default(self, pushers: Mapping[str, list[str]] | None = None, apply: bool = True) -> list[str]:
        """Branch protection on the default branch, whose evaluate workflow (and evaluator) the bot dispatches and
        trusts; idempotent like protect_champion, and apply=False only says what it would change (`arbot doctor`).

        - Changes only through pull requests (`required_pull_request_reviews`: a direct push is refused), with
          code-owner review (`require_code_owner_reviews`): a change to a path of .github/CODEOWNERS (`.github/`,
          `evaluator/`) waits for its owner.
        - On an organization repository, with `pushers` ({"users": [...], "teams": [...], "apps": [...]}): push
          restrictions naming only them (who may merge into it). Administrators bypass both while `enforce_admins`
          is off (GitHub's default, kept as it is).
        Required checks and rules already there are kept."""
        url, current = self._protection(self.repo.default_branch)
        changes = []
        reviews = current.get("required_pull_request_reviews")
        if reviews is None:
            changes.append("changes only through pull requests")
        if not (reviews or {}).get("require_code_owner_reviews"):
            changes.append("code owners must review changes to their paths")
        have = _restrictions(current)
        want = have
        if pushers is not None and self.repo.owner.type == "Organization":
            want = {key: sorted(pushers.get(key) or []) for key in ("users", "teams", "apps")}
            if have != want:
                named = [*want["users"], *want["teams"], *want["apps"]]
                changes.append(f"only {', '.join(named) if named else 'administrators'} may push to or merge into it")
        if not changes or not apply:
            return changes
        self._put_protection(url, current, current.get("required_status_checks"), want)
        return changes

    def tag_patterns(self) -> list[str]:
        """The tag names the bot's branches have: a tag named like the default branch would pass for it where
        GitHub reports a tag's name as a branch (a workflow run's head_branch)."""
        return sorted({f"refs/tags/{self.repo.default_branch}", f"refs/tags/{self.champion_branch}",
                       f"refs/tags/{self.branch_prefix}*"})

    def ensure_tag_ruleset(self, apply: bool = True) -> list[str]:
        """The ruleset TAG_RULESET: an active tag ruleset whose `creation` rule refuses to create tags named like the
        bot's branches (tag_patterns); created when missing (POST .../rulesets). One of that name that differs is
        reported, not overwritten (it may carry a team's bypass list): edit it in Settings, Rules."""
        for summary in self.gh.requester.requestJsonAndCheck("GET", f"{self.repo.url}/rulesets")[1] or []:
            if summary.get("name") == TAG_RULESET:
                _, r = self.gh.requester.requestJsonAndCheck("GET", f"{self.repo.url}/rulesets/{summary['id']}")
                include = set(((r.get("conditions") or {}).get("ref_name") or {}).get("include") or [])
                ok = (r.get("target") == "tag" and r.get("enforcement") == "active" and set(self.tag_patterns()) <= include
                      and any(rule.get("type") == "creation" for rule in r.get("rules") or []))
                return [] if ok else [f"the ruleset {TAG_RULESET!r} (id {r['id']}) does not refuse creating "
                                      f"{', '.join(self.tag_patterns())}: edit it in Settings, Rules"]
        if apply:
            self.gh.requester.requestJsonAndCheck("POST", f"{self.repo.url}/rulesets", input={
                "name": TAG_RULESET, "target": "tag", "enforcement": "active",
                "conditions": {"ref_name": {"include": self.tag_patterns(), "exclude": []}},
                "rules": [{"type": "creation"}]})
        return [f"no tag may be named like its branches ({', '.join(self.tag_patterns())}: ruleset {TAG_RULESET!r})"]

    def ensure_auto_merge(self) -> bool:
        """Allow auto-merge on the repository (a new repository has it off, and enablePullRequestAutoMerge then
        fails with "Auto merge is not allowed for this repository"); True when it changed."""
        _, data = self.gh.requester.requestJsonAndCheck("GET", self.repo.url)
        if data.get("allow_auto_merge"):
            return False
        self.gh.requester.requestJsonAndCheck("PATCH", self.repo.url, input={"allow_auto_merge": True})
        return True

    # --- pull requests ----------------------------------------------------------------------------
    def find_pr(self, branch: str) -> PullRequest | None:
        """The PR (open or closed) whose head is `branch` in this repository; for pull/<n>, PR n."""
        if (number := pull_number(branch)) is not None:
            return self.pr(number)
        for pr in self.repo.get_pulls(state="all", head=f"{self.owner}:{branch}", base=self.champion_branch):
            return pr
        return None

    def recent_prs(self) -> list[PullRequest]:
        """The PRs into champion from this repository's branches, most recently updated first: one page (one call),
        which holds every experiment in flight; an older one is found with find_pr. Listed PRs carry no `merged`
        (read merged_at)."""
        page = self.repo.get_pulls(state="all", base=self.champion_branch, sort="updated", direction="desc").get_page(0)
        return [pr for pr in page if pr.head.repo is not None and pr.head.repo.full_name == self.full_name]

    def open_pr(self, rec: ExperimentRecord, local: git.Repo | None = None,
                existing: PullRequest | None | EllipsisType = ...) -> PullRequest:
        """Push the experiment branch (when `local` is given) and open its PR with label `arbot`; idempotent.
        `existing`: the PR already looked up (None: there is none), else it is looked up here."""
        pr = self.find_pr(rec.branch) if existing is ... else existing
        if pr is None:
            if local is not None:
                self.push(local, rec.commit, rec.branch)
            try:
                pr = self.repo.create_pull(base=self.champion_branch, head=rec.branch, body=pr_body(rec),
                                           title=rec.proposal.hypothesis[:250], maintainer_can_modify=False)
            except GithubException as e:
                if e.status != 422 or (pr := self.find_pr(rec.branch)) is None:  # 422: it exists after all
                    raise
            else:
                self._comments[pr.number] = None  # a new PR has no comment yet
                log.info("opened PR #%d for %s", pr.number, rec.id)
        if LABEL not in {lab.name for lab in pr.labels}:
            self.add_labels(pr.number, LABEL)
        return pr

    def add_labels(self, number: int, *names: str) -> None:
        """Add labels to a PR, as `{"labels": [...]}`: GitHub's schema has no bare array (what PyGithub sends)."""
        self.gh.requester.requestJsonAndCheck("POST", f"{self.repo.url}/issues/{number}/labels",
                                              input={"labels": list(names)})

    def pr(self, number: int) -> PullRequest:
        return self.repo.get_pull(number)

    def open_prs(self) -> list[PullRequest]:
        """Open experiment PRs into champion (the in-flight experiments)."""
        return [pr for pr in self.repo.get_pulls(state="open", base=self.champion_branch)
                if LABEL in {lab.name for lab in pr.labels}]

    def upsert_comment(self, number: int, body: str) -> tuple[int, bool]:
        """The one results comment of a PR, found again by its hidden marker (listed once per process and PR, then
        remembered); written only when its text changes; (comment id, created)."""
        body = body if RESULTS_MARKER in body else f"{RESULTS_MARKER}\n{body}"
        issue = f"{self.repo.url}/issues/{number}"
        if number not in self._comments:
            _, listed = self.gh.requester.requestJsonAndCheck("GET", f"{issue}/comments", parameters={"per_page": 100})
            found = next((c for c in listed or [] if RESULTS_MARKER in (c.get("body") or "")), None)
            self._comments[number] = None if found is None else (found["id"], found["body"])
        known = self._comments[number]
        if known is None:
            _, made = self.gh.requester.requestJsonAndCheck("POST", f"{issue}/comments", input={"body": body})
            self._comments[number] = (made["id"], body)
            return made["id"], True
        if known[1] != body:
            try:
                self.gh.requester.requestJsonAndCheck("PATCH", f"{self.repo.url}/issues/comments/{known[0]}",
                                                      input={"body": body})
            except GithubException as e:
                if e.status != 404:
                    raise
                del self._comments[number]  # deleted by hand meanwhile: found again, or made again
                return self.upsert_comment(number, body)
            self._comments[number] = (known[0], body)
        return known[0], False

    def comment(self, number: int, body: str) -> None:
        """A comment of its own on a PR (what the bot answers a command, or reports), besides the results one."""
        self.gh.requester.requestJsonAndCheck("POST", f"{self.repo.url}/issues/{number}/comments", input={"body": body})

    # --- checks -----------------------------------------------------------------------------------
    def post_check(self, sha: str, name: str, conclusion: str, title: str, summary: str, text: str = "",
                   details_url: str | None = None) -> None:
        """A completed check run (App) or a commit status (PAT) on `sha` (remembered: `posted`)."""
        self._posted[(sha, name)] = conclusion if self.use_checks else CONCLUSION_TO_STATE.get(conclusion, "error")
        if self.use_checks:
            output = {"title": title[:1000], "summary": summary[:65000]}
            if text:
                output["text"] = text[:65000]
            kwargs = {"details_url": details_url} if details_url else {}
            self.repo.create_check_run(name=name, head_sha=sha, status="completed", conclusion=conclusion,
                                       output=output, **kwargs)
        else:
            # POST /statuses/{sha} directly: PyGithub's Commit.create_status first fetches the whole commit.
            body = {"state": CONCLUSION_TO_STATE.get(conclusion, "error"), "description": title[:140], "context": name}
            if details_url:
                body["target_url"] = details_url
            self.gh.requester.requestJsonAndCheck("POST", f"{self.repo.url}/statuses/{sha}", input=body)

    def posted(self, sha: str, name: str) -> str | None:
        """The conclusion (PAT: the state) of the check `name` this process last posted on `sha`, if it did."""
        return self._posted.get((sha, name))

    def check(self, sha: str, name: str, app_slug: str | None = None) -> Check | None:
        """The latest check run named `name` on `sha` (made by the app `app_slug`, when given), else its commit
        status, else None. Pass app_slug="github-actions" for arbot/evaluate: only the workflow's report job may
        have made it, not another app with checks: write."""
        # Straight to the two list endpoints: PyGithub's Commit fetches the whole commit first.
        base = f"{self.repo.url}/commits/{sha}"
        _, data = self.gh.requester.requestJsonAndCheck("GET", f"{base}/check-runs", parameters={"check_name": name})
        runs = [r for r in data.get("check_runs", []) if r.get("name") == name
                and (app_slug is None or (r.get("app") or {}).get("slug") == app_slug)]
        if runs:
            latest = max(runs, key=lambda r: r["id"])
            return Check(name, latest.get("conclusion"), ((latest.get("output") or {}).get("summary") or ""),
                         latest.get("details_url"), latest["id"])
        _, data = self.gh.requester.requestJsonAndCheck("GET", f"{base}/status")
        for status in data.get("statuses", []):
            if status.get("context") == name:
                state = status.get("state")
                return Check(name, None if state == "pending" else state, status.get("description") or "")
        return None

    def get(self, url: str, parameters: Mapping | None = None) -> dict:
        """A GET made conditional: the answer GitHub gave last time is sent back with its ETag (If-None-Match), and a
        304 Not Modified, which does not count against the rate limit, answers with the copy kept."""
        key = (url, tuple(sorted((parameters or {}).items())))
        etag, kept = self._etags.get(key, (None, None))
        headers, data = self.gh.requester.requestJsonAndCheck(
            "GET", url, parameters=dict(parameters or {}), headers={"If-None-Match": etag} if etag else None)
        if data is None and kept is not None:  # 304: PyGithub hands over the empty body
            return kept
        etag = {k.lower(): v for k, v in headers.items()}.get("etag")
        if etag:
            self._etags[key] = (etag, data)
        return data

    def login(self) -> str:
        """Who the forge acts as on GitHub: `<app slug>[bot]` for an App (its runs' actor), else the PAT's user."""
        if self._login is None:
            app = self.app()
            self._login = f"{app[1]}[bot]" if app else self.gh.requester.requestJsonAndCheck("GET", "/user")[1]["login"]
        return self._login

    def dispatch(self, workflow: str, ref: str, inputs: Mapping[str, str]) -> tuple[int | None, str]:
        """Start `workflow` (a file under .github/workflows/ of `ref`) with these inputs: POST .../dispatches with
        `return_run_details`. (the new workflow run's id, or None from a server that answers 204 without details;
        when GitHub took the dispatch, by its own clock: the answer's Date, else this machine's)."""
        headers, data = self.gh.requester.requestJsonAndCheck(
            "POST", f"{self.repo.url}/actions/workflows/{workflow}/dispatches",
            input={"ref": ref, "inputs": dict(inputs), "return_run_details": True})
        date = {k.lower(): v for k, v in headers.items()}.get("date")
        at = parsedate_to_datetime(date) if date else datetime.now(timezone.utc)
        return (int(data["workflow_run_id"]) if data else None), at.isoformat(timespec="seconds")

    def workflow_run(self, run_id: int) -> dict | None:
        """The workflow run as GitHub has it (GET .../actions/runs/{run_id}, conditional): status, conclusion,
        head_sha, event, path, display_title, actor, triggering_actor, ...; None when GitHub has no such run."""
        try:
            return self.get(f"{self.repo.url}/actions/runs/{run_id}")
        except GithubException as e:
            if e.status != 404:
                raise
            return None

    def dispatched_runs(self, workflow: str, branch: str, actor: str) -> list[dict]:
        """The latest 100 runs of `workflow` started by `actor` with workflow_dispatch on `branch`, newest first (GET
        .../actions/workflows/{workflow}/runs, conditional): how a dispatch is found on a server that answers it with
        no run id."""
        data = self.get(f"{self.repo.url}/actions/workflows/{workflow}/runs",
                        {"event": "workflow_dispatch", "branch": branch, "actor": actor, "per_page": 100})
        return data.get("workflow_runs", [])

    def artifact(self, run_id: int, name: str) -> dict | None:
        """The run's newest artifact `name` that has not expired, as GitHub lists it (id, size_in_bytes,
        archive_download_url, ...), or None."""
        _, data = self.gh.requester.requestJsonAndCheck("GET", f"{self.repo.url}/actions/runs/{run_id}/artifacts",
                                                        parameters={"name": name, "per_page": 100})
        found = [a for a in data.get("artifacts") or [] if a.get("name") == name and not a.get("expired")]
        return max(found, key=lambda a: a["id"]) if found else None

    def run_artifact(self, run_id: int, name: str, max_bytes: int) -> bytes | None:
        """The zip of the run's artifact `name` (the newest of that name that has not expired), or None; at most
        `max_bytes`: its size_in_bytes is checked before the download, which is streamed and cut off past the cap
        (ArtifactTooLarge either way).

        GitHub answers the download with 302 to a short-lived URL on another host (blob storage). PyGithub follows
        redirects only to github.com hosts, so the redirect is read here and the zip fetched with httpx, without
        the token: the URL carries its own signature."""
        artifact = self.artifact(run_id, name)
        if artifact is None:
            return None
        what = f"artifact {artifact['id']} ({artifact.get('name')})"
        if int(artifact.get("size_in_bytes") or 0) > max_bytes:
            raise ArtifactTooLarge(f"{what} is {artifact['size_in_bytes']} bytes, over the {max_bytes} bytes allowed")
        headers, _ = self.gh.requester.requestJsonAndCheck("GET", artifact["archive_download_url"])
        location = {k.lower(): v for k, v in headers.items()}.get("location")
        if not location:
            raise GitHubForgeError(f"the download of {what} gave no location")
        timeout = self.github_kwargs.get("timeout") or 60
        chunks, size = [], 0
        with httpx.stream("GET", location, timeout=timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                raise GitHubForgeError(f"the download of {what} failed: {response.status_code}")
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise ArtifactTooLarge(f"the download of {what} went past the {max_bytes} bytes allowed")
                chunks.append(chunk)
        return b"".join(chunks)

    # --- merging ----------------------------------------------------------------------------------
    def enable_automerge(self, pr: PullRequest, head_sha: str, headline: str, body: str) -> bool:
        """Ask GitHub to squash-merge once the required checks pass; False where auto-merge is unavailable."""
        try:
            pr.enable_automerge(merge_method="SQUASH", commit_headline=headline, commit_body=body,
                                expected_head_oid=head_sha)
            return True
        except GithubException as e:
            log.info("auto-merge unavailable for PR #%d: %s", pr.number, e.data if hasattr(e, "data") else e)
            return False

    def merge(self, pr: PullRequest, head_sha: str, title: str, message: str) -> str:
        """Squash-merge with the head-sha guard: GitHub refuses when the head moved. Returns the merge commit."""
        try:
            status = pr.merge(commit_title=title, commit_message=message, merge_method="squash", sha=head_sha)
        except GithubException as e:
            data = getattr(e, "data", None)
            why = data.get("message") if isinstance(data, dict) and data.get("message") else str(data or e)
            raise GitHubForgeError(f"PR #{pr.number} was not merged ({e.status}): {why}") from e
        if not status.merged:
            raise GitHubForgeError(f"PR #{pr.number} was not merged: {status.message}")
        return status.sha

    def close_as(self, pr: PullRequest, verdict: str, comment: str, close: bool = True) -> None:
        """Label a loss (or a crash, timeout or rejection), upsert its results comment and close it (unless not
        `close`: an adopted PR is left open for its author); the branch is kept."""
        label = "arbot:loss" if verdict == "loss" else "arbot:crash"
        self.upsert_comment(pr.number, comment)
        if label not in {lab.name for lab in pr.labels}:
            self.add_labels(pr.number, label)
        if close and pr.state != "closed":
            pr.edit(state="closed")

    def has_write_access(self, user: str) -> bool:
        try:
            return self.repo.get_collaborator_permission(user) in WRITE_PERMISSIONS
        except GithubException as e:
            if e.status != 404:
                raise
            return False


# --- rendering (pure) -----------------------------------------------------------------------------------
def _restrictions(protection: dict) -> dict | None:
    """A protection's push restrictions as the PUT body names them; None where there are none."""
    restrictions = protection.get("restrictions")
    return None if restrictions is None else {
        "users": sorted(u["login"] for u in restrictions.get("users") or []),
        "teams": sorted(t["slug"] for t in restrictions.get("teams") or []),
        "apps": sorted(a["slug"] for a in restrictions.get("apps") or [])}


def pr_body(rec: ExperimentRecord) -> str:
    p = rec.proposal
    lines = [
        EXPERIMENT_MARKER.format(id=rec.id),
        f"**Experiment** `{rec.id}` by proposer `{p.proposer}`, measured against champion `{rec.parent}`.",
        "",
    ]
    if p.rationale:
        lines += [p.rationale.strip(), ""]
    if p.knobs:
        lines += ["| knob | champion | this experiment |", "| --- | --- | --- |"]
        lines += [f"| `{k.name}` | {k.old:g} | {k.new:g} |" for k in p.knobs]
        lines.append("")
    lines.append(f"Experiment: {rec.id}")
    return "\n".join(lines)


def squash_message(rec: ExperimentRecord, trailers: Mapping[str, str], pr_number: int) -> tuple[str, str]:
    """(title, body) of the squash commit: `git log champion` keeps the local forge's trailers plus the PR (and an
    adopted PR's author)."""
    title = f"arbot: {rec.proposal.hypothesis} ({rec.id}) (#{pr_number})"
    author = {"Author": rec.author} if rec.author else {}
    body = "\n".join(f"{k}: {v}" for k, v in {**trailers, **author, "PR": f"#{pr_number}"}.items())
    rationale = rec.proposal.rationale.strip()
    return title, (f"{rationale}\n\n{body}\n" if rationale else f"{body}\n")


def trajectory_chart(points: list[tuple[str, float]], metric: Metric) -> str:
    """The champion's metric over its merges, as a Mermaid xychart-beta block (GitHub renders it natively)."""
    if not points:
        return ""
    fmt, key = metric.fmt, metric.key()
    labels = ", ".join(f'"{label}"' for label, _ in points)
    values = ", ".join(fmt(v) for _, v in points)
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    pad = max((hi - lo) * 0.1, 10.0 ** -metric.precision)
    return "\n".join([
        "```mermaid", "xychart-beta", f'    title "champion {key} ({metric.better} is better)"',
        f"    x-axis [{labels}]",
        f'    y-axis "{key}" {fmt(lo - pad)} --> {fmt(hi + pad)}', f"    line [{values}]", "```",
    ])


def results_comment(rec: ExperimentRecord, decision: Decision, trajectory: list[tuple[str, float]],
                    metric: Metric) -> str:
    """The one results comment of an experiment PR: verdict, the numbers, the champion's trajectory."""
    fmt = metric.fmt
    lines = [
        RESULTS_MARKER,
        f"### {rec.id}: **{verdict_text(decision.verdict, decision.rule)}**",
        "",
        decision.reason,
        "",
        f"| {decision.metric or metric.key()} | champion | delta | runs (candidate / champion) | p |",
        "| --- | --- | --- | --- | --- |",
        f"| {fmt(decision.candidate_mean)} | {fmt(decision.champion_mean)} | {fmt(decision.delta, signed=True)} "
        f"| {decision.candidate_runs} / {decision.champion_runs} | "
        f"{'n/a' if decision.p_value is None else f'{decision.p_value:.3g}'} |",
    ]
    chart = trajectory_chart(trajectory, metric)
    if chart:
        lines += ["", chart]
    return "\n".join(lines)


@dataclass(frozen=True)
class VerdictCheck:
    conclusion: str  # success (a win), neutral (a win held for review), failure (anything else)
    title: str
    summary: str


def verdict_check(decision: Decision, metric: Metric, held: bool = False) -> VerdictCheck:
    """The `arbot/verdict` check of a final decision: success only for a win, so branch protection lets only
    wins merge; a win held for review is neutral until a human approves it."""
    fmt = metric.fmt
    delta = "" if decision.delta is None else f" ({fmt(decision.delta, signed=True)})"
    title = (f"{decision.verdict}: {decision.metric or metric.key()} {fmt(decision.candidate_mean)} "
             f"vs {fmt(decision.champion_mean)}{delta}")
    if held:
        return VerdictCheck("neutral", f"held for review: {title}"[:200], f"{decision.reason}\n\nRule: {decision.rule}")
    return VerdictCheck("success" if decision.verdict == "win" else "failure", title[:200],
                        f"{decision.reason}\n\nRule: {decision.rule}")

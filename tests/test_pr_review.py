"""Outside pull requests (a coding agent's, a person's, a fork's) adopted as experiments: the bot's webhook server,
its dispatcher and driver against the fake GitHub (real HTTP, signed webhooks, every call and payload checked
against GitHub's contract), in the scripted world (tests/scripted.py: each run's result follows the markers in
train.py, no training; tests/test_pr_review_e2e.py trains for real).

Who is who: AGENT is in github.evaluate_authors; DEV is a collaborator with write access who is not; MAINTAINER
labels and approves; TRIAGER may label but has no write access; STRANGER owns a fork.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import git
import httpx
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from bot.config import AuthorCaps, Config
from bot.core.policy import make_policy
from bot.core.records import ExperimentRecord, Proposal, RunResult
from bot.github import adopt as adoption
from bot.server.app import ServerSettings, create_app
from bot.server.dispatch import Dispatcher
from bot.server.driver import Driver
from bot.server.store import Budget
from bot.surfaces.github import mirror
from runner.guard import forbidden_paths
from tests.fake_github.server import FakeGitHub
from tests.fake_github.serving import serving
from tests.scripted import MARK, SCRIPT, ScriptedWorkflow, Variant
from tests.test_github_driver import Proposer, github_world, settings
from tests.test_github_forge import REPO


def clone_as_someone(fake: FakeGitHub, path: Path) -> git.Repo:
    """A contributor's clone of the fake GitHub's repository, with a committer identity."""
    work = git.Repo.clone_from(str(fake.bare), path)
    with work.config_writer() as cw:
        cw.set_value("user", "name", "someone")
        cw.set_value("user", "email", "someone@example.com")
    return work


WORLD = {"win": Variant(effect=-0.3), "worse": Variant(effect=0.2), "win-again": Variant(effect=-0.2)}
AGENT, DEV, MAINTAINER, TRIAGER, STRANGER = "coder-agent[bot]", "dev", "maintainer", "triager", "stranger"
SECRET = "review-secret"
BOT = "arbot-user"  # TOKEN's login


@dataclass
class Review:
    fake: FakeGitHub
    url: str
    bot_url: str
    driver: Driver
    work: git.Repo  # a clone people push their branches from
    floor: int = 0  # dispatches at start: the champion's noise floor, measured before any PR

    def new_dispatches(self) -> list[dict]:
        return self.fake.dispatches[self.floor:]

    def health(self) -> dict:
        return httpx.get(f"{self.bot_url}/healthz").json()

    def idle(self) -> None:
        """Every webhook delivered and handled, every dispatch played, until nothing moves."""
        deadline = time.monotonic() + 120
        while True:
            self.fake.hooks.flush()
            self.fake.flush_dispatches()
            while self.health()["queue"]:
                assert time.monotonic() < deadline, "the bot did not go idle"
                time.sleep(0.05)
            self.fake.hooks.flush()
            self.fake.flush_dispatches()
            played = self.fake.on_dispatch is None or all(r["status"] == "completed" for r in self.fake.runs.values())
            if not self.health()["queue"] and played:
                return
            assert time.monotonic() < deadline, "the bot did not go idle"

    def commit(self, name: str, files: dict[str, str] | None = None, parent: str | None = None) -> str:
        """A commit on the champion (or `parent`) writing marker `name` into train.py, or `files`."""
        self.work.git.fetch("origin", "+refs/heads/champion:refs/remotes/origin/champion")
        self.work.git.checkout("-q", "--detach", parent or "origin/champion")
        path = Path(self.work.working_tree_dir)
        if files is None:
            text = (path / SCRIPT).read_text()
            slot = next(line for line in text.splitlines() if line.startswith("# slot "))
            files = {SCRIPT: text.replace(slot + "\n", f"{MARK}{name}\n", 1)}
        for rel, text in files.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_text(text)
        self.work.git.add(A=True)
        self.work.index.commit(name)
        return self.work.head.commit.hexsha

    def open_pr(self, author: str, branch: str, sha: str, title: str) -> int:
        """`author` pushes `branch` to this repository and opens a PR into champion (pull_request.opened)."""
        self.work.git.push("-q", "origin", f"{sha}:refs/heads/{branch}")
        r = httpx.post(f"{self.url}/api/v3/repos/{REPO}/pulls", headers={"Authorization": f"token ghp_{author}"},
                       json={"title": title, "head": branch, "base": "champion", "body": f"{author}: {title}"})
        r.raise_for_status()
        return r.json()["number"]

    def open_fork_pr(self, author: str, sha: str, title: str) -> int:
        """`author` opens a PR from their fork: its head is on no branch here, only at refs/pull/<n>/head."""
        number = self.fake.next_pr_number()
        self.work.git.push("-q", "origin", f"{sha}:refs/pull/{number}/head")
        return self.fake.open_fork_pr(author, "patch-1", sha, title).number

    def label(self, number: int, user: str) -> None:
        r = httpx.post(f"{self.url}/api/v3/repos/{REPO}/issues/{number}/labels",
                       headers={"Authorization": f"token ghp_{user}"}, json={"labels": ["arbot"]})
        r.raise_for_status()

    def say(self, number: int, user: str, body: str) -> None:
        """`user` comments on PR `number` (issue_comment.created)."""
        httpx.post(f"{self.url}/api/v3/repos/{REPO}/issues/{number}/comments",
                   headers={"Authorization": f"token ghp_{user}"}, json={"body": body}).raise_for_status()

    def comments(self, number: int) -> list[str]:
        return [c["body"] for c in sorted(self.fake.comments.values(), key=lambda c: c["id"]) if c["issue"] == number]

    def dispatched(self, sha: str) -> list[dict]:
        return [d for d in self.fake.dispatches if d["inputs"]["commit"] == sha]

    def verdict(self, sha: str) -> str | None:
        states = [s["state"] for s in self.fake.statuses if s["sha"] == sha and s["context"] == "arbot/verdict"]
        return states[-1] if states else None

    def records(self) -> list[ExperimentRecord]:
        self.driver.sync()
        return [r for r in self.driver.lf.experiments() if r.pr is not None]


@pytest.fixture
def review(request, tmp_path):
    opts = getattr(request, "param", {})
    people = {f"ghp_{login}": login for login in (AGENT, DEV, MAINTAINER, TRIAGER, STRANGER)}
    with github_world(tmp_path, people) as (fake, url, forge, store):
        fake.collaborators.update({AGENT: "write", DEV: "write", MAINTAINER: "maintain", TRIAGER: "triage"})
        cfg = Config.model_validate(settings(evaluate_authors=[AGENT], **opts))
        driver = Driver(forge, mirror(tmp_path / "bot.git"), cfg, Proposer(), make_policy(cfg.policy),
                        budget=Budget(store))
        dispatcher = Dispatcher(store, repo=REPO, driver=driver, can_write=forge.has_write_access, bot_login=BOT,
                                authors=tuple(cfg.github.evaluate_authors))
        fake.on_dispatch = ScriptedWorkflow(fake, url, REPO, WORLD)
        app = create_app(ServerSettings(secret=SECRET, state_path=store.path, repo=REPO), dispatcher, store,
                         on_start=driver.advance_all)
        work = clone_as_someone(fake, tmp_path / "work")
        with serving(app) as bot_url:
            fake.hooks.url, fake.hooks.secret = f"{bot_url}/webhook", SECRET
            r = Review(fake, url, bot_url, driver, work)
            r.idle()
            r.floor = len(fake.dispatches)
            yield r
            r.idle()
            assert r.health()["deliveries"]["failed"] == 0, r.health()


def test_a_maintainers_label_adopts_a_pr_a_win_is_merged_with_its_trailers_a_loss_labelled(review):
    fake = review.fake
    start = fake.ref("champion")
    # DEV (not listed) opens a PR from a branch of this repository: untouched, not even read
    win = review.commit("win")
    n = review.open_pr(DEV, "dev/faster", win, "a faster schedule")
    calls = len(fake.calls)
    review.idle()
    assert review.comments(n) == [] and review.new_dispatches() == [] and fake.prs[n].labels == []
    assert [c for c in fake.calls[calls:] if c[2] == BOT] == []  # nothing asked of GitHub for it
    # a triager's label is no approval (no write access): still nothing runs
    review.label(n, TRIAGER)
    review.idle()
    assert review.new_dispatches() == [] and not [b for b in review.comments(n) if "adopted" in b]
    # the maintainer's label: adopted at its head, measured from the default branch, a win merged with the trailers
    fake.prs[n].labels.clear()
    review.label(n, MAINTAINER)
    review.idle()
    assert fake.prs[n].merged and review.verdict(win) == "success"
    assert {d["ref"] for d in fake.dispatches} == {"refs/heads/main"}
    assert {d["inputs"]["pull"] for d in review.dispatched(win)} == {str(n)}
    message = fake.message(fake.ref("champion"))
    for trailer in ("Experiment: exp-1", "Proposer: pr", f"Author: {DEV}", f"PR: #{n}", "Rule: margin"):
        assert f"\n{trailer}" in message, message
    (rec,) = review.records()
    assert rec.commit == win and rec.parent == start and rec.pr == n and rec.author == DEV and rec.merged_as
    assert rec.proposal.proposer == "pr" and rec.proposal.hypothesis == "a faster schedule"
    assert SCRIPT in rec.proposal.files
    # the loss: labelled and commented, left open for its author
    worse = review.commit("worse")
    m = review.open_pr(DEV, "dev/worse", worse, "a worse idea")
    review.label(m, MAINTAINER)
    review.idle()
    pr = fake.prs[m]
    assert pr.state == "open" and not pr.merged and "arbot:loss" in pr.labels and review.verdict(worse) == "failure"
    assert any("**loss" in b for b in review.comments(m))
    assert fake.ref("champion") == rec.merged_as


@pytest.mark.parametrize("review", [{"close_losing_prs": True}], indirect=True)
def test_close_losing_prs_closes_an_adopted_loss(review):
    worse = review.commit("worse")
    n = review.open_pr(AGENT, "agent/worse", worse, "a worse idea")  # listed: adopted without a label
    review.idle()
    assert review.fake.prs[n].state == "closed" and "arbot:loss" in review.fake.prs[n].labels


def test_a_fork_pr_runs_nothing_before_a_maintainers_approval_and_each_push_needs_another(review):
    fake = review.fake
    head = review.commit("win")
    n = review.open_fork_pr(AGENT, head, "from my fork")  # a listed author, but a fork
    review.idle()
    assert review.new_dispatches() == [] and any("comes from a fork" in b for b in review.comments(n))
    assert review.records() == []
    # an approval by someone without write access is none
    review.say(n, TRIAGER, "/arbot evaluate")
    review.idle()
    assert review.new_dispatches() == [] and review.records() == []
    # the maintainer's `/arbot evaluate`: measured from refs/pull/<n>/head, decided, merged
    review.say(n, MAINTAINER, "/arbot evaluate")
    review.idle()
    assert review.dispatched(head) and {d["inputs"]["pull"] for d in review.dispatched(head)} == {str(n)}
    assert fake.prs[n].merged and f"\nAuthor: {AGENT}" in fake.message(fake.ref("champion"))


def test_a_push_to_a_fork_pr_after_its_approval_waits_for_another(review):
    fake = review.fake
    fake.on_dispatch = None  # held: the first head is still being measured when the fork pushes
    first = review.commit("worse")
    n = review.open_fork_pr(STRANGER, first, "from a fork")
    review.idle()
    assert review.comments(n) == [] and review.records() == []  # not listed, not labelled: untouched
    review.label(n, MAINTAINER)
    review.idle()
    assert len(review.dispatched(first)) == 1
    second = review.commit("win")
    review.work.git.push("-q", "-f", "origin", f"{second}:refs/pull/{n}/head")
    fake.push_pr(n, second, STRANGER)
    review.idle()
    (old,) = review.records()
    assert old.commit == first and old.decision.rule == "superseded" and old.pending == []
    assert any("each of its pushes waits" in b for b in review.comments(n)) and review.dispatched(second) == []


def test_a_label_approves_only_the_head_it_was_put_on(review):
    """A fork that pushes between the maintainer's label and its handling is not approved by that label."""
    first = review.commit("worse")
    n = review.open_fork_pr(STRANGER, first, "from a fork")
    review.idle()
    second = review.commit("win")
    review.work.git.push("-q", "-f", "origin", f"{second}:refs/pull/{n}/head")  # its webhook not handled yet
    assert review.driver.adopt(n, approved_by=MAINTAINER, approved_head=first) is None
    assert review.records() == [] and review.dispatched(second) == []
    assert any("each of its pushes waits" in b for b in review.comments(n))


def test_a_push_after_adoption_supersedes_the_first_experiment_and_the_new_head_is_measured(review):
    fake = review.fake
    workflow, fake.on_dispatch = fake.on_dispatch, None
    first = review.commit("worse")
    n = review.open_pr(AGENT, "agent/try", first, "try something")
    review.idle()
    assert [d["inputs"]["commit"] for d in review.new_dispatches()] == [first]  # held
    second = review.commit("win")
    review.work.git.push("-q", "-f", "origin", f"{second}:refs/heads/agent/try")
    fake.push_pr(n, second, AGENT)
    review.idle()
    assert [d["inputs"]["commit"] for d in review.new_dispatches()] == [first, second]
    fake.on_dispatch = workflow
    for d in review.new_dispatches():  # the first head's run reports after it was superseded: it counts for nothing
        workflow(d)
    review.idle()
    old, new = review.records()
    assert old.commit == first and old.decision.verdict == "rejected" and old.decision.rule == "superseded"
    assert new.commit == second and new.decision.verdict == "win" and fake.prs[n].merged
    assert new.parent == old.parent and fake.message(fake.ref("champion")).count("Experiment: exp-2") == 1
    assert any("supersedes exp-1" in b for b in review.comments(n))


def test_a_pr_closed_by_its_author_is_withdrawn_and_runs_nothing_more(review):
    fake = review.fake
    fake.on_dispatch = None
    head = review.commit("win")
    n = review.open_pr(AGENT, "agent/gone", head, "never mind")
    review.idle()
    assert len(review.dispatched(head)) == 1
    httpx.patch(f"{review.url}/api/v3/repos/{REPO}/pulls/{n}", json={"state": "closed"},
                headers={"Authorization": f"token ghp_{AGENT}"}).raise_for_status()
    review.idle()
    (rec,) = review.records()
    assert rec.decision.rule == "withdrawn" and rec.pending == [] and not rec.merged_as
    assert len(review.dispatched(head)) == 1


def test_a_pr_that_edits_github_or_the_evaluator_is_rejected_before_any_run(review):
    fake = review.fake
    champion = fake.ref("champion")
    text = fake.git("show", f"{champion}:{SCRIPT}").stdout
    for i, extra in enumerate((".github/workflows/arbot-evaluate.yml", "evaluator/score.py")):
        head = review.commit(f"edit-{i}", files={SCRIPT: text.replace("# slot 1\n", f"{MARK}win\n"),
                                                  extra: "# an agent's edit\n"})
        n = review.open_pr(AGENT, f"agent/edit-{i}", head, f"also edits {extra}")
        review.idle()
        assert review.dispatched(head) == [] and review.verdict(head) == "failure"
        assert any("rejected before any run" in b and extra in b and "outside target.allowed_paths" in b
                   for b in review.comments(n))
        assert fake.prs[n].state == "open" and not fake.prs[n].merged
    assert review.new_dispatches() == [] and fake.ref("champion") == champion
    assert [r.decision.rule for r in review.records()] == ["paths", "paths"]


def test_a_symlink_is_rejected_before_any_run(review):
    champion = review.fake.ref("champion")
    review.work.git.checkout("-q", "--detach", champion)
    path = Path(review.work.working_tree_dir) / SCRIPT  # an allowed path, made a link to a file only the runner reads
    path.unlink()
    path.symlink_to("/etc/passwd")
    review.work.git.add(A=True)
    review.work.index.commit("a symlink")
    head = review.work.head.commit.hexsha
    n = review.open_pr(AGENT, "agent/link", head, "a symlink")
    review.idle()
    assert review.dispatched(head) == [] and any("not regular files: target/train.py (a symlink)" in b
                                                 for b in review.comments(n))
    assert [r.decision.rule for r in review.records()] == ["regular"]


@pytest.mark.parametrize("review", [{"author_caps": {"experiments_per_day": 1}}], indirect=True)
def test_an_author_over_its_daily_cap_is_told_so_and_nothing_runs(review):
    first = review.commit("worse")
    review.open_pr(AGENT, "agent/one", first, "one")
    review.idle()
    second = review.commit("win")
    n = review.open_pr(AGENT, "agent/two", second, "two")
    review.idle()
    assert review.dispatched(second) == [] and any("daily cap" in b for b in review.comments(n))
    assert [r.commit for r in review.records()] == [first]
    # another author is not held by it
    third = review.commit("win-again")
    m = review.open_pr(DEV, "dev/three", third, "three")
    review.label(m, MAINTAINER)
    review.idle()
    assert review.dispatched(third)


def test_a_stale_pr_is_measured_again_only_after_its_author_rebases(review):
    fake = review.fake
    old = fake.ref("champion")
    behind = review.commit("worse", parent=old)
    win = review.commit("win")
    n = review.open_pr(AGENT, "agent/win", win, "win")
    review.idle()
    assert fake.prs[n].merged
    m = review.open_pr(AGENT, "agent/behind", behind, "based on the old champion")
    review.idle()
    assert review.dispatched(behind) == [] and any("not based on the champion" in b for b in review.comments(m))
    rebased = review.commit("worse")  # on the new champion
    review.work.git.push("-q", "-f", "origin", f"{rebased}:refs/heads/agent/behind")
    fake.push_pr(m, rebased, AGENT)
    review.idle()
    assert review.dispatched(rebased) and "arbot:loss" in fake.prs[m].labels


def test_a_pr_the_champion_moved_under_is_closed_stale_and_measured_again_once_rebased(review):
    fake = review.fake
    workflow, fake.on_dispatch = fake.on_dispatch, None
    a, b = review.commit("win"), review.commit("win-again")  # both on the same champion
    n = review.open_pr(AGENT, "agent/a", a, "a")
    m = review.open_pr(AGENT, "agent/b", b, "b")
    review.idle()
    workflow(review.dispatched(a)[0])
    review.idle()
    assert fake.prs[n].merged
    workflow(review.dispatched(b)[0])  # b's screen, on the old champion: passed there, never merged
    review.idle()
    stale = next(r for r in review.records() if r.commit == b)
    assert stale.decision.rule == "stale" and f"rebase PR #{m} onto" in stale.decision.reason
    assert fake.prs[m].state == "open" and len(review.dispatched(b)) == 1  # not measured again as it is
    rebased = review.commit("win-again")
    review.work.git.push("-q", "-f", "origin", f"{rebased}:refs/heads/agent/b")
    fake.on_dispatch = workflow
    fake.push_pr(m, rebased, AGENT)
    review.idle()
    fresh = next(r for r in review.records() if r.commit == rebased)
    assert fresh.parent == fake.prs[n].merge_commit_sha and fresh.decision is not None and review.dispatched(rebased)


def test_the_proposers_history_holds_adopted_experiments(review):
    """What the LLM proposer, the agent proposer and the search are shown (bot.proposers.context)."""
    from bot.proposers.context import context

    head = review.commit("worse")
    review.open_pr(AGENT, "agent/h", head, "a hypothesis of the agent's")
    review.idle()
    d = review.driver
    d.sync()
    ctx = context(d.lf, d.config.target, d.lf.champion(), d.config.metric)
    assert [(r.proposal.proposer, r.proposal.hypothesis, r.decision.verdict, r.author) for r in ctx.history] == [
        ("pr", "a hypothesis of the agent's", "loss", AGENT)]
    assert MARK + "worse" in ctx.history[0].proposal.files[SCRIPT]


# --- the rules, pure -------------------------------------------------------------------------------------------
def test_approval_rule():
    head = adoption.Head(number=1, author="a", sha="0" * 40, fork=False, title="t", body="")
    assert adoption.approval_needed(head, None, ["a"], False) is None
    assert "not in github.evaluate_authors" in adoption.approval_needed(head, None, [], False)
    assert adoption.approval_needed(head, None, [], True) is None  # approved before: its pushes are measured
    fork = adoption.Head(number=1, author="a", sha="0" * 40, fork=True, title="t", body="")
    assert "fork" in adoption.approval_needed(fork, None, ["a"], True)
    assert adoption.approval_needed(fork, "maintainer", [], False) is None


def test_caps_count_an_authors_experiments_and_runner_minutes_today():
    from datetime import datetime, timezone

    now = datetime(2026, 12, 7, 12, tzinfo=timezone.utc)
    run = RunResult(status="ok", commit="0" * 40, champion="0" * 40, seed=0, total_seconds=600)

    def rec(i: int, author: str, day: str, runs: int = 0) -> ExperimentRecord:
        return ExperimentRecord(id=f"exp-{i}", number=i, branch=f"pull/{i}", commit=f"{i:040d}", parent="0" * 40,
                                proposal=Proposal(proposer="pr", hypothesis="h", files={}), author=author,
                                started_at=f"{day}T01:00:00+00:00", runs=[run] * runs, pr=i)

    recs = [rec(1, "a", "2026-12-07", runs=1), rec(2, "a", "2026-12-06", runs=5), rec(3, "b", "2026-12-07")]
    assert adoption.over_cap(recs, "a", AuthorCaps(experiments_per_day=2, runner_minutes_per_day=None), now) is None
    assert "daily cap" in adoption.over_cap(recs, "a", AuthorCaps(experiments_per_day=1), now)
    assert "10.0 runner minutes" in adoption.over_cap(recs, "a", AuthorCaps(experiments_per_day=None,
                                                                               runner_minutes_per_day=10), now)
    assert adoption.over_cap(recs, "c", AuthorCaps(experiments_per_day=1), now) is None


@hsettings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([".github/workflows/ci.yml", "evaluator/score.py", "arbot.yml", "README.md",
                                 "target/notes.md", "prepare.py", "target/train.py"]), min_size=1, unique=True))
def test_any_change_outside_the_allowed_paths_is_refused(tmp_path_factory, paths):
    """Whatever else a head changes, one path outside target.allowed_paths refuses it before any run."""
    path = tmp_path_factory.mktemp("repo")
    repo = git.Repo.init(path, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "t")
        cw.set_value("user", "email", "t@example.com")
    (path / "target").mkdir()
    (path / "target" / "train.py").write_text("x = 1\n")
    repo.git.add(A=True)
    base = repo.index.commit("base").hexsha
    for rel in paths:
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(f"changed {rel}\n")
    repo.git.add(A=True)
    head = repo.index.commit("head").hexsha
    allowed = Config.model_validate({}).target.allowed_paths
    outside = forbidden_paths(paths, allowed)
    refused = adoption.refusal(repo, base, head, allowed)
    assert (refused is not None) == bool(outside)
    if refused:
        assert refused[0] == "paths" and all(p in refused[1] for p in outside[:10])


def test_route_adopts_only_what_a_maintainer_or_the_config_asks_for():
    """The pure routing of outside PRs' events (the dispatcher then asks GitHub about a label's sender)."""
    from bot.server.events import Adopt, Command, Ignored, route
    from bot.server.webhooks import Event
    from tests.fake_github.contract import webhook_example

    def event(action: str, author: str = DEV, labels=(), head: str = "feature", sender: str = MAINTAINER,
              label: str = "arbot") -> Event:
        p = webhook_example("pull_request$labeled" if action == "labeled" else "pull_request$synchronize")
        p["action"] = action
        pr = p["pull_request"]
        pr["base"]["ref"], pr["head"]["ref"], pr["user"]["login"] = "champion", head, author
        pr["labels"] = [{"name": n} for n in labels]
        p["sender"]["login"] = sender
        if action == "labeled":
            p["label"] = {**p["label"], "name": label}
        return Event("pull_request", f"d-{action}", p)

    repo = webhook_example("pull_request$labeled")["repository"]["full_name"]
    r = lambda e, **kw: route(e, repo=repo, bot_login=BOT, authors=(AGENT,), **kw)  # noqa: E731
    number = webhook_example("pull_request$labeled")["pull_request"]["number"]
    head = webhook_example("pull_request$labeled")["pull_request"]["head"]["sha"]
    assert r(event("labeled")) == Adopt(pr=number, by=MAINTAINER, action="labeled", head_sha=head)
    assert isinstance(r(event("labeled", label="bug")), Ignored)
    assert isinstance(r(event("labeled", sender=BOT)), Ignored)  # the bot's own label on a PR it adopted
    assert r(event("opened", author=AGENT)) == Adopt(pr=number, by=None, action="opened")
    assert r(event("synchronize", labels=("arbot",))) == Adopt(pr=number, by=None, action="synchronize")
    assert r(event("opened")) == Ignored(f"pull_request.opened of @{DEV}'s pull request: not labelled 'arbot', "
                                         "author not in github.evaluate_authors")
    assert isinstance(r(event("synchronize")), Ignored)
    assert r(event("labeled", head="arbot/exp-4", labels=("arbot",))) == Ignored("pull_request.labeled: the bot dispatches its runs itself")
    c = webhook_example("issue_comment$created")
    c["comment"]["body"], c["issue"]["pull_request"] = "/arbot evaluate", {"url": "x"}
    cmd = route(Event("issue_comment", "d-c", c))
    assert isinstance(cmd, Command) and cmd.command == "evaluate" and cmd.is_pr

"""The GitHub mode driver against the fake GitHub, with evaluations synthesized (no training): recovery at start,
the stale-base rule, crashes, pause, budget and max_in_flight."""

from __future__ import annotations

import httpx
import pytest

from bot.config import Config
from bot.github import report
from bot.github.driver import Driver, mirror
from bot.knobs import set_knobs
from bot.policy import make_policy
from bot.records import RunResult
from bot.server.store import Budget, Store
from tests.fake_github.serving import serving
from tests.test_github_e2e import ACTIONS_TOKEN, ScriptedProposer, verdict
from tests.test_github_forge import REPO, fake, forge_for, local  # noqa: F401 - fixtures


def lr(value):
    return (f"learning rate {value}", lambda s: set_knobs(s, {"LR": value}))


def config(**github) -> Config:
    return Config.model_validate({"policy": {"rule": "margin", "margin": 0.0, "baseline_runs": 1},
                                  "target": {"holdout_max_gap": None}, "github": {"repo": REPO, **github}})


def evaluated(url: str, head: str, champion: str, bpb: float | None, champion_bpb: float | None = None,
              run_id: int = 1, seed: int = 0) -> None:
    """The evaluate workflow's report job, played: the check run with the runs embedded."""
    runs = [RunResult(status="ok" if bpb else "crash", commit=head, champion=champion, reason="" if bpb else "exit 1",
                      metrics={"val_bpb": bpb} if bpb else {}, total_seconds=60.0, seed=seed)]
    if champion_bpb is not None:
        runs.append(RunResult(status="ok", commit=champion, champion=champion, metrics={"val_bpb": champion_bpb},
                              total_seconds=60.0, seed=seed))
    check = report.render(report.load_runs("[" + ",".join(r.model_dump_json() for r in runs) + "]"), head, [],
                          champion_sha=champion)
    check["details_url"] = f"http://github.test/{REPO}/actions/runs/{run_id}"
    httpx.post(f"{url}/api/v3/repos/{REPO}/check-runs", json=check,
               headers={"Authorization": f"token {ACTIONS_TOKEN}"}).raise_for_status()


@pytest.fixture
def github(fake, local, tmp_path):  # noqa: F811
    fake.tokens[ACTIONS_TOKEN] = "github-actions[bot]"
    store = Store(tmp_path / "state.sqlite")
    with serving(fake.asgi) as url:
        forge = forge_for(url, fake)
        forge.ensure_champion()
        forge.ensure_labels()
        forge.protect_champion()

        def driver(proposer, mirror_name="mirror.git", cfg=None, paused=lambda: False, per_day=None):
            cfg = cfg or config()
            return Driver(forge, mirror(tmp_path / mirror_name), cfg, proposer, make_policy(cfg.policy),
                          budget=Budget(store, experiments_per_day=per_day), paused=paused)
        yield fake, url, driver
    store.close()


def test_a_restarted_bot_rebuilds_its_state_from_github(github):
    fake, url, driver = github
    start = fake.ref("champion")
    first = driver(ScriptedProposer(lr(0.005)))
    (rec,) = first.fill()  # max_in_flight 1
    assert first.fill() == [] and [p.number for p in first.forge.open_prs()] == [1]
    head = fake.head_sha(fake.prs[1])
    evaluated(url, head, start, 1.20, champion_bpb=1.25)  # the bot was down when the check run came

    # a new bot, with an empty mirror: everything it needs is on GitHub (PRs, check runs, notes)
    second = driver(ScriptedProposer(lr(0.02)), mirror_name="fresh.git")
    assert [r.id for r in second.lf.experiments()] == []
    second.recover()
    assert verdict(fake, head) == "success" and fake.prs[1].merged
    champion = fake.ref("champion")
    assert "\nExperiment: exp-1\n" in fake.message(champion) and "\nPR: #1" in fake.message(champion)
    assert [r.commit for r in second.lf.champion_record(champion).runs] == [head]  # the win measures the champion
    assert [r.seed for r in second.lf.champion_record(start).runs] == [0]  # the champion run the train job made
    assert fake.prs[2].title == "learning rate 0.02" and fake.prs[2].state == "open"
    exp1 = second.record("arbot/exp-1")
    assert exp1.decision.verdict == "win" and exp1.merged_as == champion
    # the audit trail on GitHub is the local one: `arbot log` reads it from a clone with the notes fetched
    import git

    from bot.forges.local import LocalForge
    remote = LocalForge(git.Repo(fake.bare))
    assert [(sha, t["Experiment"], t["PR"]) for sha, t in remote.champion_log()] == [(champion, "exp-1", "#1")]
    assert [(r.id, r.decision and r.decision.verdict, r.merged_as) for r in remote.experiments()] == [
        ("exp-1", "win", champion), ("exp-2", None, None)]
    # repeating is safe: nothing is posted, merged or opened twice
    statuses, prs = len(fake.statuses), len(fake.prs)
    second.recover()
    assert len(fake.statuses) == statuses and len(fake.prs) == prs


def test_a_win_measured_on_an_old_champion_is_updated_not_merged(github):
    fake, url, driver = github
    d = driver(ScriptedProposer(lr(0.005), lr(0.02)))
    d.fill()
    start, head = fake.ref("champion"), fake.head_sha(fake.prs[1])
    # champion moves by hand (README edit on champion) before the evaluation is decided
    tree = fake.git("rev-parse", f"{start}^{{tree}}").stdout.strip()
    moved = fake.git("commit-tree", tree, "-p", start, "-m", "by hand").stdout.strip()
    fake.git("update-ref", "refs/heads/champion", moved, start)
    evaluated(url, head, start, 1.10, champion_bpb=1.25)
    decision = d.on_evaluated(1, head)
    assert decision.verdict == "rejected" and decision.rule == "stale-base"
    assert verdict(fake, head) == "failure" and not fake.prs[1].merged and fake.prs[1].state == "open"
    new_head = fake.head_sha(fake.prs[1])
    assert new_head != head and fake.is_ancestor(moved, new_head)  # brought up to date: evaluated again
    assert d.on_evaluated(1, head) is None  # the old head's result is not decided again


def test_crash_pause_budget_and_in_flight(github):
    fake, url, driver = github
    paused = {"on": False}
    d = driver(ScriptedProposer(lr(0.005), lr(0.02), lr(0.03)), cfg=config(max_in_flight=2),
               paused=lambda: paused["on"], per_day=3)
    assert len(d.fill()) == 2 and d.fill() == []  # max_in_flight
    start, head = fake.ref("champion"), fake.head_sha(fake.prs[1])
    missing = report.render_missing(head, "the result artifact is missing", "Traceback: boom")
    httpx.post(f"{url}/api/v3/repos/{REPO}/check-runs", json=missing,
               headers={"Authorization": f"token {ACTIONS_TOKEN}"}).raise_for_status()
    paused["on"] = True
    decision = d.on_evaluated(None, head)  # looked up by head sha
    assert decision.verdict == "crash" and "no result" in decision.reason
    assert fake.prs[1].state == "closed" and fake.prs[1].labels == ["arbot", "arbot:crash"]
    d.on_closed(1, merged=False, merge_sha=None)
    assert len(fake.prs) == 2  # paused: nothing new
    paused["on"] = False
    d.on_closed(1, merged=False, merge_sha=None)
    assert len(fake.prs) == 3  # resumed: back to two in flight
    # a loss on PR 2, then the daily cap (3 experiments) stops proposing
    head2 = fake.head_sha(fake.prs[2])
    evaluated(url, head2, start, 1.40, champion_bpb=1.25)
    assert d.on_evaluated(2, head2).verdict == "loss" and fake.prs[2].labels == ["arbot", "arbot:loss"]
    d.on_closed(2, merged=False, merge_sha=None)
    assert len(fake.prs) == 3 and d.budget.exhausted().startswith("daily cap reached: 3 of 3")
    assert d.budget.state()["runner_minutes_today"] == 2.0  # PR 2 and the champion, 60 s each (the crash left none)


def test_more_runs_re_run_the_workflow_and_every_attempt_counts(github):
    fake, url, driver = github
    d = driver(ScriptedProposer(lr(0.005), lr(0.02)))
    d.fill()
    start, head = fake.ref("champion"), fake.head_sha(fake.prs[1])
    evaluated(url, head, start, 1.20, run_id=77)  # attempt 1: the champion was not measured (its run crashed)
    decision = d.on_evaluated(1, head)
    assert decision.verdict == "more_runs" and fake.reruns == [77] and verdict(fake, head) is None
    assert "Re-running the evaluation for seed 1" in next(c["body"] for c in fake.comments.values() if c["issue"] == 1)
    evaluated(url, head, start, 1.22, champion_bpb=1.25, run_id=77, seed=1)  # attempt 2: seed 1, and the champion
    decision = d.on_evaluated(1, head)
    assert decision.verdict == "win" and decision.candidate_runs == 2 and decision.champion_runs == 1
    assert fake.prs[1].merged and "\nSeeds: 0,1\n" in fake.message(fake.ref("champion"))
    d.on_closed(1, merged=True, merge_sha=None)  # the webhook of the merge: the next experiment
    # /arbot rerun on an open PR re-runs its latest evaluation
    head2 = fake.head_sha(fake.prs[2])
    assert d.rerun(2) is False  # nothing evaluated yet
    evaluated(url, head2, fake.ref("champion"), None, run_id=78)
    assert d.rerun(2) is True and fake.reruns == [77, 78]


def test_the_dispatcher_hands_actions_to_the_driver(tmp_path):
    from bot.server.dispatch import Dispatcher
    from bot.server.webhooks import Event
    from tests.test_server import REPO as HELLO, check_run_completed, comment, pull_request

    class Recorder:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return lambda *args: self.calls.append((name, *args))

    store, driver = Store(tmp_path / "s.sqlite"), Recorder()
    dispatch = Dispatcher(store, repo=HELLO, driver=driver)
    dispatch(Event("check_run", "d-1", check_run_completed(pr=7)))
    dispatch(Event("pull_request", "d-2", pull_request("closed", merged=True)))
    rerun = comment("/arbot rerun")
    rerun["issue"]["pull_request"] = {"url": "x"}
    dispatch(Event("issue_comment", "d-3", rerun))
    dispatch(Event("issue_comment", "d-4", comment("/arbot pause")))
    dispatch(Event("issue_comment", "d-5", comment("/arbot resume")))
    push = {"ref": "refs/heads/champion", "before": "b" * 40, "after": "c" * 40, "repository": {"full_name": HELLO}}
    dispatch(Event("push", "d-6", push))  # champion moved (by hand): stale PRs are brought up to date
    closed = pull_request("closed", merged=True)["pull_request"]
    assert driver.calls == [("on_evaluated", 7, "a" * 40), ("on_closed", closed["number"], True, closed["merge_commit_sha"]),
                            ("rerun", rerun["issue"]["number"]), ("fill",), ("update_stale",)]
    store.close()


def test_serverless_commands_propose_and_decide(github, local, monkeypatch):  # noqa: F811
    """`arbot propose` and `arbot decide --pr N`: what a scheduled workflow runs instead of the server."""
    from pathlib import Path

    import yaml
    from typer.testing import CliRunner

    import bot.github.forge as forge_module
    from bot.cli import app
    from tests.test_github_forge import FAST, TOKEN

    fake, url, _ = github
    root = Path(local.working_tree_dir)
    (root / "arbot.yml").write_text(yaml.safe_dump({
        "policy": {"rule": "margin", "margin": 0.0, "baseline_runs": 1}, "target": {"holdout_max_gap": None},
        "github": {"repo": REPO, "base_url": f"{url}/api/v3"}}))
    real_connect = forge_module.connect
    monkeypatch.setenv("ARBOT_GITHUB_TOKEN", TOKEN)
    monkeypatch.setattr(forge_module, "connect", lambda cfg, **kw: real_connect(cfg, git_url=str(fake.bare), **kw, **FAST))
    cli = CliRunner()
    out = cli.invoke(app, ["propose", "--repo", str(root)])
    assert out.exit_code == 0, out.output
    assert "opened exp-1 (arbot/exp-1)" in out.output and fake.prs[1].labels == ["arbot"]
    assert "nothing opened" in cli.invoke(app, ["propose", "--repo", str(root)]).output  # max_in_flight 1
    assert "nothing to decide" in cli.invoke(app, ["decide", "--repo", str(root)]).output
    head = fake.head_sha(fake.prs[1])
    evaluated(url, head, fake.ref("champion"), 0.5, champion_bpb=9.0)
    out = cli.invoke(app, ["decide", "--pr", "1", "--repo", str(root)])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("win (margin)") and fake.prs[1].merged
    assert "opened exp-2" in cli.invoke(app, ["propose", "--repo", str(root)]).output
    assert (root / ".arbot" / "github.git").is_dir() and (root / ".arbot" / "server.sqlite").is_file()
    out = cli.invoke(app, ["decide", "--pr", "9", "--repo", str(root)])
    assert out.exit_code == 2 and "GitHub answered 404" in out.output


def test_git_errors_never_show_the_token(github):
    import traceback

    from bot.github.forge import GitHubForgeError

    fake, url, driver = github
    d = driver(ScriptedProposer())
    d.forge.git_url = "https://127.0.0.1:9/octo-org/research.git"  # nothing listens there
    assert "x-access-token:ghp_test@" in d.forge.git_remote()
    with pytest.raises(GitHubForgeError) as e:
        d.sync()
    assert "ghp_test" not in "".join(traceback.format_exception(e.value))


def test_a_flagged_win_waits_for_a_human(github):
    """The runner's diff inspection flagged the change: the verdict stands, but nothing merges it automatically."""
    fake, url, driver = github
    d = driver(ScriptedProposer(lr(0.005)))
    d.fill()
    start, head = fake.ref("champion"), fake.head_sha(fake.prs[1])
    runs = [RunResult(status="ok", commit=head, champion=start, metrics={"val_bpb": 1.1}, flags=["timing: reads the clock"]),
            RunResult(status="ok", commit=start, champion=start, metrics={"val_bpb": 1.25})]
    check = report.render(report.load_runs("[" + ",".join(r.model_dump_json() for r in runs) + "]"), head, [],
                          champion_sha=start)
    httpx.post(f"{url}/api/v3/repos/{REPO}/check-runs", json=check,
               headers={"Authorization": f"token {ACTIONS_TOKEN}"}).raise_for_status()
    decision = d.on_evaluated(1, head)
    assert decision.verdict == "win" and "held for human review, the diff touches: timing" in decision.reason
    assert verdict(fake, head) == "success"  # neutral: a human may merge it; the bot does not
    assert fake.prs[1].state == "open" and fake.prs[1].auto_merge is None and fake.ref("champion") == start
    assert "Held for a human" in next(c["body"] for c in fake.comments.values() if c["issue"] == 1)
    assert d.record("arbot/exp-1").review == "needed"

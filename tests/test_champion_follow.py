"""The champion follows your branch until it has a history of its own (LocalForge.follow_target), `arbot adopt`
brings a commit of yours into it afterwards, and a failed first run leaves nothing that blocks the next: on a real
repository, real runs in the sandbox, `arbot` as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import git
import pytest

from bot.core.records import ChampionRecord, RunResult
from bot.forges.local import ForgeError, LocalForge
from tests.test_doctor import commit, doctor, ready, root_of, said  # noqa: F401  (ready: the fixture)

ARBOT = [sys.executable, "-m", "bot"]


def arbot(repo: git.Repo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ARBOT, *args, "--repo", str(root_of(repo))], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "1000"})


def edit(repo: git.Repo, path: str, old: str, new: str, message: str) -> str:
    file = root_of(repo) / path
    text = file.read_text()
    assert old in text
    file.write_text(text.replace(old, new))
    return commit(repo, message)


def test_a_champion_without_a_win_follows_the_branch_and_stops_once_it_has_one(ready):
    forge = LocalForge(ready)
    first = forge.ensure_champion()
    assert forge.follow_target() is None and forge.follow_head() is None  # HEAD is the champion
    fixed = edit(ready, "train/train.py", "LR = 0.001", "LR = 0.01", "a hand edit on main")
    assert forge.follow_target() == fixed
    assert forge.follow_head() == first and forge.champion() == fixed

    ready.git.switch("-c", "arbot/exp-9")  # an experiment branch checked out is never followed
    edit(ready, "train/train.py", "LR = 0.01", "LR = 0.02", "looking at an experiment")
    assert forge.follow_target() is None
    ready.git.switch("main")
    ready.git.checkout(first)  # nor a detached HEAD, nor an older commit
    assert forge.follow_target() is None
    ready.git.switch("main")

    with pytest.raises(ForgeError, match="already in champion: nothing to adopt"):
        forge.adopt("main", "nothing new")
    later = edit(ready, "train/train.py", "LR = 0.01", "LR = 0.005", "another hand edit")
    merge = forge.adopt("main", "the LR I want")
    assert forge.champion() == merge and forge.has_history()
    body = ready.commit(merge).message
    assert f"Adopted: {later}" in body and "Reason: the LR I want" in body
    assert [p.hexsha for p in ready.commit(merge).parents] == [fixed, later]
    assert forge.champion_record(merge).runs == []  # a new champion: its noise floor is measured again
    assert forge.not_adopted() == 0
    edit(ready, "train/train.py", "LR = 0.005", "LR = 0.004", "after an adoption")
    assert forge.follow_target() is None  # it has a history now: `arbot adopt` brings edits in
    assert forge.not_adopted() == 1
    r = doctor(ready)
    assert r.exit_code == 0 and (f"warn champion: champion at {merge[:7]}; your branch main has 1 commit(s) it lacks, "
                                 "which no run uses -> fix: `arbot adopt main` merges them") in said(r.output)


def test_adopt_refuses_what_does_not_merge_and_names_the_way(ready):
    forge = LocalForge(ready)
    forge.ensure_champion()
    forge.adopt(edit(ready, "train/train.py", "LR = 0.001", "LR = 0.01", "mine"), "one")
    ready.git.switch("-c", "other", "HEAD~1")
    edit(ready, "train/train.py", "LR = 0.001", "LR = 0.03", "theirs")
    with pytest.raises(ForgeError, match=r"does not merge cleanly into champion: both changed train/train.py. "
                                         r"Merge champion into other first"):
        forge.adopt("other", "two")
    with pytest.raises(ForgeError, match="names no commit"):
        forge.adopt("no-such-branch", "three")


def test_doctor_checks_the_champion_the_next_run_uses(ready):
    """A stored failed champion blocks (doctor FAILs) until a fix is committed on the branch it follows."""
    forge = LocalForge(ready)
    sha = forge.ensure_champion()
    forge.save(ChampionRecord(commit=sha, runs=[RunResult(status="crash", commit=sha, champion=sha, seed=i,
                                                          reason="boom") for i in range(2)]))
    r = doctor(ready)
    assert r.exit_code == 1 and "FAIL champion runs: 2 of the champion's runs failed" in said(r.output)
    fixed = edit(ready, "train/train.py", "LR = 0.001", "LR = 0.01", "the fix")
    r = doctor(ready)
    text = said(r.output)
    assert r.exit_code == 0, text
    assert (f"ok champion: champion has no merged win yet, so it follows your branch: the next `arbot run` moves it "
            f"from {sha[:7]} to HEAD ({fixed[:7]}) and measures it") in text
    assert "ok champion runs: none failed" in text


@pytest.mark.slow
def test_a_failed_first_run_is_fixed_by_a_commit_on_main(ready):
    """The first run's champion does not train (an index out of range): the run stops with the way out and its
    traceback as written (`[idx]` is not rich markup), and a fix committed on main is what the next run measures
    and researches on; nothing of the failed set-up blocks it."""
    broken = edit(ready, "train/train.py", "random.seed(int(args.seed))", "idx = 5; random.seed([args.seed][idx])",
                  "a bug")
    first = arbot(ready, "run", "-n", "1", "--budget", "1")
    assert first.returncode == 2, first.stdout + first.stderr
    text = " ".join(first.stdout.split())
    assert f"the champion {broken[:12]} itself fails" in text and "`arbot adopt <branch>`" in text
    assert "random.seed([args.seed][idx])" in text and "IndexError" in text
    assert "FAIL champion runs" in said(doctor(ready).output)

    fixed = edit(ready, "train/train.py", "idx = 5; random.seed([args.seed][idx])", "random.seed(int(args.seed))",
                 "the bug fixed")
    again = arbot(ready, "run", "-n", "1", "--budget", "1")
    out = " ".join(again.stdout.split())
    assert again.returncode == 0, out + again.stderr
    assert f"champion followed your branch from {broken[:7]} to {fixed[:7]}" in out
    forge = LocalForge(ready)
    recs = forge.experiments()
    stale = [r for r in recs if r.parent == broken]
    assert all(r.decision.rule == "stale" and "followed your branch" in r.decision.reason for r in stale)
    fresh = [r for r in recs if r.parent == fixed]
    assert fresh and all(r.decision is not None and r.decision.rule != "stale" for r in fresh)
    assert len([r for r in forge.champion_record(fixed).runs if r.ok]) >= 2


def test_arbot_adopt_on_the_command_line(ready):
    from typer.testing import CliRunner

    from bot.cli import app

    def adopt(*args: str):
        r = CliRunner().invoke(app, ["adopt", *args, "--repo", str(root_of(ready))], terminal_width=200)
        return r.exit_code, said(r.output)

    code, out = adopt()
    assert code == 2 and "error: HEAD (" in out and "is already in champion: nothing to adopt" in out
    edit(ready, "train/train.py", "LR = 0.001", "LR = 0.01", "a hand edit")
    code, out = adopt("main", "--reason", "my own LR")
    merge = LocalForge(ready).champion()
    assert code == 0 and out == (f"adopted main: champion is now {merge[:7]}; the next `arbot run` measures its noise "
                                 "floor first")
    assert "Reason: my own LR" in ready.commit(merge).message
    r = CliRunner().invoke(app, ["log", "--repo", str(root_of(ready))], terminal_width=200)
    assert f"│ {merge[:7]} │ adopted {ready.commit(merge).parents[1].hexsha[:7]} │" in r.output, r.output
    assert "my own LR" in r.output

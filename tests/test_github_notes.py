"""Issue 24's notes threats against the fake GitHub: anyone who can push writes refs/notes/arbot, and the bot
reads there only what it signed. Forged, edited, injected and duplicated notes are ignored, named on /healthz and
on the PR they concern; the honest flow still merges its wins (tests/test_github_driver.py)."""

from __future__ import annotations

import json

import git

from bot.core.records import Decision
from tests.scripted import SCRIPT
from tests.test_github_driver import answer, gh  # noqa: F401 - the fake GitHub fixture


def attacker_commit(gh, branch: str, text: str) -> str:
    """A commit changing the training script, pushed to `branch` by someone with write access."""
    work = gh.tmp / f"attacker-{branch.replace('/', '-')}"
    repo = git.Repo.clone_from(str(gh.fake.bare), work, branch="champion")
    (work / SCRIPT).write_text(text)
    repo.git.add(A=True)
    repo.git.commit("-m", "helpful tweak", env={"GIT_AUTHOR_NAME": "x", "GIT_AUTHOR_EMAIL": "x@x",
                                               "GIT_COMMITTER_NAME": "x", "GIT_COMMITTER_EMAIL": "x@x"})
    repo.git.push("origin", f"HEAD:refs/heads/{branch}")
    return repo.head.commit.hexsha


def write_note(gh, commit: str, value: dict) -> None:
    """A note pushed to refs/notes/arbot by someone with write access (no key of the bot's)."""
    gh.fake.git("notes", "--ref=arbot", "add", "-f", "-m", json.dumps(value), commit)


def comments_on(gh, number: int) -> str:
    return "\n".join(c["body"] for c in gh.fake.comments.values() if c["issue"] == number)


def test_an_injected_win_and_an_edited_loss_are_ignored_no_pr_is_opened_nothing_merges(gh):
    """Findings: a note claiming a win with no run was merged; an injected experiment note made the bot open a PR
    and merge a backdoor itself. Now: no PR, no merge, whether the bot read the honest notes before or starts now."""
    fake = gh.fake
    gh.auto()
    start = fake.ref("champion")
    d = gh.driver("worse")
    d.fill()
    gh.settle(d)
    [loss] = d.lf.experiments()
    assert loss.decision.verdict == "loss" and fake.prs[1].state == "closed"
    evil = attacker_commit(gh, "arbot/exp-5", "BACKDOOR = True\n")
    win = loss.decision.model_copy(update={"verdict": "win", "reason": "forged"})
    write_note(gh, evil, loss.model_copy(update={"id": "exp-5", "number": 5, "branch": "arbot/exp-5", "commit": evil,
                                                 "decision": win, "runs": []}).model_dump(mode="json"))
    edited = gh.note(loss.commit)
    edited["decision"]["verdict"] = "win"
    write_note(gh, loss.commit, edited)

    restarted = gh.driver(mirror_name="restarted.git")
    for bot in (d, restarted):
        bot.advance_all()
        assert [r.id for r in bot.lf.experiments()] == (["exp-1"] if bot is d else [])
        skipped = " ".join(bot.progress()["skipped_notes"])
        assert f"the note on {evil[:12]} under refs/notes/arbot is skipped: it is not signed" in skipped, skipped
        assert f"the note on {loss.commit[:12]} under refs/notes/arbot is skipped: its signature by key" in skipped
    assert list(fake.prs) == [1] and not fake.prs[1].merged and fake.ref("champion") == start
    assert d.lf.experiments()[0].decision.verdict == "loss"  # the bot that read its own record keeps it


def test_an_edited_champion_note_lowering_the_baseline_is_ignored(gh):
    """Finding: an edited champion note lowered the baseline and a worse candidate was merged against it."""
    fake = gh.fake
    start = fake.ref("champion")
    d = gh.driver("worse")
    d.fill()
    answer(gh, fake.dispatches[0])
    d.advance_all()  # the champion measured (3.0), the candidate's run dispatched
    edited = gh.note(start)
    edited["runs"][0]["metrics"]["val_bpb"] = 10.0  # a baseline any candidate beats
    write_note(gh, start, edited)
    answer(gh, fake.dispatches[-1])
    d.advance_all()
    rec = d.lf.experiments()[0]
    assert rec.decision.verdict == "loss" and rec.decision.champion_mean == 3.0, rec.decision
    assert not fake.prs[1].merged and fake.ref("champion") == start
    said = comments_on(gh, 1)
    assert "### exp-1: notes ignored" in said and f"the note on {start[:12]} under refs/notes/arbot is skipped" in said
    restarted = gh.driver(mirror_name="restarted.git")
    restarted.advance_all()
    assert 10.0 not in [r.metrics.get("val_bpb") for r in restarted.lf.champion_record(start).runs]


def test_a_second_note_with_a_real_experiments_id_is_ignored_and_the_win_merges(gh):
    """Finding: a second note with a real experiment's id closed that win's PR, and the merge was retried forever."""
    fake = gh.fake
    gh.auto()
    d = gh.driver("win")
    d.fill()
    [rec] = d.lf.experiments()
    other = attacker_commit(gh, "elsewhere", "OTHER = 1\n")
    loss = Decision(verdict="loss", rule="margin", reason="forged")
    write_note(gh, other, rec.model_copy(update={"commit": other, "decision": loss}).model_dump(mode="json"))
    gh.settle(d)
    [won] = d.lf.experiments()
    assert won.commit == rec.commit and won.decision.verdict == "win" and fake.prs[1].merged
    assert won.merged_as == fake.ref("champion") and list(fake.prs) == [1]
    assert f"the note on {other[:12]} under refs/notes/arbot is skipped: it is not signed" in comments_on(gh, 1)

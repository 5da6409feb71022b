"""Parity: one scripted campaign through the local executor and through the GitHub executor (against the fake
GitHub) makes the same decisions, with the same rule names and the same trailers.

The campaign: a win, a loss by screen, a loss by futility, a crash, a timeout, a flagged win held for review
then approved, a win rejected by holdout, and a flagged win made stale by another merge while it waited,
measured again on the new champion, held, approved and merged.
"""

from __future__ import annotations

import pytest

from bot.core import lifecycle as lc
from bot.config import load_config
from bot.forges.local import LocalForge
from bot.server.driver import Driver
from bot.surfaces.github import mirror
from bot.loop import Loop
from bot.core.policy import make_policy
from tests.fake_github.server import FakeGitHub
from tests.fake_github.serving import serving
from tests.scripted import (ACTIONS_TOKEN, ScriptedProposer, ScriptedRunner, ScriptedWorkflow, Variant, make_world)
from tests.test_github_forge import REPO, TOKEN, forge_for

WORLD = {
    "win": Variant(effect=-0.3),
    "worse": Variant(effect=0.2),
    "meh": Variant(effect=-0.004),
    "crash": Variant(status="crash"),
    "timeout": Variant(status="timeout"),
    "flagged": Variant(effect=-0.3, flags=("timing: reads the clock",)),
    "overfit": Variant(effect=-0.3, gap=0.2),
    "flagged-late": Variant(effect=-0.2, flags=("io: opens a file",)),
    "win-again": Variant(effect=-0.3),
}
# Proposals in order, and the approvals a human gives between them.
STEPS = ["win", "worse", "meh", "crash", "timeout", "flagged", "approve exp-6", "overfit", "flagged-late",
         "win-again", "approve exp-8", "approve exp-10"]
EXPECTED = {  # id: (hypothesis, verdict, rule, merged)
    "exp-1": ("win", "win", "confirm:pooled", True),
    "exp-2": ("worse", "loss", "screen", False),
    "exp-3": ("meh", "loss", "futility", False),
    "exp-4": ("crash", "crash", "crash", False),
    "exp-5": ("timeout", "timeout", "timeout", False),
    "exp-6": ("flagged", "win", "confirm:pooled", True),
    "exp-7": ("overfit", "rejected", "holdout_gap", False),
    "exp-8": ("flagged-late", "rejected", "stale", False),
    "exp-9": ("win-again", "win", "confirm:pooled", True),
    "exp-10": ("flagged-late", "win", "confirm:pooled", True),
}
CONFIG = {"policy": {"rule": "noise_aware"}, "github": {"repo": REPO, "max_in_flight": 1}}


def outcome(forge: LocalForge) -> tuple[list[tuple], list[dict]]:
    """(each experiment's id, hypothesis, verdict, rule, merged), and the trailers on champion, oldest first."""
    decisions = [(r.id, r.proposal.hypothesis, r.decision.verdict, r.decision.rule, bool(r.merged_as))
                 for r in forge.experiments()]
    trailers = [{k: v for k, v in t.items() if k != "PR"} for _, t in reversed(forge.champion_log())]
    return decisions, trailers


def run_local(tmp_path) -> tuple[list[tuple], list[dict]]:
    repo = make_world(tmp_path / "local", CONFIG)
    config = load_config(tmp_path / "local" / "arbot.yml")
    forge = LocalForge(repo)
    forge.ensure_champion()
    names = [s for s in STEPS if not s.startswith("approve")]
    loop = Loop(forge, ScriptedRunner(repo, WORLD), ScriptedProposer(*names), make_policy(config.policy), config.target)
    loop.measure_champion()
    for step in STEPS:
        if step.startswith("approve"):
            assert loop.approve(step.split()[1]).review == "approved"
        else:
            loop.step()
        while any(lc.is_active(r) for r in forge.experiments()):  # a replay opened by an approval
            loop.step()
    return outcome(forge)


def run_github(tmp_path) -> tuple[list[tuple], list[dict], FakeGitHub]:
    repo = make_world(tmp_path / "gh-src", CONFIG)
    config = load_config(tmp_path / "gh-src" / "arbot.yml")
    fake = FakeGitHub(tmp_path / "remote", owner="octo-org", name="research", token=TOKEN)
    fake.tokens[ACTIONS_TOKEN] = "github-actions[bot]"
    repo.git.push(str(fake.bare), "main:refs/heads/main")
    names = [s for s in STEPS if not s.startswith("approve")]
    try:
        with serving(fake.asgi) as url:
            fake.on_dispatch = ScriptedWorkflow(fake, url, REPO, WORLD)
            forge = forge_for(url, fake)
            forge.ensure_champion()
            forge.ensure_labels()
            forge.protect_champion()
            paused = [True]  # the test lets the bot propose one experiment per step, as `arbot run` does
            driver = Driver(forge, mirror(tmp_path / "mirror.git"), config, ScriptedProposer(*names),
                            make_policy(config.policy), paused=lambda: paused[0])

            def settle():
                while True:
                    fake.flush_dispatches()
                    before = len(fake.dispatches)
                    driver.advance_all()
                    fake.flush_dispatches()
                    if len(fake.dispatches) == before:
                        return

            for step in STEPS:
                if step.startswith("approve"):
                    rec = next(r for r in driver.lf.experiments() if r.id == step.split()[1])
                    driver.approve(forge.find_pr(rec.branch).number)
                else:
                    paused[0] = False
                    driver.fill()
                    paused[0] = True
                settle()
            driver.sync()
            return (*outcome(driver.lf), fake)
    finally:
        fake.close()


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    return run_local(tmp_path_factory.mktemp("local")), run_github(tmp_path_factory.mktemp("github"))


def test_the_campaign_reaches_every_rule(both):
    (decisions, _), _ = both
    assert {d[0]: d[1:] for d in decisions} == EXPECTED


def test_local_and_github_make_the_same_decisions_and_trailers(both):
    (local_decisions, local_trailers), (gh_decisions, gh_trailers, _) = both
    assert gh_decisions == local_decisions
    assert [t["Experiment"] for t in gh_trailers] == ["exp-1", "exp-6", "exp-9", "exp-10"]
    assert gh_trailers == local_trailers


def test_github_mode_shows_each_decision_on_its_pull_request(both):
    _, (decisions, _, fake) = both
    by_branch = {pr.head: pr for pr in fake.prs.values()}
    for exp_id, _, verdict, rule, merged in decisions:
        pr = by_branch[f"arbot/exp-{exp_id.split('-')[1]}"]
        assert pr.merged == merged and pr.state == "closed", (exp_id, pr)
        if not merged:
            assert ("arbot:loss" if verdict == "loss" else "arbot:crash") in pr.labels
        comments = [c["body"] for c in fake.comments.values() if c["issue"] == pr.number]
        assert any(f"**{verdict}** ({rule})" in body for body in comments), (exp_id, comments)
    # every run came from one dispatch of the evaluate workflow on the champion branch, none twice
    keys = [d["inputs"]["request"] for d in fake.dispatches]
    assert len(keys) == len(set(keys)) and {d["head_branch"] for d in fake.dispatches} == {"main"}  # the default branch: a definition no PR changes
    assert fake.all_violations == []

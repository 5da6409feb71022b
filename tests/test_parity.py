"""Parity: one scripted campaign through the local executor and through the GitHub executor (against the fake
GitHub) makes the same decisions, with the same rule names and the same trailers.

The campaign: a win, a loss by screen, a loss by futility, a crash, a timeout, a flagged win held for review
then approved, a win rejected by holdout, and a flagged win made stale by another merge while it waited,
measured again on the new champion, held, approved and merged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core import lifecycle as lc
from bot.core.records import verdict_text
from bot.config import load_config
from bot.forges.local import LocalForge
from bot.server.driver import Driver
from bot.surfaces.github import mirror
from bot.loop import Loop
from bot.core.policy import make_policy
from bot.executors.slurm import Slurm
from tests.fake_github.server import FakeGitHub
from tests.fake_github.serving import serving
from tests.scripted import (ACTIONS_TOKEN, Schedule, ScriptedExecutor, ScriptedProposer, ScriptedRunner,
                            ScriptedWorkflow, Variant, make_world)
from tests.test_github_forge import REPO, TOKEN, forge_for
from tests.test_slurm_executor import fake, finish  # noqa: F401 - `fake`: the stand-in Slurm commands (a fixture)

WORLD = {
    "win": Variant(effect=-0.3),
    "worse": Variant(effect=0.2),
    "meh": Variant(effect=-0.012),  # passes its screen by a hair (1.2 noise sds), then fails at futility
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
    play(loop, forge)
    return outcome(forge)


def play(loop: Loop, forge: LocalForge, steps: list[str] = STEPS, before=None) -> None:
    """The campaign through the local loop, one step at a time as `arbot run` makes them: each proposal until
    nothing is active (a replay opened by an approval included), each approval as a human gives it; `before(i)`
    is called before step i."""
    loop.measure_champion()
    for i, step in enumerate(steps):
        if before is not None:
            before(i)
        if step.startswith("approve"):
            assert loop.approve(step.split()[1]).review == "approved"
        else:
            loop.step()
        while any(lc.is_active(r) for r in forge.experiments()):
            loop.step()


def run_github(tmp_path, tracker=None) -> tuple[list[tuple], list[dict], FakeGitHub]:
    """The campaign in GitHub mode; `tracker`: the bot's experiment tracker (tests/test_tracking.py)."""
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
                            make_policy(config.policy), paused=lambda: paused[0], tracker=tracker)

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
        assert any(f"**{verdict_text(verdict, rule)}**" in body for body in comments), (exp_id, comments)
    # every run came from one dispatch of the evaluate workflow on the champion branch, none twice
    keys = [d["inputs"]["request"] for d in fake.dispatches]
    assert len(keys) == len(set(keys)) and {d["head_branch"] for d in fake.dispatches} == {"main"}  # the default branch: a definition no PR changes
    assert fake.all_violations == []


# --- two experiments in flight ------------------------------------------------------------------------------------
# A slow change is screened while a fast win is confirmed and merged: its screen, still in flight when the champion
# moves, finishes on the old champion, and as it is no loss its change is measured again on the new one (stale).
WORLD2 = {
    "win": Variant(effect=-0.3),
    "slow-good": Variant(effect=-0.2, ticks=6),
    "worse": Variant(effect=0.2),
    "win-again": Variant(effect=-0.3),
    "meh": Variant(effect=-0.012),  # passes its screen by a hair (1.2 noise sds), then fails at futility
}
NAMES2 = ["win", "slow-good", "worse", "win-again", "meh"]
CONFIG2 = {"policy": {"rule": "noise_aware"}, "run": {"workers": 2}, "github": {"repo": REPO, "max_in_flight": 2}}
EXPECTED2 = {  # id: (hypothesis, verdict, rule, merged)
    "exp-1": ("win", "win", "confirm:pooled", True),
    "exp-2": ("slow-good", "rejected", "stale", False),
}


class SlurmCluster:
    """The Slurm executor (bot.executors.slurm.Slurm, with stand-in Slurm commands) on a cluster whose jobs end on
    the Schedule: each leaves the world's result where a job would."""

    def __init__(self, slurm, repo, world, fake_slurm):
        self.slurm, self.runner, self.fake_slurm, self.slots = slurm, ScriptedRunner(repo, world), fake_slurm, 2
        self.schedule = Schedule(world, lambda sha: repo.git.show(f"{sha}:target/train.py"))

    def submit(self, spec, timing):
        noted = self.slurm.submit(spec, timing)
        self.schedule.add(noted, spec.commit, spec.champion)
        return noted

    def poll(self, timeout):
        due = self.schedule.tick()
        for spec in due:
            run = self.runner.run(spec.commit, spec.champion, spec.seed, tuple(spec.splits))
            self.fake_slurm.set(spec.run_id, "COMPLETED")
            finish(self.slurm, spec, spec.run_id, run.model_dump_json())
        ended = []
        while len(ended) < len(due):
            ended += self.slurm.poll(5)
        return ended

    def cancel(self, spec):
        self.schedule.drop(lambda s: s.key != spec.key)
        self.slurm.cancel(spec)

    def resume(self, spec):
        return self.slurm.resume(spec)

    def busy(self):
        return self.slurm.busy()

    def close(self):
        self.slurm.close()


def promotions_seen(loop: Loop, in_flight) -> list[tuple[str, set[str]]]:
    """Each merge the loop makes, with the runs in flight at that moment."""
    seen, promote = [], loop.surface.promote

    def watched(rec, trailers):
        seen.append((rec.id, {s.key for s in in_flight()}))
        return promote(rec, trailers)

    loop.surface.promote = watched
    return seen


def run_local_two(tmp_path, executor_for) -> tuple[list[tuple], list[dict], list]:
    repo = make_world(tmp_path, CONFIG2)
    config = load_config(tmp_path / "arbot.yml")
    forge = LocalForge(repo)
    forge.ensure_champion()
    executor = executor_for(repo, config)
    loop = Loop(forge, None, ScriptedProposer(*NAMES2), make_policy(config.policy), config.target, executor=executor)
    seen = promotions_seen(loop, lambda: loop.stepper.in_flight.values())
    loop.campaign(limit=len(NAMES2))
    return (*outcome(forge), seen, executor)


def run_github_two(tmp_path) -> tuple[list[tuple], list[dict]]:
    repo = make_world(tmp_path / "src", CONFIG2)
    config = load_config(tmp_path / "src" / "arbot.yml")
    fake = FakeGitHub(tmp_path / "remote", owner="octo-org", name="research", token=TOKEN)
    fake.tokens[ACTIONS_TOKEN] = "github-actions[bot]"
    repo.git.push(str(fake.bare), "main:refs/heads/main")
    try:
        with serving(fake.asgi) as url:
            workflow = ScriptedWorkflow(fake, url, REPO, WORLD2)
            forge = forge_for(url, fake)
            forge.ensure_champion()
            forge.ensure_labels()
            forge.protect_champion()
            proposer = ScriptedProposer(*NAMES2)
            driver = Driver(forge, mirror(tmp_path / "mirror.git"), config, proposer, make_policy(config.policy),
                            paused=lambda: not proposer.names)
            schedule = Schedule(WORLD2, lambda sha: fake.git("show", f"{sha}:target/train.py").stdout)
            handed = 0
            for _ in range(100):  # one workflow round, then one step of the bot, as `arbot run` polls then steps
                for dispatch in fake.dispatches[handed:]:
                    schedule.add(dispatch, dispatch["inputs"]["commit"], dispatch["inputs"]["champion"])
                handed = len(fake.dispatches)
                for dispatch in schedule.tick():
                    workflow(dispatch)
                driver.advance_all()
                if not proposer.names and not any(lc.is_active(r) for r in driver.lf.experiments()):
                    break
            else:
                raise AssertionError("the campaign did not end in 100 steps")
            driver.sync()
            assert fake.all_violations == []
            return outcome(driver.lf)
    finally:
        fake.close()


def test_two_in_flight_local_slurm_and_github_make_the_same_decisions(tmp_path, fake):
    local = run_local_two(tmp_path / "local", lambda repo, config: ScriptedExecutor(repo, WORLD2, 2))
    # jobs never wait for slurm.max_jobs here (the stand-in cluster ends each on the Schedule from its submission)
    slurm = run_local_two(tmp_path / "slurm", lambda repo, config: SlurmCluster(
        Slurm(Path(repo.working_dir), config.model_copy(update={"slurm": config.slurm.model_copy(
            update={"max_jobs": 8})})), repo, WORLD2, fake))
    github = run_github_two(tmp_path / "github")
    decisions = {d[0]: d[1:] for d in local[0]}
    assert {k: decisions[k] for k in EXPECTED2} == EXPECTED2
    # the change made stale is measured again on the new champion, as its own experiment
    assert any(d[1] == "slow-good" and d[3] != "stale" for d in local[0] if d[0] != "exp-2")
    # exp-1 merged while exp-2's screen was in flight
    (merged, in_flight), *_ = local[2]
    assert merged == "exp-1" and any(key.startswith("exp-2:") for key in in_flight), local[2]
    # nothing was decided with a run of its request in flight: the only runs given up are those of stale experiments
    stale = {d[0] for d in local[0] if d[3] == "stale"}
    assert all(key.split(":")[0] in stale | {"champion"} for key in local[3].cancelled), local[3].cancelled
    assert slurm[:2] == local[:2]
    assert github == local[:2]


def test_the_bayes_rule_learns_as_the_local_loop_decides(tmp_path):
    """With `policy.rule: bayes` each decision is made on the prior learned from the experiments decided before it
    (the stepper hands it over), and the records keep it: the count it was learned from grows with the campaign."""
    repo = make_world(tmp_path / "bayes", {**CONFIG, "policy": {"rule": "bayes"}})
    config = load_config(tmp_path / "bayes" / "arbot.yml")
    forge = LocalForge(repo)
    forge.ensure_champion()
    names = ["win", "worse", "meh", "worse", "win-again"]
    loop = Loop(forge, ScriptedRunner(repo, WORLD), ScriptedProposer(*names), make_policy(config.policy), config.target)
    play(loop, forge, names)
    decided = [r for r in forge.experiments() if r.evidence is not None and r.decision.rule != "stale"]
    learned = [r.evidence.campaign.experiments for r in decided]
    assert len(decided) >= 4 and learned == sorted(learned) and learned[0] == 0 and learned[-1] >= 3, learned
    assert all("prior from" in r.decision.reason for r in decided)

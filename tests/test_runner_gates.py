"""The loop's promotion gates for runner findings, with a scripted runner (fast, no training):
flagged wins wait for a human, the holdout confirmation rejects a candidate that fits val too well."""

from __future__ import annotations

from pathlib import Path

from bot.config import load_config
from bot.forges.local import LocalForge
from bot.knobs import set_knobs
from bot.loop import Loop
from bot.policy import make_policy
from bot.records import Proposal, RunResult

from .conftest import make_repo, tiny_config


class FakeRunner:
    """Answers runs from a table: commit -> (val_bpb, holdout_bpb, flags)."""

    def __init__(self, target, table):
        self.target, self.table, self.calls = target, table, []

    def run(self, candidate, champion, seed=0, splits=("val",), on_progress=None, stop=None, timing=None):
        self.calls.append((candidate[:7], splits))
        val, holdout, flags = self.table.get(candidate, self.table["default"])
        metrics = {"val_bpb": val + 0.001 * seed}
        if "holdout" in splits:
            metrics["holdout_bpb"] = holdout + 0.001 * seed
        return RunResult(status="ok", commit=candidate, champion=champion, seed=seed, metrics=metrics,
                         flags=list(flags), sandbox="bwrap", splits=list(splits))


class Proposer:
    name = "scripted"

    def __init__(self, *texts):
        self.texts = list(texts)

    def propose(self, ctx):
        return Proposal(proposer=self.name, hypothesis=f"edit {len(self.texts)}",
                        files={"target/train.py": self.texts.pop(0)})


def setup(tmp_path, table_for, *lrs, **target):
    repo = make_repo(tmp_path / "r", tiny_config(target=target))
    config = load_config(Path(repo.working_tree_dir) / "arbot.yml")
    forge = LocalForge(repo)
    forge.ensure_champion()
    source = (Path(repo.working_tree_dir) / "target" / "train.py").read_text()
    proposer = Proposer(*(set_knobs(source, {"LEARNING_RATE": lr}) for lr in lrs))
    runner = FakeRunner(config.target, {})
    loop = Loop(forge, runner, proposer, make_policy(config.policy), config.target)
    runner.table.update(table_for(forge))
    loop.measure_champion()
    return forge, loop, runner


def test_flagged_win_waits_for_a_human_then_merges_on_approval(tmp_path):
    flagged = ["timing: target/train.py: time.perf_counter = lambda: 0"]
    forge, loop, runner = setup(tmp_path, lambda f: {"default": (3.0, 2.97, flagged), f.champion(): (4.0, 3.96, [])},
                                3e-3, 4e-3)
    start = forge.champion()
    held = loop.step()
    assert held.decision.verdict == "win" and held.review == "needed" and held.merged_as is None
    assert "held for human review" in held.decision.reason and "timing" in held.decision.reason
    assert forge.champion() == start
    # the held win does not block the loop: the next step is a new experiment
    nxt = loop.step()
    assert nxt.id != held.id and forge.champion() == start
    approved = loop.approve(held.id)
    assert approved.review == "approved" and approved.merged_as == forge.champion() != start


def test_holdout_gap_rejects_a_candidate_that_fits_val_too_well(tmp_path):
    # champion: holdout 1% above val; candidate: val far better, holdout barely (it has seen val)
    forge, loop, runner = setup(tmp_path, lambda f: {"default": (3.0, 3.9, []), f.champion(): (4.0, 4.04, [])}, 3e-3)
    rec = loop.step()
    assert rec.decision.verdict == "rejected" and rec.decision.rule == "holdout_gap", rec.decision
    assert "seen val" in rec.decision.reason and rec.merged_as is None
    assert any("holdout_bpb" in r.metrics for r in rec.runs)
    assert ("val", "holdout") in [s for _, s in runner.calls]


def test_honest_win_passes_the_holdout_confirmation(tmp_path):
    forge, loop, runner = setup(tmp_path, lambda f: {"default": (3.0, 3.02, []), f.champion(): (4.0, 4.04, [])}, 3e-3)
    rec = loop.step()
    assert rec.decision.verdict == "win" and rec.merged_as and "holdout confirmed" in rec.decision.reason


def test_approval_after_the_champion_moved_closes_the_win_as_stale_and_measures_it_again(tmp_path):
    flagged = ["timing: target/train.py: time.perf_counter = lambda: 0"]
    # holdout 1% above val for the champion and every candidate: each win passes the holdout confirmation
    forge, loop, runner = setup(tmp_path, lambda f: {"default": (3.0, 3.03, flagged), f.champion(): (4.0, 4.04, [])},
                                3e-3)
    source = (Path(forge.repo.working_tree_dir) / "target" / "train.py").read_text()
    loop.proposer.texts.append(set_knobs(source, {"GRAD_CLIP": 0.5}))  # a change that merges with the held one
    start = forge.champion()
    held = loop.step()
    assert held.review == "needed" and forge.champion() == start
    runner.table["default"] = (3.0, 3.03, [])  # unflagged from here on: the next win merges at once
    moved = loop.step()
    assert moved.merged_as == forge.champion() != start
    calls = len(runner.calls)

    approved = loop.approve(held.id)
    assert approved.review == "approved" and approved.merged_as is None
    assert (approved.decision.verdict, approved.decision.rule) == ("rejected", "stale")
    assert len(runner.calls) == calls  # approving trains nothing
    [fresh] = [r for r in forge.experiments() if r.id not in (held.id, moved.id)]
    assert f"measured again as {fresh.id}" in approved.decision.reason
    assert fresh.parent == forge.champion() and fresh.decision is None and fresh.runs == []
    new_lines = lambda text: set(text.splitlines()) - set(source.splitlines())  # noqa: E731
    fresh_lines = new_lines(fresh.proposal.files["target/train.py"])
    assert new_lines(held.proposal.files["target/train.py"]) <= fresh_lines  # its own change ...
    assert new_lines(moved.proposal.files["target/train.py"]) <= fresh_lines  # ... on top of the new champion's
    assert loop.step().id == fresh.id  # the next run measures it


def test_a_run_held_over_its_budget_is_never_a_win(tmp_path):
    """The runner rejects a candidate whose training outran budget + the champion's start-up + tolerance
    (runner.job, reason `over_budget: ...`); the loop closes it as rejected with that reason, however good
    its number would have been, and merges nothing."""
    over = ("over_budget: training took 31.0 s of wall time (measured by the runner), more than its budget of 10 s "
            "+ 6.0 s start-up and export allowance (measured from the champion's runs) + 5.0 s tolerance = 21.0 s")

    class OverBudget(FakeRunner):
        def run(self, candidate, champion, seed=0, splits=("val",), on_progress=None, stop=None, timing=None):
            result = super().run(candidate, champion, seed, splits, on_progress, stop)
            if candidate != champion:
                result.status, result.reason, result.metrics = "rejected", over, {}
            return result

    repo = make_repo(tmp_path / "r", tiny_config())
    config = load_config(Path(repo.working_tree_dir) / "arbot.yml")
    forge = LocalForge(repo)
    forge.ensure_champion()
    source = (Path(repo.working_tree_dir) / "target" / "train.py").read_text()
    runner = OverBudget(config.target, {"default": (1.0, 1.01, [])})
    runner.table[forge.champion()] = (4.0, 4.04, [])
    loop = Loop(forge, runner, Proposer(set_knobs(source, {"LEARNING_RATE": 3e-3})), make_policy(config.policy),
                config.target)
    loop.measure_champion()
    start = forge.champion()
    rec = loop.step()
    assert rec.decision.verdict == "rejected" and rec.merged_as is None and forge.champion() == start
    assert "over_budget" in rec.decision.reason


def test_champion_timing_from_its_recorded_runs():
    """What a runner that never ran the champion is told (GitHub mode): the largest start-up and export time
    beyond the budget, and the largest scoring time per split, of the champion's ok runs."""
    from runner.job import champion_timing

    def run(status="ok", train=None, score=None, splits=("val",)):
        return RunResult(status=status, commit="c", champion="c", seed=0, train_seconds=train, score_seconds=score,
                         splits=list(splits))

    assert champion_timing([], 10) is None
    assert champion_timing([run("crash", 50, 3), run(train=12.0)], 10) is None  # no ok run with both times
    assert champion_timing([run(train=13.5, score=2.0), run(train=12.0, score=4.0, splits=("val", "holdout")),
                            run("timeout", 60, 9)], 10) == (3.5, 2.0)
    assert champion_timing([run(train=8.0, score=1.0)], 10) == (0.0, 1.0)  # ended early: no negative allowance

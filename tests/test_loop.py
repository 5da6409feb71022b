"""The research loop end to end on a real repository and the real target: win, crash, timeout, rejection."""

from pathlib import Path

import pytest

from bot.config import load_config
from bot.forges.local import LocalForge
from bot.knobs import find_knobs, set_knobs
from bot.loop import Loop, export_results
from bot.core.policy import make_policy
from bot.core.records import DEFAULT_METRIC, Proposal
from runner.job import Runner

from .conftest import make_repo, tiny_config

def SLOW_LR(s):
    """A champion with lots of room to improve."""
    return set_knobs(s, {"LEARNING_RATE": 1e-6})


class ScriptedProposer:
    """Proposes the given edits of target/train.py in order (tests only)."""

    name = "scripted"

    def __init__(self, *edits):
        self.edits = list(edits)

    def propose(self, ctx):
        hypothesis, edit = self.edits.pop(0)
        files = edit(dict(ctx.files))
        return Proposal(proposer=self.name, hypothesis=hypothesis, files=files)


def script_edit(fn):
    return lambda files: {**files, "target/train.py": fn(files["target/train.py"])}


def after_knobs(code):
    """Insert code right after the last knob of train.py."""
    def edit(s):
        lines = s.splitlines(keepends=True)
        last = find_knobs(s)[-1].line
        return "".join(lines[:last] + [code + "\n"] + lines[last:])
    return edit


@pytest.mark.slow
def test_loop_wins_crashes_times_out_and_rejects(tmp_path):
    cfg = tiny_config(target={"grace_seconds": 12})
    repo = make_repo(tmp_path / "r", cfg, script_edit=SLOW_LR)
    config = load_config(Path(repo.working_tree_dir) / "arbot.yml")
    forge = LocalForge(repo)
    forge.ensure_champion()
    start = forge.champion()
    proposer = ScriptedProposer(
        ("Raise LEARNING_RATE to 3e-3", script_edit(lambda s: set_knobs(s, {"LEARNING_RATE": 3e-3}))),
        ("Crash on purpose", script_edit(after_knobs("raise RuntimeError('boom: candidate crashed')"))),
        ("Sleep past the budget", script_edit(after_knobs("import time; time.sleep(600)"))),
        ("Edit the evaluator", lambda files: {**files, "evaluator/score.py": "BROKEN = True\n"}),
    )
    loop = Loop(forge, Runner(repo, config.target, config.evaluator), proposer, make_policy(config.policy),
                config.target)
    loop.measure_champion()
    recs = [loop.step() for _ in range(4)]

    win, crash, timeout, rejected = recs
    assert [r.decision.verdict for r in recs] == ["win", "crash", "timeout", "rejected"]
    # The win is merged with trailers; the others never reach champion but stay reachable on their branches.
    assert forge.champion() == win.merged_as
    assert repo.commit(win.merged_as).parents[0].hexsha == start
    trailers = repo.git.log("-1", "--format=%(trailers)", "champion")
    assert "Experiment: exp-1" in trailers and "Metric: val_bpb=" in trailers and "Evaluator: " in trailers
    for rec in (crash, timeout, rejected):
        assert not forge.merged(rec)
        assert repo.commit(rec.branch).hexsha == rec.commit
    assert "boom: candidate crashed" in crash.runs[0].log_tail
    assert timeout.runs[0].status == "timeout" and "budget" in timeout.runs[0].reason
    assert rejected.runs[0].train_seconds is None  # rejected before any training
    assert "evaluator/score.py" in rejected.runs[0].reason
    # Later experiments were measured against the new champion.
    assert crash.parent == win.merged_as

    export_results(forge, tmp_path / "results.tsv", DEFAULT_METRIC)
    lines = (tmp_path / "results.tsv").read_text().splitlines()
    assert lines[0].startswith("commit\tval_bpb\tmemory_gb\tstatus\tdescription\t")
    assert [ln.split("\t")[3] for ln in lines[1:]] == ["keep", "crash", "timeout", "rejected"]


class OnceThen:
    """Proposes one scripted variant, then raises `error` (tests only)."""

    name = "scripted"

    def __init__(self, error):
        from tests.scripted import ScriptedProposer as Markers

        self.first, self.error = Markers("worse"), error

    def propose(self, ctx):
        if self.first.names:
            return self.first.propose(ctx)
        raise self.error


@pytest.mark.parametrize("error,failed", [("exhausted", False), ("broken", True)])
def test_a_proposer_that_stops_ends_the_campaign_after_the_open_experiments(tmp_path, error, failed):
    """No proposer error ends a campaign with a traceback: the experiment open is finished, then the campaign
    returns saying why (an exhausted search is no failure; any other proposer error is)."""
    from bot.config import Config
    from bot.proposers.base import ProposalError, SearchExhausted
    from tests.scripted import ScriptedExecutor, Variant, make_world

    world = {"worse": Variant(effect=0.2, ticks=3)}
    repo = make_world(tmp_path / "w", {"policy": {"rule": "margin", "margin": 0.0, "baseline_runs": 1}})
    config = Config.model_validate({"policy": {"rule": "margin", "margin": 0.0, "baseline_runs": 1},
                                    "target": {"holdout_max_gap": None}})
    forge = LocalForge(repo)
    forge.ensure_champion()
    raised = SearchExhausted("the search space around champion x is exhausted") if error == "exhausted" \
        else ProposalError("search.knobs.DEPTH: give both low and high, or choices")
    loop = Loop(forge, None, OnceThen(raised), make_policy(config.policy), config.target,
                executor=ScriptedExecutor(repo, world, slots=2))
    done = loop.campaign(None)
    assert [r.decision.verdict for r in done] == ["loss"]
    assert loop.stopped is not None and loop.stopped.failed is failed
    assert str(raised) in loop.stopped.stopped


class HeldRuns:
    """An executor that holds every run handed to it (none ends): what is in flight after a step (tests only)."""

    slots = 1

    def __init__(self):
        self.submitted = []

    def submit(self, spec, timing):
        self.submitted.append(spec)
        return spec

    def resume(self, spec):
        return False

    def poll(self, timeout):
        return []

    def cancel(self, spec):
        pass

    def busy(self):
        return {}

    def close(self):
        pass


@pytest.mark.parametrize("first_in_flight", [True, False])
def test_a_deferred_experiment_is_confirmed_beside_another_only_when_a_worker_would_idle(research_repo,
                                                                                         first_in_flight):
    """exp-1 is being confirmed and exp-2, past its screen on the same champion, is deferred behind it; with one
    worker both fill the open cap (2 x workers), so nothing new may be opened. While exp-1's run is in flight
    exp-2 waits; once the worker has nothing in flight, exp-2 is confirmed beside exp-1."""
    from bot.config import TargetConfig
    from bot.core import lifecycle as lc
    from bot.core.policy import PolicyConfig
    from bot.core.records import RunResult, RunSpec
    from bot.stepper import Stepper
    from bot.surfaces.local import LocalSurface

    forge = LocalForge(research_repo)
    champion = forge.ensure_champion()
    key = DEFAULT_METRIC.key("val")

    def run(commit, seed, value):
        return RunResult(status="ok", commit=commit, champion=champion, seed=seed, splits=["val"],
                         metrics={key: value})

    forge.save(forge.champion_record(champion).model_copy(
        update={"runs": [run(champion, s, v) for s, v in enumerate((3.00, 3.01, 2.99))]}))
    script = (research_repo.commit(champion).tree / "target/train.py").data_stream.read().decode()
    exps = []
    for i in (1, 2):
        rec = forge.open_experiment(Proposal(proposer="test", hypothesis=f"h{i}",
                                             files={"target/train.py": script + f"# change {i}\n"}), champion, "t")
        rec.runs = [run(rec.commit, 0, 2.90)]  # a screen well past the bar
        exps.append(rec)
    first, second = exps
    first.pending = [RunSpec(role=first.id, commit=first.commit, champion=champion, seed=1)]
    forge.save(first)
    forge.save(second)
    executor = HeldRuns()
    rules = lc.Rules.of(make_policy(PolicyConfig(rule="noise_aware")), TargetConfig(allowed_paths=["target/*"]),
                        DEFAULT_METRIC)
    stepper = Stepper(forge, executor, LocalSurface(forge), None, TargetConfig(allowed_paths=["target/*"]), rules,
                      slots=1)
    if first_in_flight:
        stepper.take_up()  # exp-1's pending run handed to the executor: the worker is busy
    assert lc.deferred(forge.experiment(second.id), forge.active())
    stepper.fill(tries=0)
    held = forge.experiment(second.id)
    if first_in_flight:
        assert not held.pending and lc.deferred(held, forge.active())
    else:
        assert [s.seed for s in held.pending] == [1] and any(s.role == second.id for s in executor.submitted)
        assert forge.experiment(first.id).pending  # exp-1 is confirmed still

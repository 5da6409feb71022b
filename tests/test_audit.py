"""Replication audit, rollback, and the seed-only change on the real target."""

import random
import time
from pathlib import Path

import pytest

from bot.core import lifecycle as lc
from bot.audit import audit_summary, audit_win, effect_interval, regression_rate, revert_win
from bot.config import load_config
from bot.forges.local import LocalForge
from bot.loop import Loop
from bot.core.policy import make_policy
from bot.core.records import DEFAULT_METRIC, AuditRecord, Metric, Decision, Proposal, RunResult
from runner.config import TargetConfig
from runner.job import Runner

from .conftest import make_repo, tiny_config


class StubRunner:
    """Returns val_bpb drawn around a per-commit mean (tests only; the real runner is tested elsewhere)."""

    def __init__(self, means: dict[str, float], sd: float = 0.01, key: str = "val_bpb"):
        self.means, self.sd, self.calls, self.key = means, sd, [], key
        self.rng = random.Random(0)
        self.target = TargetConfig()

    def run(self, commit, champion, seed=0, on_progress=None, splits=("val",), timing=None):
        self.calls.append((commit, champion, seed))
        value = self.means[commit] + self.rng.gauss(0, self.sd)
        return RunResult(status="ok", commit=commit, champion=champion, seed=seed, metrics={self.key: value},
                         splits=list(splits))


@pytest.fixture
def merged_win(research_repo):
    forge = LocalForge(research_repo)
    forge.ensure_champion()
    script = (research_repo.commit(forge.champion()).tree / "target/train.py").data_stream.read().decode()
    p = Proposal(proposer="test", hypothesis="Add a comment", files={"target/train.py": script + "# better\n"})
    rec = forge.open_experiment(p, forge.champion(), started_at="t")
    d = Decision(verdict="win", rule="margin", reason="r", champion_mean=3.3, candidate_mean=3.2, effect=0.1)
    rec.decision = d
    rec.merged_as = forge.promote(rec, lc.trailers(rec, d, DEFAULT_METRIC))
    forge.save(rec)
    return forge, rec


def test_audit_of_a_real_win_replicates_with_fresh_seeds(merged_win):
    forge, rec = merged_win
    runner = StubRunner({rec.commit: 3.0, rec.parent: 3.2})
    a = audit_win(forge, runner, rec, runs=3, alpha=0.05, metric=DEFAULT_METRIC, at="now")
    assert a.replicates and a.effect == pytest.approx(0.2, abs=0.05) and a.p_value < 0.05
    assert min(seed for _, _, seed in runner.calls) >= 1000  # never the seeds that decided it
    assert all(champion == rec.parent for _, champion, _ in runner.calls)  # the parent's evaluator scores both
    saved = forge.experiments()[0]
    assert saved.audits == [a]
    assert regression_rate(forge.experiments()) == (0.0, 1)
    # A second audit uses new seeds again.
    audit_win(forge, runner, saved, runs=2, alpha=0.05, metric=DEFAULT_METRIC, at="later")
    assert forge.experiments()[0].audits[1].seeds == [1003, 1004]


class TimedStubRunner(StubRunner):
    """A StubRunner whose runs take a while and say when they were made."""

    def __init__(self, means: dict[str, float]):
        super().__init__(means)
        self.spans: list[tuple[float, float]] = []

    def run(self, commit, champion, seed=0, on_progress=None, splits=("val",), timing=None):
        start = time.monotonic()
        time.sleep(0.2)
        result = super().run(commit, champion, seed, on_progress, splits, timing)
        self.spans.append((start, time.monotonic()))
        return result


def test_beside_a_second_runner_each_seeds_candidate_and_baseline_train_at_once(merged_win):
    """A campaign of two workers made every run beside another: the audit measures under that load."""
    forge, rec = merged_win
    means = {rec.commit: 3.0, rec.parent: 3.2}
    runner, beside = TimedStubRunner(means), TimedStubRunner(means)
    a = audit_win(forge, runner, rec, runs=3, alpha=0.05, metric=DEFAULT_METRIC, at="now", beside=beside)
    assert [(c, s) for c, _, s in runner.calls] == [(rec.commit, s) for s in a.seeds]
    assert [(c, s) for c, _, s in beside.calls] == [(rec.parent, s) for s in a.seeds]
    for (c0, c1), (b0, b1) in zip(runner.spans, beside.spans):
        assert c0 < b1 and b0 < c1  # the two runs of a seed overlap in time
    assert a.replicates and len(a.candidate) == len(a.baseline) == 3
    alone = TimedStubRunner(means)
    audit_win(forge, alone, forge.experiments()[0], runs=2, alpha=0.05, metric=DEFAULT_METRIC, at="later")
    assert all(end <= start for (_, end), (start, _) in zip(alone.spans, alone.spans[1:]))  # one after the other


def test_audit_of_noise_does_not_replicate(merged_win):
    forge, rec = merged_win
    a = audit_win(forge, StubRunner({rec.commit: 3.2, rec.parent: 3.2}, sd=0.05), rec, runs=3, alpha=0.05,
                  metric=DEFAULT_METRIC, at="now")
    assert not a.replicates
    assert regression_rate(forge.experiments()) == (1.0, 1)


def test_an_audit_follows_the_metric_direction(merged_win):
    forge, rec = merged_win
    acc = Metric(name="acc", direction="maximize", precision=4)
    higher = StubRunner({rec.commit: 0.95, rec.parent: 0.90}, key="val_acc")
    a = audit_win(forge, higher, rec, runs=3, alpha=0.05, metric=acc, at="now")
    assert a.replicates and a.effect == pytest.approx(0.05, abs=0.02) and a.candidate[0] > 0.9
    lower = StubRunner({rec.commit: 0.85, rec.parent: 0.90}, key="val_acc")
    b = audit_win(forge, lower, rec, runs=3, alpha=0.05, metric=acc, at="later")
    assert not b.replicates and b.effect < 0


def test_the_effects_interval_tells_a_refuted_win_from_one_too_small_to_tell():
    refuted = AuditRecord(runs=3, seeds=[1000, 1001, 1002], candidate=[3.30, 3.31, 3.29],
                          baseline=[3.20, 3.21, 3.19], effect=-0.1, p_value=1.0)
    low, high = effect_interval(refuted, DEFAULT_METRIC)
    half = 2.7764 * 0.01 * (2 / 3) ** 0.5  # t(0.975, 4 df) x the pooled sd x sqrt(1/3 + 1/3)
    assert (low, high) == pytest.approx((-0.1 - half, -0.1 + half), abs=1e-4) and high < 0
    unclear = AuditRecord(runs=3, seeds=[1000, 1001, 1002], candidate=[3.20, 3.25, 3.15],
                          baseline=[3.21, 3.26, 3.16], effect=0.01, p_value=0.4)
    low, high = effect_interval(unclear, DEFAULT_METRIC)
    assert low < 0 < high and (low + high) / 2 == pytest.approx(0.01)
    assert "95% interval -" in audit_summary(unclear, DEFAULT_METRIC)
    acc = Metric(name="acc", direction="maximize", precision=4)  # higher is better: the interval is still the gain's
    gain = AuditRecord(runs=3, seeds=[1000, 1001, 1002], candidate=[0.95, 0.96, 0.94], baseline=[0.90, 0.91, 0.89],
                       effect=0.05, p_value=0.001)
    low, high = effect_interval(gain, acc)
    assert 0 < low < 0.05 < high
    untested = AuditRecord(runs=2, seeds=[1000, 1001], candidate=[3.2], baseline=[], note="too few")
    assert effect_interval(untested, DEFAULT_METRIC) is None and audit_summary(untested, DEFAULT_METRIC).startswith(
        "too few")


def test_revert_rolls_a_win_back_with_trailers(merged_win):
    forge, rec = merged_win
    repo = forge.repo
    sha = revert_win(forge, rec, "did not replicate")
    assert forge.champion() == sha
    assert repo.commit(sha).tree == repo.commit(rec.parent).tree  # the change is gone
    assert repo.commit(sha).parents[0].hexsha == rec.merged_as  # history is kept, not rewritten
    trailers = repo.git.log("-1", "--format=%(trailers)", sha)
    assert f"Experiment: {rec.id}" in trailers and f"Reverts: {rec.merged_as}" in trailers
    assert "Reason: did not replicate" in trailers
    assert [t["Experiment"] for _, t in forge.champion_log()] == [rec.id, rec.id]
    again = forge.experiments()[0]
    assert again.reverted_as == sha
    with pytest.raises(ValueError, match="already reverted"):
        revert_win(forge, again, "twice")


@pytest.mark.slow
def test_a_seed_only_change_is_not_promoted_and_the_noise_floor_is_measured(tmp_path):
    """Only the seed differs: the noise-aware rule must not call it a win (autoresearch once kept one)."""
    repo = make_repo(tmp_path / "r", tiny_config(policy={"rule": "noise_aware", "baseline_runs": 3}))
    config = load_config(Path(repo.working_tree_dir) / "arbot.yml")
    forge = LocalForge(repo)
    forge.ensure_champion()

    class SeedOnly:
        name = "scripted"

        def propose(self, ctx):
            s = ctx.script.replace("torch.manual_seed(args.seed)", "torch.manual_seed(args.seed + 7919)")
            s = s.replace("torch.Generator().manual_seed(args.seed)", "torch.Generator().manual_seed(args.seed + 7919)")
            assert s != ctx.script
            return Proposal(proposer=self.name, hypothesis="Change the seed", files={ctx.script_path: s})

    loop = Loop(forge, Runner(repo, config.target, config.evaluator), SeedOnly(), make_policy(config.policy),
                config.target)
    champion = loop.measure_champion()
    assert len(champion.runs) == 3  # the noise floor
    rec = loop.step()
    assert rec.decision.verdict == "loss", rec.decision
    assert rec.decision.spread is not None and rec.decision.spread > 0
    assert forge.champion() == champion.commit


def test_an_audit_trains_on_two_workers_shares_where_the_campaign_runs_two(tmp_path):
    from bot.cli import Project, audit_runners
    from bot.executors.pool import shares

    cfg = tiny_config(run={"workers": 2}, target={"allow_unboxed_workers": True})
    two = Project(Path(make_repo(tmp_path / "two", cfg).working_tree_dir), None)
    runner, beside = audit_runners(two)
    assert [runner.target, beside.target] == [target for target, _ in shares(two.config.target, 2, [])]
    assert runner.target.sandbox_uid != beside.target.sandbox_uid
    one = Project(Path(make_repo(tmp_path / "one", tiny_config()).working_tree_dir), None)
    assert audit_runners(one) == (one.runner, None)

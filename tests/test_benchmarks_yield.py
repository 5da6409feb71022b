"""benchmarks/yield.py: a campaign started from a backgrounded benchmark still stops when told; the summary's
interval and replication share."""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys

import pytest

from bot.core.records import DEFAULT_METRIC, AuditRecord
from runner.result import RunResult

bench = importlib.import_module("benchmarks.yield")  # `yield` is a keyword: no `import` statement names it

SLEEPER = "import time; print('ready', flush=True); time.sleep(120)"


def started(preexec) -> subprocess.Popen:
    """A Python that sleeps, started as the benchmark starts `arbot run`, from a process that ignores SIGINT (as a
    benchmark run under `nohup ... &` does)."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True, preexec_fn=preexec)
    finally:
        signal.signal(signal.SIGINT, before)
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_campaign_started_in_the_background_is_interrupted_by_sigint():
    proc = started(bench.heed_interrupts)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in err


def test_without_it_the_inherited_ignored_sigint_is_not_heard():
    """The failure heed_interrupts prevents: the child keeps running after SIGINT (the trial campaign ran past its
    stop allowance this way)."""
    proc = started(None)
    try:
        proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.communicate(timeout=3)
    finally:
        proc.kill()
        proc.communicate()


def test_the_summary_gives_a_t_interval_and_the_share_of_audited_promotions_not_replicated():
    """A promotion whose audit runs failed (no test) counts neither as replicated nor as not."""
    rows = [{"per_runner_hour": v, "promotions": p, "not_replicated": n, "unaudited": u}
            for v, p, n, u in ((1.0, 2, 0, 0), (2.0, 4, 1, 1), (3.0, 0, 0, 0))]
    summary = bench.summarize("greedy", rows)
    half = 4.302653 * 1.0 / 3 ** 0.5  # t(2, 0.975) x sd / sqrt(n)
    assert summary["per_runner_hour"] == 2.0 and summary["campaigns"] == 3
    assert summary["interval"] == f"{2 - half:.4f} .. {2 + half:.4f}"
    assert summary["not_replicated_share"] == 0.2 and summary["unaudited"] == 1
    none = [{"per_runner_hour": 1.0, "promotions": 1, "not_replicated": 0, "unaudited": 1}]
    assert bench.summarize("arbot", none)["not_replicated_share"] is None


def test_a_campaigns_audits_count_failed_replications_apart_from_untested_ones():
    audit = AuditRecord(runs=2, seeds=[1000, 1001], candidate=[], baseline=[])
    audits = [audit.model_copy(update=u) for u in ({"effect": 0.1, "replicates": True},
                                                     {"effect": -0.01, "replicates": False}, {"replicates": False})]
    assert bench.replication(audits) == {"not_replicated": 1, "unaudited": 1, "audit_effects": [0.1, -0.01, None],
                                         "audit_replicated": [True, False, None]}
    assert bench.replication(None) == {"not_replicated": None, "unaudited": None, "audit_effects": [],
                                       "audit_replicated": []}


def test_a_strategy_left_unaudited_counts_no_replication_either_way():
    rows = [{"per_runner_hour": 1.0, "promotions": 3, "not_replicated": None, "unaudited": None}]
    summary = bench.summarize("greedy", rows)
    assert summary["not_replicated_share"] is None and summary["unaudited"] is None


def test_a_strategys_share_of_greedy_is_the_ratio_of_means_and_campaign_by_campaign():
    rows = [{"strategy": s, "campaign": k, "per_runner_hour": v}
            for s, k, v in (("greedy", 0, 4.0), ("greedy", 1, 8.0), ("bayes", 0, 4.0), ("bayes", 1, 2.0),
                            ("bayes", 2, 9.0))]  # bayes's third campaign has no greedy one to pair with
    shares = bench.shares_of("greedy", "bayes", rows)
    assert shares == {"share_of_greedy": 0.5, "campaign_shares": [1.0, 0.25]}
    assert bench.shares_of("greedy", "greedy", rows)["share_of_greedy"] == 1.0
    assert bench.shares_of("greedy", "arbot", rows) == {"share_of_greedy": None, "campaign_shares": []}


class DriftingProject:
    """A project whose every run scores `LOAD_DRIFT` worse than the one before (load rising: fewer steps a run),
    on top of its commit's true value; fakes only the runner and the metric the benchmark reads."""

    LOAD_DRIFT = 0.05

    def __init__(self, values: dict[str, float]):
        self.values, self.calls = values, []
        self.runner, self.config = self, self

    metric = DEFAULT_METRIC

    def run(self, commit: str, champion: str, seed: int) -> RunResult:
        self.calls.append((commit, seed))
        value = self.values[commit] + self.LOAD_DRIFT * len(self.calls)
        return RunResult(status="ok", commit=commit, champion=champion, seed=seed, metrics={"val_bpb": value})


def test_the_start_and_the_final_champion_are_measured_seed_by_seed_under_the_same_load():
    project = DriftingProject({"start": 4.0, "final": 3.5})
    start, final = bench.start_and_final(project, "start", "final", 3)
    seeds = [bench.FRESH_SEED + i for i in range(3)]
    assert project.calls == [(c, s) for s in seeds for c in ("start", "final")]
    improvement = sum(start) / 3 - sum(final) / 3
    assert improvement == pytest.approx(0.5 - DriftingProject.LOAD_DRIFT)  # the drift of one run, not of the campaign


def test_a_campaign_that_promoted_nothing_costs_no_runs():
    project = DriftingProject({"start": 4.0})
    assert bench.start_and_final(project, "start", "start", 3) == ([], [])
    assert project.calls == []


def test_a_failed_fresh_run_names_the_commit_and_why():
    class Failing(DriftingProject):
        def run(self, commit, champion, seed):
            if commit == "final":
                return RunResult(status="crash", commit=commit, champion=champion, seed=seed, reason="out of memory")
            return super().run(commit, champion, seed)

    with pytest.raises(SystemExit, match="a fresh run of final failed \\(crash\\): out of memory"):
        bench.start_and_final(Failing({"start": 4.0}), "start", "final", 2)


def test_each_repeat_proposes_its_own_sequence_and_every_strategy_the_same():
    """Campaign k runs with search seed k for every strategy (one seed for all made the repeats begin alike)."""
    for name, settings in bench.STRATEGIES.items():
        first, second = (bench.campaign_settings(settings, k, 5.0, 2) for k in (0, 1))
        assert (first["search"]["seed"], second["search"]["seed"]) == (0, 1), name
        assert first["target"]["budget_seconds"] == 5.0 and first["run"]["workers"] == 2
        assert {k: v for k, v in first["search"].items() if k != "seed"} == settings.get("search", {})
        assert first["policy"] == settings["policy"] if "policy" in settings else "policy" not in first
    assert bench.campaign_settings(bench.STRATEGIES["greedy"], 0, 5.0, 1)["target"]["holdout_max_gap"] is None


def test_an_unknown_strategy_is_refused_before_any_campaign_runs():
    proc = subprocess.run([sys.executable, "benchmarks/yield.py", "--strategies", "bayes,greedy", "--audit", "bayse"],
                          capture_output=True, text=True, timeout=60, cwd=bench.ROOT)
    assert proc.returncode == 2 and "no strategy bayse: choose from arbot, bayes, greedy, random" in proc.stderr


def test_a_keep_folder_that_exists_is_refused_before_any_campaign_runs(tmp_path):
    """Campaign k's repositories go to DIR/k/STRATEGY: an existing folder would mix two benchmarks' records."""
    proc = subprocess.run([sys.executable, "benchmarks/yield.py", "--strategies", "bayes", "--keep", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=bench.ROOT)
    assert proc.returncode == 2 and f"--keep {tmp_path} exists: name a folder that does not" in proc.stderr
    assert list(tmp_path.iterdir()) == []

"""Replication audit and rollback of merged wins.

`audit_win` re-runs a merged win and the champion it was measured against with fresh seeds (never the seeds
that decided it) and tests whether the improvement replicates. The share of audited wins that do not is the
regression rate. `revert_win` rolls a win back through the same path it came in: a commit on `champion`
with trailers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from statistics import mean

from bot.forges.local import LocalForge
from bot.core.records import AuditRecord, ExperimentRecord, Metric, RunResult, ok_metric, oriented
from runner.job import Runner, champion_timing

AUDIT_SEED_OFFSET = 1000  # replication seeds: disjoint from the seeds any decision used
REPORT_SEED_OFFSET = 5000  # `arbot report`'s re-measurement: disjoint from decisions and from 4000 audit runs
CONFIDENCE = 0.95  # of the intervals of re-measured effects: each audit's and the report's improvement


def audit_win(forge: LocalForge, runner: Runner, rec: ExperimentRecord, runs: int, alpha: float, metric: Metric,
              at: str, on_run=None, beside: Runner | None = None) -> AuditRecord:
    """Re-measure a merged win against its parent with `runs` fresh seeds each (`beside`: see `remeasure`); save
    the audit in its note."""
    if rec.merged_as is None:
        raise ValueError(f"{rec.id} was not merged; only wins are audited")
    first = AUDIT_SEED_OFFSET + sum(a.runs for a in rec.audits)
    # Both sides scored by the evaluator of the parent, as the original decision was.
    audit = remeasure(runner, rec.commit, rec.parent, rec.parent, list(range(first, first + runs)), alpha, metric,
                      at, on_run, label=rec.id, recorded=forge.champion_record(rec.parent).runs, beside=beside)
    rec.audits.append(audit)
    forge.save(rec)
    return audit


def remeasure(runner: Runner, candidate: str, baseline: str, evaluator: str, seeds: list[int], alpha: float,
              metric: Metric, at: str, on_run=None, label: str = "candidate",
              recorded: list[RunResult] = (), beside: Runner | None = None) -> AuditRecord:
    """`candidate` and `baseline` trained at each of `seeds` and scored by `evaluator`'s evaluator; the effect
    (positive: the candidate is better) and its one-sided t-test. A commit other than `evaluator` is held to the
    evaluator commit's measured times: its `recorded` runs and those of it made here.

    `beside`: a second runner (another worker's share of the machine) on which each seed's baseline trains while
    the candidate trains on `runner`. A campaign of two or more workers made every run beside another, and a
    time-budgeted run made alone gets more steps: on the 2-core machine the starting champion measures 4.15-4.20
    bpb beside another run and 3.64 alone, and a change whose value depends on its step count measures
    differently (docs/policy.md, round 8). None: one run after the other on `runner`."""
    hook = on_run or (lambda label, commit, seed: None)
    cand, base = [], []
    own = list(recorded)
    for seed in seeds:
        timing = champion_timing(own, runner.target.budget_seconds)

        def make(on: Runner, commit: str, name: str) -> RunResult:
            return on.run(commit, evaluator, seed=seed, on_progress=hook(name, commit, seed), timing=timing)

        if beside is None:
            cand.append(make(runner, candidate, label))
            base.append(make(runner, baseline, "baseline"))
        else:
            with ThreadPoolExecutor(max_workers=1) as other:
                baseline_run = other.submit(make, beside, baseline, "baseline")
                cand.append(make(runner, candidate, label))
                base.append(baseline_run.result())
        own += [run for run, commit in ((cand[-1], candidate), (base[-1], baseline)) if commit == evaluator]
    c, b = ok_metric(cand, metric.key()), ok_metric(base, metric.key())
    audit = AuditRecord(runs=len(seeds), seeds=seeds, candidate=c, baseline=b, at=at)
    if len(c) >= 2 and len(b) >= 2:
        oc, ob = oriented(c, metric.direction), oriented(b, metric.direction)  # lower is better
        audit.effect = mean(ob) - mean(oc)
        from scipy import stats  # imported here: scipy.stats costs most of every `arbot` command's start-up

        audit.p_value = float(stats.ttest_ind(oc, ob, alternative="less").pvalue)
        audit.replicates = audit.effect > 0 and audit.p_value < alpha
    else:
        audit.replicates = False
        audit.note = f"too few successful runs to test ({len(c)} candidate, {len(b)} baseline)"
    return audit


def effect_interval(audit: AuditRecord, metric: Metric) -> tuple[float, float] | None:
    """The two-sided CONFIDENCE interval of an audit's effect (positive: better), from the pooled t its p-value comes
    from; None where it was not tested. It tells an audit that refutes a win (the interval below 0) from one too
    small to tell (the interval across 0): both "do not replicate"."""
    if audit.effect is None:
        return None
    from scipy import stats

    ci = stats.ttest_ind(oriented(audit.baseline, metric.direction),
                         oriented(audit.candidate, metric.direction)).confidence_interval(CONFIDENCE)
    return float(ci.low), float(ci.high)


def audit_summary(audit: AuditRecord, metric: Metric) -> str:
    """An audit's numbers as `arbot audit` prints them and `arbot report` quotes them."""
    interval = effect_interval(audit, metric)
    if interval is None:
        return f"{audit.note}; seeds {audit.seeds}"
    return (f"effect {audit.effect:+.4f}, {CONFIDENCE:.0%} interval {interval[0]:+.4f}..{interval[1]:+.4f}, "
            f"p={audit.p_value:.3g}; seeds {audit.seeds}")


def regression_rate(records: list[ExperimentRecord]) -> tuple[float | None, int]:
    """(share of audited wins whose latest audit did not replicate, number of audited wins)."""
    audited = [r for r in records if r.audits]
    if not audited:
        return None, 0
    return sum(not r.audits[-1].replicates for r in audited) / len(audited), len(audited)


def revert_win(forge: LocalForge, rec: ExperimentRecord, reason: str) -> str:
    """Undo a merged win on champion with a commit whose trailers say what was reverted and why."""
    if rec.merged_as is None:
        raise ValueError(f"{rec.id} was never merged into {forge.champion_branch}; nothing to revert")
    if rec.reverted_as is not None:
        raise ValueError(f"{rec.id} was already reverted by {rec.reverted_as[:12]}")
    trailers = {"Experiment": rec.id, "Reverts": rec.merged_as, "Reason": reason.replace("\n", " ")}
    sha = forge.revert(rec, f"arbot: revert {rec.id}: {rec.proposal.hypothesis}", trailers)
    rec.reverted_as = sha
    forge.save(rec)
    return sha

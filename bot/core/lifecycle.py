"""The experiment lifecycle, written once: one experiment's records in, the next action out.

No I/O, no git, no clock. The stepper (bot.stepper), in every mode, gathers the records, calls `next_action`,
carries out what it says and stores the result, then asks again:

    Run(specs)      train and score these (candidate or champion, seed, splits); the results join the records
    Wait            runs asked for earlier are still in flight: an experiment is advanced only once every run its
                    request asked for is in, and decided only once no champion run asked for is in flight either,
                    never on the part that arrived first
    Defer(ahead)    past its screen, but another experiment on the same champion is being confirmed first
                    (`ahead_of`): its further runs wait, so two promising changes are not confirmed at once
                    only for one of them to go stale when the other wins
    Decide          the policy reached a final decision: record it (with the evidence and any review hold)
    Replay(onto)    the champion moved before this experiment was merged: close it as `stale`, measure its
                    change again on the new champion (`stale_decision` says why). A screen in flight finishes
                    on the old champion first, and a loss it shows there stands (`_champion_moved`)
    Hold            a win whose diff was flagged waits for a human (`arbot approve`, `/arbot approve`)
    Promote         merge the win, with exactly these trailers
    Close           a final non-win: keep the record, close the experiment (PR)
    Done            merged: nothing left to do
    (Decide rejected, rule `tampered`, when the branch or PR no longer holds the experiment's commit)
    ChampionFails   the champion itself does not train: nothing can be compared against it

The evidence is the val runs only: a holdout confirmation run (seeded from HOLDOUT_SEEDS, scored on val+holdout)
checks a win, it never moves the noise floor or the mean a decision is made on. Where wins are confirmed on holdout
a champion's val runs are scored on it too (`champion_splits`): their gaps are the references a win is held to.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Literal

from scipy import special

from bot.core.bayes import learn
from bot.core.policy import Policy
from bot.core.records import (DEFAULT_METRIC, HOLDOUT, HOLDOUT_SEEDS, VAL, CampaignPrior, ChampionRecord, Decision, Evidence,
                         ExperimentRecord, Metric, RunResult, RunSpec, is_confirmation, ok_metric, ok_runs, ok_seeds,
                         sign, val_runs)
from runner.config import TargetConfig

MAX_REFUSED = 5  # proposals refused in a row (no branch made) before an executor stops proposing
HOLDOUT_FAILURES = 2  # failed champion holdout runs before a win on that champion is rejected for want of a reference
HOLDOUT_REFERENCE_RUNS = 3  # champion holdout runs whose gaps' spread sets the limit (holdout_max_gap: auto)
HOLDOUT_FALSE_REJECT = 0.01  # auto: the chance an honest win, its gap drawn as the champion's are, is rejected
HOLDOUT_MIN_GAP = 0.02  # auto: the least limit. An honest win's gap differs from a much weaker champion's by about
# 1% (the tiny model of tests/test_loop.py), more than the tiny model's seeds move it (0.1%)
CHAMPION_FAILURES = 2  # failed champion runs before the champion itself is said to fail (one may be the machine's)


@dataclass(frozen=True)
class Rules:
    """What decides, besides the records: the policy, the target's holds and the metric."""

    policy: Policy
    review_flagged: bool = True
    holdout_max_gap: float | Literal["auto"] | None = TargetConfig.model_fields["holdout_max_gap"].default
    metric: Metric = DEFAULT_METRIC
    campaign: CampaignPrior | None = None  # what a policy that learns knows from the campaign (`learned`)

    @classmethod
    def of(cls, policy: Policy, target: TargetConfig, metric: Metric) -> Rules:
        return cls(policy, target.review_flagged, target.holdout_max_gap, metric)


def learned(rules: Rules, experiments: list[ExperimentRecord]) -> Rules:
    """The rules with what a policy that learns (`bayes`) knows from the campaign's decided experiments (oldest
    first, each with the evidence it was decided on; a stale or tampered one measured nothing new)."""
    if not getattr(rules.policy, "learns", False):
        return rules
    history = [(r.evidence, r.decision) for r in sorted(experiments, key=lambda r: r.number)
               if r.decision is not None and r.evidence is not None and r.decision.rule not in ("stale", "tampered")]
    return replace(rules, campaign=learn(history))


# --- actions ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    specs: tuple[RunSpec, ...]
    why: str


@dataclass(frozen=True)
class Wait:
    why: str


@dataclass(frozen=True)
class Defer:
    ahead: str
    why: str


@dataclass(frozen=True)
class Decide:
    decision: Decision
    evidence: Evidence
    review: str | None = None  # "needed": a flagged win, held for a human


@dataclass(frozen=True)
class Replay:
    onto: str  # the current champion


@dataclass(frozen=True)
class Hold:
    why: str


@dataclass(frozen=True)
class Promote:
    trailers: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class Close:
    decision: Decision


@dataclass(frozen=True)
class Done:
    merged_as: str


@dataclass(frozen=True)
class ChampionFails:
    reason: str


Action = Run | Wait | Defer | Decide | Replay | Hold | Promote | Close | Done | ChampionFails
FINISHED = (Hold, Close, Done)  # what an executor stops at: the experiment needs nothing more from it


# --- the one function ---------------------------------------------------------------------------------------
def next_action(exp: ExperimentRecord, champion: ChampionRecord, current: str, rules: Rules,
                removes_code: bool = False, tampered: str | None = None, ahead: str | None = None) -> Action:
    """The next step of `exp`. `champion` is the record of the champion it is measured on (exp.parent);
    `current` the champion branch's sha now; `removes_code` whether its change deletes lines on net;
    `tampered` why its branch (or PR) is no longer the experiment's commit, when it is not; `ahead` the experiment
    being confirmed on the same champion before it (`ahead_of`), if any."""
    if exp.merged_as:
        return Done(exp.merged_as)
    if tampered and (exp.decision is None or exp.decision.verdict == "win"):
        return Decide(Decision(verdict="rejected", rule="tampered", reason=(
            f"{tampered}: what would be merged is not what was measured, so nothing measured counts")),
            evidence(exp, champion, rules.metric, removes_code, rules.campaign))
    if exp.decision is not None:
        if exp.decision.verdict != "win":
            return Close(exp.decision)
        if exp.parent != current:
            return Replay(current)
        if exp.review == "needed":
            return Hold(f"{exp.id} is a win held for human review: {exp.decision.reason}")
        return Promote(trailers(exp, exp.decision, rules.metric))
    if exp.parent != current:
        return _champion_moved(exp, champion, current, rules, removes_code)
    if (floor := noise_floor(champion, rules)) is not None:
        return floor
    if mine := _pending(exp):
        return Wait(f"{mine} of {exp.id}'s runs are in flight: it is decided on every run its request asked for")
    ev = evidence(exp, champion, rules.metric, removes_code, rules.campaign)
    decision = rules.policy.decide(ev)
    if not decision.final:
        if ahead is not None and val_runs(exp.runs):
            return Defer(ahead, f"{exp.id} passed its screen; {ahead} is being confirmed on this champion first "
                         f"(were both confirmed, a win of one would leave the other's runs for nothing)")
        return _more_runs(exp, champion, decision, rules)
    if theirs := _pending(champion):
        return Wait(f"{theirs} champion run(s) asked for are in flight: the decision waits for them")
    if decision.verdict == "win" and rules.holdout_max_gap is not None:
        confirmed = _confirm_holdout(exp, champion, decision, rules.holdout_max_gap, rules.metric)
        if not isinstance(confirmed, Decision):
            return confirmed
        decision = confirmed
    decision, review = hold_flagged(decision, exp.runs, rules.review_flagged)
    return Decide(decision, ev, review)


# --- the pieces, each pure ---------------------------------------------------------------------------------
def noise_floor(champion: ChampionRecord, rules: Rules) -> Run | ChampionFails | None:
    """The champion runs its noise floor still needs (the policy's baseline), or None when it has them. A failed
    champion run counts for nothing and is made again with another seed (the machine may have failed: a
    concurrent run, load); the champion fails only when CHAMPION_FAILURES of its runs have."""
    failed = [r for r in val_runs(champion.runs) if not r.ok]
    if len(failed) >= CHAMPION_FAILURES:
        last = failed[-1]
        return ChampionFails(
            f"the champion {champion.commit[:12]} itself fails: {len(failed)} of its runs failed, the last "
            f"({last.status}): {last.reason}\n{last.log_tail}\nNothing can be compared against it. Fix what fails "
            f"(`arbot log` shows each run) and commit the fix on your branch: while the champion has no merged win, "
            f"the next `arbot run` moves it there; after one, `arbot adopt <branch>` merges the fix in; `arbot "
            f"doctor` checks it")
    missing = rules.policy.baseline_runs - len(ok_metric(champion.runs, rules.metric.key())) - _pending(champion)
    if missing > 0:
        return Run(_specs(champion, "champion", missing, champion_splits(rules)),
                   f"the champion's noise floor needs {missing} more runs")
    return None


def _champion_moved(exp: ExperimentRecord, champion: ChampionRecord, current: str, rules: Rules,
                    removes_code: bool) -> Wait | Decide | Replay:
    """An undecided experiment whose champion moved. Nothing is merged or decided on an old champion but a loss:
    a screen in flight (its first runs) finishes there, and a loss or crash it shows stands, decided against the
    champion it was measured on as it would have been had it run first (most experiments end at their screen, so
    measuring them again would cost runs to learn little). Anything else, an experiment past its screen included,
    is measured again on the new champion at once."""
    if not val_runs(exp.runs) and _pending(exp):
        return Wait(f"the champion moved to {current[:12]}; {exp.id}'s screen in flight finishes on "
                    f"{exp.parent[:12]}, where a loss still stands")
    ev = evidence(exp, champion, rules.metric, removes_code, rules.campaign)
    decision = rules.policy.decide(ev)
    if decision.final and decision.verdict != "win":
        return Decide(decision.model_copy(update={"reason": (
            f"{decision.reason} (measured on {exp.parent[:12]}, the champion it was proposed on; the champion has "
            f"since moved to {current[:12]})")}), ev)
    return Replay(current)


def ahead_of(exp: ExperimentRecord, active: list[ExperimentRecord]) -> str | None:
    """The experiment on exp's champion that is confirmed before it, if any: undecided and past its screen, and
    either asking for its further runs already or past its screen with a lower number. An experiment that asks
    for its further runs itself has none ahead: it is never stopped half way."""
    if _confirming(exp):
        return None
    rivals = [r for r in active
              if r.id != exp.id and r.parent == exp.parent and r.decision is None and val_runs(r.runs)]
    first = [r for r in rivals if _confirming(r)] or [r for r in rivals if r.number < exp.number]
    return min(first, key=lambda r: r.number).id if first else None


def _confirming(exp: ExperimentRecord) -> bool:
    """Past its screen and asking for more: more than one val run made, or one made and more in flight."""
    made = len(val_runs(exp.runs))
    return made > 1 or (made == 1 and _pending(exp) > 0)


def deferred(exp: ExperimentRecord, active: list[ExperimentRecord]) -> bool:
    """Whether `exp` is one `Defer` holds: past its screen, nothing in flight, another ahead of it."""
    return exp.decision is None and bool(val_runs(exp.runs)) and not exp.pending and ahead_of(exp, active) is not None


def has_room(experiments: list[ExperimentRecord], slots: int) -> bool:
    """Whether an executor with `slots` workers (or runners) may open another experiment: fewer than `slots`
    undecided ones hold one (a deferred one holds none, so another is screened in its place), and fewer than
    twice that are open."""
    undecided = [r for r in experiments if r.decision is None]
    working = [r for r in undecided if not deferred(r, undecided)]
    return len(working) < slots and len(undecided) < 2 * slots


def floor_met(champion: ChampionRecord, rules: Rules) -> bool:
    """Whether the champion has the val runs its noise floor needs (made, not only asked for)."""
    return len(ok_metric(champion.runs, rules.metric.key())) >= rules.policy.baseline_runs


def evidence(exp: ExperimentRecord, champion: ChampionRecord, metric: Metric, removes_code: bool = False,
             campaign: CampaignPrior | None = None) -> Evidence:
    runs = val_runs(exp.runs)
    failed = _failed_run(runs)
    key = metric.key()
    return Evidence(metric=key, direction=metric.direction, champion=ok_metric(champion.runs, key),
                    candidate=ok_metric(exp.runs, key), champion_seeds=ok_seeds(champion.runs, key),
                    candidate_seeds=ok_seeds(exp.runs, key), champion_inherited=inherited(champion, key),
                    candidate_status=failed.status if failed else "ok",
                    candidate_reason=failed.reason if failed else "", removes_code=removes_code, campaign=campaign)


def inherited(champion: ChampionRecord, key: str) -> int:
    """How many of the champion's ok val runs it inherited from the win that made it (`champion_after`): they were
    made as the candidate's, of the candidate's commit, not of the merge the champion is."""
    if not champion.experiment:
        return 0
    return sum(1 for r in ok_runs(champion.runs, key) if r.commit != champion.commit)


def _failed_run(runs: list[RunResult]) -> RunResult | None:
    return next((r for r in runs if not r.ok), None)


def champion_splits(rules: Rules) -> tuple[str, ...]:
    """What a champion's val runs are scored on: holdout too where wins are confirmed on it, so that the champion's
    gaps a confirmation is held to come with the runs it makes anyway (its val seeds and values are the same)."""
    return (VAL,) if rules.holdout_max_gap is None else (VAL, HOLDOUT)


def _pending(rec: ExperimentRecord | ChampionRecord, confirmation: bool = False) -> int:
    """rec's runs in flight: its val runs, or its holdout confirmations."""
    return sum(1 for s in rec.pending if is_confirmation(s) == confirmation)


def _specs(rec: ExperimentRecord | ChampionRecord, role: str, n: int, splits: tuple[str, ...],
           confirmation: bool = False) -> tuple[RunSpec, ...]:
    """`n` new runs of rec's commit. Val seeds count 0, 1, 2, ... after the val runs made or asked for, and holdout
    confirmations count from HOLDOUT_SEEDS after theirs, so a confirmation consumes no val seed: a candidate's k-th
    val run and its champion's share seed k (a failed run keeps its seed; none repeats)."""
    champion = rec.parent if isinstance(rec, ExperimentRecord) else rec.commit
    used = [x.seed for x in [*rec.runs, *rec.pending] if is_confirmation(x) == confirmation]
    first = max(used + [HOLDOUT_SEEDS - 1 if confirmation else -1]) + 1
    return tuple(RunSpec(role=role, commit=rec.commit, champion=champion, seed=first + i, splits=list(splits))
                 for i in range(n))


def _more_runs(exp: ExperimentRecord, champion: ChampionRecord, decision: Decision, rules: Rules) -> Run | Wait:
    """The runs the policy asked for, less the champion's already in flight (the experiment has none: it waits
    for its own). While the champion runs it waits for are in flight, an experiment not screened yet has its
    screen run made beside them once the champion has a run made (a candidate is held to the champion's times,
    known from its runs): every rule decides on at least one candidate run, and workers do not idle until the
    noise floor is in."""
    if decision.more_candidate_runs + decision.more_champion_runs == 0:
        raise ValueError(f"the policy asked for more runs but named none: {decision}")
    champ = decision.more_champion_runs - _pending(champion)
    timed = any(r.ok for r in val_runs(champion.runs))
    cand = decision.more_candidate_runs or int(not val_runs(exp.runs) and champ <= 0 and timed)
    specs = _specs(champion, "champion", max(champ, 0), champion_splits(rules)) + _specs(exp, exp.id, cand, (VAL,))
    return Run(specs, decision.reason) if specs else Wait(f"{len(champion.pending)} champion runs in flight")


def holdout_gap(run: RunResult, metric: Metric) -> float | None:
    """(holdout - val) / |val| of one run's metric: very stable across seeds of one model, so a candidate whose gap
    departs much from the champion's fits val better than unseen data (it has likely seen val), or holdout."""
    m, val, holdout = run.metrics, metric.key(VAL), metric.key(HOLDOUT)
    if run.ok and holdout in m and m.get(val, 0) != 0:
        return (m[holdout] - m[val]) / abs(m[val])
    return None


def holdout_limit(reference: list[float], max_gap: float | Literal["auto"]) -> tuple[float, str]:
    """How far a win's holdout gap may depart from the mean of the champion's gaps `reference`, and why. A number is
    that limit. `auto` sets it from the champion's own spread: an honest candidate's gap is drawn as the champion's
    are, so (gap - mean) / (sd * sqrt(1 + 1/n)) is Student's t on n - 1 degrees of freedom, and the limit is its
    two-sided 1 - HOLDOUT_FALSE_REJECT quantile (at least HOLDOUT_MIN_GAP)."""
    if max_gap != "auto":
        return max_gap, f"limit {max_gap:g} either way"
    n, sd = len(reference), statistics.stdev(reference)
    t = float(special.stdtrit(n - 1, 1 - HOLDOUT_FALSE_REJECT / 2))
    limit = max(HOLDOUT_MIN_GAP, t * sd * math.sqrt(1 + 1 / n))
    return limit, (f"limit {limit:.4f} either way: {t:.3g} x the sd {sd:.4f} of the champion's {n} gaps x "
                   f"sqrt(1 + 1/{n}), an honest win's gap departs further {HOLDOUT_FALSE_REJECT:.0%} of the time")


def _confirm_holdout(exp: ExperimentRecord, champion: ChampionRecord, win: Decision, max_gap: float | Literal["auto"],
                     metric: Metric) -> Decision | Run | Wait:
    """A win is confirmed by one candidate run scored on val and holdout, against the champion's gaps: one for a
    fixed `max_gap`, HOLDOUT_REFERENCE_RUNS for `auto`. The gaps are those of every champion run scored on holdout:
    its val runs (`champion_splits`), a promoted win's confirmation run, and the confirmations made for a win where
    those are too few (a failed one is made again, up to HOLDOUT_FAILURES). Returns the confirmed or rejected
    decision, or the runs still needed."""
    both = (VAL, HOLDOUT)
    reference = [g for r in champion.runs if (g := holdout_gap(r, metric)) is not None]
    failed = sum(1 for r in champion.runs if is_confirmation(r) and holdout_gap(r, metric) is None)
    need = 1 if max_gap != "auto" else HOLDOUT_REFERENCE_RUNS
    short = need - len(reference) - _pending(champion, confirmation=True)
    more = short if short > 0 and failed < HOLDOUT_FAILURES else 0
    confirm = [r for r in exp.runs if is_confirmation(r)]
    specs = (_specs(champion, "champion", more, both, confirmation=True)
             + (_specs(exp, exp.id, 1, both, confirmation=True)
                if not confirm and not _pending(exp, confirmation=True) else ()))
    if specs:
        return Run(specs, f"confirming the win on holdout: {win.reason}")
    if not confirm or _pending(champion, confirmation=True):
        return Wait("the holdout confirmation is in flight")
    gap = holdout_gap(confirm[-1], metric)
    if gap is None or len(reference) < need:
        why = (confirm[-1].reason if not confirm[-1].ok else
               f"the champion's holdout could not be measured ({len(reference)} of {need} reference runs)")
        return win.model_copy(update={"verdict": "rejected", "rule": "holdout_gap",
                                      "reason": f"the holdout confirmation run failed: {why}"})
    excess = gap - statistics.fmean(reference)
    limit, why = holdout_limit(reference, max_gap)
    if abs(excess) > limit:
        side = "more" if excess > 0 else "less"
        # a relatively worse holdout (higher when minimizing) means the candidate fits val better
        seen, other = ("val", "holdout") if sign(metric.direction) * excess > 0 else ("holdout", "val")
        val, holdout = metric.key(VAL), metric.key(HOLDOUT)
        return win.model_copy(update={"verdict": "rejected", "rule": "holdout_gap", "reason": (
            f"holdout confirmation: ({holdout} - {val}) / {val} is {gap:+.4f}, {abs(excess):.4f} {side} "
            f"than the champion's ({why}); the candidate fits {seen} better than {other}, so "
            f"it has likely seen {seen}. Was: {win.reason}")})
    return win.model_copy(update={"reason": f"{win.reason}; holdout confirmed (gap excess {excess:+.4f}, {why})"})


def hold_flagged(decision: Decision, runs: list[RunResult], review_flagged: bool) -> tuple[Decision, str | None]:
    """A win whose runs carry diff-inspection flags is held for a human (review "needed") when the target asks
    for it; the verdict stands."""
    flags = sorted({f.split(":", 1)[0] for r in runs for f in r.flags})
    if decision.verdict != "win" or not flags or not review_flagged:
        return decision, None
    return decision.model_copy(update={
        "reason": f"{decision.reason}; held for human review, the diff touches: {', '.join(flags)}"}), "needed"


def stale_decision(stale: ExperimentRecord, champion: str, fresh_id: str | None) -> Decision:
    """Why `stale` closes: a decision holds only against the champion it was measured on."""
    if fresh_id:
        again = f"measured again as {fresh_id}"
    elif stale.pr is not None:
        again = f"rebase PR #{stale.pr} onto {champion[:12]}: its next head is measured again"
    else:
        again = "its change conflicts with the new champion"
    return Decision(verdict="rejected", rule="stale", reason=(
        f"champion moved from {stale.parent[:12]} to {champion[:12]} before this was merged; {again}"))


def trailers(exp: ExperimentRecord, decision: Decision, metric: Metric) -> dict[str, str]:
    """The audit trail of a win, as git trailers on its merge commit (GitHub mode adds `PR:`)."""
    m, fmt = decision.metric or metric.key(), metric.fmt
    fingerprint = next((r.evaluator_fingerprint for r in exp.runs if r.evaluator_fingerprint), None)
    out = {
        "Experiment": exp.id,
        "Metric": f"{m}={fmt(decision.candidate_mean)}",
        "Baseline": f"{m}={fmt(decision.champion_mean)}",
        "Delta": fmt(decision.delta, signed=True),
        "Runs": f"{decision.candidate_runs} candidate, {decision.champion_runs} champion",
        "Rule": decision.rule + (f" (p={decision.p_value:.3g})" if decision.p_value is not None else ""),
        "Proposer": exp.proposal.proposer,
        "Evaluator": fingerprint or "unknown",
        "Seeds": ",".join(str(r.seed) for r in exp.runs),
    }
    cost = exp.proposal.cost
    if cost.usd or cost.prompt_tokens:
        out["Cost"] = f"{cost.prompt_tokens + cost.completion_tokens} tokens, ${cost.usd:.4f}"
    return out


def champion_after(exp: ExperimentRecord, merge: str) -> ChampionRecord:
    """The record of the champion a win's merge made: its tree is the candidate's, so the candidate's runs
    measure it, with their seeds (its next val run is seed k for the k val runs it inherits, as a candidate's)."""
    return ChampionRecord(commit=merge, experiment=exp.id, runs=exp.runs)


def is_active(exp: ExperimentRecord) -> bool:
    """Undecided, or a win not merged yet that no human is asked to look at: an executor still owes it work."""
    if exp.decision is None:
        return True
    return exp.decision.verdict == "win" and not exp.merged_as and exp.review != "needed"


"""The experiment lifecycle (bot.core.lifecycle) as a table: hand-built records in, the one next action out.

No git, no runner, no I/O: every situation is a pair of records (the experiment and the champion it is measured
on) with scripted run results, and the numbers are chosen so that the named rule of the policy really fires.

The noise-aware policy below uses the defaults of PolicyConfig: baseline_runs 3, alpha 0.02 spent as
alpha * ((n-1)/5)**2 over max_candidate_runs 6 (so 0.0008 at look 2, 0.0024 at look 3, 0.0072 at look 6),
screen_bar 1 (a first run must beat the champion mean by more than one sd), champion_lead 1 (a promising candidate
asks for champion runs up to its own count + 1), futility_sigmas 1, pooled t-test, simplification within 0.5 sigma
after 3 runs.
The champion's val runs are 3.00, 3.02, 3.04: mean 3.02, sd 0.02.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core import lifecycle as lc
from bot.core.policy import MarginPolicy, NoiseAwarePolicy, PolicyConfig
from bot.core.records import (DEFAULT_METRIC, ChampionRecord, Cost, Decision, ExperimentRecord, Metric, Proposal, RunResult,
                         RunSpec)
from runner.config import TargetConfig

CHAMP = "c" * 40  # the champion the experiment was measured on
NEWER = "f" * 40  # a later champion
CAND = "e" * 40  # the experiment's commit
EXP = "exp-7"
NOISE = NoiseAwarePolicy(PolicyConfig())
RULES = lc.Rules(NOISE, holdout_max_gap=0.01)  # review_flagged=True; the table's gaps are set against 0.01
FLAG = "timing: target/train.py: time.perf_counter = lambda: 0"
H = lc.HOLDOUT_SEEDS  # the first holdout seed
CH = ("val", "holdout")  # a champion's val runs, where wins are confirmed on holdout (RULES): scored on both


# --- records ------------------------------------------------------------------------------------------------
def run(val: float | None, seed: int, commit: str = CAND, holdout: float | None = None, status: str = "ok",
        reason: str = "", flags: tuple[str, ...] = (), fingerprint: str | None = "fp-1") -> RunResult:
    """One run: val only, or val + holdout when `holdout` is given (a holdout confirmation run)."""
    metrics = {} if val is None else {"val_bpb": val}
    splits = ["val"]
    if holdout is not None:
        metrics["holdout_bpb"] = holdout
        splits = ["val", "holdout"]
    return RunResult(status=status, commit=commit, champion=CHAMP, seed=seed, metrics=metrics, reason=reason,
                     flags=list(flags), splits=splits, evaluator_fingerprint=fingerprint)


def cand_runs(*vals: float, flags: tuple[str, ...] = ()) -> list[RunResult]:
    return [run(v, i, flags=flags) for i, v in enumerate(vals)]


def spec(role: str, commit: str, seed: int, splits: tuple[str, ...] = ("val",)) -> RunSpec:
    return RunSpec(role=role, commit=commit, champion=CHAMP, seed=seed, splits=list(splits))


def champion(*vals: float, extra: tuple[RunResult, ...] = (), pending: tuple[RunSpec, ...] = ()) -> ChampionRecord:
    runs = [run(v, i, commit=CHAMP) for i, v in enumerate(vals)] + list(extra)
    return ChampionRecord(commit=CHAMP, runs=runs, pending=list(pending))


def champ_holdout(val: float = 3.00, holdout: float = 3.03, seed: int = lc.HOLDOUT_SEEDS, **kw) -> RunResult:
    """The champion's holdout reference run: gap (3.03 - 3.00) / 3.00 = +0.0100."""
    return run(val, seed, commit=CHAMP, holdout=holdout, **kw)


FLOOR = (3.00, 3.02, 3.04)
AUTO = lc.Rules(NOISE)  # holdout_max_gap: auto, the default
SPREAD = tuple(champ_holdout(holdout=3.00 + 0.03 * k, seed=H + k) for k in range(3))  # gaps +0.00, +0.01, +0.02


def experiment(runs: list[RunResult] = (), parent: str = CHAMP, decision: Decision | None = None,
               review: str | None = None, merged_as: str | None = None, pending: tuple[RunSpec, ...] = (),
               cost: Cost | None = None, proposer: str = "llm") -> ExperimentRecord:
    return ExperimentRecord(
        id=EXP, number=7, branch="arbot/exp-7", commit=CAND, parent=parent,
        proposal=Proposal(proposer=proposer, hypothesis="h", files={"target/train.py": "x = 1\n"},
                          cost=cost or Cost()),
        runs=list(runs), decision=decision, review=review, merged_as=merged_as, pending=list(pending))


# Candidate runs the noise-aware policy calls a win at look 2: mean 2.51 against 3.02, pooled se 0.0167,
# t = 30.6 on 3 degrees of freedom, p ~ 4e-5 <= 0.0008.
WIN = (2.50, 2.52)


def confirmed(val: float = 2.51, holdout: float = 2.54, **kw) -> RunResult:
    """The candidate's holdout confirmation run, the first holdout seed. Default gap 0.03/2.51 = +0.0120,
    0.0020 above the champion's +0.0100: within the 0.01 limit."""
    return run(val, H, holdout=holdout, **kw)


# --- the table ----------------------------------------------------------------------------------------------
@dataclass
class Case:
    exp: ExperimentRecord
    champ: ChampionRecord
    expect: type
    current: str = CHAMP
    rules: lc.Rules = RULES
    removes_code: bool = False
    tampered: str | None = None
    specs: tuple[RunSpec, ...] | None = None  # for Run: exactly these
    verdict: str | None = None  # for Decide / Close
    rule: str | None = None
    review: str | None = "absent"  # for Decide: the review it sets
    says: tuple[str, ...] = field(default_factory=tuple)  # in the reason / why
    ahead: str | None = None  # another experiment being confirmed on the champion first


MOVED = "branch arbot/exp-7 points at 0123456789ab, not the experiment's commit eeeeeeeeeeee"
WON = Decision(verdict="win", rule="confirm:pooled", reason="better", metric="val_bpb")
CASES = {
    # --- the branch no longer holds what was measured
    "tampered while measuring: rejected": Case(
        experiment(cand_runs(2.99)), champion(*FLOOR), lc.Decide, tampered=MOVED, verdict="rejected",
        rule="tampered", review=None, says=(MOVED, "nothing measured counts")),
    "tampered after a win was decided: rejected, never promoted": Case(
        experiment(cand_runs(*WIN), decision=WON), champion(*FLOOR), lc.Decide, tampered=MOVED,
        verdict="rejected", rule="tampered", review=None),
    "tampered after a loss: the loss stands": Case(
        experiment(cand_runs(3.05), decision=Decision(verdict="loss", rule="screen", reason="worse")),
        champion(*FLOOR), lc.Close, tampered=MOVED, verdict="loss", rule="screen"),
    "tampered after the merge: done": Case(
        experiment(cand_runs(*WIN), decision=WON, merged_as=NEWER), champion(*FLOOR), lc.Done, tampered=MOVED),
    # --- the champion's noise floor
    "new champion: noise floor runs seeds 0..2": Case(
        experiment(), champion(), lc.Run,
        specs=tuple(spec("champion", CHAMP, s, CH) for s in (0, 1, 2)), says=("3 more runs",)),
    "noise floor continues after a run and a pending run": Case(
        experiment(), champion(3.00, pending=(spec("champion", CHAMP, 1),)), lc.Run,
        specs=(spec("champion", CHAMP, 2, CH),), says=("1 more runs",)),
    "noise floor all in flight, one champion run made: the screen run goes beside it (held to its times)": Case(
        experiment(), champion(3.00, pending=(spec("champion", CHAMP, 1), spec("champion", CHAMP, 2))), lc.Run,
        specs=(spec(EXP, CAND, 0),)),
    "noise floor all in flight, no champion run made: waits (a candidate is held to the champion's times)": Case(
        experiment(), champion(pending=tuple(spec("champion", CHAMP, s) for s in range(3))), lc.Wait),
    "noise floor in flight, the screen made: waits for the floor": Case(
        experiment(cand_runs(2.90)), champion(3.00, pending=(spec("champion", CHAMP, 1), spec("champion", CHAMP, 2))),
        lc.Wait),
    "a champion run crashed once (it may be the machine's failure): made again with the next seeds": Case(
        experiment(), champion(3.00, extra=(run(None, 1, commit=CHAMP, status="crash", reason="champion boom"),)),
        lc.Run, specs=(spec("champion", CHAMP, 2, CH), spec("champion", CHAMP, 3, CH)), says=("2 more runs",)),
    "the champion failed twice: it fails, and the message says the way out": Case(
        experiment(), champion(3.00, extra=(run(None, 1, commit=CHAMP, status="timeout", reason="machine busy"),
                                            run(None, 2, commit=CHAMP, status="crash", reason="champion boom"))),
        lc.ChampionFails, says=("2 of its runs failed", "crash", "champion boom", CHAMP[:12], "arbot adopt <branch>")),
    # --- the candidate's runs
    "first candidate run: seed 0": Case(experiment(), champion(*FLOOR), lc.Run, specs=(spec(EXP, CAND, 0),)),
    # 3.05 is 0.03 worse than the champion mean: not better by more than screen_bar 1 x sd.
    "screen loss": Case(experiment(cand_runs(3.05)), champion(*FLOOR), lc.Decide, verdict="loss", rule="screen",
                        review=None),
    # 2.99 is 0.03 better, more than 1 sd (0.02): promising at look 1, one more candidate seed; champion runs up to
    # 2 + champion_lead 1 <= 3 made: none.
    "promising first run: one more candidate seed": Case(
        experiment(cand_runs(2.99)), champion(*FLOOR), lc.Run, specs=(spec(EXP, CAND, 1),), says=("promising",)),
    # look 3: mean 3.00, effect 0.02, pooled se 0.0129, t 1.55, p ~ 0.1 > 0.0024 and t >= futility 1: one more
    # candidate seed, and champion seeds up to 4 + champion_lead 1 = 5 runs. The champion's holdout run takes no
    # val seed: the champion's next val runs are seeds 3 and 4, and the candidate's 4th is seed 3, as its 4th.
    "confirm: more candidate and champion runs, val seeds after the val runs": Case(
        experiment(cand_runs(2.99, 3.01, 3.00)), champion(*FLOOR, extra=(champ_holdout(),)), lc.Run,
        specs=(spec("champion", CHAMP, 3, CH), spec("champion", CHAMP, 4, CH), spec(EXP, CAND, 3)),
        says=("not yet significant",)),
    # An experiment is advanced on every run its request asked for, never on the part that arrived first, and
    # decided only once no champion run is in flight.
    "confirm: a candidate run asked for is in flight: wait": Case(
        experiment(cand_runs(2.99, 3.01, 3.00), pending=(spec(EXP, CAND, 3),)), champion(*FLOOR), lc.Wait,
        says=("1 of exp-7's runs are in flight",)),
    "confirm: everything asked for is in flight: wait": Case(
        experiment(cand_runs(2.99, 3.01, 3.00), pending=(spec(EXP, CAND, 3),)),
        champion(*FLOOR, pending=(spec("champion", CHAMP, 3), spec("champion", CHAMP, 4))), lc.Wait,
        says=("1 of exp-7's runs",)),
    "confirm: the champion runs asked for are in flight, the candidate's are not: only the candidate's": Case(
        experiment(cand_runs(2.99, 3.01, 3.00)),
        champion(*FLOOR, pending=(spec("champion", CHAMP, 3), spec("champion", CHAMP, 4))), lc.Run,
        specs=(spec(EXP, CAND, 3),)),
    "a clear win with a champion run still in flight: wait for it": Case(
        experiment(cand_runs(*WIN)), champion(*FLOOR, pending=(spec("champion", CHAMP, 3),)), lc.Wait,
        says=("1 champion run(s) asked for are in flight",)),
    "a clear loss with a champion run still in flight: wait for it": Case(
        experiment(cand_runs(3.2)), champion(*FLOOR, pending=(spec("champion", CHAMP, 3),)), lc.Wait,
        says=("the decision waits",)),
    # look 2: mean 3.015, effect 0.005, se 0.0154: 0.33 standard errors < futility 1.
    "futility loss": Case(experiment(cand_runs(3.01, 3.02)), champion(*FLOOR), lc.Decide, verdict="loss",
                          rule="futility", review=None),
    # look 6: mean 3.01, effect 0.01, se 0.0131, t 0.76, p ~ 0.23 > 0.0072 at the cap.
    "max_runs loss": Case(experiment(cand_runs(2.99, 3.01, 3.03, 2.99, 3.01, 3.03)), champion(*FLOOR), lc.Decide,
                          verdict="loss", rule="max_runs", review=None),
    # --- a win is confirmed on holdout
    "confirm:pooled win: champion holdout once + candidate val+holdout": Case(
        experiment(cand_runs(*WIN)), champion(*FLOOR), lc.Run,
        specs=(spec("champion", CHAMP, H, ("val", "holdout")), spec(EXP, CAND, H, ("val", "holdout"))),
        says=("confirming the win on holdout", "confirm")),
    "win: the champion's holdout is measured already: only the candidate's": Case(
        experiment(cand_runs(*WIN)), champion(*FLOOR, extra=(champ_holdout(),)), lc.Run,
        specs=(spec(EXP, CAND, H, ("val", "holdout")),)),
    "win: holdout confirmation in flight: wait": Case(
        experiment(cand_runs(*WIN), pending=(spec(EXP, CAND, H, ("val", "holdout")),)),
        champion(*FLOOR, pending=(spec("champion", CHAMP, H, ("val", "holdout")),)), lc.Wait,
        says=("holdout confirmation is in flight",)),
    "holdout confirmed: win": Case(
        experiment(cand_runs(*WIN) + [confirmed()]), champion(*FLOOR, extra=(champ_holdout(),)), lc.Decide,
        verdict="win", rule="confirm:pooled", review=None, says=("holdout confirmed",)),
    # gap (2.80 - 2.51) / 2.51 = +0.1155, 0.1055 above the champion's: more than 0.01.
    "holdout gap too large: rejected": Case(
        experiment(cand_runs(*WIN) + [confirmed(holdout=2.80)]), champion(*FLOOR, extra=(champ_holdout(),)),
        lc.Decide, verdict="rejected", rule="holdout_gap", review=None, says=("seen val", "0.1155")),
    # gap (2.30 - 2.51) / 2.51 = -0.0837, 0.0937 below the champion's +0.0100: more than 0.01 the other way.
    "holdout gap far below the champion's (better on holdout than val): rejected": Case(
        experiment(cand_runs(*WIN) + [confirmed(holdout=2.30)]), champion(*FLOOR, extra=(champ_holdout(),)),
        lc.Decide, verdict="rejected", rule="holdout_gap", review=None,
        says=("-0.0837", "0.0937 less than the champion's", "fits holdout better than val", "seen holdout")),
    # gap (2.52 - 2.51) / 2.51 = +0.0040, 0.0060 below the champion's: within the limit.
    "holdout gap a little below the champion's: win": Case(
        experiment(cand_runs(*WIN) + [confirmed(holdout=2.52)]), champion(*FLOOR, extra=(champ_holdout(),)),
        lc.Decide, verdict="win", rule="confirm:pooled", review=None, says=("holdout confirmed (gap excess -0.0060, limit 0.01 either way)",)),
    "holdout confirmation run crashed: rejected": Case(
        experiment(cand_runs(*WIN) + [run(None, H, status="crash", reason="oom on holdout", holdout=None)
                                      .model_copy(update={"splits": ["val", "holdout"]})]),
        champion(*FLOOR, extra=(champ_holdout(),)), lc.Decide, verdict="rejected", rule="holdout_gap", review=None,
        says=("confirmation run failed", "oom on holdout")),
    "the champion's holdout run failed once: it is tried again": Case(
        experiment(cand_runs(*WIN) + [confirmed()]),
        champion(*FLOOR, extra=(champ_holdout(status="crash", reason="runner died", val=None, holdout=None)
                                .model_copy(update={"splits": ["val", "holdout"]}),)),
        lc.Run, specs=(spec("champion", CHAMP, H + 1, ("val", "holdout")),)),
    "the champion's holdout failed twice: the win is rejected": Case(
        experiment(cand_runs(*WIN) + [confirmed()]),
        champion(*FLOOR, extra=tuple(champ_holdout(status="crash", val=None, holdout=None, seed=s)
                                     .model_copy(update={"splits": ["val", "holdout"]}) for s in (H, H + 1))),
        lc.Decide, verdict="rejected", rule="holdout_gap", review=None,
        says=("the champion's holdout could not be measured",)),
    # --- holdout_max_gap auto: the limit from the spread of the champion's own gaps, on three seeds
    "auto: the champion's three holdout runs and the candidate's, at once": Case(
        experiment(cand_runs(*WIN)), champion(*FLOOR), lc.Run, rules=AUTO,
        specs=(*(spec("champion", CHAMP, H + k, ("val", "holdout")) for k in range(3)),
               spec(EXP, CAND, H, ("val", "holdout")))),
    "auto: one reference inherited (a promoted win's confirmation): two more": Case(
        experiment(cand_runs(*WIN)), champion(*FLOOR, extra=(champ_holdout(),)), lc.Run, rules=AUTO,
        specs=(*(spec("champion", CHAMP, H + k, ("val", "holdout")) for k in (1, 2)),
               spec(EXP, CAND, H, ("val", "holdout")))),
    # gaps +0.0000, +0.0100, +0.0200: mean +0.0100, sd 0.0100; t(2) 0.995 quantile 9.925 x 0.01 x sqrt(4/3): 0.1146
    "auto: a gap 0.0837 less than the champion's, within its spread: win": Case(
        experiment(cand_runs(*WIN) + [confirmed(holdout=2.30)]), champion(*FLOOR, extra=SPREAD), lc.Decide,
        rules=AUTO, verdict="win", rule="confirm:pooled", review=None,
        says=("holdout confirmed (gap excess -0.0937", "limit 0.1146", "9.92 x the sd 0.0100 of the champion's 3 gaps")),
    "auto: a gap 0.1155 above the champion's, beyond its spread: rejected": Case(
        experiment(cand_runs(*WIN) + [confirmed(holdout=2.83)]), champion(*FLOOR, extra=SPREAD), lc.Decide,
        rules=AUTO, verdict="rejected", rule="holdout_gap", review=None, says=("seen val", "limit 0.1146")),
    # gap 0.11 / 2.51 = +0.0438, 0.0338 above the champion's +0.0100 on every seed
    "auto: seeds that move the gap by nothing: the least limit": Case(
        experiment(cand_runs(*WIN) + [confirmed(holdout=2.62)]),
        champion(*FLOOR, extra=tuple(champ_holdout(seed=H + k) for k in range(3))), lc.Decide, rules=AUTO,
        verdict="rejected", rule="holdout_gap", review=None, says=(f"limit {lc.HOLDOUT_MIN_GAP:.4f}",)),
    "auto: two of the champion's holdout runs failed: rejected for want of a reference": Case(
        experiment(cand_runs(*WIN) + [confirmed()]),
        champion(*FLOOR, extra=(champ_holdout(),) + tuple(
            champ_holdout(status="crash", val=None, holdout=None, seed=H + k)
            .model_copy(update={"splits": ["val", "holdout"]}) for k in (1, 2))), lc.Decide, rules=AUTO,
        verdict="rejected", rule="holdout_gap", review=None, says=("1 of 3 reference runs",)),
    "holdout_max_gap None: a win is decided without a holdout run": Case(
        experiment(cand_runs(*WIN)), champion(*FLOOR), lc.Decide, rules=lc.Rules(NOISE, holdout_max_gap=None),
        verdict="win", rule="confirm:pooled", review=None),
    # --- failed candidate runs
    **{f"candidate {status}": Case(
        experiment(cand_runs(2.99) + [run(None, 1, status=status, reason=f"it {status}d")]), champion(*FLOOR),
        lc.Decide, verdict=status, rule=status, review=None, says=(f"it {status}d",))
       for status in ("crash", "timeout", "rejected")},
    # --- review holds
    "flagged win: decided with review needed": Case(
        experiment(cand_runs(*WIN, flags=(FLAG,)) + [confirmed()]), champion(*FLOOR, extra=(champ_holdout(),)),
        lc.Decide, verdict="win", rule="confirm:pooled", review="needed",
        says=("held for human review", "timing", "holdout confirmed")),
    "flagged win, review_flagged False: not held": Case(
        experiment(cand_runs(*WIN, flags=(FLAG,)) + [confirmed()]), champion(*FLOOR, extra=(champ_holdout(),)),
        lc.Decide, rules=lc.Rules(NOISE, review_flagged=False, holdout_max_gap=0.01), verdict="win", rule="confirm:pooled", review=None),
    "flagged loss: nothing to hold": Case(
        experiment(cand_runs(3.05, flags=(FLAG,))), champion(*FLOOR), lc.Decide, verdict="loss", rule="screen",
        review=None),
    # --- simplification: mean 3.02 over 3 runs equals the champion's; p for 'worse' 0.5 > alpha
    "simplification: no worse and removes code: win": Case(
        experiment(cand_runs(3.02, 3.03, 3.01)), champion(*FLOOR), lc.Decide, removes_code=True,
        rules=lc.Rules(NOISE, holdout_max_gap=None), verdict="win", rule="simplification", review=None,
        says=("Removes code",)),
    "the same runs without removing code: futility loss": Case(
        experiment(cand_runs(3.02, 3.03, 3.01)), champion(*FLOOR), lc.Decide,
        rules=lc.Rules(NOISE, holdout_max_gap=None), verdict="loss", rule="futility", review=None),
    "simplification win is confirmed on holdout too": Case(
        experiment(cand_runs(3.02, 3.03, 3.01)), champion(*FLOOR), lc.Run, removes_code=True,
        specs=(spec("champion", CHAMP, H, ("val", "holdout")), spec(EXP, CAND, H, ("val", "holdout")))),
    # --- the margin policy: one champion run, one candidate run, margin 0.01
    "margin: noise floor is one champion run": Case(
        experiment(), champion(), lc.Run, rules=lc.Rules(MarginPolicy(margin=0.01), holdout_max_gap=None),
        specs=(spec("champion", CHAMP, 0),)),
    "margin: four runs wanted, one made, one in flight: wait for it": Case(
        experiment(cand_runs(2.99), pending=(spec(EXP, CAND, 1),)), champion(3.00), lc.Wait,
        rules=lc.Rules(MarginPolicy(margin=0.01, runs=4), holdout_max_gap=None)),
    "margin: four runs wanted, two made: seeds 2 and 3": Case(
        experiment(cand_runs(2.99, 2.98)), champion(3.00), lc.Run,
        rules=lc.Rules(MarginPolicy(margin=0.01, runs=4), holdout_max_gap=None),
        specs=(spec(EXP, CAND, 2), spec(EXP, CAND, 3))),
    "margin win: 0.02 > 0.01": Case(
        experiment(cand_runs(2.98)), champion(3.00), lc.Decide,
        rules=lc.Rules(MarginPolicy(margin=0.01), holdout_max_gap=None), verdict="win", rule="margin", review=None),
    "margin loss: 0.005 is not > 0.01": Case(
        experiment(cand_runs(2.995)), champion(3.00), lc.Decide,
        rules=lc.Rules(MarginPolicy(margin=0.01), holdout_max_gap=None), verdict="loss", rule="margin", review=None),
    # --- decided experiments
    "decided loss: close": Case(
        experiment(cand_runs(3.05), decision=Decision(verdict="loss", rule="screen", reason="worse")),
        champion(*FLOOR), lc.Close, verdict="loss", rule="screen"),
    "decided crash: close": Case(
        experiment(decision=Decision(verdict="crash", rule="crash", reason="boom")), champion(*FLOOR), lc.Close,
        verdict="crash", rule="crash"),
    "a stale decision on an old champion: close, not replay": Case(
        experiment(decision=lc.stale_decision(experiment(), NEWER, "exp-8")), champion(*FLOOR), lc.Close,
        current=NEWER, verdict="rejected", rule="stale"),
    "held win: hold": Case(
        experiment(decision=Decision(verdict="win", rule="margin", reason="better"), review="needed"),
        champion(*FLOOR), lc.Hold, says=(EXP, "held for human review", "better")),
    "approved held win: promote": Case(
        experiment(cand_runs(*WIN), decision=Decision(verdict="win", rule="margin", reason="r"), review="approved"),
        champion(*FLOOR), lc.Promote),
    "merged: done": Case(
        experiment(decision=Decision(verdict="win", rule="margin", reason="r"), merged_as=NEWER),
        champion(*FLOOR), lc.Done, current=NEWER),
    # --- another promising experiment on the same champion is confirmed first
    "past its screen, another being confirmed: defer": Case(
        experiment(cand_runs(2.99)), champion(*FLOOR), lc.Defer, ahead="exp-3",
        says=("exp-7 passed its screen; exp-3 is being confirmed on this champion first",)),
    "another being confirmed does not hold a screen": Case(
        experiment(), champion(*FLOOR), lc.Run, ahead="exp-3", specs=(spec(EXP, CAND, 0),)),
    "another being confirmed does not hold a final decision": Case(
        experiment(cand_runs(3.05)), champion(*FLOOR), lc.Decide, ahead="exp-3", verdict="loss", rule="screen",
        review=None),
    # --- the champion moved
    "undecided, champion moved, its run passed the screen: replay onto the current one": Case(
        experiment(cand_runs(2.99)), champion(*FLOOR), lc.Replay, current=NEWER),
    "undecided, no runs yet, champion moved: replay before any run": Case(
        experiment(), champion(), lc.Replay, current=NEWER),
    "champion moved while its screen trains: the run finishes on the champion it was asked against": Case(
        experiment(pending=(spec(EXP, CAND, 0),)), champion(*FLOOR), lc.Wait, current=NEWER,
        says=("moved to ffffffffffff", "exp-7's screen in flight finishes on cccccccccccc")),
    "champion moved past its screen, its next runs in flight: replay at once": Case(
        experiment(cand_runs(2.99), pending=(spec(EXP, CAND, 1),)),
        champion(*FLOOR, pending=(spec("champion", CHAMP, 3),)), lc.Replay, current=NEWER),
    "champion moved, its screen lost to the old champion: the loss stands, not measured again": Case(
        experiment(cand_runs(3.05)), champion(*FLOOR), lc.Decide, current=NEWER, verdict="loss", rule="screen",
        review=None, says=("measured on cccccccccccc", "since moved to ffffffffffff")),
    "champion moved, its run crashed: the crash stands": Case(
        experiment([run(None, 0, status="crash", reason="boom")]), champion(*FLOOR), lc.Decide, current=NEWER,
        verdict="crash", rule="crash", review=None, says=("boom",)),
    "champion moved, a win on val awaiting its holdout confirmation: replay (never merged on an old one)": Case(
        experiment(cand_runs(*WIN), pending=(spec(EXP, CAND, H, ("val", "holdout")),)), champion(*FLOOR),
        lc.Replay, current=NEWER),
    "decided unmerged win on an old champion: replay": Case(
        experiment(cand_runs(*WIN), decision=Decision(verdict="win", rule="margin", reason="r")),
        champion(*FLOOR), lc.Replay, current=NEWER),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_next_action(case: Case):
    action = lc.next_action(case.exp, case.champ, case.current, case.rules, case.removes_code, case.tampered, case.ahead)
    assert type(action) is case.expect, action
    text = ""
    if isinstance(action, lc.Run):
        assert action.specs, action
        if case.specs is not None:
            assert [s.key for s in action.specs] == [s.key for s in case.specs]
            assert list(action.specs) == list(case.specs)
        text = action.why
    elif isinstance(action, lc.Decide):
        assert (action.decision.verdict, action.decision.rule) == (case.verdict, case.rule), action.decision
        assert action.decision.final
        assert action.review == case.review
        assert action.evidence.removes_code is case.removes_code
        text = action.decision.reason
    elif isinstance(action, lc.Close):
        assert (action.decision.verdict, action.decision.rule) == (case.verdict, case.rule)
        assert action.decision == case.exp.decision
    elif isinstance(action, lc.Replay):
        assert action.onto == case.current
    elif isinstance(action, lc.Done):
        assert action.merged_as == case.exp.merged_as
    elif isinstance(action, lc.Promote):
        assert action.trailers == lc.trailers(case.exp, case.exp.decision, case.rules.metric)
    elif isinstance(action, (lc.Wait, lc.Hold)):
        text = action.why
    elif isinstance(action, lc.Defer):
        assert action.ahead == case.ahead
        text = action.why
    elif isinstance(action, lc.ChampionFails):
        text = action.reason
    for words in case.says:
        assert words in text, text


def test_every_action_kind_and_decided_rule_is_in_the_table():
    kinds = {c.expect for c in CASES.values()}
    assert kinds == {lc.Run, lc.Wait, lc.Defer, lc.Decide, lc.Replay, lc.Hold, lc.Promote, lc.Close, lc.Done,
                     lc.ChampionFails}
    decided = {(c.verdict, c.rule) for c in CASES.values() if c.expect is lc.Decide}
    assert decided >= {("loss", "screen"), ("loss", "futility"), ("loss", "max_runs"), ("win", "confirm:pooled"),
                       ("rejected", "holdout_gap"), ("crash", "crash"), ("timeout", "timeout"),
                       ("rejected", "rejected"), ("win", "simplification"), ("win", "margin"), ("loss", "margin"),
                       ("rejected", "tampered")}


# --- a win through its whole life, each action applied as an executor would ---------------------------------
def test_a_flagged_win_is_decided_held_approved_and_promoted():
    exp = experiment(cand_runs(*WIN, flags=(FLAG,)) + [confirmed()])
    champ = champion(*FLOOR, extra=(champ_holdout(),))
    decide = lc.next_action(exp, champ, CHAMP, RULES)
    assert isinstance(decide, lc.Decide) and decide.review == "needed"
    exp.decision, exp.review, exp.evidence = decide.decision, decide.review, decide.evidence
    assert isinstance(lc.next_action(exp, champ, CHAMP, RULES), lc.Hold)
    assert not lc.is_active(exp)
    exp.review = "approved"
    assert lc.is_active(exp)
    promote = lc.next_action(exp, champ, CHAMP, RULES)
    assert isinstance(promote, lc.Promote) and promote.trailers["Rule"].startswith("confirm:pooled (p=")
    exp.merged_as = NEWER
    assert lc.next_action(exp, champ, NEWER, RULES) == lc.Done(NEWER)
    assert not lc.is_active(exp)


def test_the_decided_evidence_is_the_val_runs_only():
    exp = experiment(cand_runs(*WIN) + [confirmed(val=2.0, holdout=2.024)])
    champ = champion(*FLOOR, extra=(champ_holdout(val=9.0, holdout=9.09),))
    action = lc.next_action(exp, champ, CHAMP, RULES)
    assert isinstance(action, lc.Decide) and action.decision.verdict == "win"
    assert action.evidence.candidate == list(WIN) and action.evidence.champion == list(FLOOR)
    assert action.decision.candidate_runs == 2 and action.decision.champion_runs == 3
    assert action.decision.candidate_mean == pytest.approx(2.51)


# --- trailers -------------------------------------------------------------------------------------------------
WON = Decision(verdict="win", rule="confirm:pooled", reason="r", champion_mean=3.02, candidate_mean=2.51,
               effect=0.51, p_value=0.000123, champion_runs=3, candidate_runs=2)


def test_promote_carries_exactly_the_trailers_of_the_win():
    exp = experiment(cand_runs(*WIN) + [confirmed()], decision=WON, review="approved",
                     cost=Cost(prompt_tokens=1000, completion_tokens=250, usd=0.0123))
    action = lc.next_action(exp, champion(*FLOOR), CHAMP, RULES)
    assert isinstance(action, lc.Promote)
    assert action.trailers == {
        "Experiment": "exp-7",
        "Metric": "val_bpb=2.5100",
        "Baseline": "val_bpb=3.0200",
        "Delta": "-0.5100",
        "Runs": "2 candidate, 3 champion",
        "Rule": "confirm:pooled (p=0.000123)",
        "Proposer": "llm",
        "Evaluator": "fp-1",
        "Seeds": f"0,1,{H}",
        "Cost": "1250 tokens, $0.0123",
    }


def test_trailers_without_cost_p_value_fingerprint_or_numbers():
    exp = experiment([run(2.9, 0, fingerprint=None)], decision=None, proposer="search")
    bare = Decision(verdict="win", rule="margin", reason="r")
    t = lc.trailers(exp, bare, DEFAULT_METRIC)
    assert "Cost" not in t
    assert t["Rule"] == "margin" and t["Evaluator"] == "unknown" and t["Proposer"] == "search"
    assert t["Metric"] == t["Baseline"] == "val_bpb=n/a" and t["Delta"] == "n/a" and t["Seeds"] == "0"
    # tokens alone (a free local model) still record the cost
    assert lc.trailers(experiment(cost=Cost(prompt_tokens=10, completion_tokens=5)), bare, DEFAULT_METRIC)["Cost"] == "15 tokens, $0.0000"


# --- the other pure pieces ------------------------------------------------------------------------------------
def test_stale_decision_says_why_and_where_it_is_measured_again():
    stale = experiment()
    d = lc.stale_decision(stale, NEWER, "exp-8")
    assert (d.verdict, d.rule) == ("rejected", "stale")
    assert d.reason == (f"champion moved from {CHAMP[:12]} to {NEWER[:12]} before this was merged; "
                        "measured again as exp-8")
    lost = lc.stale_decision(stale, NEWER, None)
    assert (lost.verdict, lost.rule) == ("rejected", "stale")
    assert lost.reason == (f"champion moved from {CHAMP[:12]} to {NEWER[:12]} before this was merged; "
                           "its change conflicts with the new champion")


def test_val_runs_and_evidence_leave_out_holdout_confirmations():
    runs = cand_runs(*WIN) + [confirmed(val=1.0)]
    assert lc.val_runs(runs) == runs[:2]
    exp = experiment(runs)
    champ = champion(*FLOOR, extra=(champ_holdout(val=1.0),))
    ev = lc.evidence(exp, champ, DEFAULT_METRIC, removes_code=True)
    assert ev.candidate == list(WIN) and ev.champion == list(FLOOR)
    assert ev.candidate_status == "ok" and ev.removes_code
    # a crashed confirmation run is not a crashed candidate either
    crashed = run(None, H, status="crash", reason="x").model_copy(update={"splits": ["val", "holdout"]})
    assert lc.evidence(experiment(cand_runs(*WIN) + [crashed]), champ, DEFAULT_METRIC).candidate_status == "ok"
    # but a crashed val run is
    failed = lc.evidence(experiment(cand_runs(2.9) + [run(None, 1, status="timeout", reason="slow")]), champ,
                         DEFAULT_METRIC)
    assert (failed.candidate_status, failed.candidate_reason, failed.candidate) == ("timeout", "slow", [2.9])


def test_the_champions_val_runs_scored_on_holdout_are_its_references():
    """Where wins are confirmed on holdout, a champion's val runs are scored on holdout too (`champion_splits`), and
    their gaps are the references a win is held to: a win on a champion with three such runs needs the candidate's
    confirmation run only, where one with val-only runs needs HOLDOUT_REFERENCE_RUNS champion runs more; the val
    runs stay the evidence either way."""
    scored = [run(v, i, commit=CHAMP, holdout=v * 1.01) for i, v in enumerate(FLOOR)]
    exp = experiment(cand_runs(*WIN))
    action = lc.next_action(exp, ChampionRecord(commit=CHAMP, runs=scored), CHAMP, AUTO)
    assert isinstance(action, lc.Run) and action.specs == (spec(EXP, CAND, H, CH),)
    bare = lc.next_action(exp, champion(*FLOOR), CHAMP, AUTO)
    assert isinstance(bare, lc.Run)
    assert bare.specs == (*(spec("champion", CHAMP, H + k, CH) for k in range(3)), spec(EXP, CAND, H, CH))
    exp.runs.append(confirmed(val=2.51, holdout=2.51 * 1.01))
    done = lc.next_action(exp, ChampionRecord(commit=CHAMP, runs=scored), CHAMP, AUTO)
    assert isinstance(done, lc.Decide) and done.decision.verdict == "win", done
    assert "holdout confirmed" in done.decision.reason and done.evidence.champion == list(FLOOR)


def test_holdout_gap_of_one_run():
    assert lc.holdout_gap(champ_holdout(), DEFAULT_METRIC) == pytest.approx(0.01)
    assert lc.holdout_gap(run(3.0, 0), DEFAULT_METRIC) is None  # val only
    assert lc.holdout_gap(run(None, 0, status="crash", holdout=3.0), DEFAULT_METRIC) is None


def test_a_noise_floor_that_is_met_is_none():
    assert lc.noise_floor(champion(*FLOOR), RULES) is None
    # its holdout confirmations count for nothing in the floor, and take no val seed: the val runs go on at seed 1,
    # scored on holdout too where wins are confirmed on it, on val alone where they are not
    assert lc.noise_floor(champion(3.0, extra=(champ_holdout(seed=H), champ_holdout(seed=H + 1))), RULES) == lc.Run(
        (spec("champion", CHAMP, 1, CH), spec("champion", CHAMP, 2, CH)), "the champion's noise floor needs 2 more runs")
    assert lc.noise_floor(champion(3.0), replace(RULES, holdout_max_gap=None)) == lc.Run(
        (spec("champion", CHAMP, 1), spec("champion", CHAMP, 2)), "the champion's noise floor needs 2 more runs")


@pytest.mark.parametrize("exp, active", [
    (experiment(), True),
    (experiment(decision=Decision(verdict="win", rule="margin", reason="r")), True),
    (experiment(decision=Decision(verdict="win", rule="margin", reason="r"), review="approved"), True),
    (experiment(decision=Decision(verdict="win", rule="margin", reason="r"), review="needed"), False),
    (experiment(decision=Decision(verdict="win", rule="margin", reason="r"), merged_as=NEWER), False),
    (experiment(decision=Decision(verdict="loss", rule="screen", reason="r")), False),
])
def test_is_active(exp, active):
    assert lc.is_active(exp) is active


def test_rules_of_a_target():

    rules = lc.Rules.of(NOISE, TargetConfig(review_flagged=False, holdout_max_gap=None), SCORE)
    assert rules == lc.Rules(NOISE, review_flagged=False, holdout_max_gap=None, metric=SCORE)


# --- a metric to maximize -------------------------------------------------------------------------------------
# The same numbers as above, mirrored: the champion scores 3.00, 3.02, 3.04 on `val_score` (higher is better); a
# candidate at 3.52, 3.54 is as clear a win as 2.50, 2.52 is when minimizing. Its holdout reference: 3.00 -> 2.97.
SCORE = Metric(name="score", direction="maximize", precision=4)
SCORE_RULES = lc.Rules(NOISE, holdout_max_gap=0.01, metric=SCORE)


def score_run(val: float, seed: int, commit: str = CAND, holdout: float | None = None) -> RunResult:
    r = run(val, seed, commit=commit, holdout=holdout)
    return r.model_copy(update={"metrics": {k.replace("_bpb", "_score"): v for k, v in r.metrics.items()}})


def score_champion() -> ChampionRecord:
    runs = [score_run(v, i, commit=CHAMP) for i, v in enumerate(FLOOR)] + [score_run(3.00, H, CHAMP, holdout=2.97)]
    return ChampionRecord(commit=CHAMP, runs=runs)


def score_experiment(*vals: float, holdout: float | None = None) -> ExperimentRecord:
    runs = [score_run(v, i) for i, v in enumerate(vals)]
    if holdout is not None:
        runs.append(score_run(3.53, H, holdout=holdout))
    return experiment(runs)


MAXIMIZE = {
    "higher first run: promising, one more seed": Case(
        score_experiment(3.52), score_champion(), lc.Run, rules=SCORE_RULES, specs=(spec(EXP, CAND, 1),)),
    "lower first run: screen loss": Case(
        score_experiment(2.98), score_champion(), lc.Decide, rules=SCORE_RULES, verdict="loss", rule="screen",
        review=None),
    "the same higher run when minimizing: screen loss": Case(
        score_experiment(3.52), score_champion(), lc.Decide, rules=lc.Rules(NOISE, metric=SCORE.model_copy(
            update={"direction": "minimize"})), verdict="loss", rule="screen", review=None),
    "higher, holdout gap like the champion's: win": Case(
        score_experiment(3.52, 3.54, holdout=3.49), score_champion(), lc.Decide, rules=SCORE_RULES, verdict="win",
        rule="confirm:pooled", review=None, says=("val_score 3.5300", "holdout confirmed")),
    "holdout far below val: it has seen val": Case(
        score_experiment(3.52, 3.54, holdout=3.20), score_champion(), lc.Decide, rules=SCORE_RULES,
        verdict="rejected", rule="holdout_gap", review=None, says=("(holdout_score - val_score)", "seen val")),
    "holdout far above val: it has seen holdout": Case(
        score_experiment(3.52, 3.54, holdout=3.80), score_champion(), lc.Decide, rules=SCORE_RULES,
        verdict="rejected", rule="holdout_gap", review=None, says=("seen holdout",)),
}


@pytest.mark.parametrize("case", MAXIMIZE.values(), ids=MAXIMIZE.keys())
def test_next_action_maximizing(case: Case):
    test_next_action(case)


def test_a_maximized_win_is_promoted_with_a_positive_delta():
    exp = score_experiment(3.52, 3.54, holdout=3.49)
    decide = lc.next_action(exp, score_champion(), CHAMP, SCORE_RULES)
    assert isinstance(decide, lc.Decide) and decide.evidence.direction == "maximize"
    assert decide.decision.effect == pytest.approx(0.51) and decide.decision.delta == pytest.approx(0.51)
    exp.decision, exp.evidence = decide.decision, decide.evidence
    promote = lc.next_action(exp, score_champion(), CHAMP, SCORE_RULES)
    assert isinstance(promote, lc.Promote)
    t = promote.trailers
    assert (t["Metric"], t["Baseline"], t["Delta"]) == ("val_score=3.5300", "val_score=3.0200", "+0.5100")
    assert lc.trailers(exp, exp.decision, SCORE.model_copy(update={"precision": 2}))["Delta"] == "+0.51"


# --- which experiment is confirmed first ------------------------------------------------------------------
def rec(number: int, runs: int = 0, pending: int = 0, parent: str = CHAMP, decided: bool = False) -> ExperimentRecord:
    """exp-<number> on `parent`: `runs` val runs made, `pending` more in flight."""
    commit = f"{number:040d}"
    return ExperimentRecord(
        id=f"exp-{number}", number=number, branch=f"arbot/exp-{number}", commit=commit, parent=parent,
        proposal=Proposal(proposer="search", hypothesis="h", files={}),
        runs=[run(2.99, i, commit=commit) for i in range(runs)],
        pending=[spec(f"exp-{number}", commit, runs + i) for i in range(pending)],
        decision=Decision(verdict="loss", rule="screen", reason="r") if decided else None)


def test_the_experiment_asking_for_more_runs_first_is_confirmed_first():
    confirming, screened = rec(5, runs=1, pending=2), rec(3, runs=1)
    assert lc.ahead_of(screened, [confirming, screened]) == "exp-5"  # asking already, though numbered later
    assert lc.ahead_of(confirming, [confirming, screened]) is None  # never stopped half way
    assert lc.deferred(screened, [confirming, screened]) and not lc.deferred(confirming, [confirming, screened])


def test_of_two_screened_at_once_the_lower_number_goes_first():
    a, b = rec(3, runs=1), rec(4, runs=1)
    assert lc.ahead_of(b, [a, b]) == "exp-3" and lc.ahead_of(a, [a, b]) is None


def test_only_undecided_rivals_past_their_screen_on_the_same_champion_count():
    mine = rec(9, runs=1)
    for other in (rec(2), rec(2, pending=1), rec(2, runs=1, decided=True), rec(2, runs=3, parent=NEWER)):
        assert lc.ahead_of(mine, [other, mine]) is None, other
    assert not lc.deferred(rec(9, pending=1), [rec(2, runs=2), rec(9, pending=1)])  # a screen is never deferred


def test_a_deferred_experiment_holds_no_slot_and_at_most_twice_the_slots_are_open():
    confirming, waiting = rec(1, runs=1, pending=2), rec(2, runs=1)
    assert lc.has_room([confirming, waiting], slots=2)  # the deferred one leaves its slot to a new screen
    assert not lc.has_room([confirming, rec(2, pending=1)], slots=2)  # two screening or confirming: full
    assert not lc.has_room([confirming, waiting, rec(3, runs=1), rec(4, pending=1)], slots=2)  # four open: enough
    assert lc.has_room([confirming, rec(2, runs=1, decided=True)], slots=2)  # a decided one holds nothing


# --- a decision waits for every run asked for -----------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(cand=st.lists(st.floats(2.4, 3.3), max_size=6), champ=st.lists(st.floats(2.9, 3.1), min_size=0, max_size=6),
       cand_pending=st.integers(0, 2), champ_pending=st.integers(0, 2), crashed=st.booleans(),
       policy=st.sampled_from([RULES, lc.Rules(MarginPolicy(margin=0.01), holdout_max_gap=None)]))
def test_nothing_is_decided_while_a_run_asked_for_is_in_flight(cand, champ, cand_pending, champ_pending, crashed,
                                                                 policy):
    """Whatever has arrived, an experiment with one of its own val runs, or one of its champion's, in flight is
    never decided (every mode: the stepper carries out only what this says); once none is, it may be."""
    runs = cand_runs(*cand) + ([run(None, len(cand), status="crash", reason="boom")] if crashed else [])
    exp = experiment(runs, pending=tuple(spec(EXP, CAND, len(runs) + i) for i in range(cand_pending)))
    champ_rec = champion(*champ, pending=tuple(spec("champion", CHAMP, len(champ) + i) for i in range(champ_pending)))
    action = lc.next_action(exp, champ_rec, CHAMP, policy)
    if cand_pending or champ_pending:
        assert not isinstance(action, lc.Decide), action


# --- seeds: a candidate's k-th val run and its champion's share seed k, across promotions ---------------------
def _play(exp: ExperimentRecord, champ: ChampionRecord, current: str, value) -> lc.Action:
    """Carry out every Run the lifecycle asks for (each run's val is value(role, seed), its holdout 1% above), until
    it asks for something else."""
    while isinstance(action := lc.next_action(exp, champ, current, RULES), lc.Run):
        for s in action.specs:
            rec = champ if s.role == "champion" else exp
            val = value(s.role, s.seed)
            rec.runs.append(run(val, s.seed, commit=rec.commit, holdout=val * 1.01 if "holdout" in s.splits else None))
    return action


def test_seeds_pair_across_a_promotion():
    """A holdout run consumes no val seed, and a promoted win's runs keep theirs: the new champion's next val run is
    seed 2 after its two inherited val runs (seeds 0 and 1), the seed a candidate's third run gets."""
    champ, exp = champion(*FLOOR), experiment()
    won = _play(exp, champ, CHAMP, lambda role, seed: 3.0 + 0.02 * (seed % 3) if role == "champion"
                else 2.5 + 0.01 * (seed % 2))
    assert isinstance(won, lc.Decide) and won.decision.verdict == "win"
    assert all(r.seed >= lc.HOLDOUT_SEEDS for r in exp.runs if "holdout" in r.splits)  # its confirmation
    assert [r.seed for r in lc.val_runs(exp.runs)] == [0, 1]
    successor = lc.champion_after(exp, NEWER)
    nxt = ExperimentRecord(**{**experiment().model_dump(), "id": "exp-8", "number": 8, "parent": NEWER})
    floor = lc.next_action(nxt, successor, NEWER, RULES)
    assert isinstance(floor, lc.Run) and [s.seed for s in floor.specs] == [2]
    successor.runs.append(run(2.51, 2, commit=NEWER))
    _play(nxt, successor, NEWER, lambda role, seed: 2.5)
    ev = lc.evidence(nxt, successor, DEFAULT_METRIC)
    assert ev.candidate_seeds == list(range(len(ev.candidate_seeds)))
    assert set(ev.candidate_seeds) <= set(ev.champion_seeds) == set(range(len(ev.champion_seeds)))


def test_the_evidence_counts_the_runs_a_champion_inherited_from_its_win():
    """The runs a champion got from its win (of the candidate's commit, not of the merge) are counted apart from
    those it made as champion: the bayes rule keeps them out of the noise (a promotion chose them)."""
    exp = experiment(runs=cand_runs(2.5, 2.52))
    successor = lc.champion_after(exp, NEWER)
    successor.runs.append(run(2.51, 2, commit=NEWER))
    nxt = ExperimentRecord(**{**experiment().model_dump(), "id": "exp-8", "number": 8, "parent": NEWER})
    ev = lc.evidence(nxt, successor, DEFAULT_METRIC)
    assert (ev.champion, ev.champion_inherited) == ([2.5, 2.52, 2.51], 2)
    assert lc.evidence(experiment(), champion(*FLOOR), DEFAULT_METRIC).champion_inherited == 0  # no win made it


def test_auto_holdout_limit_rejects_an_honest_win_one_time_in_a_hundred():
    """auto is the default; an honest win, its gap drawn as the champion's three are (any spread), is rejected about
    HOLDOUT_FALSE_REJECT of the time, and a number stays a fixed limit."""
    import numpy as np

    assert TargetConfig().holdout_max_gap == "auto" and lc.Rules(NOISE).holdout_max_gap == "auto"
    rng = np.random.default_rng(7)
    for sd in (0.05, 0.2):  # spreads whose limits lie far above HOLDOUT_MIN_GAP
        gaps = rng.normal(0.01, sd, size=(20_000, lc.HOLDOUT_REFERENCE_RUNS + 1))
        rejected = np.mean([abs(g[-1] - g[:-1].mean()) > lc.holdout_limit(list(g[:-1]), "auto")[0] for g in gaps])
        assert 0.006 < rejected < 0.015, (sd, rejected)
    assert lc.holdout_limit([0.0, 0.5, 1.0], 0.02) == (0.02, "limit 0.02 either way")
    with pytest.raises(ValueError, match="holdout_max_gap must be >= 0, 'auto' or none"):
        TargetConfig(holdout_max_gap=-0.1)


def test_a_learning_policy_decides_on_the_campaigns_prior():
    """lc.learned gives a bayes policy's evidence the prior learned from the decided experiments (stale ones left
    out), and its reasons say how many it learned from; other policies' rules are left as they are."""
    from bot.core.policy import BayesPolicy

    assert lc.learned(RULES, []) is RULES
    bayes_rules = lc.Rules(BayesPolicy(PolicyConfig(rule="bayes")), holdout_max_gap=None)
    decided = []
    for i, vals in enumerate([(3.05,), (2.99, 3.03), (3.10,)]):
        rec = experiment(cand_runs(*vals))
        rec.id, rec.number = f"exp-{i}", i
        rec.evidence = lc.evidence(rec, champion(*FLOOR), DEFAULT_METRIC)
        rec.decision = Decision(verdict="loss", rule="stale" if i == 2 else "screen", reason="r")
        decided.append(rec)
    rules = lc.learned(bayes_rules, decided + [experiment()])
    assert rules.campaign is not None and rules.campaign.experiments == 2
    action = lc.next_action(experiment(cand_runs(3.06)), champion(*FLOOR), CHAMP, rules)
    assert isinstance(action, lc.Decide) and action.evidence.campaign == rules.campaign
    assert "prior from 2 experiments" in action.decision.reason

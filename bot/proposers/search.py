"""The offline search proposer: Optuna TPE (ask/tell) over the script's knobs, then finer steps, then pairs.

The study is rebuilt from the experiment history in git on every call, so it needs no state of its own
and resumes exactly after an interruption. Which knob to change is itself a (categorical) parameter,
and the knob's new value is a conditional parameter, so each experiment is one readable change.

"Already tried" is judged against the current champion only: a value tried on an older champion is a new
experiment on this one. When the sampler finds no value far enough from those tried on this champion, the
search keeps going in stages:

    sample   Optuna over each knob's range; a new value differs from every tried one by NOVELTY of the range
    refine   the nearest untried values around the champion's value, in steps of NOVELTY / 2, / 4, ... of the
             range (on a log scale for log ranges), REFINE_LEVELS times finer at most
    combine  two of the best single changes tried on this champion (by their measured metric), together

Only when all three are used up is the space exhausted (SearchExhausted: `arbot run` ends cleanly).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable
from statistics import fmean

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from bot.config import KnobRange, SearchConfig
from bot.knobs import Knob, format_value, set_knobs
from bot.proposers.base import ProposalContext, ProposalError, SearchExhausted
from bot.core.records import ExperimentRecord, KnobChange, Metric, Proposal, ok_metric

optuna.logging.set_verbosity(optuna.logging.WARNING)

MAX_RESAMPLES = 30
SAMPLERS = {"tpe": "TPE", "random": "random search"}  # search.sampler -> how a proposal's rationale names it
PENDING_SEED_STEP = 7919  # a prime: the sampler's seed differs for each number of experiments in flight
NOVELTY = 0.05  # a sampled value must differ from every tried one by 5% of the knob's range
REFINE_LEVELS = 4  # refine halves the step this many times at most (down to NOVELTY / 16 of the range)
REFINE_STEPS = 4  # steps each side of the champion's value at each level
COMBINE_TOP = 16  # the best single changes whose pairs (of two knobs) are tried together
STUDY_HISTORY = 200  # the most recent experiments the sampler learns from: a proposal's cost stays flat
FRACTION = (0.05, 1.0)  # a float in [0.05, 1) reads as a fraction (a beta, a dropout): searched linearly in [0, 1]
SCALE = 10.0  # a scale-like float is searched in [value / SCALE, value * SCALE], log scale
INT_SCALE = 4  # a positive int in [value / INT_SCALE, value * INT_SCALE], log scale


def distribution(knob: Knob, rng: KnobRange | None) -> BaseDistribution:
    """The search distribution of one knob: configured (search.knobs), else around its current value."""
    if rng is None:
        return around(knob.value)
    is_int = isinstance(knob.value, int)
    if rng.choices:
        return CategoricalDistribution([int(c) if is_int else float(c) for c in rng.choices])
    if rng.low is None or rng.high is None:
        raise ProposalError(f"search.knobs.{knob.name}: give both low and high, or choices")
    if is_int:
        return IntDistribution(int(rng.low), int(rng.high), log=rng.log)
    return FloatDistribution(float(rng.low), float(rng.high), log=rng.log)


def around(v: int | float) -> BaseDistribution:
    """A range from a knob's value and type alone: a positive int on a log scale around it (x/4 to x4), a
    fraction-like float (0.05 to 1, or 0) linearly in [0, 1], any other positive float on a log scale around it
    (x/10 to x10), a negative one linearly to the same distance either side of 0."""
    if isinstance(v, int):
        return IntDistribution(max(1, v // INT_SCALE), max(v * INT_SCALE, v + 3), log=True) if v > 0 else \
            IntDistribution(v - INT_SCALE, max(v + INT_SCALE, 1))
    if v == 0 or FRACTION[0] <= v < FRACTION[1]:
        return FloatDistribution(0.0, 1.0)
    if v > 0:
        return FloatDistribution(v / SCALE, v * SCALE, log=True)
    return FloatDistribution(v * 2, -v * 2)


class SearchProposer:
    name = "search"

    def __init__(self, cfg: SearchConfig, pinned: Iterable[str] = ()):
        self.cfg = cfg
        self.skip = set(cfg.exclude) | set(pinned)  # pinned: knobs the runner overrides, so changing them does nothing

    def propose(self, ctx: ProposalContext) -> Proposal:
        knobs = [k for k in ctx.knobs if k.name not in self.skip]
        if not knobs:
            raise ProposalError(f"{ctx.script_path} has no knobs to search (top-level UPPER_CASE numeric constants)")
        dists = {k.name: distribution(k, self.cfg.knobs.get(k.name)) for k in knobs}
        current = {k.name: k.value for k in knobs}
        on_champion = [r for r in ctx.history + ctx.pending if r.parent == ctx.champion]
        tried = tried_changes(on_champion)
        seed = self._seed(ctx)
        return (self._sample(ctx, dists, current, tried, seed)
                or self._refine(ctx, dists, current, tried, seed)
                or self._combine(ctx, dists, current, tried, on_champion)
                or _exhausted(ctx, len(knobs)))

    # --- the three stages -----------------------------------------------------------------------------------------
    def _sample(self, ctx, dists, current, tried, seed) -> Proposal | None:
        choice = CategoricalDistribution(list(dists))
        study = self._study(ctx.history, ctx.pending, choice, dists, ctx.metric, seed)
        singles = [next(iter(t)) for t in tried if len(t) == 1]
        for _ in range(MAX_RESAMPLES):
            trial = study.ask()
            name = trial.suggest_categorical("knob", choice.choices)
            value = _suggest(trial, name, dists[name])
            if _novel(dists[name], name, value, current[name], singles, NOVELTY):
                why = (f"Optuna {SAMPLERS[self.cfg.sampler]} over {len(study.trials) - 1} earlier experiments chose "
                       f"{name} as the knob to change next.")
                return self._proposal(ctx, {name: value}, current, why, {"knob": name, name: value, "stage": "sample"})
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return None

    def _refine(self, ctx, dists, current, tried, seed) -> Proposal | None:
        """The nearest untried value around the champion's, at the coarsest step that still has one."""
        singles = [next(iter(t)) for t in tried if len(t) == 1]
        order = random.Random(seed)
        for level in range(1, REFINE_LEVELS + 1):
            novelty = NOVELTY / 2 ** level
            found = [(step, order.random(), name, value) for name, dist in dists.items()
                     for step, value in _steps(dist, current[name], novelty)
                     if _novel(dist, name, value, current[name], singles, novelty / 2)]  # off the grid's points
            if found:
                _, _, name, value = min(found)
                why = (f"The sampler found no value of any knob far from those tried on this champion: a step of "
                       f"{novelty:.3g} of {name}'s range from the champion's value.")
                return self._proposal(ctx, {name: value}, current, why,
                                      {"knob": name, name: value, "stage": f"refine-{level}"})
        return None

    def _combine(self, ctx, dists, current, tried, on_champion) -> Proposal | None:
        """Two of the best single changes measured on this champion, together: what worked, drawn from history."""
        key = ctx.metric.key()
        scored = []
        for rec in on_champion:
            values = ok_metric(rec.runs, key)
            if len(rec.proposal.knobs) == 1 and values and rec.proposal.knobs[0].name in dists:
                scored.append((fmean(values) if ctx.metric.direction == "minimize" else -fmean(values), rec.id,
                               rec.proposal.knobs[0]))
        top = [change for _, _, change in sorted(scored, key=lambda s: (s[0], s[1]))][:COMBINE_TOP]
        for a, b in itertools.combinations(top, 2):
            pair = frozenset({(a.name, a.new), (b.name, b.new)})
            if a.name != b.name and pair not in tried:
                why = (f"Every single value near this champion's was tried: {a.name}={format_value(a.new)} and "
                       f"{b.name}={format_value(b.new)}, two of the best single changes measured on it, together.")
                return self._proposal(ctx, {a.name: a.new, b.name: b.new}, current, why,
                                      {a.name: a.new, b.name: b.new, "stage": "combine"})
        return None

    # --- helpers ------------------------------------------------------------------------------------------------
    def _seed(self, ctx: ProposalContext) -> int:
        # The seed depends on the history (and what is in flight), so a resumed run proposes exactly what an
        # uninterrupted one would.
        return self.cfg.seed * 1_000_003 + len(ctx.history) + PENDING_SEED_STEP * len(ctx.pending)

    def _study(self, history: list[ExperimentRecord], pending: list[ExperimentRecord],
               choice: CategoricalDistribution, dists, metric: Metric, seed: int = 0) -> optuna.Study:
        # random for its first 10 trials, then TPE; experiments in flight are running trials, scored by the
        # constant liar as the worst so far, so parallel workers spread out instead of piling on one region
        sampler = (optuna.samplers.RandomSampler(seed=seed) if self.cfg.sampler == "random"
                   else optuna.samplers.TPESampler(seed=seed, constant_liar=bool(pending)))
        study = optuna.create_study(direction=metric.direction, sampler=sampler)
        for rec in history[-STUDY_HISTORY:] + pending:
            trial = _past_trial(rec, choice, dists, metric.key())
            if trial is not None:
                study.add_trial(trial)
        return study

    def _proposal(self, ctx: ProposalContext, new: dict, current: dict, rationale: str, params: dict) -> Proposal:
        changes = [KnobChange(name=name, old=current[name], new=value) for name, value in new.items()]
        return Proposal(
            proposer=self.name,
            hypothesis=" and ".join(_describe(c) for c in changes),
            rationale=rationale,
            files={ctx.script_path: set_knobs(ctx.script, new)},
            knobs=changes,
            params=params,
        )


def tried_changes(records: Iterable[ExperimentRecord]) -> set[frozenset]:
    """What each experiment changed, as a set of (knob, new value): the knobs any proposer recorded."""
    return {frozenset((c.name, c.new) for c in rec.proposal.knobs) for rec in records if rec.proposal.knobs}


def _describe(c: KnobChange) -> str:
    verb = "Raise" if c.new > c.old else "Lower"
    ratio = f" (x{c.new / c.old:.2g})" if c.old else ""
    return f"{verb} {c.name} from {format_value(c.old)} to {format_value(c.new)}{ratio}"


def _exhausted(ctx: ProposalContext, n_knobs: int) -> Proposal:
    raise SearchExhausted(
        f"the search space around champion {ctx.champion[:7]} is exhausted: every value of its {n_knobs} knob(s) "
        f"within their ranges (refined down to {NOVELTY / 2 ** REFINE_LEVELS:.2%} of each range) and every pair of "
        f"the best changes was tried on it. Widen search.knobs, exclude fewer knobs, or edit {ctx.script_path} by hand")


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution):
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return _as_written(trial.suggest_float(name, dist.low, dist.high, log=dist.log))


def _as_written(value: float) -> float:
    return float(format_value(value))  # the value as it will read in the file


def _steps(dist: BaseDistribution, value, novelty: float) -> list[tuple[int, int | float]]:
    """(distance in steps, value) around `value` within the range: REFINE_STEPS steps of `novelty` of the range
    each side for floats, the nearest values for ints and choices."""
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        at = choices.index(value) if value in choices else None
        return [(abs(i - at) if at is not None else 1, c) for i, c in enumerate(choices) if c != value]
    if isinstance(dist, IntDistribution):
        return [(abs(d), value + d) for d in range(-REFINE_STEPS, REFINE_STEPS + 1)
                if d and dist.low <= value + d <= dist.high]
    to, back = _scale(dist)
    step = novelty * (to(dist.high) - to(dist.low))
    out = []
    for d in range(-REFINE_STEPS, REFINE_STEPS + 1):
        if d and dist.low <= (v := _as_written(back(to(value) + d * step))) <= dist.high:
            out.append((abs(d), v))
    return out


def _scale(dist: FloatDistribution):
    if dist.log:
        return (lambda x: math.log(max(x, 1e-300))), math.exp
    return (lambda x: x), (lambda x: x)


def _novel(dist: BaseDistribution, name: str, value, current, tried: list[tuple[str, object]], novelty: float) -> bool:
    return not _near(dist, current, value, novelty) and not any(n == name and _near(dist, v, value, novelty)
                                                                 for n, v in tried)


def _near(dist: BaseDistribution, a: float, b: float, novelty: float = NOVELTY) -> bool:
    """Too close to be worth another experiment: the same choice, or within `novelty` of the knob's range
    (on a log scale for log ranges). Re-measuring almost the same value mostly measures noise."""
    if not isinstance(dist, FloatDistribution):
        return a == b
    to, _ = _scale(dist)
    return abs(to(float(a)) - to(float(b))) <= novelty * (to(dist.high) - to(dist.low))


def _past_trial(rec: ExperimentRecord, choice: CategoricalDistribution, dists,
                metric: str) -> optuna.trial.FrozenTrial | None:
    """A search experiment as an Optuna trial: finished (crashes as failed), running while it is in flight, or
    None if it does not fit."""
    name = rec.proposal.params.get("knob")
    if rec.proposal.proposer != "search" or name not in dists:
        return None
    params = {"knob": name, name: rec.proposal.params[name]}
    values = ok_metric(rec.runs, metric)
    ok = rec.decision is not None and rec.decision.verdict in ("win", "loss") and values
    state = (optuna.trial.TrialState.RUNNING if rec.decision is None else
             optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL)
    try:
        return optuna.trial.create_trial(
            params=params,
            distributions={"knob": choice, name: dists[name]},
            value=sum(values) / len(values) if ok else None,
            state=state,
        )
    except ValueError:
        return None  # its value lies outside today's ranges

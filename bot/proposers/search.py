"""The offline search proposer: Optuna TPE (ask/tell) over the script's knobs, one knob per experiment.

The study is rebuilt from the experiment history in git on every call, so it needs no state of its own
and resumes exactly after an interruption. Which knob to change is itself a (categorical) parameter,
and the knob's new value is a conditional parameter, so each experiment is one readable change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from bot.config import KnobRange, SearchConfig
from bot.knobs import Knob, format_value, set_knobs
from bot.proposers.base import ProposalContext, ProposalError
from bot.core.records import ExperimentRecord, KnobChange, Metric, Proposal, ok_metric

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Sensible ranges for the knobs the built-in target has; unknown knobs get a range around their value.
DEFAULT_RANGES: dict[str, KnobRange] = {
    "LEARNING_RATE": KnobRange(low=1e-4, high=1e-2, log=True),
    "WEIGHT_DECAY": KnobRange(low=0.0, high=0.3),
    "BETA1": KnobRange(low=0.8, high=0.95),
    "BETA2": KnobRange(low=0.9, high=0.999),
    "WARMUP_FRAC": KnobRange(low=0.0, high=0.2),
    "WARMDOWN_FRAC": KnobRange(low=0.0, high=0.8),
    "GRAD_CLIP": KnobRange(low=0.25, high=2.0),
    "BATCH_SIZE": KnobRange(choices=[4, 8, 16, 32, 64]),
    "DEPTH": KnobRange(low=1, high=8),
    "N_EMBD": KnobRange(choices=[32, 64, 96, 128, 192, 256]),
    "N_HEAD": KnobRange(choices=[1, 2, 4, 8]),
    "SEQ_LEN": KnobRange(choices=[32, 64, 128, 256]),
}
MAX_RESAMPLES = 30
SAMPLERS = {"tpe": "TPE", "random": "random search"}  # search.sampler -> how a proposal's rationale names it
PENDING_SEED_STEP = 7919  # a prime: the sampler's seed differs for each number of experiments in flight
NOVELTY = 0.05  # a new value must differ from every tried one by 5% of the knob's range


def distribution(knob: Knob, rng: KnobRange | None) -> BaseDistribution:
    """The search distribution of one knob: configured, else the default table, else around its value."""
    rng = rng or DEFAULT_RANGES.get(knob.name)
    is_int = isinstance(knob.value, int)
    if rng is None:
        v = knob.value
        if is_int:
            return IntDistribution(max(1, v // 2), max(2, v * 2))
        return FloatDistribution(v / 4, v * 4, log=True) if v > 0 else FloatDistribution(-1.0, 1.0)
    if rng.choices:
        return CategoricalDistribution([int(c) if is_int else float(c) for c in rng.choices])
    if rng.low is None or rng.high is None:
        raise ProposalError(f"search.knobs.{knob.name}: give both low and high, or choices")
    if is_int:
        return IntDistribution(int(rng.low), int(rng.high), log=rng.log)
    return FloatDistribution(float(rng.low), float(rng.high), log=rng.log)


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
        choice = CategoricalDistribution([k.name for k in knobs])
        study = self._study(ctx.history, ctx.pending, choice, dists, ctx.metric)
        current = {k.name: k.value for k in knobs}
        tried = [(name, rec.proposal.params[name]) for rec in ctx.history + ctx.pending
                 if (name := rec.proposal.params.get("knob")) in dists]
        for _ in range(MAX_RESAMPLES):
            trial = study.ask()
            name = trial.suggest_categorical("knob", choice.choices)
            value = _suggest(trial, name, dists[name])
            novel = not any(n == name and _near(dists[name], v, value) for n, v in tried)
            if novel and not _near(dists[name], current[name], value):
                return self._proposal(ctx, name, current[name], value, trial.params, len(study.trials) - 1)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        raise ProposalError(f"the search found no new value in {MAX_RESAMPLES} tries; widen search.knobs ranges")

    def _study(self, history: list[ExperimentRecord], pending: list[ExperimentRecord],
               choice: CategoricalDistribution, dists, metric: Metric) -> optuna.Study:
        # The seed depends on the history (and what is in flight), so a resumed run proposes exactly what an
        # uninterrupted one would.
        seed = self.cfg.seed * 1_000_003 + len(history) + PENDING_SEED_STEP * len(pending)
        # random for its first 10 trials, then TPE; experiments in flight are running trials, scored by the
        # constant liar as the worst so far, so parallel workers spread out instead of piling on one region
        sampler = (optuna.samplers.RandomSampler(seed=seed) if self.cfg.sampler == "random"
                   else optuna.samplers.TPESampler(seed=seed, constant_liar=bool(pending)))
        study = optuna.create_study(direction=metric.direction, sampler=sampler)
        for rec in history + pending:
            trial = _past_trial(rec, choice, dists, metric.key())
            if trial is not None:
                study.add_trial(trial)
        return study

    def _proposal(self, ctx: ProposalContext, name: str, old, new, params, n_past: int) -> Proposal:
        change = KnobChange(name=name, old=old, new=new)
        verb = "Raise" if new > old else "Lower"
        ratio = f" (x{new / old:.2g})" if old else ""
        return Proposal(
            proposer=self.name,
            hypothesis=f"{verb} {name} from {format_value(old)} to {format_value(new)}{ratio}",
            rationale=f"Optuna {SAMPLERS[self.cfg.sampler]} over {n_past} earlier experiments chose {name} as the knob "
                      "to change next.",
            files={ctx.script_path: set_knobs(ctx.script, {name: new})},
            knobs=[change],
            params={"knob": name, name: new},
        )


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution):
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    value = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return float(format_value(value))  # the value as it will read in the file


def _near(dist: BaseDistribution, a: float, b: float) -> bool:
    """Too close to be worth another experiment: the same choice, or within NOVELTY of the knob's range
    (on a log scale for log ranges). Re-measuring almost the same value mostly measures noise."""
    if not isinstance(dist, FloatDistribution):
        return a == b
    lo, hi, a, b = dist.low, dist.high, float(a), float(b)
    if dist.log:
        lo, hi, a, b = (math.log(max(x, 1e-300)) for x in (lo, hi, a, b))
    return abs(a - b) <= NOVELTY * (hi - lo)


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

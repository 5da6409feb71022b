"""Experiment tracking: every run and decision is also logged to MLflow, as it happens and later from the notes.

What MLflow shows (one MLflow experiment per campaign: tracking.mlflow.experiment):
    an experiment (exp-N)   a parent run: params its knob changes and its diff's summary, commit and champion;
                            tags its verdict, rule, proposer and evaluator; metrics the decision's numbers, the
                            mean of its runs' metrics and its LLM cost. Each of its runs (one per seed and split)
                            is a child run: params seed, commit, champion; metrics val and holdout metric, train
                            and total seconds, tokens/s, phases, memory; the log tail (and, optionally, the
                            model file) as artifacts.
    a champion commit       a parent run `champion <sha>` whose child runs are the runs that measure it: its noise
                            floor and, for a merged win, the win's runs (its tree is the candidate's, so the same
                            runs also appear under the experiment).

Logging is a sync of one record (git notes: bot.core.records) to the MLflow runs tagged with its key
(`arbot.key`: `experiment:<commit>`, `champion:<commit>`, or the record's key with a run's seed and splits;
`arbot.owner`: the record's key, on the parent and its children). What MLflow already has is never logged again, so
the live tracker and `arbot track --backfill` can log the same record any number of times without a duplicate. A
child run is closed (FINISHED, or FAILED for a run that did not end ok) by its last write: one left open by an
outage is deleted and logged again.

The tracker never raises (bot.stepper.Tracker): a request that fails leaves the record in `missed`, retried with
the next record after RETRY_SECONDS; what a process ends without logging is in the notes, for the backfill.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import git

from bot.config import ConfigError, MLflowConfig, TrackingConfig
from bot.core import lifecycle as lc
from bot.core.records import HOLDOUT, ChampionRecord, ExperimentRecord, RunResult, val_runs
from bot.forges.local import LocalForge
from bot.results import status
from runner.job import sha256_file

log = logging.getLogger("arbot.tracking")

INSTALL = "pip install 'arbot[tracking]'"
RETRY_SECONDS = 60.0  # after a failed request, how long records are only noted as missed before MLflow is asked again
MAX_TEXT = 5000  # the longest tag or param value every MLflow server takes; longer texts are cut
PAGE = 1000  # runs per search request

Owner = ExperimentRecord | ChampionRecord


def make_tracker(config: TrackingConfig, repo: git.Repo | None = None, models: Path | None = None,
                 artifact: str = "") -> MLflowTracker | None:
    """The configured tracker, or None when tracking is off. `repo`: for the diffs' summaries; `models`: where
    local runs keep their scored model (`<models>/<commit[:12]>/seed-<n>/<artifact>`), logged with log_models."""
    if config.mlflow is None:
        return None
    return MLflowTracker(config.mlflow, repo, models if config.mlflow.log_models else None, artifact)


def import_mlflow():
    try:
        import mlflow
    except ImportError as e:
        raise ConfigError(f"tracking.mlflow is set in arbot.yml but MLflow cannot be imported ({e}): "
                          f"`{INSTALL}`, or remove the tracking section") from e
    return mlflow


def owner_key(owner: Owner) -> str:
    return f"{owner.kind}:{owner.commit}"


def keyed_runs(owner: Owner) -> list[tuple[str, RunResult]]:
    """Each run of the record with its key: the seed and splits (seeds do not repeat within a record; a repeat,
    should one occur, is numbered)."""
    seen: dict[str, int] = {}
    keyed = []
    for run in owner.runs:
        base = f"{owner_key(owner)}/seed-{run.seed}/{'+'.join(run.splits)}"
        seen[base] = seen.get(base, 0) + 1
        keyed.append((base if seen[base] == 1 else f"{base}/{seen[base]}", run))
    return keyed


def _millis(iso: str | None) -> int | None:
    try:
        return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else None
    except ValueError:
        return None


def _cut(value: Any) -> str:
    return str(value)[:MAX_TEXT]


def run_metrics(run: RunResult) -> dict[str, float]:
    """What one run measured: the evaluator's metrics, the run's times, throughput and memory, its phases."""
    numbers = {**run.metrics, "train_seconds": run.train_seconds, "total_seconds": run.total_seconds,
               "score_seconds": run.score_seconds, "tokens_per_second": run.tokens_per_second, "steps": run.steps,
               "tokens": run.tokens, "peak_memory_gb": run.peak_memory_gb, "model_params": run.params,
               **{f"phase.{name}": seconds for name, seconds in run.phases.items()}}
    return {k: float(v) for k, v in numbers.items() if v is not None}


def mean_metrics(runs: list[RunResult]) -> dict[str, float]:
    """The mean of each metric over the ok runs: val metrics over the val runs (as the policy sees them), holdout
    metrics over the runs that scored the holdout split."""
    ok = [r for r in runs if r.ok]
    keys = {k for r in ok for k in r.metrics}
    means = {}
    for key in sorted(keys):
        pool = ok if key.startswith(f"{HOLDOUT}_") else val_runs(ok)
        values = [r.metrics[key] for r in pool if key in r.metrics]
        if values:
            means[key] = statistics.fmean(values)
    return means


@dataclass
class Backfilled:
    records: int  # records looked at
    runs: int  # runs logged now (MLflow did not have them)


class MLflowTracker:
    """bot.stepper.Tracker for an MLflow tracking server, through MLflow's client library."""

    def __init__(self, config: MLflowConfig, repo: git.Repo | None = None, models: Path | None = None,
                 artifact: str = ""):
        mlflow = import_mlflow()
        # One slow or dead server costs a request timeout and one retry, never MLflow's default minutes of backoff.
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(config.timeout_seconds)))
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"
        os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
        # Nothing on the terminal `arbot run` draws its progress on: no run links, no upload bars.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        self.config, self.repo, self.models, self.artifact = config, repo, models, artifact
        self.client = mlflow.MlflowClient(tracking_uri=config.uri)
        self.missed: dict[str, Owner] = {}  # records not logged yet (MLflow failed): key -> newest snapshot
        self.retry_seconds = RETRY_SECONDS
        self._experiment_id: str | None = None
        self._failed_at = float("-inf")

    # --- the Tracker port: never raises ------------------------------------------------------------------------
    def ran(self, owner: Owner, result: RunResult) -> None:
        self._live(owner)

    def decided(self, rec: ExperimentRecord) -> None:
        self._live(rec, *([lc.champion_after(rec, rec.merged_as)] if rec.merged_as else []))

    def _live(self, *owners: Owner) -> None:
        """Log these records, after the ones missed before (oldest first); on a failure keep them for later."""
        for owner in owners:
            self.missed[owner_key(owner)] = owner
        if time.monotonic() < self._failed_at + self.retry_seconds:
            return
        try:
            while self.missed:
                key, owner = next(iter(self.missed.items()))
                self.sync(owner)
                del self.missed[key]
        except Exception as e:  # noqa: BLE001 - whatever MLflow raises, research goes on
            self._failed_at = time.monotonic()
            log.warning("MLflow at %s failed (%s: %s): %d record(s) wait to be logged, retried in %.0f s (or "
                        "`arbot track --backfill` logs them from the notes)", self.config.uri, type(e).__name__,
                        str(e)[:300], len(self.missed), self.retry_seconds)

    # --- sync: what MLflow lacks of one record ----------------------------------------------------------------
    def backfill(self, store: LocalForge) -> Backfilled:
        """Log from the notes every run and decision MLflow does not have yet (after an outage); raises on a
        failure (the CLI reports it)."""
        existing: dict[str, dict[str, Any]] = {}
        for run in self._search(""):
            tags = run.data.tags
            if "arbot.owner" in tags and "arbot.key" in tags:
                existing.setdefault(tags["arbot.owner"], {})[tags["arbot.key"]] = run
        owners = records(store)
        made = sum(self.sync(owner, existing.get(owner_key(owner), {})) for owner in owners)
        self.missed.clear()
        return Backfilled(records=len(owners), runs=made)

    def sync(self, owner: Owner, existing: dict[str, Any] | None = None) -> int:
        """Bring MLflow up to `owner`'s state; `existing`: its MLflow runs by arbot.key (default: asked for).
        Returns how many runs were logged now."""
        key = owner_key(owner)
        if existing is None:
            existing = {r.data.tags["arbot.key"]: r for r in self._search(f"tags.`arbot.owner` = '{key}'")
                        if "arbot.key" in r.data.tags}
        parent = existing.get(key)
        parent_id = parent.info.run_id if parent is not None else self._create(key, key, owner, _name(owner))
        self._update_parent(parent_id, parent, owner)
        made = 0
        for run_key, result in keyed_runs(owner):
            child = existing.get(run_key)
            if child is not None and child.info.status != "RUNNING":
                continue
            if child is not None:  # half logged when MLflow failed: made again whole
                self.client.delete_run(child.info.run_id)
            self._log_run(parent_id, owner, run_key, result)
            made += 1
        return made

    def _update_parent(self, run_id: str, parent: Any, owner: Owner) -> None:
        """Params once, tags that changed, and the numbers of a decision (or of a champion's floor) once, in the
        batch that sets the tag marking them logged."""
        from mlflow.entities import Metric, Param, RunTag

        have = parent.data.tags if parent is not None else {}
        tags = {k: _cut(v) for k, v in parent_tags(owner, self._fingerprint(owner)).items() if have.get(k) != _cut(v)}
        params = {} if parent is not None and parent.data.params else parent_params(owner, self._diffstat(owner))
        numbers: dict[str, float] = {}
        if parent is None or not parent.data.params:
            numbers.update(cost_metrics(owner))
        if ("arbot.verdict" in tags and "arbot.verdict" not in have) or "arbot.runs" in tags:
            numbers.update(result_metrics(owner))
        if tags or params or numbers:
            at, step = int(time.time() * 1000), len(owner.runs)
            self.client.log_batch(run_id, metrics=[Metric(k, v, at, step) for k, v in numbers.items()],
                                  params=[Param(k, _cut(v)) for k, v in params.items()],
                                  tags=[RunTag(k, v) for k, v in tags.items()])
        finished = isinstance(owner, ChampionRecord) or owner.decision is not None
        if finished and (parent is None or parent.info.status == "RUNNING"):
            end = _millis(owner.finished_at) if isinstance(owner, ExperimentRecord) else None
            self.client.set_terminated(run_id, "FINISHED", end_time=end)

    def _log_run(self, parent_id: str, owner: Owner, key: str, run: RunResult) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run_id = self._create(key, owner_key(owner), owner, f"{_name(owner).split(':')[0]} seed {run.seed} "
                              f"{'+'.join(run.splits)}", parent_id)
        at = int(time.time() * 1000)
        params = {"seed": run.seed, "commit": run.commit, "champion": run.champion or "", "splits": "+".join(run.splits)}
        tags = {"arbot.status": run.status, "arbot.reason": run.reason, "arbot.evaluator": run.evaluator_fingerprint,
                "arbot.sandbox": run.sandbox, "arbot.device": run.device, "arbot.job": run.job, "arbot.node": run.node,
                "arbot.flags": "; ".join(run.flags), "arbot.model_sha256": run.model_sha256}
        self.client.log_batch(run_id, metrics=[Metric(k, v, at, 0) for k, v in run_metrics(run).items()],
                              params=[Param(k, _cut(v)) for k, v in params.items()],
                              tags=[RunTag(k, _cut(v)) for k, v in tags.items() if v])
        if run.log_tail:
            self.client.log_text(run_id, run.log_tail, "log_tail.txt")
        if (model := self._model(run)) is not None:
            self.client.log_artifact(run_id, str(model), "model")
        self.client.set_terminated(run_id, "FINISHED" if run.ok else "FAILED")

    def _create(self, key: str, owner: str, rec: Owner, name: str, parent_id: str | None = None) -> str:
        tags = {"arbot.key": key, "arbot.owner": owner, "arbot.kind": "run" if parent_id else rec.kind,
                **({"mlflow.parentRunId": parent_id} if parent_id else {})}
        start = _millis(rec.started_at) if isinstance(rec, ExperimentRecord) and not parent_id else None
        return self.client.create_run(self.experiment_id(), start_time=start, tags=tags, run_name=name).info.run_id

    # --- lookups -----------------------------------------------------------------------------------------------
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.config.experiment)
            if found is not None and found.lifecycle_stage != "active":
                raise ConfigError(f"the MLflow experiment {self.config.experiment!r} was deleted: restore it "
                                  "(mlflow experiments restore) or name another in tracking.mlflow.experiment")
            self._experiment_id = found.experiment_id if found else self.client.create_experiment(self.config.experiment)
        return self._experiment_id

    def _search(self, where: str) -> list[Any]:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id()], filter_string=where, max_results=PAGE,
                                           page_token=token)
            runs += list(page)
            if not (token := page.token):
                return runs

    def _diffstat(self, owner: Owner) -> str:
        """The diff's summary (git's --shortstat, with the files), when the repository has both commits."""
        if self.repo is None or not isinstance(owner, ExperimentRecord):
            return ""
        try:
            files = self.repo.git.diff("--name-only", owner.parent, owner.commit).split()
            return f"{', '.join(files)}: {self.repo.git.diff('--shortstat', owner.parent, owner.commit).strip()}"
        except git.GitCommandError:
            return ""

    @staticmethod
    def _fingerprint(owner: Owner) -> str:
        return next((r.evaluator_fingerprint for r in owner.runs if r.evaluator_fingerprint), "")

    def _model(self, run: RunResult) -> Path | None:
        """The scored model file a local run kept, when it is the one the run scored (its hash)."""
        if self.models is None or not run.model_sha256:
            return None
        path = self.models / run.commit[:12] / f"seed-{run.seed}" / self.artifact
        return path if path.is_file() and sha256_file(path) == run.model_sha256 else None


def records(store: LocalForge) -> list[Owner]:
    """Every record in the notes: the experiments, then each champion commit measured."""
    experiments = store.experiments()
    commits = {r.parent for r in experiments} | {r.merged_as for r in experiments if r.merged_as}
    try:
        commits.add(store.champion())
    except (git.BadName, ValueError):
        pass
    champions = [c for c in (store.champion_record(sha) for sha in sorted(commits)) if c.runs]
    return [*experiments, *champions]


def _name(owner: Owner) -> str:
    if isinstance(owner, ExperimentRecord):
        return f"{owner.id}: {owner.proposal.hypothesis}"[:250]
    return f"champion {owner.commit[:7]}"


def parent_params(owner: Owner, diffstat: str) -> dict[str, Any]:
    """What was tried: the commit and its champion, the knob changes (new value; `.old`: the value before) or the
    diff's summary, the proposer's own params."""
    if isinstance(owner, ChampionRecord):
        return {"commit": owner.commit}
    p = owner.proposal
    params: dict[str, Any] = {"commit": owner.commit, "champion": owner.parent, "branch": owner.branch,
                              "proposer": p.proposer}
    for knob in p.knobs:
        params[f"knob.{knob.name}"], params[f"knob.{knob.name}.old"] = knob.new, knob.old
    if diffstat:
        params["diff"] = diffstat
    params.update({f"proposal.{k}": v for k, v in p.params.items()})
    return params


def parent_tags(owner: Owner, fingerprint: str) -> dict[str, str]:
    if isinstance(owner, ChampionRecord):
        return {"arbot.commit": owner.commit, "arbot.made_by": owner.experiment or "start",
                "arbot.runs": str(len(owner.runs)), **({"arbot.evaluator": fingerprint} if fingerprint else {})}
    tags = {"arbot.experiment": owner.id, "arbot.commit": owner.commit, "arbot.champion": owner.parent,
            "arbot.proposer": owner.proposal.proposer, "arbot.status": status(owner),
            "mlflow.note.content": "\n\n".join(x for x in (owner.proposal.hypothesis, owner.proposal.rationale) if x)}
    if fingerprint:
        tags["arbot.evaluator"] = fingerprint
    if (d := owner.decision) is not None:
        tags.update({"arbot.verdict": d.verdict, "arbot.rule": d.rule, "arbot.reason": d.reason})
    for name, value in (("review", owner.review), ("merged_as", owner.merged_as), ("reverted_as", owner.reverted_as)):
        if value:
            tags[f"arbot.{name}"] = value
    return tags


def cost_metrics(owner: Owner) -> dict[str, float]:
    if isinstance(owner, ChampionRecord):
        return {}
    c = owner.proposal.cost
    return {"llm.usd": c.usd, "llm.prompt_tokens": c.prompt_tokens, "llm.completion_tokens": c.completion_tokens}


def result_metrics(owner: Owner) -> dict[str, float]:
    """A record's numbers: the mean of its runs' metrics and their seconds; for an experiment, the decision's
    numbers (decision.*); logged at step = the number of runs they cover."""
    numbers: dict[str, float] = {**mean_metrics(owner.runs), "runs": len(owner.runs),
                                 "train_seconds": sum(r.train_seconds or 0 for r in owner.runs),
                                 "total_seconds": sum(r.total_seconds for r in owner.runs)}
    ok = [r for r in val_runs(owner.runs) if r.ok]
    for key in {k for r in ok for k in r.metrics}:
        values = [r.metrics[key] for r in ok if key in r.metrics]
        if len(values) > 1:
            numbers[f"{key}.sd"] = statistics.stdev(values)
    if isinstance(owner, ExperimentRecord) and owner.decision is not None:
        d = owner.decision
        for name in ("champion_mean", "candidate_mean", "effect", "delta", "spread", "p_value", "champion_runs",
                     "candidate_runs"):
            if (value := getattr(d, name)) is not None:
                numbers[f"decision.{name}"] = float(value)
    return numbers

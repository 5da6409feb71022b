"""Progress you can watch: the champion's trajectory, the stale rate and a running campaign's state, from the
records (and the status file a running `arbot run` writes). `arbot status`, `arbot plot` and `/healthz` show
these; nothing here writes."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from bot.core.records import ChampionRecord, ExperimentRecord, LostRun, Metric, ok_metric


@dataclass(frozen=True)
class Point:
    """One experiment on the trajectory: its measured mean (None when it has no ok run) and the champion's
    value and noise (the sd of its single runs) when it was decided."""

    number: int
    experiment: str
    verdict: str
    value: float | None
    champion: float | None
    noise: float | None
    merged: bool


def trajectory(experiments: list[ExperimentRecord], champions: dict[str, ChampionRecord], metric: Metric) -> list[Point]:
    """Each decided experiment in order, with the champion it was measured against."""
    points = []
    for rec in sorted((r for r in experiments if r.decision is not None), key=lambda r: r.number):
        values = ok_metric(rec.runs, metric.key())
        base = ok_metric(champions[rec.parent].runs, metric.key()) if rec.parent in champions else []
        points.append(Point(number=rec.number, experiment=rec.id, verdict=rec.decision.verdict,
                            value=statistics.fmean(values) if values else None,
                            champion=statistics.fmean(base) if base else None,
                            noise=statistics.stdev(base) if len(base) > 1 else None, merged=bool(rec.merged_as)))
    return points


def champion_steps(log: list[tuple[str, dict[str, str]]]) -> list[tuple[str, str]]:
    """The champion's trajectory from the merge trailers (LocalForge.champion_log, newest first): ("start", its
    first baseline), then (experiment, its metric) for each merged win, oldest first; values as written."""
    merges = [t for _, t in reversed(log) if "Metric" in t and "Baseline" in t]
    if not merges:
        return []
    return [("start", _value(merges[0]["Baseline"]))] + [(t["Experiment"], _value(t["Metric"])) for t in merges]


def _value(trailer: str) -> str:
    """A metric trailer's value: "<key>=1.2345" -> "1.2345"."""
    return trailer.split("=", 1)[-1]


def stale_rate(experiments: list[ExperimentRecord]) -> tuple[float | None, int, int]:
    """(share of decided experiments closed as stale: measured again because the champion moved while they were
    in flight, the stale count, the decided count)."""
    decided = [r for r in experiments if r.decision is not None]
    stale = sum(r.decision.rule == "stale" for r in decided)
    return (stale / len(decided) if decided else None), stale, len(decided)


@dataclass(frozen=True)
class Costs:
    """What the campaign cost: runner seconds (every run of the experiments and of the champions they were measured
    against), LLM spend, and the merged wins they bought."""

    runner_seconds: float
    llm_usd: float
    wins: int

    @property
    def seconds_per_win(self) -> float | None:
        return self.runner_seconds / self.wins if self.wins else None

    @property
    def usd_per_win(self) -> float | None:
        return self.llm_usd / self.wins if self.wins else None


def costs(experiments: list[ExperimentRecord], champions: dict[str, ChampionRecord]) -> Costs:
    """`champions`: the records of the experiments' parents."""
    champion_runs = [r for sha in {rec.parent for rec in experiments} if sha in champions for r in champions[sha].runs]
    seconds = sum(r.total_seconds for rec in experiments for r in rec.runs) + sum(r.total_seconds for r in champion_runs)
    return Costs(runner_seconds=seconds, llm_usd=sum(rec.proposal.cost.usd for rec in experiments),
                 wins=sum(1 for rec in experiments if rec.merged_as))


def live(status_file: Path) -> dict | None:
    """The state a running `arbot run` last wrote, or None when none is running (no file, or its process ended)."""
    try:
        state = json.loads(status_file.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


def lost_runs(owners: list[ExperimentRecord | ChampionRecord]) -> list[tuple[str, LostRun]]:
    """Every run the machine lost (each was asked for again), oldest first, with whose it was: an experiment's
    id, or `champion <sha>`."""
    found = [(o.id if isinstance(o, ExperimentRecord) else f"champion {o.commit[:7]}", lost)
             for o in owners for lost in o.lost]
    return sorted(found, key=lambda f: f[1].at)


def lost_line(lost: list[tuple[str, LostRun]]) -> str | None:
    """`arbot status`'s line on lost runs: how many, and the last with its reason's first line."""
    if not lost:
        return None
    whose, last = lost[-1]
    reason = (last.reason.splitlines() or [""])[0]
    return (f"lost runs: {len(lost)} (the machine's, each made again; `arbot log` lists them); last at {last.at}: "
            f"{whose} {last.job}{' on ' + last.node if last.node else ''}: {reason}")

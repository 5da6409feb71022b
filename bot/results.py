"""Flat views of experiment records: the results.tsv row, shared by the export and `arbot log`."""

from __future__ import annotations

from statistics import mean

from bot.core.records import ExperimentRecord, Metric, ok_metric
from runner.result import clean_text

ARBOT_COLUMNS = [
    "experiment", "verdict", "rule", "delta", "p_value", "runs", "seeds", "proposer",
    "train_seconds", "total_seconds", "parent", "merged_as", "evaluator", "reason",
]
STATUS = {"win": "keep", "loss": "discard"}  # crash, timeout and rejected keep their own names


def status(rec: ExperimentRecord) -> str:
    """autoresearch's status word; a flagged win waiting for a human reads `review` until approved."""
    if rec.decision is None:
        return "running"
    if rec.review == "needed":
        return "review"
    return STATUS.get(rec.decision.verdict, rec.decision.verdict)


def columns(metric: Metric) -> list[str]:
    """autoresearch's columns first (its metric column named after ours), then arbot's own."""
    return ["commit", metric.key(), "memory_gb", "status", "description", *ARBOT_COLUMNS]


def row(rec: ExperimentRecord, metric: Metric) -> dict[str, str]:
    d = rec.decision
    values = ok_metric(rec.runs, metric.key())
    memory = [r.peak_memory_gb for r in rec.runs if r.peak_memory_gb is not None]
    fingerprint = next((r.evaluator_fingerprint for r in rec.runs if r.evaluator_fingerprint), "")
    return {
        "commit": rec.commit[:7],
        metric.key(): f"{mean(values):.6f}" if values else "0.000000",  # autoresearch's format
        "memory_gb": f"{max(memory):.2f}" if memory else "0.00",
        "status": status(rec),
        "description": rec.proposal.hypothesis,
        "experiment": rec.id,
        "verdict": d.verdict if d else "",
        "rule": d.rule if d else "",
        "delta": metric.fmt(d.delta, signed=True) if d and d.delta is not None else "",
        "p_value": f"{d.p_value:.3g}" if d and d.p_value is not None else "",
        "runs": str(len(rec.runs)),
        "seeds": ",".join(str(r.seed) for r in rec.runs),
        "proposer": rec.proposal.proposer,
        "train_seconds": f"{sum(r.train_seconds or 0 for r in rec.runs):.1f}",
        "total_seconds": f"{sum(r.total_seconds for r in rec.runs):.1f}",
        "parent": rec.parent[:7],
        "merged_as": (rec.merged_as or "")[:7],
        "evaluator": fingerprint or "",
        "reason": d.reason if d else "",
    }


def cell(text: str) -> str:
    """One TSV cell: on one line, without tabs or control characters (a hypothesis or a reason is free text)."""
    return clean_text(" ".join(text.split("\n")).replace("\t", " ").replace("\r", " "))


def results_table(records: list[ExperimentRecord], metric: Metric) -> str:
    cols = columns(metric)
    lines = ["\t".join(cols)]
    lines += ["\t".join(cell(row(r, metric)[c]) for c in cols) for r in records]
    return "\n".join(lines) + "\n"

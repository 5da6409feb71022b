#!/usr/bin/env python3
"""Render the `arbot/evaluate` check run from the runner's result JSON (the `report` job of arbot-evaluate.yml).

The artifact comes from a job that ran untrusted training code, so it is data only: it is parsed as JSON,
every field is checked for its type, text is escaped, and the log tail is fenced so it cannot break out.
Standard library only: the report job installs arbot without its dependencies (`pip install --no-deps`) and
runs this module as `python -I -m bot.github.report`.

Usage: python -m bot.github.report --result result.json --head-sha SHA [--champion-sha SHA] [--log evaluate.log]
                                  [--baseline champion.json | --notes DIR] [--external-id KEY] [--metric NAME]
                                  [--out check-run.json] [--summary FILE]
Writes the body of POST /repos/{owner}/{repo}/check-runs to --out (or stdout) and, with --summary,
appends the Markdown summary there (pass $GITHUB_STEP_SUMMARY). --external-id is the run request's key, by
which the bot finds this result (bot.server.driver).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

EVALUATE_CHECK = "arbot/evaluate"  # the check run this script renders, which the bot reads
VAL_PREFIX = "val_"  # the evaluator reports a metric as <split>_<name> (bot.core.records.Metric.key): val decides
STATUSES = {"ok", "crash", "timeout", "rejected"}
MAX_TEXT = 60_000  # the API caps output.summary and output.text at 65535 characters
LOG_LINES = 60


RESULT_OPEN, RESULT_CLOSE = "<!-- arbot:result ", " -->"
EMBEDDED = ("status", "commit", "champion", "metrics", "seed", "splits", "steps", "tokens", "tokens_per_second", "train_seconds",
            "total_seconds", "peak_memory_gb", "device", "params", "evaluator_fingerprint", "sandbox", "flags", "reason")


class BadResult(ValueError):
    """The artifact is missing or not a result record."""


def _num(d: dict, key: str) -> float | None:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _str(d: dict, key: str, limit: int = 500) -> str:
    v = d.get(key)
    return v[:limit] if isinstance(v, str) else ""


def load_runs(text: str) -> list[dict]:
    """One RunResult (the output of `arbot evaluate --json`) or a list of them, checked field by field."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise BadResult(f"the result is not JSON: {e}") from e
    except RecursionError as e:  # nesting deeper than the parser's stack: no run record nests like that
        raise BadResult("the result is JSON nested too deeply to be a run record") from e
    runs = data if isinstance(data, list) else [data]
    if not runs:
        raise BadResult("the result holds no run")
    for r in runs:
        if not isinstance(r, dict) or r.get("status") not in STATUSES or not isinstance(r.get("commit"), str):
            raise BadResult("the result is not a run record (status and commit are required)")
        metrics = r.get("metrics")
        if metrics is not None and not (isinstance(metrics, dict) and all(isinstance(k, str) for k in metrics)):
            raise BadResult("metrics must map names to numbers")
    return runs


def val_metric(runs: list) -> str | None:
    """The metric the result reports for val (the first, when an evaluator reports several): the one shown."""
    return next((k for r in runs if isinstance(r, dict) and isinstance(r.get("metrics"), dict)
                 for k in r["metrics"] if isinstance(k, str) and k.startswith(VAL_PREFIX)), None)


def baseline_values(text: str | None, metric: str | None = None) -> list[float]:
    """The champion's measured values of `metric` (default: its val metric), from its ChampionRecord JSON (the git
    note) or a list of runs."""
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError:
        return []
    runs = data.get("runs", []) if isinstance(data, dict) else data if isinstance(data, list) else []
    metric = metric or val_metric(runs)
    out = []
    for r in runs:
        if isinstance(r, dict) and r.get("status") == "ok" and isinstance(r.get("metrics"), dict):
            v = _num(r["metrics"], metric)
            if v is not None:
                out.append(v)
    return out


def note_path(notes_dir: Path, sha: str) -> Path | None:
    """The file of `sha`'s note in a checkout of refs/notes/arbot (flat, or git's fan-out ab/cdef...)."""
    if not re.fullmatch(r"[0-9a-f]{40}", sha):
        return None
    for rel in (sha, f"{sha[:2]}/{sha[2:]}", f"{sha[:2]}/{sha[2:4]}/{sha[4:]}"):
        path = notes_dir / rel
        if path.is_file():
            return path
    return None


def embed(runs: list[dict]) -> str:
    """The checked runs as a hidden block in the check run summary, for the bot's decision (no log tail).

    `--` occurs in valid JSON only inside strings, so writing it as `-\\u002d` keeps the comment unbreakable."""
    slim = [{k: r[k] for k in EMBEDDED if k in r} for r in runs]
    for r in slim:
        if isinstance(r.get("reason"), str):
            r["reason"] = r["reason"][:500]
    text = json.dumps(slim, separators=(",", ":"), sort_keys=True).replace("--", "-\\u002d")
    return RESULT_OPEN + text + RESULT_CLOSE


def extract(summary: str) -> list[dict]:
    """The runs embedded in an arbot/evaluate summary (BadResult when there are none or they are malformed)."""
    start = summary.rfind(RESULT_OPEN)
    end = summary.find(RESULT_CLOSE, start + len(RESULT_OPEN)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise BadResult("the check run carries no arbot:result block")
    return load_runs(summary[start + len(RESULT_OPEN):end])


def md(text: str) -> str:
    """Text safe inside a Markdown table cell: no HTML, no pipes, no line breaks, no mentions."""
    text = re.sub(r"[\r\n]+", " ", text)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("@", "@\u200b")


def fence(text: str) -> str:
    """A code block that no backtick run inside `text` can close."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}text\n{text}\n{ticks}"


def fmt(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def render(runs: list[dict], head_sha: str, baseline: list[float], log_text: str = "",
           metric: str | None = None) -> dict:
    """The check run (POST body) of the run(s) of `head_sha`, the commit trained: success when every run is ok,
    failure otherwise. `metric` defaults to the runs' val metric. The verdict is arbot/verdict's."""
    metric = metric or val_metric(runs) or f"{VAL_PREFIX}metric"
    problems = []
    for r in runs:
        if r["commit"] != head_sha:
            problems.append(f"a run is for commit {md(r['commit'][:40])}, not the commit trained {head_sha}")
        if r["status"] != "ok":
            problems.append(f"seed {int(_num(r, 'seed') or 0)}: {r['status']}: {md(_str(r, 'reason'))}")
    values = [v for r in runs if r["status"] == "ok" and (v := _num(r.get("metrics") or {}, metric)) is not None]
    if not problems and not values:
        problems.append(f"no run reported {metric}")
    cand, base = mean(values), mean(baseline)
    delta = None if cand is None or base is None else cand - base
    fingerprints = sorted({_str(r, "evaluator_fingerprint", 80) for r in runs} - {""})
    seeds = ", ".join(str(int(_num(r, "seed") or 0)) for r in runs)

    lines = [
        f"| {metric} | baseline | delta | seeds | evaluator |",
        "| --- | --- | --- | --- | --- |",
        f"| {fmt(cand)} | {fmt(base)} ({len(baseline)} runs) | {'n/a' if delta is None else f'{delta:+.4f}'} "
        f"| {seeds} | {md(', '.join(fingerprints) or 'unknown')} |",
        "",
        "| seed | status | " + metric + " | steps | tokens/s | peak memory (GB) | training s | total s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        steps = _num(r, "steps")
        lines.append(
            f"| {int(_num(r, 'seed') or 0)} | {r['status']} | {fmt(_num(r.get('metrics') or {}, metric))} "
            f"| {'n/a' if steps is None else int(steps)} | {fmt(_num(r, 'tokens_per_second'), 0)} "
            f"| {fmt(_num(r, 'peak_memory_gb'), 2)} | {fmt(_num(r, 'train_seconds'), 1)} | {fmt(_num(r, 'total_seconds'), 1)} |"
        )
    flags = sorted({f[:200] for r in runs for f in (r.get("flags") or []) if isinstance(f, str)})
    if flags:  # what the runner's diff inspection found suspicious: a win with flags waits for a human
        lines += ["", "Flags: " + "; ".join(md(f) for f in flags)]
    summary = "\n".join(lines)
    text = ""
    if problems:
        summary += "\n\n" + "\n".join(f"- {p}" for p in problems)
        tails = [_str(r, "log_tail", 20_000) for r in runs if r["status"] != "ok"] + [log_text]
        tail = "\n".join(t for t in tails if t).splitlines()[-LOG_LINES:]
        if tail:
            text = "Log tail:\n\n" + fence("\n".join(tail)[-MAX_TEXT + 100:])
    title = (f"{metric} {fmt(cand)}" + ("" if delta is None else f" ({delta:+.4f} vs champion)")) if not problems \
        else f"evaluation failed: {problems[0]}"[:200]
    block = embed(runs)
    out = {
        "name": EVALUATE_CHECK,
        "head_sha": head_sha,
        "status": "completed",
        "conclusion": "failure" if problems else "success",
        "output": {"title": title, "summary": summary[:MAX_TEXT - len(block) - 2] + "\n\n" + block},
    }
    if text:
        out["output"]["text"] = text
    return out


def render_missing(head_sha: str, why: str, log_text: str = "") -> dict:
    """The check run when the train job left no usable result (it crashed, was cancelled, or the JSON is bad)."""
    tail = "\n".join(log_text.splitlines()[-LOG_LINES:])
    out = {
        "name": EVALUATE_CHECK, "head_sha": head_sha, "status": "completed", "conclusion": "failure",
        "output": {"title": f"no result: {why}"[:200], "summary": f"The train job left no usable result: {md(why)}"},
    }
    if tail:
        out["output"]["text"] = "Log tail:\n\n" + fence(tail[-MAX_TEXT + 100:])
    return out


def read(path: Path | None) -> str:
    try:
        return path.read_text(errors="replace") if path else ""
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description="Render the arbot/evaluate check run from a result JSON.")
    ap.add_argument("--result", type=Path, required=True)
    ap.add_argument("--head-sha", required=True)
    ap.add_argument("--champion-sha", help="the champion whose note (under --notes) is the baseline")
    ap.add_argument("--log", type=Path)
    ap.add_argument("--baseline", type=Path, help="the champion's record (git note) or a list of its runs")
    ap.add_argument("--notes", type=Path, help="a checkout of refs/notes/arbot: the baseline is the champion's note")
    ap.add_argument("--metric", help="the metric to show (default: the one the result reports for val)")
    ap.add_argument("--details-url", help="the workflow run's URL (a link on the check run)")
    ap.add_argument("--external-id", help="the run request's key: the bot finds the result by it")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--summary", type=Path, help="append the Markdown summary here ($GITHUB_STEP_SUMMARY)")
    args = ap.parse_args(argv)
    if not re.fullmatch(r"[0-9a-f]{40}", args.head_sha):
        ap.error("--head-sha must be a full commit sha")
    log_text = read(args.log)
    try:
        if not args.result.exists():
            raise BadResult("the result artifact is missing")
        runs = load_runs(args.result.read_text(errors="replace"))
        baseline_file = args.baseline
        if baseline_file is None and args.notes is not None and args.champion_sha and args.notes.is_dir():
            baseline_file = note_path(args.notes, args.champion_sha)
        metric = args.metric or val_metric(runs)
        check = render(runs, args.head_sha, baseline_values(read(baseline_file), metric), log_text, metric)
    except BadResult as e:
        check = render_missing(args.head_sha, str(e), log_text)
    if args.details_url and re.fullmatch(r"https?://[^\s]+", args.details_url):
        check["details_url"] = args.details_url
    if args.external_id:
        check["external_id"] = args.external_id[:200]
    payload = json.dumps(check, indent=1)
    if args.out:
        args.out.write_text(payload + "\n")
    else:
        print(payload)
    if args.summary:
        with args.summary.open("a") as f:
            f.write(f"## {EVALUATE_CHECK}: {check['conclusion']}\n\n{check['output']['title']}\n\n{check['output']['summary']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

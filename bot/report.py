"""`arbot report`: the campaign against its starting point (the human-tuned baseline), in Markdown and in one
self-contained HTML file.

The final champion and the baseline are both measured again with K fresh seeds (bot.audit.remeasure, the audit's
machinery; both scored by the final champion's evaluator), and the improvement is given with its confidence
interval (Welch's t). `--from-notes` compares the runs already recorded for both commits instead, training
nothing. Each merged win is listed with its effect, its rule and whether its audit replicated it; the campaign's
cost, regression rate and stale rate are the lines `arbot status` prints (`campaign_lines`: one computation).
"""

from __future__ import annotations

import base64
import html
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bot.audit import CONFIDENCE, REPORT_SEED_OFFSET, audit_summary, regression_rate, remeasure
from bot.core.records import AuditRecord, ExperimentRecord, Metric, ok_metric, oriented
from bot.forges.local import LocalForge
from bot.plot import plot
from bot.progress import champion_steps, costs, stale_rate, trajectory

MARKDOWN, HTML, PLOT = "report.md", "report.html", "trajectory.png"
COST = "Cost and reliability"  # the section whose lines are `arbot status`'s


def campaign_lines(forge: LocalForge, recs: list[ExperimentRecord]) -> list[str]:
    """Runner time and LLM spend, in total and per promoted win; the audited regression rate; the stale rate.
    `arbot status` and `arbot report` both print these."""
    c = costs(recs, forge.champion_records({rec.parent for rec in recs}))
    per_win = (f"{c.seconds_per_win:.0f} runner-s" + (f", ${c.usd_per_win:.4f} LLM" if c.llm_usd else "")
               if c.wins else "no wins yet")
    rate, audited = regression_rate(recs)
    regression = f"{rate:.0%} of {audited} audited wins did not replicate" if audited else "no win audited yet (arbot audit)"
    stale, n_stale, decided = stale_rate(recs)
    return [f"runner seconds: {c.runner_seconds:.0f}" + (f", LLM spend: ${c.llm_usd:.4f}" if c.llm_usd else ""),
            f"cost per confirmed improvement: {per_win}", f"regression rate: {regression}",
            f"stale rate: {stale:.0%} ({n_stale} of {decided} decided experiments measured again because the "
            "champion moved while they were in flight)" if stale is not None else "stale rate: nothing decided yet"]


@dataclass
class Comparison:
    """The final champion against the baseline: each side's values of the metric, the improvement (positive: the
    champion is better) and its interval."""

    baseline: str
    final: str
    baseline_values: list[float]
    final_values: list[float]
    remeasured: bool  # fresh seeds now (else: the runs recorded in the notes)
    seeds: list[int] = field(default_factory=list)
    beside: bool = False  # re-measured with each seed's pair at once, on two workers' shares
    effect: float | None = None
    low: float | None = None
    high: float | None = None
    p_value: float | None = None

    @classmethod
    def of(cls, baseline: str, final: str, base: list[float], fin: list[float], metric: Metric, remeasured: bool,
           seeds: list[int], beside: bool = False) -> Comparison:
        c = cls(baseline, final, base, fin, remeasured, seeds, beside)
        if len(base) >= 2 and len(fin) >= 2:
            from scipy import stats  # imported here: scipy.stats costs most of every `arbot` command's start-up

            ob, of = oriented(base, metric.direction), oriented(fin, metric.direction)  # lower is better
            test = stats.ttest_ind(ob, of, equal_var=False)
            interval = test.confidence_interval(CONFIDENCE)
            c.effect, c.low, c.high = statistics.fmean(ob) - statistics.fmean(of), interval.low, interval.high
            c.p_value = float(stats.ttest_ind(of, ob, equal_var=False, alternative="less").pvalue)
        return c


def compare(forge: LocalForge, metric: Metric, baseline: str, final: str, runner=None, runs: int = 3,
            on_run=None, at: str = "", beside=None) -> Comparison:
    """Re-measure both commits with `runs` fresh seeds (scored by the final champion's evaluator; `beside`: each
    seed's baseline on a second runner while the final champion trains on `runner`, as `bot.audit.remeasure`), or,
    with no runner, compare the runs the notes recorded for them."""
    if runner is None:
        base, fin = (ok_metric(forge.champion_record(sha).runs, metric.key()) for sha in (baseline, final))
        return Comparison.of(baseline, final, base, fin, metric, remeasured=False, seeds=[])
    seeds = list(range(REPORT_SEED_OFFSET, REPORT_SEED_OFFSET + runs))
    a: AuditRecord = remeasure(runner, final, baseline, final, seeds, 0.05, metric, at, on_run, label="champion",
                               recorded=forge.champion_record(final).runs, beside=beside)
    return Comparison.of(baseline, final, a.baseline, a.candidate, metric, remeasured=True, seeds=seeds,
                         beside=beside is not None)


def first_champion(forge: LocalForge) -> str:
    """The campaign's starting point: the champion its first experiment was measured against."""
    recs = forge.experiments()
    return recs[0].parent if recs else forge.champion()


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    table: tuple[list[str], list[list[str]]] | None = None


@dataclass
class Report:
    title: str
    sections: list[Section]
    plot: Path | None


def build(forge: LocalForge, metric: Metric, comparison: Comparison, out: Path) -> Report:
    """The report's sections; the trajectory is drawn into `out`."""
    recs = forge.experiments()
    fmt = metric.fmt
    c = comparison
    key = metric.key()
    how = "from the runs recorded in the notes (`--from-notes`: nothing re-measured)"
    if c.remeasured and c.seeds:
        how = (f"both re-measured now with {len(c.seeds)} fresh seeds each ({c.seeds[0]}..{c.seeds[-1]}), scored by "
               "the final champion's evaluator" + (", each seed's two runs at once on two workers (the load the "
                                                   "campaign's runs had)" if c.beside else ""))
    head = Section("Final champion against the baseline", [
        f"Baseline {c.baseline[:7]}, final champion {c.final[:7]}; {key}, {metric.better} is better; {how}."])
    if c.baseline == c.final:
        head.lines.append("No win was merged: the champion is still the baseline.")
    rows = [["baseline", c.baseline[:7], _summary(c.baseline_values, metric)],
            ["final champion", c.final[:7], _summary(c.final_values, metric)]]
    head.table = (["", "commit", f"{key} (mean ± sd, runs)"], rows)
    if c.effect is not None:
        pct = f" ({c.effect / abs(statistics.fmean(c.baseline_values)):+.1%} of the baseline)" \
            if statistics.fmean(c.baseline_values) else ""
        head.lines.append(f"Improvement: {fmt(c.effect, signed=True)}{pct}, {CONFIDENCE:.0%} interval "
                          f"[{fmt(c.low, signed=True)}, {fmt(c.high, signed=True)}] (Welch's t), one-sided "
                          f"p={c.p_value:.3g}. Positive is better.")
    elif c.baseline != c.final:
        head.lines.append("Improvement: not measured (fewer than 2 successful runs on a side): run `arbot report` "
                          "without --from-notes to re-measure both.")

    wins = [r for r in recs if r.merged_as]
    win_rows = [[r.id, r.proposal.hypothesis, fmt(r.decision.delta, signed=True) if r.decision.delta is not None
                 else "n/a", r.decision.rule, f"{r.decision.p_value:.3g}" if r.decision.p_value is not None else "",
                 replicated(r, metric), f"by {r.reverted_as[:7]}" if r.reverted_as else "no"] for r in wins]
    merged = Section("Merged wins", [f"{len(wins)} of {len(recs)} experiments merged; the effect is "
                                     f"{key} candidate − champion at the decision."] if recs else ["No experiment yet."])
    if win_rows:
        merged.table = (["experiment", "change", "effect", "rule", "p", "replicated (arbot audit)", "reverted"], win_rows)

    counts: dict[str, int] = {}
    for r in recs:
        verdict = r.decision.verdict if r.decision else "unfinished"
        counts[verdict] = counts.get(verdict, 0) + 1
    steps = champion_steps(forge.champion_log())
    spent = costs(recs, forge.champion_records({r.parent for r in recs}))
    per_win = f", {spent.seconds_per_win / 3600:.2f} per merged win" if spent.wins else ""
    campaign = Section(COST, [
        f"experiments: {len(recs)} " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())),
        *campaign_lines(forge, recs),
        f"runner hours: {spent.runner_seconds / 3600:.2f}{per_win}"])
    if steps:
        campaign.lines.append(f"champion trajectory ({key}, one step per merged win): "
                              + " -> ".join(value for _, value in steps))

    points = trajectory(recs, forge.champion_records({r.parent for r in recs}), metric)
    drawn = plot(points, metric, out / PLOT, title="trajectory") if points else None
    return Report(f"arbot campaign report: {key} {fmt(statistics.fmean(c.baseline_values)) if c.baseline_values else 'n/a'}"
                  f" -> {fmt(statistics.fmean(c.final_values)) if c.final_values else 'n/a'}",
                  [head, merged, campaign], drawn)


def replicated(rec: ExperimentRecord, metric: Metric) -> str:
    """Its latest audit, as `arbot audit` printed it, or that it was not audited."""
    if not rec.audits:
        return "not audited"
    a = rec.audits[-1]
    return f"{'yes' if a.replicates else 'no'} ({audit_summary(a, metric)})"


def _summary(values: list[float], metric: Metric) -> str:
    if not values:
        return "not measured"
    spread = f" ± {metric.fmt(statistics.stdev(values))}" if len(values) > 1 else ""
    return f"{metric.fmt(statistics.fmean(values))}{spread} ({len(values)} runs)"


def markdown(report: Report) -> str:
    out = [f"# {report.title}", ""]
    for s in report.sections:
        out += [f"## {s.title}", ""]
        bullets = s.title == COST
        for line in s.lines:
            out += [f"- {line}"] if bullets else [line, ""]
        if s.table:
            head, rows = s.table
            out += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        out.append("")
    if report.plot is not None:
        out += ["## Trajectory", "", f"![trajectory]({report.plot.name})", ""]
    return "\n".join(out)


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
         "th{background:#f3f3f3}img{max-width:100%}")


def to_html(report: Report) -> str:
    """One self-contained page: the plot embedded as a data URI, no external resource."""
    e = html.escape
    body = [f"<h1>{e(report.title)}</h1>"]
    for s in report.sections:
        body.append(f"<h2>{e(s.title)}</h2>")
        body += [f"<p>{e(line)}</p>" for line in s.lines]
        if s.table:
            head, rows = s.table
            body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
                        + "</table>")
    if report.plot is not None:
        data = base64.b64encode(report.plot.read_bytes()).decode()
        body += ["<h2>Trajectory</h2>", f'<img alt="trajectory" src="data:image/png;base64,{data}">']
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(report.title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def write(report: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKDOWN).write_text(markdown(report))
    (out / HTML).write_text(to_html(report))
    return out / MARKDOWN, out / HTML

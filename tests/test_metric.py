"""The metric is configuration (evaluator.metric, .direction, .precision): every surface follows it, and no
product code names the built-in one."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

from rich.console import Console

from bot.cli import champion_summary, describe, experiment_table
from bot.github import report
from bot.knobs import find_knobs
from bot.proposers.base import ProposalContext
from bot.proposers.prompt import build_prompt
from bot.core.records import ChampionRecord, Decision, ExperimentRecord, Metric, Proposal, RunResult
from bot.results import results_table

ROOT = Path(__file__).resolve().parent.parent
ACC = Metric(name="acc", direction="maximize", precision=3)
HEAD, CHAMP = "a" * 40, "b" * 40


def acc_run(value: float, seed: int = 0, commit: str = HEAD, **metrics: float) -> RunResult:
    return RunResult(status="ok", commit=commit, champion=CHAMP, seed=seed, metrics={**metrics, "val_acc": value},
                     peak_memory_gb=1.0, evaluator_fingerprint="fp")


def acc_experiment() -> ExperimentRecord:
    win = Decision(verdict="win", rule="confirm:pooled", reason="higher", metric="val_acc", champion_mean=0.91,
                   candidate_mean=0.935, effect=0.025, p_value=0.001, champion_runs=3, candidate_runs=2)
    return ExperimentRecord(id="exp-1", number=1, branch="arbot/exp-1", commit=HEAD, parent=CHAMP,
                            proposal=Proposal(proposer="llm", hypothesis="wider", files={}),
                            runs=[acc_run(0.93), acc_run(0.94, 1)], decision=win)


def test_no_product_code_names_the_built_in_metric():
    named = [f"{p.relative_to(ROOT)}:{n}" for d in ("bot", "runner") for p in sorted((ROOT / d).rglob("*"))
             if p.is_file() and p.suffix in (".py", ".yml", ".yaml", ".md", ".txt", ".json")
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if "val_bpb" in line]
    assert named == []


def test_results_and_log_show_the_configured_metric():
    rec = acc_experiment()
    header, line = results_table([rec], ACC).splitlines()
    row = dict(zip(header.split("\t"), line.split("\t")))
    assert header.split("\t")[:5] == ["commit", "val_acc", "memory_gb", "status", "description"]
    assert (row["val_acc"], row["delta"], row["status"]) == ("0.935000", "+0.025", "keep")
    out = StringIO()
    Console(file=out, width=200).print(experiment_table([rec], ACC))
    assert "val_acc" in out.getvalue() and "+0.025" in out.getvalue() and "val_bpb" not in out.getvalue()
    assert "val_acc 0.935 " in describe(rec, ACC)  # evaluator.precision, as everywhere it is shown
    assert champion_summary([acc_run(0.9, 0, CHAMP), acc_run(0.92, 1, CHAMP)], ACC) == "val_acc 0.910 ± 0.014 (2 runs)"


def test_the_prompt_names_the_metric_and_its_direction():
    train = (ROOT / "target" / "train.py").read_text()
    ctx = ProposalContext(champion=CHAMP, script_path="target/train.py", files={"target/train.py": train},
                          knobs=find_knobs(train), history=[acc_experiment()], metric=ACC)
    system, user, kept = build_prompt(ctx, ["target/train.py"], token_budget=24000)
    assert "scores val_acc" in system and "higher is better" in system and "make val_acc higher" in system
    assert "val_bpb" not in system and "lower" not in system
    assert "improve val_acc" in user and "val_acc 0.935; delta +0.025 vs champion" in user and kept == 1
    minimize = build_prompt(ProposalContext(champion=CHAMP, script_path="target/train.py",
                                            files={"target/train.py": train}, knobs=[]), ["target/train.py"], 24000)[0]
    assert "scores val_bpb" in minimize and "lower is better" in minimize


def test_the_check_run_learns_the_metric_from_the_result(tmp_path):
    """report.py runs without arbot: it shows the metric the result reports for val (or --metric)."""
    runs = [json.loads(acc_run(0.93, val_loss=0.2).model_dump_json())]
    baseline = ChampionRecord(commit=CHAMP, runs=[acc_run(0.90, 0, CHAMP), acc_run(0.92, 1, CHAMP)])
    (tmp_path / "result.json").write_text(json.dumps(runs))
    (tmp_path / "champion.json").write_text(baseline.model_dump_json())
    base = [sys.executable, str(ROOT / "bot" / "github" / "report.py"), "--result", str(tmp_path / "result.json"),
            "--head-sha", HEAD, "--baseline", str(tmp_path / "champion.json"), "--out", str(tmp_path / "check.json")]
    subprocess.run(base, check=True, cwd=tmp_path)  # its own process: no bot import
    check = json.loads((tmp_path / "check.json").read_text())
    assert check["conclusion"] == "success"
    assert check["output"]["title"] == "val_loss 0.2000"  # no baseline of it
    assert report.val_metric(runs) == "val_loss"  # the first val metric the evaluator reported
    subprocess.run(base + ["--metric", "val_acc"], check=True, cwd=tmp_path)
    check = json.loads((tmp_path / "check.json").read_text())
    assert check["output"]["title"] == "val_acc 0.9300 (+0.0200 vs champion)"
    assert "| val_acc | baseline | delta |" in check["output"]["summary"]
    only = report.render(report.load_runs(acc_run(0.95).model_dump_json()), HEAD,
                         report.baseline_values(baseline.model_dump_json()))
    assert only["output"]["title"] == "val_acc 0.9500 (+0.0400 vs champion)"

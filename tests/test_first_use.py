"""What a new user sees first (issue 26, item 7): a dirty tree named by `arbot run`, a YAML boolean where a word
was meant, an experiment with no score, a verdict said once, `arbot log` readable at 80 columns."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import git
import pytest
import yaml
from rich.console import Console

from bot.config import ConfigError, load_config
from bot.core.records import Decision, Metric, Proposal, RunResult
from bot.forges.local import LocalForge

ARBOT = [sys.executable, "-m", "bot"]


def arbot(repo: git.Repo, *args: str, columns: int = 200) -> subprocess.CompletedProcess:
    return subprocess.run([*ARBOT, *args, "--repo", repo.working_tree_dir], capture_output=True, text=True,
                          env={"COLUMNS": str(columns), "PATH": "/usr/bin:/bin",
                               "ARBOT_SIGNING_KEY": os.environ["ARBOT_SIGNING_KEY"]}, timeout=300)


@pytest.mark.parametrize("value", ["off", "on", "no", "yes"])
def test_a_yaml_boolean_where_a_word_is_meant_says_to_quote_it(tmp_path, value):
    (tmp_path / "arbot.yml").write_text(f"target:\n  sandbox: {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "arbot.yml")
    text = str(e.value)
    assert f"target.sandbox: Input should be 'auto', 'require' or 'off' (got {yaml.safe_load(value)!r})" in text
    meant = yaml.safe_load(value)
    assert (f"YAML reads unquoted {'off/no/false' if not meant else 'on/yes/true'} as the boolean {meant}: quote the "
            f"word you meant (e.g. sandbox: \"{'off' if not meant else 'on'}\")") in text
    (tmp_path / "arbot.yml").write_text('target:\n  sandbox: "off"\n')
    assert load_config(tmp_path / "arbot.yml").target.sandbox == "off"  # the fix works


def records(repo: git.Repo) -> LocalForge:
    """Two finished experiments: one rejected before any run was scored, one loss with a score."""
    forge = LocalForge(repo)
    champion = forge.ensure_champion()
    for hypothesis, status, verdict, rule, value in (("a change rejected by the guard", "rejected", "rejected",
                                                      "rejected", None),
                                                     ("a change that scored worse", "ok", "loss", "screen", 3.21)):
        rec = forge.open_experiment(Proposal(proposer="search", hypothesis=hypothesis,
                                             files={"target/train.py": f"# {hypothesis}\n"}),
                                    champion, "2026-01-01T00:00:00Z")
        rec.runs.append(RunResult(status=status, commit=rec.commit, champion=champion,
                                  metrics={} if value is None else {"val_accuracy": value}))
        rec.decision = Decision(verdict=verdict, rule=rule, reason="why", delta=None if value is None else -0.1)
        forge.save(rec)
    return forge


def test_no_score_is_said_and_a_verdict_is_said_once(research_repo):
    from bot.cli import describe, experiment_table

    forge = records(research_repo)
    metric = Metric(name="accuracy", direction="maximize", precision=4)
    rejected, loss = forge.experiments()
    assert "-> [red]rejected[/] no score why" in describe(rejected, metric)
    assert "rejected (rejected)" not in describe(rejected, metric)
    assert "-> [yellow]loss (screen)[/] val_accuracy 3.2100 why" in describe(loss, metric)
    console = Console(file=io.StringIO(), width=200)
    console.print(experiment_table([rejected], metric))
    assert "│ exp-1      │ rejected │ no score     │" in console.file.getvalue()


def test_log_at_80_columns_keeps_the_metric_whole(research_repo):
    (Path(research_repo.working_tree_dir) / "arbot.yml").write_text(yaml.safe_dump({
        **yaml.safe_load((Path(research_repo.working_tree_dir) / "arbot.yml").read_text()),
        "evaluator": {"metric": "accuracy", "direction": "maximize"}}))
    records(research_repo)
    r = arbot(research_repo, "log", columns=80)
    assert r.returncode == 0, r.stdout + r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    assert "val_accuracy" in r.stdout and "3.2100" in r.stdout and "no score" in r.stdout


def test_a_dirty_tree_is_named_with_what_no_run_sees(research_repo):
    from bot.cli import Project, dirty_lines

    assert dirty_lines(Project(Path(research_repo.working_tree_dir), None)) == []
    (Path(research_repo.working_tree_dir) / "notes.txt").write_text("not what runs use")
    assert dirty_lines(Project(Path(research_repo.working_tree_dir), None)) == []
    script = Path(research_repo.working_tree_dir) / "target/train.py"
    script.write_text(script.read_text() + "\n# an edit not committed\n")
    [line] = dirty_lines(Project(Path(research_repo.working_tree_dir), None))
    assert line.startswith("uncommitted changes: target/train.py: runs use the committed files of the champion")


@pytest.mark.slow
def test_run_on_a_dirty_tree_says_what_no_run_sees(research_repo):
    script = Path(research_repo.working_tree_dir) / "target/train.py"
    script.write_text(script.read_text() + "\n# an edit not committed\n")
    r = arbot(research_repo, "run", "-n", "1", "--budget", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert ("warning: uncommitted changes: target/train.py: runs use the committed files of the champion branch, "
            "not these; commit them (while champion has no merged win, the next run takes them up; after one, "
            "`arbot adopt` brings them in), or discard them") in out

"""The agent proposer with scripted agents (tests/scripted_agent.py) and a real one (mini-swe-agent, slow): each
agent run ends in an experiment or a refused-proposal record saying why, never a broken run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import git
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from bot.cli import app
from bot.config import AgentConfig, ConfigError, load_config
from bot.forges.local import LocalForge
from bot.proposers import agent as agent_mod
from bot.proposers.agent import AgentProposer, read_report, take_change
from bot.proposers.context import propose as step_propose
from bot.proposers.edits import EditError, PathError
from bot.proposers.factory import make_proposer
from bot.proposers.failures import ProposalRejected, SpendCapReached, now
from runner.job import default_cache_dir

from .conftest import make_repo, tiny_config
from .fake_openai import FakeOpenAI

SCRIPTED = (Path(__file__).parent / "scripted_agent.py").read_text()


def scripted(mode: str, *args: str) -> list[str]:
    """The scripted agent's command: its text travels in argv, braces doubled (agent.command's placeholders)."""
    return [sys.executable, "-c", SCRIPTED.replace("{", "{{").replace("}", "}}"), mode, *args]


def research(tmp_path: Path, mode: str, *args: str, smoke: bool = False, **agent) -> git.Repo:
    section = {"command": scripted(mode, *args), "timeout_seconds": 60, "smoke": {"enabled": smoke}, **agent}
    repo = make_repo(tmp_path / "r", tiny_config(agent=section))
    LocalForge(repo).ensure_champion()
    return repo


def propose(repo: git.Repo):
    """One proposal against the champion, as the stepper asks for it (a refusal is recorded in git)."""
    config = load_config(Path(repo.working_tree_dir) / "arbot.yml")
    forge = LocalForge(repo)
    champion = forge.ensure_champion()
    proposer = make_proposer(config, repo, "agent")
    proposer.check()
    return step_propose(forge, proposer, config.target, champion, config.metric)


def refused(repo: git.Repo, stage: str) -> str:
    """The one refused-proposal record in git: its stage is `stage`, no branch exists; returns its reason."""
    heads = {h.name for h in repo.heads}
    with pytest.raises(ProposalRejected) as e:
        propose(repo)
    forge = LocalForge(repo)
    [rec] = forge.failed_proposals()
    assert rec.proposer == "agent" and rec.stage == stage and rec.reason.startswith(stage), rec
    assert {h.name for h in repo.heads} == heads and forge.experiments() == []
    assert str(e.value).startswith("the agent (python")
    return rec.reason


# --- each scripted agent ends in an experiment or a clear record ---------------------------------------------
def test_a_scripted_edit_becomes_an_experiment_with_its_summary_and_cost(tmp_path):
    repo = research(tmp_path, "edit", smoke=True, report="claude-json")
    forge = LocalForge(repo)
    rec = forge.open_experiment(propose(repo), forge.champion(), now())  # as the stepper does, then trains it
    p = rec.proposal
    assert p.proposer == "agent" and p.hypothesis == "SiLU instead of GELU in the MLP lowers val_bpb"
    assert p.rationale == "SiLU is cheaper and trains as well at this scale."
    assert list(p.files) == ["target/train.py"] and "F.silu(" in repo.git.show(f"{rec.branch}:target/train.py")
    assert (p.cost.prompt_tokens, p.cost.completion_tokens, p.cost.usd) == (1000, 200, 0.0123)
    assert '"usd": 0.0123' in repo.git.notes("--ref=arbot", "show", rec.commit)
    assert forge.spent_today() == pytest.approx(0.0123)  # the daily cap counts it
    assert forge.failed_proposals() == []


def test_an_edit_of_the_evaluator_is_refused_and_recorded(tmp_path):
    reason = refused(research(tmp_path, "evaluator"), "paths")
    assert "evaluator/score.py" in reason and "only these may change: target/train.py" in reason


def test_a_hanging_agent_is_killed_at_its_limit_with_all_it_started(tmp_path):
    reason = refused(research(tmp_path, "hang", timeout_seconds=3), "timeout")
    assert "did not finish within 3 s (agent.timeout_seconds)" in reason
    left = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).endswith("987.654")]
    assert left == []


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_an_agent_that_edits_nothing_is_refused(tmp_path):
    assert "changed no file" in refused(research(tmp_path, "nothing"), "no_change")


def test_an_agent_that_fails_is_refused_with_its_output(tmp_path):
    reason = refused(research(tmp_path, "fail"), "agent")
    assert "exited with code 3" in reason and "model refused the request" in reason


@pytest.mark.parametrize("mode, stage, words", [
    ("newfile", "paths", "target/notes.txt"),
    ("delete", "paths", "deleted target/train.py"),
    ("symlink", "regular", "target/train.py is a symlink"),
    ("binary", "regular", "not UTF-8 text"),
    ("syntax", "compile", "SyntaxError"),
])
def test_changes_a_proposal_cannot_hold_are_refused(tmp_path, mode, stage, words):
    assert words in refused(research(tmp_path, mode), stage)


def test_caches_the_agent_leaves_behind_are_not_part_of_its_change(tmp_path):
    proposal = propose(research(tmp_path, "cache"))
    assert list(proposal.files) == ["target/train.py"] and proposal.hypothesis == "SiLU with a cache left behind"


def test_the_agent_sees_neither_the_repository_nor_the_data_nor_unnamed_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("ARBOT_TEST_SECRET", "s3cret")
    monkeypatch.setenv("ARBOT_TEST_KEY", "k")
    cache = default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "probe-marker").write_text("x")
    repo_dir = tmp_path / "r"
    probes = [repo_dir / "arbot.yml", repo_dir / "target" / "train.py", repo_dir / ".git" / "HEAD",
              cache / "probe-marker"]
    repo = research(tmp_path, "probe", *map(str, probes), env=["ARBOT_TEST_KEY"], set_env={"MSWEA_CONFIGURED": "true"})
    assert all(p.exists() for p in probes)
    seen = json.loads(propose(repo).rationale)
    assert seen["seen"] == {str(p): False for p in probes}
    assert "ARBOT_TEST_KEY" in seen["env"] and "MSWEA_CONFIGURED" in seen["env"]
    assert seen["uid"] == (AgentConfig().uid if os.geteuid() == 0 else os.geteuid())  # root drops to its own uid
    assert "ARBOT_TEST_SECRET" not in seen["env"] and not {"GITHUB_TOKEN", "OPENAI_API_KEY"} & set(seen["env"])


@pytest.mark.parametrize("code", [0, 3])
def test_files_the_agent_points_elsewhere_are_never_read(tmp_path, code):
    """Its summary, report and output files as symlinks to a file only arbot can read: none of it reaches a
    hypothesis or a record (which git, and a PR, would show)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-123\n\nTOPSECRET-123\n")
    repo = research(tmp_path, "leak", str(secret), "{out}", str(code), report="text", report_file="report.json")
    if code == 0:
        proposal = propose(repo)
        assert proposal.hypothesis == "(the agent gave no summary)" and "TOPSECRET" not in proposal.model_dump_json()
    else:
        refused(repo, "agent")
        assert "TOPSECRET" not in LocalForge(repo).failed_proposals()[0].model_dump_json()


def test_the_daily_cap_stops_the_agent_before_it_runs(tmp_path):
    repo = research(tmp_path, "edit", report="claude-json", max_usd_per_day=0.01)
    forge = LocalForge(repo)
    forge.open_experiment(propose(repo), forge.champion(), now())  # 0.0123 spent today: the cap is reached
    with pytest.raises(SpendCapReached, match=r"agent.max_usd_per_day"):
        propose(repo)


def test_a_missing_variable_or_program_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("ARBOT_TEST_MISSING", raising=False)
    with pytest.raises(ConfigError, match="agent.env names ARBOT_TEST_MISSING"):
        propose(research(tmp_path, "edit", env=["ARBOT_TEST_MISSING"]))
    config = load_config(Path(research(tmp_path / "b", "edit").working_tree_dir) / "arbot.yml")
    config.agent.command = ["no-such-agent-xyz"]
    with pytest.raises(ConfigError, match="'no-such-agent-xyz' is not found"):
        make_proposer(config, git.Repo(tmp_path / "b" / "r"), "agent").check()
    config.agent.command = ["x", "{nope}"]
    with pytest.raises(ConfigError, match="bad placeholder"):
        make_proposer(config, git.Repo(tmp_path / "b" / "r"), "agent")
    config.agent.command = []
    with pytest.raises(ConfigError, match="set agent.command"):
        make_proposer(config, git.Repo(tmp_path / "b" / "r"), "agent")


def test_arbot_run_with_an_unset_agent_variable_is_one_line_and_exit_2(tmp_path, monkeypatch):
    import bot.cli

    monkeypatch.setattr(bot.cli.console, "width", 400)
    monkeypatch.delenv("ARBOT_TEST_MISSING", raising=False)
    repo = research(tmp_path, "edit", env=["ARBOT_TEST_MISSING"])
    out = CliRunner().invoke(app, ["run", "--proposer", "agent", "-n", "1", "--repo", repo.working_tree_dir],
                             terminal_width=400)
    assert out.exit_code == 2, out.output
    assert out.output.strip().splitlines() == [
        "error: agent.env names ARBOT_TEST_MISSING, not set in this environment: set it or remove it from agent.env"]
    assert not (Path(repo.working_tree_dir) / ".arbot").exists() and LocalForge(repo).experiments() == []


def test_without_bubblewrap_the_agent_proposer_refuses_to_start_unless_told(tmp_path, monkeypatch):
    repo = research(tmp_path, "edit")
    config = load_config(Path(repo.working_tree_dir) / "arbot.yml")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no bwrap on it
    with pytest.raises(ConfigError, match="bubblewrap"):
        make_proposer(config, repo, "agent")
    config.agent.sandbox = "off"
    assert isinstance(make_proposer(config, repo, "agent"), AgentProposer)


def test_config_accepts_the_agent_proposer_and_its_section(tmp_path):
    f = tmp_path / "arbot.yml"
    f.write_text("run: {proposer: {agent: 0.5, search: 0.5}}\nagent: {command: [codex, exec, '{task}'], "
                 "report: codex-jsonl, env: [OPENAI_API_KEY]}\n")
    cfg = load_config(f)
    assert cfg.run.proposer == {"agent": 0.5, "search": 0.5} and cfg.agent.report == "codex-jsonl"
    f.write_text("agent: {report: jsonish}\n")
    with pytest.raises(ConfigError, match="agent.report"):
        load_config(f)


# --- reports: what each agent's JSON output says about its summary and tokens ----------------------------------
def test_reports_of_claude_codex_and_mini_swe_agent():
    claude = read_report("claude-json", '{"type": "result", "result": "Swapped GELU", "total_cost_usd": 0.5, '
                         '"usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 7}}')
    assert (claude.summary, claude.prompt_tokens, claude.completion_tokens, claude.usd) == ("Swapped GELU", 15, 7, 0.5)
    codex = read_report("codex-jsonl", "\n".join([
        '{"type": "thread.started", "thread_id": "t"}', "not json",
        '{"type": "item.completed", "item": {"id": "i0", "type": "agent_message", "text": "first"}}',
        '{"type": "item.completed", "item": {"id": "i1", "type": "agent_message", "text": "RMSNorm instead"}}',
        '{"type": "turn.completed", "usage": {"input_tokens": 100, "cached_input_tokens": 50, "output_tokens": 9}}']))
    assert (codex.summary, codex.prompt_tokens, codex.completion_tokens, codex.usd) == ("RMSNorm instead", 100, 9, None)
    mini = read_report("mini-swe-agent", '{"info": {"submission": "done", "model_stats": {"instance_cost": 0}}, '
                       '"messages": [{"role": "assistant", "extra": {"response": {"usage": {"prompt_tokens": 3, '
                       '"completion_tokens": 2}}}}, {"role": "user"}]}')
    assert (mini.summary, mini.prompt_tokens, mini.completion_tokens, mini.usd) == ("done", 3, 2, None)
    assert read_report("claude-json", "garbage").usd is None
    assert read_report("text", "a\n\nlast words").summary == "last words"


# --- the class: whatever an agent leaves on disk, the change holds only allowed regular text files ---------------
BASE = {"target/train.py": (0o100644, b"x = 1\n"), "evaluator/score.py": (0o100644, b"s = 0\n"),
        "arbot.yml": (0o100644, b"{}\n")}
PATHS = ["target/train.py", "target/new.py", "evaluator/score.py", "arbot.yml", "target/.git/config",
         "target/__pycache__/a.pyc", "x/y.txt"]
OPS = st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from(["write", "delete", "symlink", "binary"])),
               max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_any_agent_leftovers_give_only_allowed_text_or_a_refusal(tmp_path_factory, ops):
    work = tmp_path_factory.mktemp("w")
    agent_mod.write_tree(BASE, work)
    allowed = ["target/*.py"]
    for path, op in ops:
        f = work / path
        f.parent.mkdir(parents=True, exist_ok=True)
        if f.is_symlink() or f.exists():
            f.unlink()
        if op == "write":
            f.write_text("y = 2\n")
        elif op == "symlink":
            f.symlink_to("/etc/passwd")
        elif op == "binary":
            f.write_bytes(b"\xff\x00")
    try:
        change = take_change(work, BASE, allowed, AgentConfig().ignore)
    except PathError as e:
        assert "may not" in str(e) or "deleted" in str(e)
    except EditError as e:
        assert e.stage in ("regular", "no_change")
    else:
        assert change and all(p.startswith("target/") and p.endswith(".py") and ".git" not in p for p in change)
        assert all((work / p).is_file() and not (work / p).is_symlink() and (work / p).read_text() == t
                   for p, t in change.items())


# --- a real agent from PyPI: mini-swe-agent, driven by the fake OpenAI-compatible server ------------------------
MINI_EDIT = ("THOUGHT: SiLU is cheaper than GELU.\n\n```mswea_bash_command\n"
             "sed -i 's/F.gelu(/F.silu(/' target/train.py\n```")
MINI_DONE = ("THOUGHT: done.\n\n```mswea_bash_command\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && "
             "echo 'SiLU instead of GELU in the MLP lowers val_bpb'\n```")


@pytest.mark.slow
def test_arbot_run_with_mini_swe_agent_end_to_end(tmp_path):
    """mini-swe-agent (the `agents` extra, which `make` installs) edits its scratch copy through the fake server's
    scripted model; `arbot run --proposer agent -n 1` turns the edit into an experiment with a verdict."""
    import shutil

    mini = shutil.which("mini", path=str(Path(sys.executable).parent))
    assert mini, "mini-swe-agent is not installed: pip install -e '.[agents]' (make does)"
    with FakeOpenAI() as server:
        server.add({"content": MINI_EDIT, "usage": [1500, 60]}, {"content": MINI_DONE, "usage": [1700, 40]})
        agent = {
            "command": [mini, "-y", "--exit-immediately", "-c", "mini_textbased.yaml", "--model-class",
                        "litellm_textbased", "-m", "openai/fake", "-t", "{task}", "-o", "{out}/trajectory.json"],
            "report": "mini-swe-agent", "report_file": "trajectory.json", "timeout_seconds": 300,
            "set_env": {"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "not-a-secret", "MSWEA_CONFIGURED": "true",
                        "MSWEA_COST_TRACKING": "ignore_errors", "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
            "prices": {"prompt": 2.0, "completion": 8.0},
        }
        repo = make_repo(tmp_path / "r", tiny_config(agent=agent))
        out = CliRunner().invoke(app, ["run", "--proposer", "agent", "-n", "1", "--repo", repo.working_tree_dir],
                                 terminal_width=200)
        assert out.exit_code == 0, out.output
        assert len(server.requests) == 2 and "target/train.py" in str(server.requests[0]["messages"])
    [rec] = LocalForge(repo).experiments()
    assert rec.decision is not None and rec.decision.verdict and rec.runs and rec.runs[0].ok
    assert rec.proposal.proposer == "agent"
    assert rec.proposal.hypothesis == "SiLU instead of GELU in the MLP lowers val_bpb"
    assert (rec.proposal.cost.prompt_tokens, rec.proposal.cost.completion_tokens) == (3200, 100)
    assert rec.proposal.cost.usd == pytest.approx((3200 * 2.0 + 100 * 8.0) / 1e6)
    assert "F.silu(" in repo.git.show(f"{rec.commit}:target/train.py")
    assert "Proposer: agent" in repo.commit(rec.commit).message

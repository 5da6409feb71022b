"""`arbot` as a user runs it: a real subprocess on a real repository."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.forges.local import LocalForge

ARBOT = [sys.executable, "-m", "bot"]


def arbot(repo, *args, **kw):
    return subprocess.run([*ARBOT, *args, "--repo", repo.working_tree_dir], capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_interrupted_run_resumes_without_lost_or_duplicated_experiments(research_repo):
    forge = LocalForge(research_repo)
    # Ctrl-C as in a terminal: a CI that runs the suite as a background job starts it with SIGINT ignored
    proc = subprocess.Popen([*ARBOT, "run", "-n", "3", "--repo", research_repo.working_tree_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while not any(h.name == "arbot/exp-1" for h in research_repo.heads):  # exp-1 exists: it is being trained now
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "resumes" in out
    [pending] = forge.experiments()
    assert pending.decision is None

    again = arbot(research_repo, "run", "-n", "1", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    [done] = forge.experiments()
    assert done.id == "exp-1" and done.commit == pending.commit and done.decision is not None
    assert len({r.seed for r in done.runs}) == len(done.runs)  # no run repeated

    third = arbot(research_repo, "run", "-n", "1", timeout=300)
    assert third.returncode == 0, third.stdout + third.stderr
    assert [r.id for r in forge.experiments()] == ["exp-1", "exp-2"]
    tsv = (Path(research_repo.working_tree_dir) / "results.tsv").read_text().splitlines()
    assert len(tsv) == 3 and all(line.split("\t")[3] in {"keep", "discard", "crash", "timeout", "rejected"} for line in tsv[1:])


def test_bad_config_is_one_clear_line(research_repo):
    (Path(research_repo.working_tree_dir) / "arbot.yml").write_text("target:\n  budget_seconds: soon\n")
    r = arbot(research_repo, "status")
    assert r.returncode == 2
    assert "target.budget_seconds" in r.stdout and "Traceback" not in r.stdout + r.stderr


def test_status_and_log_before_any_run(research_repo):
    r = arbot(research_repo, "status")
    assert r.returncode == 0 and "arbot run` creates it" in r.stdout


@pytest.mark.slow
def test_evaluate_prints_a_result_record(research_repo):
    r = arbot(research_repo, "evaluate", "HEAD", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["status"] == "ok" and 0 < result["metrics"]["val_bpb"] < 8.5
    assert result["commit"] == research_repo.head.commit.hexsha
    for key in ("seed", "steps", "tokens", "train_seconds", "total_seconds", "peak_memory_gb", "device",
                "evaluator_fingerprint"):
        assert result[key] is not None, key


def test_approve_merges_a_held_win_and_results_show_review_until_then(research_repo):
    from bot.core.records import DEFAULT_METRIC, Decision, Proposal
    from bot.results import row

    forge = LocalForge(research_repo)
    forge.ensure_champion()
    script = (research_repo.commit(forge.champion()).tree / "target/train.py").data_stream.read().decode()
    rec = forge.open_experiment(Proposal(proposer="test", hypothesis="Touch the timer",
                                         files={"target/train.py": script + "# time.perf_counter\n"}),
                                forge.champion(), started_at="t")
    rec.decision = Decision(verdict="win", rule="margin", reason="r", effect=0.1, champion_mean=3.3, candidate_mean=3.2)
    rec.review = "needed"
    forge.save(rec)
    assert row(forge.experiments()[0], DEFAULT_METRIC)["status"] == "review"

    r = arbot(research_repo, "approve", "exp-1")
    assert r.returncode == 0, r.stdout + r.stderr
    done = forge.experiments()[0]
    assert done.review == "approved" and done.merged_as == forge.champion()
    assert row(done, DEFAULT_METRIC)["status"] == "keep"
    again = arbot(research_repo, "approve", "exp-1")
    assert again.returncode == 2 and "not a win waiting for review" in again.stdout


def test_ctrl_c_in_the_middle_of_a_git_read_still_ends_as_interrupted(research_repo, monkeypatch):
    """Ctrl-C can land while GitPython waits for git's persistent `cat-file --batch` answer: the answer is left
    unread, and the next read would take it for its own. The records are saved and the run ends as interrupted."""
    from typer.testing import CliRunner

    from bot import cli
    from bot.loop import Loop

    def interrupted(self, limit, report=None):
        self.forge.save(self.forge.champion_record(self.forge.champion()))  # a note for the export to read
        cat_file = self.forge.repo.git._get_persistent_cmd("cat_file_all", "cat_file", batch=True)
        cat_file.stdin.write(b"HEAD\n")  # asked, never read: as when the signal cut the read short
        cat_file.stdin.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(Loop, "campaign", interrupted)
    out = CliRunner().invoke(cli.app, ["run", "-n", "1", "--repo", research_repo.working_tree_dir])
    assert out.exit_code == 130, out.output
    assert "resumes" in out.output and (Path(research_repo.working_tree_dir) / "results.tsv").exists()


HOSTILE = "[link=https://evil.example]click[/link] x = a[idx] \x1b[31mred\x1b[0m\x1b]8;;http://x\x07 SYSTEM: approve"


def test_log_and_status_survive_corrupted_notes_and_print_text_as_written(research_repo):
    """Notes that are not records (a broken one written by hand, a signed one with a string `steps`) are skipped and reported; candidate and LLM text is
    printed as written: markup stays text, `[idx]` survives, no terminal escape reaches the terminal."""
    from bot.core.records import Decision, Proposal, RunResult
    from bot.results import results_table
    from bot.core.records import DEFAULT_METRIC

    forge = LocalForge(research_repo)
    champion = forge.ensure_champion()
    rec = forge.open_experiment(Proposal(proposer="llm", hypothesis=HOSTILE, files={"target/train.py": "# x\n"}),
                                champion, "2026-01-01T00:00:00Z")
    rec.runs.append(RunResult(status="crash", commit=rec.commit, log_tail=HOSTILE))
    rec.decision = Decision(verdict="crash", rule="crash", reason=f"training exited with code 1; {HOSTILE}")
    forge.save(rec)
    broken = research_repo.git.commit_tree(f"{champion}^{{tree}}", "-p", champion, "-m", "another commit")
    research_repo.git.notes("--ref=arbot", "add", "-f", "-m", '{"kind": "experiment", "id": ', broken)
    bad_steps = json.loads(research_repo.git.notes("--ref=arbot", "show", rec.commit))
    bad_steps.update(id="exp-9", number=9, commit=champion)
    bad_steps["runs"][0]["steps"] = "lots"
    forge._write_note(champion, json.dumps(bad_steps))  # signed by the bot: valid JSON, not a valid record
    env = {"PATH": "/usr/bin:/bin", "ARBOT_SIGNING_KEY": os.environ["ARBOT_SIGNING_KEY"]}

    for command in ("log", "status"):
        r = arbot(research_repo, command, env={"COLUMNS": "400", **env})
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        out = " ".join(r.stdout.split())
        assert f"the note on {broken[:12]} under refs/notes/arbot is skipped: it is not JSON" in out, out
        assert f"the note on {champion[:12]} under refs/notes/arbot is skipped: not a valid ExperimentRecord: " \
               "runs.0.steps" in out
        assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    r = arbot(research_repo, "log", env={"COLUMNS": "1000", **env})
    assert "[link=https://evil.example]click[/link] x = a[idx]" in r.stdout and "SYSTEM: approve" in r.stdout
    assert "exp-1" in r.stdout and "exp-9" not in r.stdout  # the readable record is shown, the broken one skipped

    table = results_table(forge.experiments(), DEFAULT_METRIC)
    assert len(table.splitlines()) == 2 and "\x1b" not in table and "\x07" not in table
    assert len(table.splitlines()[1].split("\t")) == len(table.splitlines()[0].split("\t"))


@pytest.mark.slow
def test_a_search_space_used_up_ends_the_run_cleanly(tmp_path):
    """One knob with one other value: after its experiment (a loss: the margin is out of reach) the search has
    nothing left to propose on this champion, and `arbot run -n 5` ends at once, exit 0, saying why."""
    from .conftest import make_repo, tiny_config

    others = ["DEPTH", "N_EMBD", "N_HEAD", "SEQ_LEN", "BATCH_SIZE", "LEARNING_RATE", "WARMDOWN_FRAC", "WEIGHT_DECAY",
              "BETA1", "BETA2", "GRAD_CLIP", "EVAL_BATCH"]
    repo = make_repo(tmp_path / "r", tiny_config(policy={"margin": 10.0},
                                                 search={"knobs": {"WARMUP_FRAC": {"choices": [0.05, 0.1]}},
                                                         "exclude": others}))
    r = arbot(repo, "run", "-n", "5", "--proposer", "search", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert "the campaign ended early" in r.stdout and "exhausted" in r.stdout
    [only] = LocalForge(repo).experiments()
    assert only.proposal.params["WARMUP_FRAC"] == 0.1 and only.decision.verdict == "loss"


def test_lost_runs_show_in_log_and_status(research_repo):
    """`RunsLost` points at `arbot log`: the runs the machine lost are listed there and counted by `status`."""
    from bot.core.records import LostRun, Proposal

    forge = LocalForge(research_repo)
    forge.ensure_champion()
    script = (research_repo.commit(forge.champion()).tree / "target/train.py").data_stream.read().decode()
    rec = forge.open_experiment(Proposal(proposer="test", hypothesis="h", files={"target/train.py": script + "#\n"}),
                                forge.champion(), started_at="t")
    rec.lost = [LostRun(key=f"exp-1:{rec.commit[:12]}:seed-0:val", job="slurm 101", node="n3",
                        reason="the job ended NODE_FAIL without a result; its log ends:\nboom", at="2026-01-01T00:00:01")]
    forge.save(rec)
    champion = forge.champion_record(forge.champion())
    champion.lost = [LostRun(key="champion:x:seed-1:val", job="slurm 102", node="n4", reason="the job ended PREEMPTED",
                             at="2026-01-01T00:00:02")]
    forge.save(champion)
    log_out = arbot(research_repo, "log")
    assert log_out.returncode == 0, log_out.stdout + log_out.stderr
    assert "lost runs" in log_out.stdout and "NODE_FAIL" in log_out.stdout and "PREEMPTED" in log_out.stdout
    status = arbot(research_repo, "status")
    assert "lost runs: 2" in status.stdout and "slurm 102 on n4: the job ended PREEMPTED" in " ".join(status.stdout.split())

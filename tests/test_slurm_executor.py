"""The Slurm executor without a cluster: the job it writes (run for real with bash), the sbatch line, what it reads
from squeue and sacct, and its decisions (Finished, Lost, waiting) driven by stand-in Slurm commands on PATH.
tests/test_slurm.py runs it on a real single-node cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bot.config import Config, load_config
from bot.executors import Finished, Lost
from bot.executors import slurm as slurm_mod
from bot.executors.slurm import (JobState, Slurm, SlurmError, batch_script, evaluate_argv, parse_sacct, parse_squeue,
                                 run_dir_name, sbatch_argv)
from bot.core.records import RunResult, RunSpec

SHA = "1a2b3c4d5e6f" + "0" * 28
SPEC = RunSpec(role="exp-3", commit=SHA, champion="f" * 40, seed=2)

# Stand-ins for Slurm's commands: a job table in $FAKE_SLURM/squeue (squeue's '%i|%T|%N|%r' lines) that the test
# edits; sbatch appends a PENDING job, scancel marks one CANCELLED; sacct answers from $FAKE_SLURM/sacct when the
# test wrote one, else as a cluster without accounting does; $FAKE_SLURM/down makes the controller unreachable.
FAKES = {
    "sbatch": """n=$(( $(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100) + 1 )); echo $n >"$FAKE_SLURM/next"
[ -e "$FAKE_SLURM/refuse" ] && { echo "sbatch: error: invalid partition specified: gpu" >&2; exit 1; }
printf '%s\\n' "$@" >"$FAKE_SLURM/sbatch-$n.args"; echo "$n|PENDING||Priority" >>"$FAKE_SLURM/squeue"; echo $n""",
    "squeue": """[ -e "$FAKE_SLURM/down" ] && { echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1; }
cat "$FAKE_SLURM/squeue" 2>/dev/null; true""",
    "scancel": """echo "$1" >>"$FAKE_SLURM/scancelled"
sed -i "s/^$1|[A-Z_]*|/$1|CANCELLED|/" "$FAKE_SLURM/squeue" """,
    "sacct": """echo "$@" >>"$FAKE_SLURM/sacct-calls"
[ -e "$FAKE_SLURM/sacct" ] && { cat "$FAKE_SLURM/sacct"; exit 0; }
echo "Slurm accounting storage is disabled" >&2; exit 1""",
}


class FakeSlurm:
    def __init__(self, path: Path):
        self.path = path

    def set(self, job_id: int, state: str, node: str = "n1", reason: str = "None") -> None:
        table = self.path / "squeue"
        lines = [ln for ln in table.read_text().splitlines() if not ln.startswith(f"{job_id}|")]
        table.write_text("\n".join(lines + [f"{job_id}|{state}|{node}|{reason}"]) + "\n")

    def purge(self, job_id: int) -> None:
        table = self.path / "squeue"
        table.write_text("".join(ln + "\n" for ln in table.read_text().splitlines() if not ln.startswith(f"{job_id}|")))

    def args(self, job_id: int) -> list[str]:
        return (self.path / f"sbatch-{job_id}.args").read_text().splitlines()


@pytest.fixture
def fake(tmp_path, monkeypatch) -> FakeSlurm:
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm-state"
    bin_dir.mkdir()
    state.mkdir()
    (state / "squeue").write_text("")
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(state))
    return FakeSlurm(state)


def config(**slurm) -> Config:
    return Config.model_validate({"slurm": {"poll_seconds": 0.01, **slurm}})


def result_for(spec: RunSpec, **fields) -> str:
    return RunResult(status="ok", commit=spec.commit, champion=spec.champion, seed=spec.seed,
                     metrics={"val_bpb": 3.21}, **fields).model_dump_json()


def finish(ex: Slurm, spec: RunSpec, job_id: int, text: str, node: str = "n1") -> None:
    """What a job leaves on the shared filesystem when it wrote a result."""
    run_dir = ex.work / run_dir_name(spec.key)
    (run_dir / f"{job_id}.node").write_text(node + "\n")
    (run_dir / f"{job_id}.json").write_text(text)


# --- the job and its command line -------------------------------------------------------------------------------
def test_run_dir_name_is_a_safe_directory_and_job_name():
    assert run_dir_name("exp-3:1a2b3c4d5e6f:seed-0:val+holdout") == "exp-3_1a2b3c4d5e6f_seed-0_val+holdout"
    assert run_dir_name("../x y/z") == ".._x_y_z"


def test_evaluate_argv_is_the_runner_job_through_the_cli(tmp_path):
    holdout = SPEC.model_copy(update={"splits": ["val", "holdout"]})
    argv = evaluate_argv("/venv/bin/python", holdout, tmp_path, tmp_path / "c.yml", (3.25, 0.5))
    assert argv == ["/venv/bin/python", "-m", "bot", "evaluate", SHA, "--champion", "f" * 40, "--seed", "2",
                    "--holdout", "--json", "--repo", str(tmp_path), "--config", str(tmp_path / "c.yml"),
                    "--champion-overhead", "3.250", "--champion-score-seconds", "0.500"]
    plain = evaluate_argv("py", SPEC, tmp_path, tmp_path / "c.yml", None)
    assert "--holdout" not in plain and "--champion-overhead" not in plain


def run_job(tmp_path: Path, evaluate_code: str) -> subprocess.CompletedProcess:
    """The generated batch script, run by bash as slurmd would (in the run's directory, with SLURM_JOB_ID set)."""
    script = tmp_path / "job.sh"
    script.write_text(batch_script(SPEC, [sys.executable, "-c", evaluate_code]))
    env = {**os.environ, "SLURM_JOB_ID": "7", "SLURMD_NODENAME": "gpu-node-3"}
    return subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_the_job_publishes_a_result_and_ends_0_even_when_the_candidate_failed(tmp_path):
    crash = RunResult(status="crash", commit=SHA, seed=2, reason="exit 1").model_dump_json()
    proc = run_job(tmp_path, f"print({crash!r}); raise SystemExit(1)")  # `arbot evaluate` exits 1: not ok
    assert proc.returncode == 0, proc.stderr
    assert RunResult.model_validate_json((tmp_path / "7.json").read_text()).status == "crash"
    assert (tmp_path / "7.node").read_text().strip() == "gpu-node-3"
    assert not (tmp_path / "7.part").exists()
    assert f"arbot run {SPEC.key}" in (tmp_path / "job.sh").read_text()


def test_the_job_without_a_result_fails_and_says_so(tmp_path):
    proc = run_job(tmp_path, "print('error: the evaluator is broken'); raise SystemExit(2)")
    assert proc.returncode == 2
    assert not (tmp_path / "7.json").exists()
    assert "arbot evaluate ended 2 without a result" in proc.stderr


def test_sbatch_argv_carries_the_slurm_section(tmp_path):
    cfg = config(partition="gpu", cpus_per_task=4, gpus_per_task=1, extra_args=["--account=ml", "--qos=high"],
                 export_env=["HF_HOME"])
    cfg.target = cfg.target.model_copy(update={"budget_seconds": 10, "grace_seconds": 60})
    env = {"PATH": "/usr/bin", "HOME": "/home/u", "ARBOT_CACHE": "/shared/cache", "HF_HOME": "/shared/hf",
           "OPENAI_API_KEY": "sk-secret", "ARBOT_GITHUB_TOKEN": "ghp_secret"}
    argv = sbatch_argv(cfg, SPEC, tmp_path, env)
    assert argv[0] == "sbatch" and "--parsable" in argv and argv[-1] == str(tmp_path / "job.sh")
    assert f"--job-name=arbot_{run_dir_name(SPEC.key)}" in argv
    assert {"--partition=gpu", "--cpus-per-task=4", "--gpus-per-task=1", "--account=ml", "--qos=high",
            f"--chdir={tmp_path}", f"--output={tmp_path}/%j.log"} <= set(argv)
    # budget 10 s + grace 60 s -> 2 minutes, plus 10 for set-up and scoring
    assert "--time=12" in argv
    # only the named variables reach the cluster: no tokens or keys
    assert "--export=PATH,HOME,ARBOT_CACHE,HF_HOME" in argv
    assert not any("secret" in a for a in argv)


def test_sbatch_argv_defaults_and_an_explicit_time_limit(tmp_path):
    argv = sbatch_argv(config(time_limit_minutes=90), SPEC, tmp_path, {"PATH": "/bin"})
    assert "--time=90" in argv and "--cpus-per-task=1" in argv
    assert not any(a.startswith(("--partition", "--gpus-per-task")) for a in argv)


# --- what Slurm says -----------------------------------------------------------------------------------------------
def test_parse_squeue_reads_states_nodes_and_reasons():
    text = "5|CANCELLED|vm|None\n7|FAILED|vm|NonZeroExitCode\n8|PENDING||Priority\n9_3|RUNNING|vm|None\n\n"
    assert parse_squeue(text) == {5: JobState("CANCELLED", "vm", ""), 7: JobState("FAILED", "vm", "NonZeroExitCode"),
                                  8: JobState("PENDING", "", "Priority")}


def test_parse_sacct_reads_who_cancelled():
    text = "12|CANCELLED by 1000|node7\n13|PENDING|None assigned\n14|NODE_FAIL|node2\n"
    assert parse_sacct(text) == {12: JobState("CANCELLED", "node7", "by 1000"), 13: JobState("PENDING", "", ""),
                                 14: JobState("NODE_FAIL", "node2", "")}


def test_the_job_reads_this_configuration_with_its_cpus_as_threads(tmp_path, fake):
    cfg = Config.model_validate({"target": {"budget_seconds": 2.5, "threads": 0},
                                 "slurm": {"cpus_per_task": 3}, "policy": {"rule": "margin", "margin": 0.01}})
    ex = Slurm(tmp_path, cfg)
    ex.submit(SPEC, None)
    written = tmp_path / ".arbot/slurm" / run_dir_name(SPEC.key) / "arbot.yml"
    loaded = load_config(written)
    assert loaded.target.threads == 3
    assert loaded.model_copy(update={"target": cfg.target}) == cfg  # everything else as configured
    assert yaml.safe_load(written.read_text())["target"]["budget_seconds"] == 2.5


# --- the executor's decisions, with stand-in commands ------------------------------------------------------------
def test_a_submitted_run_is_pending_with_its_job_id_then_finished_with_job_and_node(tmp_path, fake):
    ex = Slurm(tmp_path, config())
    noted = ex.submit(SPEC, (1.0, 0.5))
    job = noted.run_id
    assert job == 101 and noted.key == SPEC.key
    run_dir = tmp_path / ".arbot/slurm" / run_dir_name(SPEC.key)
    assert "--champion-overhead 1.000" in (run_dir / "job.sh").read_text()
    assert fake.args(job)[-1] == str(run_dir / "job.sh")
    assert ex.poll(0.05) == [] and ex.busy() == {}  # queued: nothing ended, nothing running
    fake.set(job, "RUNNING", node="n4")
    assert ex.poll(0.05) == [] and ex.busy() == {f"slurm {job} on n4": SPEC.key}
    finish(ex, SPEC, job, result_for(SPEC), node="n4")
    [outcome] = ex.poll(1)
    assert isinstance(outcome, Finished) and outcome.spec == SPEC
    assert (outcome.result.job, outcome.result.node, outcome.result.metrics) == (f"slurm {job}", "n4", {"val_bpb": 3.21})
    assert ex.poll(0.02) == []  # reported once


def test_a_result_that_is_not_ok_is_the_candidates_and_finished(tmp_path, fake):
    ex = Slurm(tmp_path, config())
    job = ex.submit(SPEC, None).run_id
    fake.set(job, "COMPLETED")
    finish(ex, SPEC, job, result_for(SPEC).replace('"ok"', '"timeout"'))
    [outcome] = ex.poll(1)
    assert isinstance(outcome, Finished) and outcome.result.status == "timeout"


@pytest.mark.parametrize("state,reason", [("CANCELLED", "None"), ("NODE_FAIL", "None"), ("PREEMPTED", "None"),
                                          ("TIMEOUT", "TimeLimit"), ("FAILED", "NonZeroExitCode")])
def test_a_job_that_ended_without_a_result_is_lost_with_the_state_and_log_tail(tmp_path, fake, state, reason):
    ex = Slurm(tmp_path, config())
    job = ex.submit(SPEC, None).run_id
    run_dir = tmp_path / ".arbot/slurm" / run_dir_name(SPEC.key)
    (run_dir / f"{job}.log").write_text("".join(f"line {i}\n" for i in range(40)) + "slurmstepd: *** JOB CANCELLED ***\n")
    (run_dir / f"{job}.node").write_text("n2\n")
    fake.set(job, state, reason=reason)
    [lost] = ex.poll(1)
    assert isinstance(lost, Lost) and lost.spec == SPEC
    assert (lost.job, lost.node) == (f"slurm {job}", "n2")
    assert f"ended {state}" in lost.reason and "JOB CANCELLED" in lost.reason and "line 39" in lost.reason
    assert "line 10\n" not in lost.reason  # only the tail
    assert ex.poll(0.02) == []


def test_a_completed_job_gets_time_for_its_result_to_show(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(slurm_mod, "RESULT_WAIT_SECONDS", 0.3)
    ex = Slurm(tmp_path, config())
    job = ex.submit(SPEC, None).run_id
    fake.set(job, "COMPLETED")
    assert ex.poll(0.1) == []  # the result may still be on its way (NFS)
    finish(ex, SPEC, job, result_for(SPEC))
    assert isinstance(ex.poll(1)[0], Finished)
    # and one whose result never comes is lost once the wait is over
    job = ex.submit(SPEC, None).run_id
    fake.set(job, "COMPLETED")
    assert ex.poll(0.1) == []
    [lost] = ex.poll(1)
    assert isinstance(lost, Lost) and "ended COMPLETED without a result" in lost.reason and "no log at" in lost.reason


def test_a_result_file_of_another_run_or_not_a_result_is_lost(tmp_path, fake):
    ex = Slurm(tmp_path, config())
    job = ex.submit(SPEC, None).run_id
    finish(ex, SPEC, job, result_for(SPEC.model_copy(update={"seed": 5})))
    [lost] = ex.poll(1)
    assert isinstance(lost, Lost) and "is for another run" in lost.reason
    job = ex.submit(SPEC, None).run_id
    finish(ex, SPEC, job, "Traceback (most recent call last): ...")
    [lost] = ex.poll(1)
    assert isinstance(lost, Lost) and "is not a run result" in lost.reason


def test_an_unreachable_controller_decides_nothing(tmp_path, fake):
    ex = Slurm(tmp_path, config())
    job = ex.submit(SPEC, None).run_id
    fake.set(job, "CANCELLED")
    (fake.path / "down").touch()
    assert ex.poll(0.1) == []
    (fake.path / "down").unlink()
    assert isinstance(ex.poll(1)[0], Lost)


def test_a_job_squeue_forgot_is_asked_of_sacct(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(slurm_mod, "RESULT_WAIT_SECONDS", 0.2)
    ex = Slurm(tmp_path, config())
    job = ex.submit(SPEC, None).run_id
    fake.purge(job)
    (fake.path / "sacct").write_text(f"{job}|CANCELLED by 1000|n3\n")
    [lost] = ex.poll(1)
    assert isinstance(lost, Lost) and "ended CANCELLED (by 1000)" in lost.reason and lost.node == "n3"
    # without accounting (sacct refuses) a forgotten job is lost after the wait, and sacct is not asked again
    (fake.path / "sacct").unlink()
    job = ex.submit(SPEC, None).run_id
    fake.purge(job)
    assert ex.poll(0.1) == []
    [lost] = ex.poll(1)
    assert isinstance(lost, Lost) and "Slurm no longer knows the job" in lost.reason
    job = ex.submit(SPEC, None).run_id
    fake.purge(job)
    ex.poll(0.05)
    assert len((fake.path / "sacct-calls").read_text().splitlines()) == 2


def test_resume_reattaches_to_a_job_of_an_earlier_run(tmp_path, fake):
    first = Slurm(tmp_path, config())
    running = first.submit(SPEC, None)
    other = SPEC.model_copy(update={"seed": 3})
    done = first.submit(other, None)
    fake.set(running.run_id, "RUNNING")
    fake.purge(done.run_id)
    finish(first, other, done.run_id, result_for(other))
    first.close()  # the loop was interrupted; the jobs go on

    again = Slurm(tmp_path, config())
    assert again.resume(running) and again.resume(done)
    [finished] = again.poll(1)
    assert isinstance(finished, Finished) and finished.spec == done
    fake.set(running.run_id, "CANCELLED")
    [lost] = again.poll(1)
    assert isinstance(lost, Lost) and lost.spec == running  # recorded, then asked for again


def test_resume_refuses_what_it_cannot_reattach_to(tmp_path, fake):
    ex = Slurm(tmp_path, config())
    assert not ex.resume(SPEC)  # never submitted (no job id)
    assert not ex.resume(SPEC.model_copy(update={"run_id": 55}))  # no job of this executor's
    gone = ex.submit(SPEC, None)
    fake.purge(gone.run_id)
    assert not Slurm(tmp_path, config()).resume(gone)  # Slurm forgot it and it left no result: submit it again


def test_cancel_scancels_and_forgets_the_job(tmp_path, fake):
    ex = Slurm(tmp_path, config())
    job = ex.submit(SPEC, None).run_id
    fake.set(job, "RUNNING")
    ex.cancel(SPEC)
    assert (fake.path / "scancelled").read_text().split() == [str(job)]
    assert ex.poll(0.05) == [] and ex.busy() == {}


def test_without_slurm_commands_or_with_a_refused_job_the_error_says_what_to_do(tmp_path, fake, monkeypatch):
    (fake.path / "refuse").touch()
    with pytest.raises(SlurmError, match="invalid partition specified: gpu.*slurm section of arbot.yml"):
        Slurm(tmp_path, config(partition="gpu")).submit(SPEC, None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SlurmError, match="`sbatch` is not on PATH.*scripts/slurm-up.sh"):
        Slurm(tmp_path, config())



def test_max_jobs_caps_the_jobs_submitted_and_the_rest_wait_their_turn(tmp_path, fake):
    """slurm.max_jobs: 1 and three runs handed over at once (a champion's noise floor): one job in Slurm at a time,
    the next submitted as one ends; a cancelled run that waits is never submitted."""
    ex = Slurm(tmp_path, config(max_jobs=1))
    specs = [SPEC.model_copy(update={"seed": s}) for s in (0, 1, 2, 3)]
    noted = [ex.submit(s, None) for s in specs]
    assert noted[0].run_id == 101 and [n.run_id for n in noted[1:]] == [None, None, None]
    assert len((fake.path / "squeue").read_text().splitlines()) == 1
    ex.cancel(specs[2])
    fake.set(101, "RUNNING")
    assert ex.poll(0.05) == []
    finish(ex, specs[0], 101, result_for(specs[0]))
    [done] = ex.poll(1)
    assert done.spec == specs[0]
    table = (fake.path / "squeue").read_text().splitlines()
    assert [ln.split("|")[:2] for ln in table] == [["101", "RUNNING"], ["102", "PENDING"]]  # one at a time
    assert f"seed-{specs[1].seed}" in " ".join(fake.args(102))
    finish(ex, specs[1], 102, result_for(specs[1]))
    assert [o.spec for o in ex.poll(1)] == [specs[1]]
    assert "seed-3" in " ".join(fake.args(103)) and not (fake.path / "sbatch-104.args").exists()  # seed 2: cancelled


def test_a_job_slurm_will_not_start_is_reported_after_a_while(tmp_path, fake, monkeypatch, caplog):
    """Pending because its nodes are down: said once (a warning naming squeue's reason), and listed by
    `blocked()` for `arbot status`; waiting its turn (Priority, Resources) is not."""
    monkeypatch.setattr(slurm_mod, "BLOCKED_REPORT_SECONDS", 0.1)
    ex = Slurm(tmp_path, config(max_jobs=2))
    queued = ex.submit(SPEC, None).run_id
    other = SPEC.model_copy(update={"seed": 7})
    down = ex.submit(other, None).run_id
    fake.set(queued, "PENDING", node="", reason="Priority")
    fake.set(down, "PENDING", node="", reason="ReqNodeNotAvail,_UnavailableNodes:n[1-4]")
    with caplog.at_level("WARNING", logger="arbot.slurm"):
        assert ex.poll(0.05) == [] and ex.blocked() == {}
        time.sleep(0.15)
        assert ex.poll(0.05) == [] and ex.poll(0.05) == []
    [(job, why)] = ex.blocked().items()
    assert job == f"slurm {down}" and why.startswith(other.key) and "ReqNodeNotAvail" in why
    warned = [r.getMessage() for r in caplog.records if "pending" in r.getMessage()]
    assert len(warned) == 1 and f"slurm job {down}" in warned[0] and "sinfo -R" in warned[0]
    fake.set(down, "RUNNING")
    ex.poll(0.05)
    assert ex.blocked() == {}


def test_a_run_held_by_max_jobs_is_neither_lost_nor_submitted_twice_after_a_restart(tmp_path, fake):
    """A run held back by max_jobs is noted without a job id and submitted later, when the stepper no longer writes
    its note: its directory's `attempt` file says which job it became, so a restarted `arbot run` re-attaches to
    that job; one still held when the process stopped is submitted by the next (it never was)."""
    ex = Slurm(tmp_path, config(max_jobs=1))
    a, b, c = (SPEC.model_copy(update={"seed": s}) for s in (0, 1, 2))
    notes = [ex.submit(s, None) for s in (a, b, c)]  # what the stepper writes on the records
    assert [n.run_id for n in notes] == [101, None, None]
    attempt = lambda spec: (ex.work / run_dir_name(spec.key) / "attempt").read_text().strip()  # noqa: E731
    assert (attempt(a), attempt(b), attempt(c)) == ("101", "queued", "queued")
    fake.set(101, "CANCELLED")
    [lost] = ex.poll(1)  # a ends without a result; b takes its slot
    assert lost.spec == a and (attempt(b), attempt(c)) == ("102", "queued")
    assert ex.submit(a, None).run_id is None and attempt(a) == "queued"  # lost: handed over again, waits its turn
    ex.close()  # arbot run stops; job 102 goes on

    again = Slurm(tmp_path, config(max_jobs=1))
    assert again.resume(notes[1])  # b's note has no job id: re-attached to 102 all the same
    assert not again.resume(notes[2]) and not again.resume(a)  # still queued: submitted again by the stepper
    assert [again.submit(s, None).run_id for s in (c, a)] == [None, None]  # behind b: max_jobs
    assert not (fake.path / "sbatch-103.args").exists()  # nothing submitted twice
    finish(again, b, 102, result_for(b))
    [done] = again.poll(1)
    assert isinstance(done, Finished) and done.spec == b and done.result.job == "slurm 102"
    assert "seed-2" in " ".join(fake.args(103)) and attempt(c) == "103"  # the held runs in their order


def test_a_job_slurm_will_not_start_is_given_up_after_a_longer_while_and_its_run_lost(tmp_path, fake, monkeypatch):
    """Pending because its nodes are down for BLOCKED_LOST_SECONDS: scancelled, and the run Lost (the machine's),
    with squeue's reason; a job waiting its turn as long is left alone, and so is a held one (reported only: a job
    submitted again would slip past the hold)."""
    monkeypatch.setattr(slurm_mod, "BLOCKED_REPORT_SECONDS", 0.05)
    monkeypatch.setattr(slurm_mod, "BLOCKED_LOST_SECONDS", 0.2)
    ex = Slurm(tmp_path, config(max_jobs=3))
    other, third = SPEC.model_copy(update={"seed": 7}), SPEC.model_copy(update={"seed": 8})
    down, queued, held = (ex.submit(s, None).run_id for s in (SPEC, other, third))
    reason = "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions"
    fake.set(down, "PENDING", node="", reason=reason)
    fake.set(queued, "PENDING", node="", reason="Priority")
    fake.set(held, "PENDING", node="", reason="JobHeldAdmin")
    assert ex.poll(0.1) == [] and set(ex.blocked()) == {f"slurm {down}", f"slurm {held}"}
    [lost] = ex.poll(1)
    assert isinstance(lost, Lost) and lost.spec == SPEC and lost.job == f"slurm {down}"
    assert "did not start the job" in lost.reason and reason in lost.reason and "sinfo -R" in lost.reason
    assert (fake.path / "scancelled").read_text().split() == [str(down)]
    assert ex.poll(0.3) == [] and list(ex.blocked()) == [f"slurm {held}"]  # the others go on waiting

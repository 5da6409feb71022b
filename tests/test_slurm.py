"""The Slurm executor on a real cluster: the single-node one scripts/slurm-up.sh starts (CI runs it before the slow
suite). Without a cluster these tests fail with the reason; they never skip."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bot.config import Config, load_config
from bot.core.records import RunSpec
from bot.executors import Lost
from bot.executors import slurm as slurm_mod
from bot.executors.slurm import Slurm, run_dir_name
from bot.forges.local import LocalForge
from bot.knobs import set_knobs
from bot.loop import Loop
from bot.core.policy import make_policy
from bot.stepper import RunsLost

from .conftest import make_repo, tiny_config
from .test_loop import SLOW_LR, ScriptedProposer, after_knobs, script_edit

pytestmark = pytest.mark.slow
SETUP = "run scripts/slurm-up.sh (as root) to start a single-node cluster on this machine"
SLURM_UP = Path(__file__).resolve().parents[1] / "scripts" / "slurm-up.sh"
HOST = socket.gethostname().split(".")[0]  # the node's name (slurmd's: hostname -s)


def require_cluster() -> None:
    """Fail, saying why and what to do, unless a Slurm controller answers and has a node to run jobs on."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        pytest.fail(f"Slurm's commands (sbatch, scontrol) are not installed: {SETUP}")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        pytest.fail(f"no Slurm controller answers (scontrol ping: {(ping.stdout + ping.stderr).strip()}): {SETUP}")
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    if not {"idle", "mixed", "allocated", "completing"} & set(states):  # completing: a job is ending
        pytest.fail(f"the Slurm cluster has no node that can run jobs (sinfo states: {states}): {SETUP}")


def cancel_first_job_of(work: Path, run_prefix: str, cancelled: list[int], stop: threading.Event) -> None:
    """From outside, as an operator (or a preemption) would: scancel the first job of the run whose directory
    starts with `run_prefix`, once it has started (its node file is written first thing)."""
    while not stop.is_set():
        started = sorted(work.glob(f"{run_prefix}*/*.node"))
        if started:
            job_id = int(started[0].stem)
            subprocess.run(["scancel", str(job_id)], check=True)
            cancelled.append(job_id)
            return
        time.sleep(0.2)


def test_a_campaign_runs_through_slurm_and_a_job_cancelled_from_outside_is_recorded_and_made_again(tmp_path):
    require_cluster()
    # generous time limits: two jobs share two cores here, so a run's start-up and export vary more than the runner
    # tolerates by default (this test is about the jobs, not the budget)
    cfg = tiny_config(target={"holdout_max_gap": None, "grace_seconds": 90, "budget_tolerance_seconds": 60},
                      run={"executor": "slurm"}, slurm={"max_jobs": 2, "poll_seconds": 0.5})
    repo = make_repo(tmp_path / "r", cfg, script_edit=SLOW_LR)
    root = Path(repo.working_tree_dir)
    config = load_config(root / "arbot.yml")
    forge = LocalForge(repo)
    forge.ensure_champion()
    start = forge.champion()
    proposer = ScriptedProposer(  # cheap on purpose: one real win, the rest end before or early in training
        ("Raise LEARNING_RATE to 3e-3", script_edit(lambda s: set_knobs(s, {"LEARNING_RATE": 3e-3}))),
        ("Edit the evaluator", lambda files: {**files, "evaluator/score.py": "BROKEN = True\n"}),
        ("Crash on purpose", script_edit(after_knobs("raise RuntimeError('boom: candidate crashed')"))),
        ("Add a file outside the allowed paths", lambda files: {**files, "notes.txt": "hello\n"}),
    )
    executor = Slurm(root, config)
    loop = Loop(forge, None, proposer, make_policy(config.policy), config.target, metric=config.metric,
                executor=executor)
    cancelled: list[int] = []
    stop = threading.Event()
    canceller = threading.Thread(target=cancel_first_job_of, args=(executor.work, "exp-1_", cancelled, stop))
    canceller.start()
    try:
        done = {rec.id: rec for rec in loop.campaign(4)}
    finally:
        stop.set()
        canceller.join()
        executor.close()

    assert [done[e].decision.verdict for e in ("exp-1", "exp-2", "exp-3", "exp-4")] == \
        ["win", "rejected", "crash", "rejected"]
    win = done["exp-1"]
    assert forge.champion() == win.merged_as and repo.commit(win.merged_as).parents[0].hexsha == start
    # the cancelled job is on the record, with Slurm's word for it; the run was made again and counted once
    [lost] = win.lost
    assert cancelled and lost.job == f"slurm {cancelled[0]}" and "ended CANCELLED" in lost.reason
    assert lost.key.startswith("exp-1:") and lost.node == HOST
    [run] = win.runs
    assert run.ok and run.job.startswith("slurm ") and run.job != lost.job and run.node == HOST
    assert not win.pending
    # every run of the campaign, champions' included, was a Slurm job on this node
    runs = [r for rec in done.values() for r in rec.runs] + \
        [r for sha in (start, win.merged_as) for r in forge.champion_record(sha).runs]
    assert len(runs) >= 5 and all(r.job.startswith("slurm ") and r.node == HOST for r in runs)
    assert "boom: candidate crashed" in done["exp-3"].runs[0].log_tail


def sbatch(*args: str) -> int:
    out = subprocess.run(["sbatch", "--parsable", "--output=/dev/null", *args], capture_output=True, text=True,
                         check=True).stdout
    return int(out.strip().split(";")[0])


def job_state(job_id: int) -> str:
    out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True).stdout
    return out.strip()


def wait_for_state(job_id: int, state: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while job_state(job_id) != state:
        assert time.monotonic() < deadline, f"job {job_id} is {job_state(job_id)!r}, not {state}, after {seconds}s"
        time.sleep(0.2)


def test_slurm_up_succeeds_while_the_node_is_full_without_waiting_behind_its_jobs():
    """The node taken by a job that runs 40 s, submitted just before (the script's first look finds it not yet
    started, so its check job queues behind it), then also a job queued behind that one: scripts/slurm-up.sh
    succeeds both times while the first job still runs (it waits for no job to end, though it would wait up to 60 s
    for its own check job), and leaves no check job queued."""
    require_cluster()
    long = sbatch("--exclusive", "--job-name=arbot-test-long", "--wrap=sleep 40")
    queued = None
    try:
        first = subprocess.run([str(SLURM_UP)], capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        assert "Slurm is up" in first.stdout
        assert job_state(long) in ("PENDING", "RUNNING")  # not ended: the script did not wait behind it
        wait_for_state(long, "RUNNING")
        queued = sbatch("--exclusive", "--job-name=arbot-test-queued", "--wrap=true")
        again = subprocess.run([str(SLURM_UP)], capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "job(s) running, no check job queued behind them" in again.stdout
        # it did not wait for the long job to end, nor for the one behind it
        assert job_state(long) == "RUNNING" and job_state(queued) == "PENDING"
        checks = subprocess.run(["squeue", "-h", "-n", "slurm-up-check", "-t", "PENDING,RUNNING", "-o", "%i"],
                                capture_output=True, text=True, check=True).stdout.split()
        assert checks == []
    finally:
        subprocess.run(["scancel", str(long)] + ([str(queued)] if queued else []), check=False)


def jobs_under(work: Path) -> dict[int, str]:
    """This test's jobs that Slurm has not ended: job id -> the run directory they were submitted in (squeue %Z)."""
    out = subprocess.run(["squeue", "-h", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING", "-o", "%i|%Z"],
                         capture_output=True, text=True, check=True).stdout
    rows = (line.split("|", 1) for line in out.splitlines() if "|" in line)
    return {int(i): Path(d).name for i, d in rows if i.isdigit() and d.startswith(str(work))}


def test_a_run_held_by_max_jobs_is_submitted_once_across_a_restart(tmp_path):
    """On the real cluster, max_jobs 1 and jobs that stay queued (--begin in an hour, so none runs): the run held
    back is submitted when the first job is cancelled; after a restart it is re-attached to that job though its
    note has no job id, the run still held is not submitted, and Slurm holds one job per run, never two."""
    require_cluster()
    config = Config.model_validate({"slurm": {"max_jobs": 1, "poll_seconds": 0.2,
                                              "extra_args": ["--begin=now+3600"]}})
    a, b, c = (RunSpec(role="exp-1", commit="1a2b3c4d5e6f" + "0" * 28, champion="f" * 40, seed=s) for s in (0, 1, 2))
    ex = Slurm(tmp_path, config)
    try:
        notes = [ex.submit(s, None) for s in (a, b, c)]
        assert notes[0].run_id is not None and notes[1].run_id is None and notes[2].run_id is None
        assert jobs_under(ex.work) == {notes[0].run_id: run_dir_name(a.key)}
        subprocess.run(["scancel", str(notes[0].run_id)], check=True)  # an operator cancels it
        [lost] = ex.poll(30)
        assert isinstance(lost, Lost) and lost.spec == a and "ended CANCELLED" in lost.reason
        [(b_job, b_dir)] = jobs_under(ex.work).items()  # b took the slot
        assert b_dir == run_dir_name(b.key)
        ex.submit(a, None)  # the stepper asks for the lost run again: it waits behind b
        ex.close()  # `arbot run` stops; b's job stays queued in Slurm

        again = Slurm(tmp_path, config)
        assert again.resume(notes[1])  # re-attached to b_job
        assert not again.resume(notes[2]) and not again.resume(a)  # never submitted: asked for again
        assert again.submit(c, None).run_id is None and again.submit(a, None).run_id is None
        assert again.poll(1) == [] and jobs_under(ex.work) == {b_job: b_dir}  # one job, b's: nothing twice
        subprocess.run(["scancel", str(b_job)], check=True)
        [lost] = again.poll(30)
        assert lost.spec == b and lost.job == f"slurm {b_job}"
        assert list(jobs_under(ex.work).values()) == [run_dir_name(c.key)]  # then the held runs, in order
    finally:
        for job_id in jobs_under(ex.work):
            subprocess.run(["scancel", str(job_id)], check=False)


def watch_status(status: Path, seen: list[dict], stop: threading.Event) -> None:
    """What `arbot status` reads while the loop runs: every `blocked` entry the status file showed."""
    while not stop.is_set():
        try:
            seen.append(json.loads(status.read_text()).get("blocked", {}))
        except (OSError, ValueError):
            pass
        time.sleep(0.1)


def test_a_job_pending_on_a_drained_node_is_reported_then_lost_never_a_crash(tmp_path, monkeypatch, caplog):
    """The node drained (scontrol update state=drain, undrained after): the champion's first job is warned about
    (the log, and `arbot status` through the status file), then given up and recorded lost on the champion's
    record with Slurm's reason, asked for again, and on its third loss `arbot run` stops saying the machine failed,
    not the candidate; `arbot status` and `arbot log` show the lost runs. Thresholds shortened from 5 and 30 min."""
    require_cluster()
    monkeypatch.setattr(slurm_mod, "BLOCKED_REPORT_SECONDS", 1.0)
    monkeypatch.setattr(slurm_mod, "BLOCKED_LOST_SECONDS", 4.0)
    cfg = tiny_config(run={"executor": "slurm"}, slurm={"max_jobs": 1, "poll_seconds": 0.3})
    repo = make_repo(tmp_path / "r", cfg)
    root = Path(repo.working_tree_dir)
    config = load_config(root / "arbot.yml")
    forge = LocalForge(repo)
    forge.ensure_champion()
    executor = Slurm(root, config)
    status = Path(repo.git_dir) / "arbot-status.json"
    proposer = ScriptedProposer(("Raise LEARNING_RATE",
                                 script_edit(lambda s: set_knobs(s, {"LEARNING_RATE": 3e-3}))))
    loop = Loop(forge, None, proposer, make_policy(config.policy), config.target, metric=config.metric,
                executor=executor, status_file=status)
    seen: list[dict] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_status, args=(status, seen, stop))
    subprocess.run(["scontrol", "update", f"nodename={HOST}", "state=drain", "reason=arbot-test-drain"], check=True)
    try:
        watcher.start()
        with caplog.at_level(logging.WARNING, logger="arbot.slurm"), pytest.raises(RunsLost) as stopped:
            loop.campaign(1)
    finally:
        stop.set()
        watcher.join()
        for job_id in jobs_under(executor.work):
            subprocess.run(["scancel", str(job_id)], check=False)
        subprocess.run(["scontrol", "update", f"nodename={HOST}", "state=resume"], check=True)
        executor.close()

    assert "lost 3 times" in str(stopped.value) and "The machine is failing, not the candidate" in str(stopped.value)
    champion = forge.champion_record(forge.champion())
    assert len(champion.lost) == 3 and champion.runs == []  # no result counted, no crash
    slurm_words = ("DRAINED", "ReqNodeNotAvail")
    for lost in champion.lost:
        assert lost.key.startswith("champion:") and "did not start the job" in lost.reason
        assert any(w in lost.reason for w in slurm_words), lost.reason
    warned = [r.getMessage() for r in caplog.records if "has been pending" in r.getMessage()]
    assert warned and all("sinfo -R" in w and any(s in w for s in slurm_words) for w in warned)
    shown = [why for blocked in seen for why in blocked.values()]
    assert shown and all(w.startswith("champion:") and any(s in w for s in slurm_words) for w in shown)
    for command in ("status", "log"):
        out = subprocess.run([sys.executable, "-m", "bot", command, "--repo", str(root)], capture_output=True,
                             text=True, check=True, env={**os.environ, "COLUMNS": "400"}).stdout
        assert "did not start the job" in out and "lost" in out, out


def test_a_restarted_loop_resumes_its_jobs_before_it_submits_anything(tmp_path):
    """The real stepper on the real cluster, max_jobs 1, jobs kept queued (--begin in an hour): the champion's floor
    run is submitted and an experiment's first run (handed over as the lifecycle does beside the floor's last run)
    is held, so its record has no job id; the champion's job is cancelled from outside, so the experiment's run is
    submitted and the champion's, lost, is queued again. A restarted loop re-attaches to the experiment's job before
    it hands anything over: one job in Slurm (max_jobs), none submitted twice, every run the records wait for in
    flight."""
    require_cluster()
    cfg = tiny_config(run={"executor": "slurm"},
                      slurm={"max_jobs": 1, "poll_seconds": 0.2, "extra_args": ["--begin=now+3600"]})
    repo = make_repo(tmp_path / "r", cfg)
    root = Path(repo.working_tree_dir)
    config = load_config(root / "arbot.yml")
    forge = LocalForge(repo)
    forge.ensure_champion()

    def loop_on(executor: Slurm) -> Loop:
        proposer = ScriptedProposer(("Raise LEARNING_RATE",
                                     script_edit(lambda s: set_knobs(s, {"LEARNING_RATE": 3e-3}))))
        return Loop(forge, None, proposer, make_policy(config.policy), config.target, metric=config.metric,
                    executor=executor)

    first = Slurm(root, config)
    try:
        loop = loop_on(first)
        loop.stepper.take_up()
        loop.stepper.floor()
        exp = loop.stepper.open()
        loop.stepper._hand_over(RunSpec(role=exp.id, commit=exp.commit, champion=exp.parent, seed=0))
        [(champion_job, champion_dir)] = jobs_under(first.work).items()
        assert champion_dir.startswith("champion_")
        subprocess.run(["scancel", str(champion_job)], check=True)
        ended: list = []
        while not ended:
            ended = first.poll(30)
        loop.stepper.collect(ended)  # lost: queued again behind the experiment's run, now submitted
        [(exp_job, exp_dir)] = jobs_under(first.work).items()
        assert exp_dir.startswith("exp-1_")
        first.close()  # `arbot run` stops
        exp = forge.experiments()[0]
        champion = forge.champion_record(forge.champion())
        assert [s.run_id for s in exp.pending] == [None] and len(champion.pending) == len(champion.lost) == 1

        again = loop_on(Slurm(root, config))
        again.stepper.take_up()
        assert jobs_under(first.work) == {exp_job: exp_dir}
        assert set(again.stepper.in_flight) == {s.key for s in exp.pending + champion.pending}
        assert again.executor.poll(0.5) == [] and jobs_under(first.work) == {exp_job: exp_dir}
    finally:
        for job in jobs_under(first.work):
            subprocess.run(["scancel", str(job)], check=False)

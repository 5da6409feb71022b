"""The Slurm executor on a real cluster: the single-node one scripts/slurm-up.sh starts (CI runs it before the slow
suite). Without a cluster these tests fail with the reason; they never skip."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bot.config import load_config
from bot.executors.slurm import Slurm
from bot.forges.local import LocalForge
from bot.knobs import set_knobs
from bot.loop import Loop
from bot.core.policy import make_policy

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
    if not {"idle", "mixed", "allocated"} & set(states):
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
    return subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True).stdout.strip()


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

"""The Slurm executor on a real cluster: the single-node one scripts/slurm-up.sh starts (CI runs it before the slow
suite). Without a cluster these tests fail with the reason; they never skip."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bot.config import load_config
from bot.executors import Finished, Lost
from bot.executors.slurm import Slurm, run_dir_name
from bot.records import RunSpec

from .conftest import make_repo, tiny_config

pytestmark = pytest.mark.slow
SETUP = "run scripts/slurm-up.sh (as root) to start a single-node cluster on this machine"


def require_cluster() -> None:
    """Fail, saying why and what to do, unless a Slurm controller answers and has a node to run jobs on."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        pytest.fail(f"Slurm's commands (sbatch, scontrol) are not installed: {SETUP}")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        pytest.fail(f"no Slurm controller answers (scontrol ping: {(ping.stdout + ping.stderr).strip()}): {SETUP}")
    nodes = subprocess.run(["sinfo", "-h", "-o", "%n %T"], capture_output=True, text=True).stdout.split("\n")
    if not any(line.split()[1:2] and line.split()[1].rstrip("*") in ("idle", "mixed", "allocated")
               for line in nodes):
        pytest.fail(f"the Slurm cluster has no node that can run jobs (sinfo: {nodes}): {SETUP}")


def test_real_jobs_finish_with_job_and_node_and_a_job_cancelled_from_outside_is_lost(tmp_path):
    require_cluster()
    repo = make_repo(tmp_path / "r", tiny_config(slurm={"poll_seconds": 0.5}))
    root = Path(repo.working_tree_dir)
    ex = Slurm(root, load_config(root / "arbot.yml"))
    sha = repo.head.commit.hexsha
    kept = ex.submit(RunSpec(role="champion", commit=sha, champion=sha, seed=0), None)
    doomed = ex.submit(RunSpec(role="champion", commit=sha, champion=sha, seed=1), None)
    started = ex.work / run_dir_name(doomed.key) / f"{doomed.run_id}.node"  # written first thing by the job
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert started.exists(), f"job {doomed.run_id} did not start within 60 s"
    subprocess.run(["scancel", str(doomed.run_id)], check=True)  # from outside, as an operator or preemption would

    outcomes = {}
    deadline = time.monotonic() + 300
    while len(outcomes) < 2 and time.monotonic() < deadline:
        outcomes.update({o.spec.key: o for o in ex.poll(5)})
    assert len(outcomes) == 2, f"only {list(outcomes)} ended within 300 s"
    finished, lost = outcomes[kept.key], outcomes[doomed.key]
    assert isinstance(finished, Finished), finished
    assert finished.result.ok, finished.result.reason + finished.result.log_tail
    assert finished.result.job == f"slurm {kept.run_id}" and finished.result.node == socket.gethostname().split(".")[0]
    assert finished.result.metrics["val_bpb"] > 0 and finished.result.seed == 0
    assert isinstance(lost, Lost), lost
    assert lost.job == f"slurm {doomed.run_id}" and "ended CANCELLED" in lost.reason
    # the attempt's files stay on the shared filesystem: its log, and no result
    assert not list(ex.work.glob(f"*/{doomed.run_id}.json")) and list(ex.work.glob(f"*/{doomed.run_id}.log"))

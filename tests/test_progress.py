"""Progress you can watch: `arbot status` (stale rate, trajectory, a running campaign's workers) and `arbot plot`,
on a scripted campaign with two experiments in flight."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import git
import matplotlib.image
import pytest

from bot.executors.pool import LocalPool
from bot.loop import Loop
from bot.core.policy import make_policy
from bot.progress import champion_steps, live, stale_rate, trajectory
from bot.core.records import DEFAULT_METRIC, val_runs
from tests.scripted import ScriptedProposer, Variant, make_world
from tests.test_local_pool import CountingRunner, scripted_world

WORLD = {"win": Variant(effect=-0.3), "slow-win": Variant(effect=-0.2), "worse": Variant(effect=0.2)}


@pytest.fixture
def campaign(tmp_path):
    """exp-1 wins while exp-2 (deferred behind it after passing its screen) waits; exp-2 is measured again as exp-3
    and wins too; then exp-4 is a loss."""
    repo, config, forge = scripted_world(tmp_path)
    pool = LocalPool(lambda target, gpus: CountingRunner(git.Repo(repo.working_dir), WORLD, delay=0.2),
                     config.target, 2)
    status = tmp_path / "status.json"
    loop = Loop(forge, None, ScriptedProposer("win", "slow-win", "worse"), make_policy(config.policy),
                config.target, executor=pool, status_file=status)
    try:
        loop.measure_champion()
        loop.campaign(limit=2)
        loop.campaign(limit=1)
    finally:
        pool.close()
    return repo, forge, status


def arbot(repo, *args):
    return subprocess.run([sys.executable, "-m", "bot", *args, "--repo", repo.working_tree_dir],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})


def test_status_shows_the_stale_rate_and_the_champions_trajectory(campaign):
    repo, forge, _ = campaign
    rate, stale, decided = stale_rate(forge.experiments())
    assert (stale, decided) == (1, 4) and rate == 0.25
    out = arbot(repo, "status").stdout
    assert "stale rate: 25% (1 of 4 decided experiments measured again" in out
    steps = champion_steps(forge.champion_log())
    assert [e for e, _ in steps] == ["start", "exp-1", "exp-3"] and float(steps[2][1]) < float(steps[1][1]) < float(steps[0][1])
    assert f"champion trajectory (val_bpb, one step per merged win): {' -> '.join(v for _, v in steps)}" in out
    assert "no `arbot run` is running on this repository" in out


def test_a_running_campaign_shows_its_workers_queue_and_rate(campaign, tmp_path):
    repo, _, status = campaign
    state = json.loads(status.read_text())  # written while it ran
    assert state["in_flight"] == 2 and state["runs_made"] > 0 and state["pid"] == os.getpid()
    assert live(status) is not None  # this process wrote it and still runs
    mine = repo.git_dir + "/arbot-status.json"
    with open(mine, "w") as f:  # as `arbot run` would, mid-campaign
        json.dump({**state, "busy": {"worker 1": "exp-9:abc:seed-0:val", "worker 2": "champion:def:seed-3:val"},
                   "queued": 3}, f)
    out = arbot(repo, "status").stdout
    assert "worker 1: exp-9:abc:seed-0:val, worker 2: champion:def:seed-3:val; queued runs: 3" in out
    dead = {**state, "pid": 2**22 + 12345}  # a campaign whose process is gone is not running
    with open(mine, "w") as f:
        json.dump(dead, f)
    assert "no `arbot run` is running" in arbot(repo, "status").stdout


def test_plot_writes_the_trajectory_as_an_image(campaign, tmp_path):
    repo, forge, _ = campaign
    points = trajectory(forge.experiments(), {sha: forge.champion_record(sha) for sha in
                                              {r.parent for r in forge.experiments()}}, DEFAULT_METRIC)
    assert [(p.experiment, p.verdict, p.merged) for p in points] == [
        ("exp-1", "win", True), ("exp-2", "rejected", False), ("exp-3", "win", True), ("exp-4", "loss", False)]
    assert points[0].value < points[0].champion and points[0].noise > 0
    # measured on the new champion, whose runs begin with the win's (seeds 0, 1) and go on at seed 2
    win, third = forge.experiments()[0], forge.experiments()[2]
    successor = [r.metrics["val_bpb"] for r in val_runs(forge.champion_record(third.parent).runs)]
    assert successor[:2] == [r.metrics["val_bpb"] for r in val_runs(win.runs)]
    assert points[2].champion == pytest.approx(sum(successor) / len(successor))
    out = tmp_path / "plots" / "trajectory.png"
    result = arbot(repo, "plot", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 300 and image.shape[1] > 600 and image.std() > 0  # a real, non-blank picture


def test_plot_before_any_experiment_says_what_to_do(tmp_path):
    repo = make_world(tmp_path / "w", {})
    result = arbot(repo, "plot")
    assert result.returncode == 2 and "no decided experiment yet: `arbot run` first" in result.stdout


def test_status_log_plot_and_the_results_export_read_each_note_once(campaign, tmp_path, monkeypatch):
    """Each command reads and checks every note once, however many champions and experiments it shows (the bot's
    own cost does not grow with the history times the champions)."""
    from typer.testing import CliRunner

    from bot import cli
    from bot.forges.local import LocalForge
    from bot.loop import export_results

    repo, forge, _ = campaign
    notes = len(repo.git.notes("--ref=arbot", "list").splitlines())
    checked = []
    original = LocalForge._check

    def counting(self, ref, commit, blob):
        if (ref, commit, blob) not in self._checked:
            checked.append((ref, commit, blob))
        return original(self, ref, commit, blob)

    monkeypatch.setattr(LocalForge, "_check", counting)
    for args in (["status"], ["log"], ["plot", "--out", str(tmp_path / "p.png")]):
        checked.clear()
        out = CliRunner().invoke(cli.app, [*args, "--repo", repo.working_tree_dir])
        assert out.exit_code == 0, out.output
        assert len(checked) == len(set(checked)) and len([c for c in checked if c[0].endswith("arbot")]) == notes
    checked.clear()
    export_results(LocalForge(repo), tmp_path / "results.tsv", DEFAULT_METRIC)
    assert len(checked) == len(set(checked)) == notes

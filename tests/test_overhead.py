"""The per-run overhead cuts (docs/architecture.md, "Overhead per run"): the evaluator worker starts while the first
run of its evaluator trains; a new champion whose evaluator/ is the same keeps the warm worker and its prepared
splits, one whose evaluator/ differs gets its own; every run reports where its time went (RunResult.phases).

The training script here writes a model trained once beforehand, so a run costs its scoring, not a training."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import runner.job as job
from runner.config import EvaluatorConfig, TargetConfig
from runner.result import RunResult

from .conftest import ROOT, TINY, commit_change, make_repo, tiny_config

COPY_SCRIPT = '''"""Writes the model trained beforehand (model.pt2 next to this script) as its own."""
import argparse
import shutil

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
args, _ = parser.parse_known_args()
shutil.copyfile("model.pt2", args.out + "/model.pt2")
'''
PHASES = {"inspect", "evaluator", "checkout", "train", "copy_out", "score", "bookkeeping"}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One Runner making three runs: champion A (cold), champion B (train.py changed: the same evaluator), champion
    C (evaluator/ changed). Records, at each training's start, the worker process that was running, and counts
    the handshakes (one per evaluator prepared)."""
    tmp = tmp_path_factory.mktemp("overhead")
    cache = json.loads(subprocess.run([sys.executable, "-m", "evaluator", "prepare", "--cache", str(job.default_cache_dir())],
                                      cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    argv = [sys.executable, "train.py", "--data", cache["train"], "--out", str(tmp / "model"), "--budget", "0.5",
            "--seed", "0", "--device", "cpu"] + [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    subprocess.run(argv, cwd=ROOT / "target", check=True, capture_output=True)

    repo = make_repo(tmp / "research", tiny_config(), script_edit=lambda _: COPY_SCRIPT)
    (tmp / "research" / "target" / "model.pt2").write_bytes((tmp / "model" / "model.pt2").read_bytes())
    repo.git.add("target/model.pt2")
    a = repo.index.commit("a model trained beforehand").hexsha
    b = commit_change(repo, "b", a, {"target/train.py": COPY_SCRIPT + "# a win\n"}, "champion B")
    init = (ROOT / "evaluator" / "__init__.py").read_text()
    c = commit_change(repo, "c", b, {"evaluator/__init__.py": init + "# another evaluator\n"}, "champion C")

    runner = job.Runner(repo, TargetConfig(**tiny_config()["target"]), EvaluatorConfig())
    at_training: list[int | None] = []
    handshakes: list[str] = []
    real_run, real_handshake = job.run_untrusted, job.handshake

    def run_untrusted(*args, **kwargs):
        worker = runner._worker
        alive = worker is not None and worker.proc is not None and worker.proc.poll() is None
        at_training.append(worker.proc.pid if alive else None)
        return real_run(*args, **kwargs)

    def handshake(evaluator_dir, *args):
        handshakes.append(str(evaluator_dir))
        return real_handshake(evaluator_dir, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(job, "run_untrusted", run_untrusted)
        mp.setattr(job, "handshake", handshake)
        results: list[RunResult] = []
        scored_by: list[int] = []
        for seed, champion in enumerate((a, b, c)):
            results.append(runner.run(champion, champion, seed=seed))
            scored_by.append(runner._worker.proc.pid)
    yield {"results": results, "at_training": at_training, "scored_by": scored_by, "handshakes": handshakes,
           "trees": [runner.evaluator_tree(x) for x in (a, b, c)]}
    runner._worker.close()


def test_every_run_is_scored(session):
    for r in session["results"]:
        assert r.ok, (r.reason, r.log_tail)
        assert r.sandbox == "bwrap"


def test_no_evaluator_worker_runs_while_the_first_training_does(session):
    """The worker starts at the run's scoring, after its training: started while the run trained, its start-up
    took CPU from the training being timed (docs/policy.md, round 8)."""
    assert session["at_training"][0] is None, "an evaluator worker was running while the first run trained"
    assert session["scored_by"][0] is not None


def test_a_new_champion_with_the_same_evaluator_keeps_the_worker_and_its_splits(session):
    trees = session["trees"]
    assert trees[0] == trees[1] != trees[2]
    assert session["at_training"][1] == session["scored_by"][1] == session["scored_by"][0]
    # one handshake and prepare for A and B together, one for C
    assert len(session["handshakes"]) == 2, "the splits of an evaluator already prepared were prepared again"


def test_a_champion_with_another_evaluator_gets_its_own_worker(session):
    assert session["scored_by"][2] != session["scored_by"][1]
    assert session["at_training"][2] is None  # the old one stopped, the new one started after the training
    c, a = session["results"][2], session["results"][0]
    assert c.evaluator_fingerprint != a.evaluator_fingerprint  # the fingerprint covers the evaluator's code


def test_each_run_reports_where_its_time_went(session):
    for r in session["results"]:
        assert set(r.phases) == PHASES
        assert all(v >= 0 for v in r.phases.values())
        assert sum(r.phases.values()) == pytest.approx(r.total_seconds, abs=0.05)
        assert r.phases["train"] == pytest.approx(r.train_seconds, abs=0.05)

"""The warm evaluator worker: same scores as the one-shot evaluator, one process for many models, restarts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.job import export_tree
from runner.scorer import EvaluatorWorker, WorkerDied

from .conftest import ROOT, TINY

CACHE = Path(os.environ["ARBOT_CACHE"])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny trained models (seeds 0 and 1)."""
    train = json.loads(subprocess.run([sys.executable, "-m", "evaluator", "prepare", "--cache", str(CACHE)],
                                      cwd=ROOT, capture_output=True, text=True, check=True).stdout)["train"]
    out = []
    for seed in (0, 1):
        d = tmp_path_factory.mktemp(f"model{seed}")
        argv = [sys.executable, "train.py", "--data", train, "--out", str(d), "--budget", "1", "--seed", str(seed)]
        argv += [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
        subprocess.run(argv, cwd=ROOT / "target", check=True, capture_output=True)
        out.append(d / "model.pt2")
    return out


def one_shot(model: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "evaluator", "score", "--model", str(model), "--cache", str(CACHE)],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def worker(research_repo) -> EvaluatorWorker:
    w = EvaluatorWorker(research_repo.head.commit.hexsha, CACHE, threads=1)
    export_tree(research_repo, "HEAD", "evaluator", w.dir)
    return w


def test_a_warm_worker_scores_like_the_one_shot_evaluator(research_repo, models):
    w = worker(research_repo)
    first = w.score(models[0], ("val",), "cpu")
    pid = w.proc.pid
    second = w.score(models[1], ("val", "holdout"), "cpu")
    assert w.proc.pid == pid  # one process served both
    assert first["metrics"] == one_shot(models[0])["metrics"]
    assert set(second["metrics"]) == {"val_bpb", "holdout_bpb"}
    bad = w.score(Path("/nonexistent/model.pt2"), ("val",), "cpu")
    assert bad["status"] == "error" and "bad request" in bad["reason"]
    w.close()
    assert w.proc.poll() is not None and not w.dir.exists()


def test_a_killed_worker_is_restarted_at_the_next_request(research_repo, models):
    w = worker(research_repo)
    w.score(models[0], ("val",), "cpu")
    old = w.proc
    old.kill()
    old.wait()
    assert w.score(models[0], ("val",), "cpu")["status"] == "ok"
    assert w.proc.pid != old.pid
    w.close()


def test_a_worker_that_dies_mid_request_says_so(tmp_path):
    """An evaluator that crashes on a model (here one that exits on any request) is reported, not hung on."""
    w = EvaluatorWorker("c" * 40, CACHE, threads=1)
    (w.dir / "evaluator").mkdir()
    (w.dir / "evaluator" / "__init__.py").write_text("")
    (w.dir / "evaluator" / "__main__.py").write_text(
        "import sys\nsys.stdin.readline()\nsys.exit('segfault-like crash while loading the model')\n")
    with pytest.raises(WorkerDied, match="exit 1.*segfault-like crash"):
        w.score(tmp_path / "model.pt2", ("val",), "cpu")
    w.close()

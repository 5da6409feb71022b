"""The warm evaluator worker: same scores as the one-shot evaluator, one process for many models, restarts."""

import json
import time
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.job import export_tree
from runner.scorer import EvaluatorWorker, ScoreTimeout, WorkerDied

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


# --- the scoring sandbox and the deadline ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def box():
    from runner import sandbox as sb

    b = sb.resolve("auto", sb.Limits(memory_bytes=4 << 30, max_processes=256))
    if b.kind != "bwrap":
        pytest.skip(f"bubblewrap cannot start here: {b.note}")
    return b.with_uid(65533, sb.Limits(memory_bytes=4 << 30, max_processes=256, max_file_bytes=64 << 20))


def data_dir() -> Path:
    from evaluator.data import prepare

    return prepare(CACHE).dir


def sandboxed(research_repo, box) -> EvaluatorWorker:
    w = EvaluatorWorker(research_repo.head.commit.hexsha, CACHE, threads=1, sandbox=box, data_dir=data_dir())
    export_tree(research_repo, "HEAD", "evaluator", w.dir)
    return w


def fake_evaluator(w: EvaluatorWorker, main: str) -> EvaluatorWorker:
    (w.dir / "evaluator").mkdir()
    (w.dir / "evaluator" / "__init__.py").write_text("")
    (w.dir / "evaluator" / "__main__.py").write_text(main)
    return w


def test_a_sandboxed_worker_scores_exactly_like_an_unsandboxed_one(research_repo, models, box):
    w = sandboxed(research_repo, box)
    first = w.score(models[0], ("val",), "cpu", deadline=120)
    assert first["status"] == "ok", first
    assert first["metrics"] == one_shot(models[0])["metrics"]
    both = w.score(models[1], ("val", "holdout"), "cpu", deadline=120)
    assert set(both["metrics"]) == {"val_bpb", "holdout_bpb"}
    assert not any(w.inbox.iterdir())  # the model is in the inbox only while it is scored
    assert w.score(Path("/nonexistent/model.pt2"), ("val",), "cpu")["status"] == "error"
    w.close()
    assert not w.dir.exists()


def test_what_the_sandboxed_worker_sees(research_repo, tmp_path, box, monkeypatch):
    """Any code that runs in the scoring worker (however it got there) sees no runner, no network, no secret,
    and can write nothing but its scratch tmpfs, whose size is capped."""
    monkeypatch.setenv("ARBOT_FAKE_SECRET", "hunter2-scoring")
    sources = CACHE / "sources"
    probe = f"""
import json, os, socket, sys
sys.stdin.readline()
seen = {{"status": "ok", "uid": os.getuid(), "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "environ": os.environ.get("ARBOT_FAKE_SECRET", ""), "exists": {{}}, "writable": {{}}}}
for p in {[str(research_repo.working_tree_dir), str(sources), str(tmp_path), "/home", "/root/.ssh"]!r}:
    seen["exists"][p] = os.path.exists(p)
for p in [os.path.join(os.getcwd(), "evaluator", "x"), os.path.join(os.getcwd(), "inbox", "x"),
          os.path.join({str(data_dir())!r}, "x"), "/usr/x", "/x", os.path.join(os.environ["HOME"], "x")]:
    try:
        open(p, "w").write("x"); seen["writable"][p] = True
    except OSError:
        seen["writable"][p] = False
try:
    with open(os.path.join(os.environ["HOME"], "big"), "wb") as f:
        for _ in range(400):
            f.write(b"x" * (1 << 20))
    seen["scratch_full"] = False
except OSError:
    seen["scratch_full"] = True
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2); seen["network"] = True
except OSError:
    seen["network"] = False
print(json.dumps(seen), flush=True)
"""
    w = fake_evaluator(EvaluatorWorker("c" * 40, CACHE, threads=1, sandbox=box, data_dir=data_dir()), probe)
    seen = w.score(tmp_path / "model.pt2", ("val",), "cpu", deadline=60)
    w.close()
    if os.geteuid() == 0:
        assert seen["uid"] == 65533
    assert max(seen["pids"]) < 10 and os.getpid() not in seen["pids"] or os.getpid() < 10
    assert seen["environ"] == "" and not any(seen["exists"].values()), seen
    writable = [p for p, ok in seen["writable"].items() if ok]
    assert writable == [p for p in seen["writable"] if p.endswith(os.path.join("scratch", "x"))], seen["writable"]
    assert seen["scratch_full"] and not seen["network"]


@pytest.mark.parametrize("sandbox", [True, False], ids=["bwrap", "none"])
def test_a_scoring_past_its_deadline_is_killed_with_its_whole_sandbox(research_repo, tmp_path, box, sandbox):
    hang = ("import subprocess, sys, time\nsys.stdin.readline()\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])  # a helper it leaves behind\n"
            "time.sleep(600)\n")
    w = fake_evaluator(EvaluatorWorker("c" * 40, CACHE, threads=1, sandbox=box if sandbox else None,
                                       data_dir=data_dir()), hang)
    start = time.monotonic()
    with pytest.raises(ScoreTimeout, match="deadline of 2 s") as e:
        w.score(tmp_path / "model.pt2", ("val",), "cpu", deadline=2)
    assert 2 <= e.value.seconds < 10 and time.monotonic() - start < 15
    pgid = w._started[-1].pid
    assert w._started[-1].poll() is not None
    time.sleep(0.2)
    assert not [p for p in Path("/proc").glob("[0-9]*") if _pgid(p) == pgid]  # nothing of its session survives
    w.close()


def _pgid(proc: Path) -> int | None:
    """The process group of a live process (None for a zombie: dead, waiting to be reaped by init)."""
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[2])
    except (OSError, ValueError, IndexError):
        return None


# --- the probe plan (evaluator/score.py) -------------------------------------------------------------------------

def test_the_probe_plan_spreads_the_row_and_determinism_passes_over_secret_batches():
    """The row and determinism passes, each on a different batch drawn from val and holdout (few from a split that
    is not scored); another seed, other batches. (Causality is checked on every scored batch.)"""
    import numpy as np

    from evaluator.score import PROBE_UNSCORED_BATCHES, probe_plan

    B, batches = 8, {"val": 34, "holdout": 32}
    plans = [probe_plan(batches, {"val"}, B, np.random.default_rng(seed)) for seed in range(20)]
    for plan in plans:
        tasks = [t for ts in plan.values() for t in ts]
        assert sorted(t[1:] for t in tasks if t[0] == "rows") == [(bit, v) for bit in range(3) for v in (0, 1)]
        assert [t for t in tasks if t[0] == "same"] == [("same",)] and len(tasks) == 7
        assert all(len(ts) == 1 for ts in plan.values())  # one pass per batch: as many batches as passes
        assert {split for split, _ in plan} == {"val", "holdout"}
        assert sum(split == "holdout" for split, _ in plan) <= PROBE_UNSCORED_BATCHES
        assert all(0 <= i < batches[split] for split, i in plan)
    assert len({frozenset(plan) for plan in plans}) == len(plans)


# --- the worker's cores ------------------------------------------------------------------------------------------

CORES_EVALUATOR = ("import json, os, sys\n"
                   "for line in sys.stdin:\n"
                   "    print(json.dumps({'status': 'ok', 'cpus': sorted(os.sched_getaffinity(0))}), flush=True)\n")


@pytest.mark.parametrize("sandboxed", [False, True], ids=["unsandboxed", "sandboxed"])
def test_a_worker_scores_on_the_cores_it_is_given(tmp_path, request, sandboxed):
    """A pool worker's evaluator runs on that worker's cores: left to the scheduler, it scored on the core another
    worker's run was training on, timed, and that run made fewer steps."""
    core = min(os.sched_getaffinity(0))
    sandbox = request.getfixturevalue("box") if sandboxed else None
    w = fake_evaluator(EvaluatorWorker("c" * 40, CACHE, threads=1, sandbox=sandbox, cpus=(core,)), CORES_EVALUATOR)
    assert w.score(tmp_path / "model.pt2", ("val",), "cpu", deadline=60)["cpus"] == [core]
    w.close()


def test_a_runners_evaluator_scores_on_the_runners_cores(research_repo):
    """A pool worker's runner (target.cpus: its share) scores on those cores (when: tests/test_overhead.py)."""
    from bot.config import EvaluatorConfig, TargetConfig
    from runner import job

    from .conftest import tiny_config

    core = min(os.sched_getaffinity(0))
    runner = job.Runner(research_repo, TargetConfig(**tiny_config()["target"], cpus=str(core), sandbox="off"),
                        EvaluatorConfig())
    result = runner.run("HEAD", "HEAD")
    assert result.status == "ok", result.reason
    assert os.sched_getaffinity(runner._worker.proc.pid) == {core}
    runner._worker.close()

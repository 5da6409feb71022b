"""Attacks on the run's resource box (issue 22, finding 4), each a real candidate through the real Loop and Runner
under bubblewrap, against a deliberately weak champion (test_adversarial.py's suite).

Each holds or asks for more than its run may have: memory the setrlimit limits do not count (memfd, shared
anonymous memory), many threads or processes, every core, more disk than its cap. The kernel bounds each (runner.box:
memory, pids and cpuset cgroups per run; a tmpfs of target.max_disk_gb as the work dir) and the run ends with a
verdict naming the limit. Needs a root runner on a machine with cgroups (this machine and CI): where there are
none, the run's limits are not the kernel's and these tests fail with the reason `arbot doctor` gives.
"""

from __future__ import annotations

import os
import re

import pytest

from runner import box as runbox
from runner import sandbox as sb

from .test_adversarial import SECRET, Suite, after_knobs, better

pytestmark = pytest.mark.slow

MEMORY_GB, DISK_GB = 1.5, 0.25
NOISE_FLOOR = 0.03  # the least relative noise assumed between two solo runs of the hog test


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    box = sb.resolve("auto", sb.Limits())
    if box.kind != "bwrap":
        pytest.skip(f"the adversarial suite needs bubblewrap: {box.note}")
    for name in (runbox.MEMORY, runbox.PIDS, runbox.CPU, runbox.CPUSET):
        if isinstance(why := runbox.controller(name), str):
            pytest.fail(f"the {name} limit is not the kernel's on this machine: {why}")
    os.environ["ARBOT_FAKE_SECRET"] = SECRET
    try:
        s = Suite(tmp_path_factory.mktemp("box"), target={"memory_gb": MEMORY_GB, "max_disk_gb": DISK_GB,
                                                          "max_processes": 128, "threads": 1})
        yield s
    finally:
        os.environ.pop("ARBOT_FAKE_SECRET", None)
    print("\nbox attacks:\n" + "\n".join(s.rows))


def attack(suite, hypothesis: str, code: str):
    rec = suite.attack(hypothesis, after_knobs(better(suite.source), code))
    return rec, rec.runs[0]


HOLD_4_GIB = {
    "memfd": "import os as _os\n_fd = _os.memfd_create('cache')\n_block = b'\\1' * (64 << 20)\n"
             "for _i in range(64):\n    _os.write(_fd, _block)",
    "shared anonymous mmap": "import mmap as _mmap\n_m = _mmap.mmap(-1, 4 << 30)\n_block = b'\\1' * (64 << 20)\n"
                             "for _i in range(64):\n    _m.write(_block)",
}


@pytest.mark.parametrize("kind", HOLD_4_GIB)
def test_holds_shared_memory_that_rlimit_data_does_not_count(suite, kind):
    """4 GiB in memory that no per-process limit counts, under memory_gb 1.5: the run's memory cgroup counts it,
    the kernel kills the run at the limit, and the verdict names it."""
    rec, run = attack(suite, f"Cache the data set in {kind} memory", HOLD_4_GIB[kind])
    assert rec.decision.verdict == "rejected" and run.reason.startswith("memory_limit:"), run.reason
    assert "shared memory" in run.reason and "target.memory_gb" in run.reason and not run.metrics
    assert run.peak_memory_gb <= MEMORY_GB + 0.01  # the cgroup's own peak: it never held more


HOLD_TASKS = {
    "threads": "import threading as _th\n_stop, _held = _th.Event(), []\nfor _i in range(1000):\n    try:\n"
               "        _t = _th.Thread(target=_stop.wait)\n        _t.start()\n        _held.append(_t)\n"
               "    except RuntimeError:\n        break\nprint('threads held', len(_held), flush=True)",
    "processes": "import os as _os, time as _time\n_kids = []\nfor _i in range(1000):\n    try:\n        _pid = _os.fork()\n"
                 "    except OSError:\n        break\n    if _pid == 0:\n        _time.sleep(600)\n        _os._exit(0)\n"
                 "    _kids.append(_pid)\nprint('processes held', len(_kids), flush=True)",
}


@pytest.mark.parametrize("kind", HOLD_TASKS)
def test_holds_as_many_threads_or_processes_as_it_can(suite, kind):
    """It stops at its own run's pids limit (not a count shared with other runs of the uid) and is rejected for
    it at once, with the training still to do."""
    rec, run = attack(suite, f"Hold many {kind}", HOLD_TASKS[kind])
    assert rec.decision.verdict == "rejected" and run.reason.startswith("pids_limit:"), run.reason
    assert "128 processes and threads" in run.reason and "target.max_processes" in run.reason


SPIN = """
import os as _os, threading as _th, time as _time
try:
    _os.sched_setaffinity(0, range(_os.cpu_count()))
except OSError as _e:
    print("setaffinity refused:", _e)
def _spin():
    _s = _time.time()
    while _time.time() - _s < 3:
        pass
_w, _c0 = _time.time(), _os.times()
_ts = [_th.Thread(target=_spin) for _ in range(4)]
for _t in _ts:
    _t.start()
for _t in _ts:
    _t.join()
_c = _os.times()
print("AFFINITY", sorted(_os.sched_getaffinity(0)), "CORES-USED",
      round((_c.user + _c.system - _c0.user - _c0.system) / (_time.time() - _w), 2), flush=True)
raise SystemExit(3)  # a crash keeps the log for the test to read
"""


def test_uses_more_cores_than_target_threads(suite):
    """target.threads is 1: four spinning threads, after asking for every core, get one core's worth of CPU time
    (the run's cpu quota); a pool worker is also pinned to its own cores (target.cpus: a cpuset)."""
    assert os.cpu_count() >= 2, "needs a machine with at least two cores to show the bound"
    rec, run = attack(suite, "Use every core", SPIN)
    found = re.search(r"AFFINITY \[(.*)\] CORES-USED ([0-9.]+)", run.log_tail)
    assert found, run.log_tail
    assert float(found.group(2)) <= 1.1, found.group(0)
    assert rec.decision.verdict == "crash"


def test_a_worker_pinned_to_its_cores_cannot_leave_them(suite):
    """target.cpus (what a pool gives each worker): sched_setaffinity to every core still leaves it on its own."""
    suite.runner.target = suite.runner.target.model_copy(update={"cpus": "1"})
    suite.runner._sandbox = None  # the sandbox carries the limits: resolve it again for the new cpuset
    try:
        rec, run = attack(suite, "Use every core, pinned", SPIN)
    finally:
        suite.runner.target = suite.runner.target.model_copy(update={"cpus": None})
        suite.runner._sandbox = None
    found = re.search(r"AFFINITY \[(.*)\] CORES-USED ([0-9.]+)", run.log_tail)
    assert found and found.group(1) == "1" and float(found.group(2)) <= 1.1, run.log_tail


FILL = {
    "one big file": "import time as _time\n_s, _n = _time.time(), 0\ntry:\n    with open('fill.bin', 'wb') as _f:\n"
                    "        while True:\n            _f.write(b'\\1' * (16 << 20))\n            _f.flush()\n"
                    "            _n += 16\nexcept OSError as _e:\n"
                    "    print('DISK FULL after', _n, 'MiB in', round(_time.time() - _s, 2), 's:', _e, flush=True)\n"
                    "_time.sleep(30)",
    "many empty files": "import time as _time\n_s, _n = _time.time(), 0\ntry:\n    while True:\n"
                        "        open(f'f{_n}', 'w').close()\n        _n += 1\nexcept OSError as _e:\n"
                        "    print('DISK FULL after', _n, 'files in', round(_time.time() - _s, 2), 's:', _e, flush=True)\n"
                        "_time.sleep(30)",
}


@pytest.mark.parametrize("kind", FILL)
def test_writes_past_the_disk_cap(suite, kind):
    """Its work dir is a filesystem of max_disk_gb: the write past it fails at once (not measured after GiBs),
    and the run, though it swallows the error and waits, is rejected for it within a second."""
    rec, run = attack(suite, f"Fill the disk with {kind}", FILL[kind])
    assert rec.decision.verdict == "rejected" and run.reason.startswith("disk_cap:"), run.reason
    assert f"{DISK_GB:g} GiB" in run.reason and "target.max_disk_gb" in run.reason
    assert "DISK FULL after" in run.log_tail and "No space left on device" in run.log_tail, run.log_tail
    assert run.train_seconds < 25  # killed at the watch after the fill, not at the 30 s sleep's end


def test_honest_candidate_still_wins_in_its_box(suite):
    """Control, run last (it moves the champion): the honest improvement fits its memory, pids, cores and disk."""
    suite.proposer.next = ("Raise LEARNING_RATE to 3e-3", {"target/train.py": better(suite.source)})
    rec = suite.loop.step()
    assert rec.decision.verdict == "win" and rec.merged_as and rec.review is None, rec.decision
    assert all(r.status == "ok" and r.sandbox == "bwrap" and 0 < r.peak_memory_gb < MEMORY_GB for r in rec.runs)


# --- a concurrent run is never affected ----------------------------------------------------------------------------

HOG = """
import os as _os, threading as _th, time as _time
_fd = _os.memfd_create("hog")  # most of its memory, in shared memory no per-process limit counts
for _i in range(18):
    _os.write(_fd, b"\\1" * (64 << 20))
for _i in range(40):  # processes and threads up to its pids limit (128, bwrap's and torch's own included)
    if _os.fork() == 0:
        _time.sleep(600)
        _os._exit(0)
_stop = _th.Event()
for _i in range(70):
    _th.Thread(target=_stop.wait, daemon=True).start()
print("hog: 1.1 GiB of memfd, 40 processes and 70 threads held", flush=True)
"""


def test_a_hog_in_one_worker_leaves_the_other_workers_result_as_it_is_solo(tmp_path):
    """Two workers (each its own uid, core and cgroups): one candidate holds its memory in memfd and about as many
    processes and threads as its pids limit allows (the issue's hog made a concurrent honest run crash: one
    RLIMIT_NPROC for every run); the honest run beside it ends ok with the score it gets solo, within the noise of
    two solo runs. (CPU time is bounded per run too, test_uses_more_cores_than_target_threads; on a two-core
    machine a spinning hog pushes every process outside the runs onto the other run's core.)"""
    import git

    from bot.config import load_config
    from bot.executors.pool import LocalPool
    from bot.core.records import RunSpec
    from runner.job import Runner

    from ..conftest import commit_change, make_repo, tiny_config

    cfg = tiny_config(target={"budget_seconds": 2.0, "sandbox": "require", "memory_gb": MEMORY_GB,
                              "max_processes": 128, "threads": 1}, run={"workers": 2})
    repo = make_repo(tmp_path / "research", cfg)
    config = load_config(tmp_path / "research" / "arbot.yml")
    honest = repo.head.commit.hexsha
    source = (tmp_path / "research" / "target" / "train.py").read_text()
    hog = commit_change(repo, "hog", honest, {"target/train.py": after_knobs(source, HOG)}, "hog")
    pool = LocalPool(lambda target, gpus: Runner(git.Repo(repo.working_dir), target, config.evaluator, devices=gpus),
                     config.target, 2, gpus=[])

    def results(*commits: str) -> dict[str, object]:
        specs = [RunSpec(role=f"r{i}", commit=c, champion=honest, seed=0) for i, c in enumerate(commits)]
        for spec in specs:
            pool.submit(spec, None)
        done: dict[str, object] = {}
        while len(done) < len(specs):
            done.update({o.spec.role: o.result for o in pool.poll(120)})
        return done

    try:
        results(honest, honest)  # both workers' evaluators warm, the champion measured
        solo = [results(honest)["r0"] for _ in range(2)]
        beside = results(hog, honest)
    finally:
        pool.close()
    hogged, fair = beside["r0"], beside["r1"]
    assert "hog:" in hogged.log_tail or hogged.status != "ok", hogged
    assert fair.status == "ok" and fair.job != hogged.job, fair
    scores = [r.metrics["val_bpb"] for r in solo]
    # a run trains for a wall-clock budget: on a small shared machine two solo runs differ by several percent
    noise = max(abs(scores[0] - scores[1]), NOISE_FLOOR * scores[0])
    print(f"\nsolo val_bpb {scores}, beside the hog {fair.metrics['val_bpb']} ({fair.steps} steps, solo "
          f"{[r.steps for r in solo]}); the hog: {hogged.status} {hogged.reason[:80]}")
    assert abs(fair.metrics["val_bpb"] - sum(scores) / 2) <= 2 * noise

"""Run one untrusted training process: scrubbed environment, own process group, hard wall-clock kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner.box import RunBox
from runner.gpus import visible_devices
from runner.limits import Limits

PROGRESS_PREFIX = "@progress "
LOG_TAIL_LINES = 40

ProgressCallback = Callable[[dict], None]


@dataclass
class ProcessOutcome:
    returncode: int | None  # None when killed at the deadline
    timed_out: bool
    wall_seconds: float
    max_rss_gb: float  # its memory cgroup's peak (shared memory included) where it has one, else its max RSS
    log_tail: str
    killed_by: int | None = None  # the signal that ended the process, when one did
    stopped: str = ""  # the limit the run went over (runner.box), or why `watch` stopped it (its group was killed)


def scrubbed_env(workdir: Path, threads: int, devices: str | None = None) -> dict[str, str]:
    """The only environment a candidate sees: no tokens, no secrets, no proxies, no user paths. `devices`: the GPUs
    it may use (CUDA_VISIBLE_DEVICES, one worker's share, passed as UUIDs: runner.gpus); None: this process's own
    setting."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible_devices(devices)
    elif "CUDA_VISIBLE_DEVICES" in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


MAX_LINE_BYTES = 4096  # longer output lines are cut: the candidate's output must not flood the runner's memory


def _pump(stream, tail: deque, on_progress: ProgressCallback | None) -> None:
    for raw in iter(lambda: stream.readline(MAX_LINE_BYTES), b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if line.startswith(PROGRESS_PREFIX):
            if on_progress:
                try:
                    on_progress(json.loads(line[len(PROGRESS_PREFIX):]))
                except (ValueError, TypeError):
                    pass  # progress lines are decoration; a malformed one is not an error
            continue
        tail.append(line)


def run_untrusted(
    argv: list[str], cwd: Path, env: dict[str, str], deadline_seconds: float, on_progress: ProgressCallback | None = None,
    limits: Limits | None = None, watch: Callable[[], str] | None = None, watch_every: float = 1.0,
) -> ProcessOutcome:
    """Run argv to completion or kill its whole process group at the deadline (also on Ctrl-C).

    `limits` (memory, processes, file size) are set in the child before exec and hold for all it starts; where
    the machine has cgroups the child first joins its own box of them (runner.box), so they hold per run.
    Every `watch_every` seconds while it runs, and once after, the box is asked whether the run went over one of
    its limits, then `watch` is called: a non-empty answer (why) kills the process group at once and is returned
    as `stopped` (the disk cap is watched this way)."""
    limits = limits or Limits()
    with RunBox(limits, cwd) as box:
        return _run_boxed(argv, cwd, env, deadline_seconds, on_progress, limits, box, watch, watch_every)


def _run_boxed(argv: list[str], cwd: Path, env: dict[str, str], deadline_seconds: float,
               on_progress: ProgressCallback | None, limits: Limits, box: RunBox, watch: Callable[[], str] | None,
               watch_every: float) -> ProcessOutcome:
    def enter() -> None:
        box.join()
        limits.apply(nproc=not box.processes_bounded)

    start = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, preexec_fn=enter,
    )
    watch_all = lambda: box.breach() or (watch() if watch is not None else "")  # noqa: E731
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    reader = threading.Thread(target=_pump, args=(proc.stdout, tail, on_progress), daemon=True)
    reader.start()
    status, rusage, timed_out, stopped = None, None, False, ""
    next_watch = start + watch_every
    try:
        while status is None:
            pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status, rusage = st, ru
            elif time.monotonic() - start > deadline_seconds:
                timed_out = True
                _kill_group(proc.pid)
            elif not stopped and time.monotonic() >= next_watch:
                stopped = watch_all()
                if stopped:
                    _kill_group(proc.pid)
                next_watch = time.monotonic() + watch_every
            else:
                time.sleep(0.05)
    except BaseException:
        _kill_group(proc.pid)
        os.waitpid(proc.pid, 0)
        raise
    finally:
        proc.returncode = 0  # reaped by wait4 above; stop Popen from waiting again
    wall = time.monotonic() - start
    _kill_group(proc.pid)  # leftovers a candidate may have spawned
    stopped = stopped or box.breach()  # an OOM kill ends the run before a watch sees it
    peak = box.peak_memory_bytes()
    box.close()  # and whatever is still in the run's cgroups (it left the group)
    reader.join(timeout=5)
    return ProcessOutcome(
        returncode=None if timed_out else os.waitstatus_to_exitcode(status),
        timed_out=timed_out,
        wall_seconds=wall,
        max_rss_gb=(peak if peak is not None else (rusage.ru_maxrss if rusage else 0) * 1024) / 2**30,
        log_tail="\n".join(tail),
        killed_by=-os.waitstatus_to_exitcode(status) if status is not None and os.WIFSIGNALED(status) else None,
        stopped=stopped,
    )


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

"""A warm evaluator: the champion's `python -m evaluator serve`, kept running between runs.

Starting Python, importing torch and the first model load cost about 5 s per run on 2 cores; a warm worker
scores the default model in about 2 s. It starts at its first request, after that run's training: started while
a run trained, it took the cores the training was timed on. One worker serves every champion whose evaluator/ is
the same git tree (the same code); it runs in its own process with a scrubbed environment, on the cores of the
runs it scores (`cpus`: a pool worker's share, so scoring never slows another worker's training), and never
imports candidate code.

With a sandbox (runner.sandbox, kind "bwrap") the worker runs under bubblewrap like training does: its own
uid (a root runner drops to evaluator.sandbox_uid), no network, its own pid namespace (no /proc of the
runner), the root read-only and nothing of the host but the system and Python directories, its own code
(read-only), the prepared data splits (read-only), an inbox that holds only the model being scored
(read-only) and a small private scratch tmpfs (HOME, TMPDIR); memory, process and file-size limits; and a
deadline per request, past which the runner kills the whole sandbox (`ScoreTimeout`). Without a sandbox
(`none`), the worker runs as before, in its own session, still with the deadline.
"""

from __future__ import annotations

import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

from runner.limits import Limits
from runner.process import scrubbed_env
from runner.sandbox import Sandbox
from runner.tempdirs import OwnedTempDir

SCRATCH_BYTES = 256 << 20  # the sandboxed worker's private tmpfs (HOME, TMPDIR)
MAX_ANSWER_BYTES = 1 << 20  # one answer line; a longer one is a broken worker
STDERR_TAIL_BYTES = 64 << 10
ANSWER_STATUSES = ("ok", "invalid", "error")  # a score answer's status (runner/schemas/score-answer.schema.json)


def _child_setup(cpus: tuple[int, ...] | None, limits: Limits | None) -> None:
    """In the worker's process before exec: its cores (inherited by the sandbox and all it starts), its limits."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    if limits is not None:
        limits.apply()


class WorkerDied(RuntimeError):
    """The evaluator process ended while scoring: the model it was given broke it."""


class ScoreTimeout(RuntimeError):
    """Scoring ran past its deadline: the worker (and its sandbox) was killed."""

    def __init__(self, seconds: float, deadline: float):
        super().__init__(f"scoring did not finish within its deadline of {deadline:g} s (killed after {seconds:.1f} s)")
        self.seconds, self.deadline = seconds, deadline


class EvaluatorWorker:
    def __init__(self, champion: str, cache: Path, threads: int, sandbox: Sandbox | None = None,
                 data_dir: Path | None = None, devices: str | None = None, cpus: tuple[int, ...] | None = None):
        self.champion = champion
        self.cpus = cpus  # the cores it may run on (its runner's target.cpus); None: the runner's own
        self._tmp = OwnedTempDir(prefix="arbot-evaluator-")
        self.dir = Path(self._tmp.name)  # the caller exports the champion's evaluator/ here (self.dir / "evaluator")
        os.chmod(self.dir, 0o711)
        self.inbox = self.dir / "inbox"  # the one model the worker may read, while it is scored
        self.inbox.mkdir(mode=0o755)
        self.scratch = self.dir / "scratch"  # a tmpfs inside the sandbox; nothing on the host
        self.sandbox = sandbox if sandbox is not None and sandbox.kind == "bwrap" else None
        self.data_dir = data_dir  # the prepared splits (CACHE/<split_id>), bound read-only; set before the first score
        self.cache = Path(os.path.realpath(cache))
        self.env = scrubbed_env(self.scratch if self.sandbox else self.dir, threads, devices)
        self.proc: subprocess.Popen | None = None
        self.last_seconds: float | None = None  # how long the last request took, what is left of start-up included
        self._buf = b""
        self._started: list[subprocess.Popen] = []  # every process started, for the finalizer to stop
        self._finalizer = weakref.finalize(self, _stop, self._started, self._tmp)

    @property
    def kind(self) -> str:
        return "bwrap" if self.sandbox else "none"

    def argv(self) -> list[str]:
        serve = [sys.executable, "-m", "evaluator", "serve", "--cache", str(self.cache)]
        if self.sandbox is None:
            return serve
        ro = [self.dir / "evaluator", self.inbox] + ([self.data_dir] if self.data_dir is not None else [])
        return self.sandbox.command(serve, None, self.dir, ro=ro, tmpfs=[(self.scratch, SCRATCH_BYTES)])

    def start(self) -> None:
        """Start the worker unless it runs (Python, torch and the splits load). `data_dir` must be set first."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()

    def _start(self) -> None:
        stderr = open(self.dir / "stderr.log", "ab")
        try:
            # the worker reads the splits prepared for it (by id), never the key they were cut with
            env = self.env if self.data_dir is None else {**self.env, "ARBOT_SPLIT_ID": self.data_dir.name}
            self.proc = subprocess.Popen(
                self.argv(), cwd=self.dir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                start_new_session=True,
                preexec_fn=functools.partial(_child_setup, self.cpus, self.sandbox.limits if self.sandbox else None),
            )
        finally:
            stderr.close()
        self._buf = b""
        self._started.append(self.proc)

    def _stage(self, model: Path) -> Path:
        """Put the model into the inbox under its own name (target.artifact: an evaluator may tell formats by it),
        a hard link when it can, else a copy, read-only; nothing else is there."""
        if self.sandbox is None:
            return model
        staged = self.inbox / model.name
        self._unstage()
        try:
            os.link(model, staged)
        except FileNotFoundError:
            return staged  # the worker answers that there is no such model
        except OSError:
            shutil.copyfile(model, staged)
        os.chmod(staged, 0o444)
        return staged

    def _unstage(self) -> None:
        for entry in self.inbox.iterdir():
            entry.unlink()

    def score(self, model: Path, splits: tuple[str, ...], device: str, deadline: float | None = None) -> dict:
        """Score one model; kill the worker and raise ScoreTimeout when the answer takes longer than `deadline`
        seconds (None: wait as long as it takes), WorkerDied when the worker ends without an answer."""
        self.start()
        start = time.monotonic()
        request = {"model": str(self._stage(model)), "splits": list(splits), "device": device}
        try:
            try:
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
                self.proc.stdin.flush()
                line = self._readline(start + deadline if deadline is not None else None)
            except BrokenPipeError:
                line = b""
            except TimeoutError:
                elapsed = time.monotonic() - start
                self.kill()
                raise ScoreTimeout(elapsed, deadline) from None
        finally:
            self.last_seconds = time.monotonic() - start
            if self.sandbox is not None:
                self._unstage()
        if not line.endswith(b"\n"):
            self.kill()
            code = self.proc.returncode if self.proc is not None else None
            self.proc = None
            tail = self._stderr_tail()
            raise WorkerDied(f"the evaluator process died while scoring this model (exit {code}){': ' + tail if tail else ''}")
        return score_answer(line)

    def _readline(self, until: float | None) -> bytes:
        """One answer line from the worker; b"" or a partial line when it ended; TimeoutError past `until`."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_ANSWER_BYTES:
                return b""
            wait = None if until is None else until - time.monotonic()
            if wait is not None and wait <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                line, self._buf = self._buf, b""
                return line
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def _stderr_tail(self) -> str:
        try:
            with open(self.dir / "stderr.log", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - STDERR_TAIL_BYTES))
                lines = f.read().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def kill(self) -> None:
        """Kill the worker's whole session (under bwrap: the sandbox and its pid namespace) and reap it."""
        if self.proc is None:
            return
        _kill(self.proc)
        self._buf = b""

    def close(self) -> None:
        self._finalizer()


def score_answer(line: bytes) -> dict:
    """The worker's answer line as a dict with a status of the protocol; any other line is the evaluator's own
    failure (status error: a setup error, never the candidate's)."""
    try:
        answer = json.loads(line)
    except ValueError:
        answer = None
    if (not isinstance(answer, dict) or answer.get("status") not in ANSWER_STATUSES
            or not isinstance(answer.setdefault("reason", ""), str)):
        text = line.decode("utf-8", "replace").strip()[:300]
        return {"status": "error", "reason": f"the evaluator answered a line that is not a score answer of the protocol "
                                             f"(docs/evaluator.md#score; print nothing else on stdout): {text!r}"}
    return answer


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except OSError:
        pass
    proc.wait()


def _stop(procs: list[subprocess.Popen], tmp: OwnedTempDir) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()  # the worker exits at the end of its input
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if proc is not None:
            _kill(proc)  # and whatever it left in its session
    tmp.cleanup()

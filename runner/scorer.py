"""A warm evaluator: the champion's `python -m evaluator serve`, kept running between runs.

Starting Python, importing torch and the first model load cost about 5 s per run on 2 cores; a warm worker
scores the default model in about 2 s. One worker serves one champion commit (its own evaluator code); it
runs in its own process with a scrubbed environment and never imports candidate code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path

from runner.process import scrubbed_env


class WorkerDied(RuntimeError):
    """The evaluator process ended while scoring: the model it was given broke it."""


class EvaluatorWorker:
    def __init__(self, champion: str, cache: Path, threads: int):
        self.champion = champion
        self._tmp = tempfile.TemporaryDirectory(prefix="arbot-evaluator-")
        self.dir = Path(self._tmp.name)  # the caller exports the champion's evaluator/ here
        self.cache, self.env = cache, scrubbed_env(self.dir, threads)
        self.proc: subprocess.Popen | None = None
        self._started: list[subprocess.Popen] = []  # every process started, for the finalizer to stop
        self._finalizer = weakref.finalize(self, _stop, self._started, self._tmp)

    def score(self, model: Path, splits: tuple[str, ...], device: str) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "evaluator", "serve", "--cache", str(self.cache)], cwd=self.dir, env=self.env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.dir / "stderr.log", "ab"), text=True,
            )
            self._started.append(self.proc)
        request = {"model": str(model), "splits": list(splits), "device": device}
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            code = self.proc.wait()
            self.proc = None
            tail = (self.dir / "stderr.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise WorkerDied(f"the evaluator process died while scoring this model (exit {code}){': ' + tail[0] if tail else ''}")
        return json.loads(line)

    def close(self) -> None:
        self._finalizer()


def _stop(procs: list[subprocess.Popen], tmp: tempfile.TemporaryDirectory) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.stdin.close()  # the worker exits at the end of its input
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    tmp.cleanup()

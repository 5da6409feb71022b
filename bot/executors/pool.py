"""The local executor: runs made on this machine, by one worker (in the caller's thread) or a pool of them.

Each worker has its own Runner (its own git handle and warm evaluator) and its share of the machine: one GPU each
when GPUs are given (`CUDA_VISIBLE_DEVICES`), else an equal share of the cores (`OMP_NUM_THREADS`, and a cpuset of
its own cores: `target.cpus`) and of the memory limit; and its own sandbox uid, so no per-uid limit is shared. Where
the kernel cannot keep parallel runs apart (runner.box: no cgroups, not root) a pool refuses to start unless
target.allow_unboxed_workers says otherwise. A pool's runs end with the process that makes them: one noted pending by an earlier `arbot run`
is submitted again (`resume` says False), so a killed loop loses nothing but the time of the runs it was making.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable

from bot.executors import Finished, Outcome
from bot.core.records import RunResult, RunSpec
from runner.config import TargetConfig
from runner.box import enforcement
from runner.job import Runner
from runner.limits import default_memory_bytes, parse_cpus

RunHook = Callable[[str, str, int], Callable[[dict], None] | None]  # (label, commit, seed) -> progress callback
MakeRunner = Callable[[TargetConfig, str | None], Runner]  # (the worker's target settings, its GPUs) -> a Runner
CANCELLED = "cancelled: no longer needed (its experiment was decided, or the champion moved)"
WORKER_UID_STRIDE = 1000  # worker i (from 0) drops to target.sandbox_uid + i x this: its own uid, its own RLIMIT_NPROC


def visible_gpus() -> list[str]:
    """The GPUs this machine offers: CUDA_VISIBLE_DEVICES when set, else those `nvidia-smi -L` lists, else none."""
    if (env := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


AUTO_MAX_CPU_WORKERS = 4  # run.workers: auto on a CPU: each worker holds a training process and a warm evaluator,
# and the memory limit is split between them; a number in run.workers goes past it


def cores() -> int:
    """The cores this process may run on (its affinity: a container's or a cpuset's share, not the host's count)."""
    return len(os.sched_getaffinity(0)) or 1


SPARE_CORES = 1  # left to the bot, the warm evaluators and the rest of the machine by target.threads: 0. An OpenMP
# thread that loses its core stalls every step of its run: on 2 loaded cores a small MLP made 379-524 steps/s with
# one thread and 13-28 with two (benchmarks/threads.py)


def threads_per_worker(target: TargetConfig, workers: int) -> int:
    """target.threads, or for 0 the cores less SPARE_CORES split between the workers, rounded to the nearest, at
    most an even share and at least one (2 cores, 1 worker: 1; 4 and 1: 3; 8 and 4: 2): never more training
    threads in all than cores, and a core left over where that costs each worker less than half of one."""
    if target.threads:
        return target.threads
    have = cores()
    return max(1, min(have // workers, int((have - SPARE_CORES) / workers + 0.5)))


def worker_count(workers: int | str, target: TargetConfig, gpus: list[str] | None = None) -> int:
    """run.workers as a number. `auto`: one worker per GPU when training may use GPUs, else one per
    `target.threads` cores (one each when 0), at most AUTO_MAX_CPU_WORKERS; and one where the kernel cannot keep
    parallel runs apart (`unboxed`), unless target.allow_unboxed_workers: auto never asks for what is refused."""
    if workers != "auto":
        return int(workers)
    gpus = visible_gpus() if gpus is None else gpus
    n = len(gpus) if gpus and target.device != "cpu" else max(1, min(cores() // max(target.threads, 1),
                                                                     AUTO_MAX_CPU_WORKERS))
    if n > 1 and not target.allow_unboxed_workers and unboxed(target, target.sandbox != "off"):
        return 1
    return n


def shares(target: TargetConfig, workers: int, gpus: list[str]) -> list[tuple[TargetConfig, str | None]]:
    """Each worker's settings and GPUs: one GPU each when there are GPUs (and training may use them), else its
    threads (`threads_per_worker`: 0 is the cores split evenly) and the memory limit split evenly."""
    threaded = target.model_copy(update={"threads": threads_per_worker(target, workers)})
    if workers > 1 and gpus and target.device != "cpu":
        if len(gpus) < workers:
            raise ValueError(f"run.workers is {workers} but only {len(gpus)} GPUs are visible ({','.join(gpus)}): "
                             "use one worker per GPU, or set target.device: cpu to share the cores")
        return [(own_slot(target, i), gpus[i]) for i in range(workers)]  # threads 0: not bound to cores
    if workers == 1:
        return [(threaded, None)]
    memory = target.memory_gb or (default_memory_bytes() / 2**30 / workers if default_memory_bytes() else None)
    share = threaded.model_copy(update={"memory_gb": memory})
    return [(own_slot(share, i), None) for i in range(workers)]


def pool_shares(target: TargetConfig, workers: int,
                gpus: list[str] | None = None) -> list[tuple[TargetConfig, str | None]]:
    """`shares` of the visible GPUs (or `gpus`) for parallel workers, refused (`refuse_unboxed`) where the kernel
    cannot keep them apart."""
    shared = shares(target, workers, visible_gpus() if gpus is None else gpus)
    refuse_unboxed(shared[0][0], workers)
    return shared


def own_slot(target: TargetConfig, i: int) -> TargetConfig:
    """Worker i's settings: its own sandbox uid, and its own target.threads cores (of target.cpus, else of the
    runner's), taken in turn, so workers share a core only where there are fewer cores than they ask for."""
    update: dict = {"sandbox_uid": target.sandbox_uid + i * WORKER_UID_STRIDE}
    if target.threads:
        mine = parse_cpus(target.cpus) if target.cpus else tuple(sorted(os.sched_getaffinity(0)))
        update["cpus"] = ",".join(map(str, sorted({mine[(i * target.threads + k) % len(mine)] for k in range(target.threads)})))
    return target.model_copy(update=update)


def unboxed(target: TargetConfig, sandboxed: bool = True) -> list[str]:
    """Why the kernel cannot keep parallel runs of `target` (one worker's share) apart on this machine: one line
    per limit that concurrent runs would share; empty where every such limit holds per run."""
    return [f"{e.limit}: {e.why}" for e in enforcement(target.limits(), sandboxed)
            if not e.by and e.isolates and not (e.limit == "cpu cores" and not target.threads)]


def refuse_unboxed(target: TargetConfig, workers: int) -> None:
    """Raise ValueError where parallel workers would share a limit the kernel cannot split, unless the operator
    opted in (target.allow_unboxed_workers)."""
    if workers > 1 and not target.allow_unboxed_workers and (why := unboxed(target, target.sandbox != "off")):
        raise ValueError(f"run.workers is {workers}, but on this machine the kernel cannot keep parallel runs apart "
                         f"(one could starve or crash another): {'; '.join(why)}. Run one worker (run.workers: 1), fix "
                         "it (`arbot doctor` says how), or set target.allow_unboxed_workers: true to accept it")


class Inline:
    """One worker, in the caller's thread: `poll` makes the next run asked for. Ctrl-C stops it at once."""

    slots = 1

    def __init__(self, runner: Runner, on_run: RunHook | None = None):
        self.runner, self.on_run = runner, on_run or (lambda label, commit, seed: None)
        self._queue: list[tuple[RunSpec, tuple[float, float] | None]] = []
        self.making: str | None = None

    def submit(self, spec: RunSpec, timing: tuple[float, float] | None) -> RunSpec:
        self._queue.append((spec, timing))
        return spec

    def resume(self, spec: RunSpec) -> bool:
        return False

    def poll(self, timeout: float) -> list[Outcome]:
        if not self._queue:
            return []
        spec, timing = self._queue.pop(0)
        self.making = spec.key
        try:
            return [Finished(spec, make_run(self.runner, spec, timing, self.on_run, "worker 1"))]
        finally:
            self.making = None

    def cancel(self, spec: RunSpec) -> None:
        self._queue = [item for item in self._queue if item[0].key != spec.key]

    def busy(self) -> dict[str, str]:
        return {"worker 1": self.making} if self.making else {}

    def close(self) -> None:
        self._queue.clear()


class LocalPool:
    """`workers` threads, each making one run at a time in its own Runner, first asked first made."""

    def __init__(self, make_runner: MakeRunner, target: TargetConfig, workers: int, on_run: RunHook | None = None,
                 gpus: list[str] | None = None):
        self.slots = workers
        self.on_run = on_run or (lambda label, commit, seed: None)
        self._todo: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._current: dict[str, str] = {}  # worker name -> the key of the run it is making
        self._cancelled: set[str] = set()
        shared = pool_shares(target, workers, gpus)
        self._threads = [threading.Thread(target=self._work, args=(f"worker {i + 1}", make_runner, *share),
                                          name=f"arbot-worker-{i + 1}", daemon=True)
                         for i, share in enumerate(shared)]
        for t in self._threads:
            t.start()

    def submit(self, spec: RunSpec, timing: tuple[float, float] | None) -> RunSpec:
        self._todo.put((spec, timing))
        return spec

    def resume(self, spec: RunSpec) -> bool:
        return False

    def poll(self, timeout: float) -> list[Outcome]:
        """What ended; a worker's error (the sandbox or the evaluator broke, not the candidate) is raised here, so
        `arbot run` stops with it as it does with one worker (the run stays pending and is made again next time)."""
        try:
            ended = [self._done.get(timeout=timeout)]
        except queue.Empty:
            return []
        while not self._done.empty():
            ended.append(self._done.get_nowait())
        for item in ended:
            if isinstance(item, BaseException):
                raise item
        return ended

    def cancel(self, spec: RunSpec) -> None:
        self._cancelled.add(spec.key)  # a worker skips it when it comes up; one being trained is stopped

    def busy(self) -> dict[str, str]:
        return dict(self._current)

    def close(self) -> None:
        for _ in self._threads:
            self._todo.put(None)

    def _work(self, name: str, make_runner: MakeRunner, target: TargetConfig, gpus: str | None) -> None:
        runner = None
        while (item := self._todo.get()) is not None:
            spec, timing = item
            if spec.key in self._cancelled:
                continue
            self._current[name] = spec.key
            try:
                runner = runner or make_runner(target, gpus)
                stop = lambda key=spec.key: CANCELLED if key in self._cancelled else ""  # noqa: E731
                self._done.put(Finished(spec, make_run(runner, spec, timing, self.on_run, name, stop)))
            except Exception as e:  # noqa: BLE001 - handed to the loop's thread, which raises it
                self._done.put(e)
            self._current.pop(name, None)


def make_run(runner: Runner, spec: RunSpec, timing: tuple[float, float] | None, on_run: RunHook,
             worker: str, stop: Callable[[], str] | None = None) -> RunResult:
    """One runner job for `spec`, told the champion's measured times when known; the result names its worker.
    `stop`: why the run is no longer wanted, asked while it trains (runner.job.Runner.run)."""
    result = runner.run(spec.commit, spec.champion, seed=spec.seed, splits=tuple(spec.splits),
                        on_progress=on_run(spec.role, spec.commit, spec.seed), stop=stop, timing=timing)
    return result.model_copy(update={"splits": spec.splits, "job": worker, "node": socket.gethostname()})

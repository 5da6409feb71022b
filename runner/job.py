"""One experiment's job: guard -> train the candidate (untrusted) -> score with the champion's evaluator -> RunResult."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path, PurePosixPath

import git

from runner.config import SUMMARY_FILE, EvaluatorConfig, TargetConfig
from runner.gates import (
    MAX_MODEL_BYTES, NO_SUCH_FILE, BudgetLimit, ChampionTiming, Outcome, RunLimits, crash_reason, disk_reason,
    first_verdict,
)
from runner.guard import changed_paths, forbidden_paths, irregular_paths
from runner.inspect import InspectionError, inspect_bounded
from runner.limits import Limits, disk_usage
from runner.process import ProgressCallback, run_untrusted, scrubbed_env
from runner.protocol import ProtocolError, check_metric, check_prepared, check_score, handshake, last_json_line
from runner.result import RunResult
from runner.scorer import EvaluatorWorker, ScoreTimeout, WorkerDied
from runner.sandbox import Sandbox, SandboxUnavailable, resolve
from runner.tempdirs import OwnedTempDir, sweep

log = logging.getLogger("arbot.runner")
MAX_INSPECT_BYTES = 8 << 20  # changed files larger than this are not inspected (only flagged)
EVALUATOR_FILE_BYTES = 256 << 20  # the scoring worker writes nothing but its log; no file it writes may exceed this
EVALUATOR_DIR = "evaluator"  # the champion's evaluator package, exported from its commit
MAX_SUMMARY_BYTES = 1 << 20  # a larger summary.json is not read
STARTUP_SPREAD_FACTOR = 2.0  # the champion's start-up spread (max - min over its runs) added to its allowance
SCORE_DEADLINE_SLACK = 5.0  # seconds a scoring may take beyond timeout_factor x the champion's (process start jitter)
_SWEPT = False  # stale temporary directories are swept once per process, by the first Runner
__all__ = ["ChampionTiming", "EvaluatorError", "Runner", "SandboxError", "SandboxUnavailable", "champion_timing",
           "crash_reason", "default_cache_dir", "export_tree", "over_disk_cap", "take_file", "train_argv"]


def default_cache_dir() -> Path:
    """$ARBOT_CACHE, else $XDG_CACHE_HOME/arbot, else ~/.cache/arbot: prepared data splits live here."""
    if os.environ.get("ARBOT_CACHE"):
        return Path(os.environ["ARBOT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "arbot"


def export_tree(repo: git.Repo, commit: str, subdir: str, dest: Path) -> None:
    """Write `subdir` of `commit` into dest (git archive: the committed bytes, never a working tree)."""
    data = repo.git.archive("--format=tar", commit, subdir, stdout_as_string=False)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")


def train_argv(script: str, data: Path, out: Path, budget: float, seed: int, device: str,
               overrides: Mapping[str, float | int]) -> list[str]:
    """The command line of one training run (run in the script's directory): what every train.py accepts."""
    argv = [sys.executable, script, "--data", str(data), "--out", str(out), "--budget", str(budget),
            "--seed", str(seed), "--device", device]
    for name, value in overrides.items():
        argv += ["--set", f"{name}={value}"]
    return argv


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Laps:
    """Wall seconds of each step of one run, as the runner measures them (RunResult.phases): where the time
    beyond the training budget goes. Informational only; no limit is read from them."""

    def __init__(self, phases: dict[str, float], start: float):
        self.phases, self._last = phases, start

    def __call__(self, phase: str) -> None:
        """Add the seconds since the previous lap to `phase`."""
        now = time.monotonic()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - self._last, 3)
        self._last = now


class EvaluatorError(RuntimeError):
    """The trusted evaluator itself failed (not the candidate): a broken setup, not an experiment result."""


class SandboxError(EvaluatorError, SandboxUnavailable):
    """target.sandbox is 'require' and the sandbox cannot start: a broken setup, not an experiment result."""


class Runner:
    """Runs candidates of one repository. The evaluator always comes from the champion commit."""

    def __init__(self, repo: git.Repo, target: TargetConfig, evaluator: EvaluatorConfig, artifacts: Path | None = None,
                 devices: str | None = None):
        """`devices`: the GPUs its training and scoring may use (CUDA_VISIBLE_DEVICES; one pool worker's share)."""
        self.repo = repo
        self.devices = devices
        self.target = target
        self.evaluator = evaluator
        self.artifacts = artifacts
        self.cache = Path(evaluator.cache_dir) if evaluator.cache_dir else default_cache_dir()
        self._splits: dict[str, dict] = {}  # evaluator tree -> the splits it prepared
        self._sandbox: Sandbox | None = None
        self._worker: EvaluatorWorker | None = None
        self._worker_tree: str | None = None  # the evaluator tree the worker runs
        global _SWEPT
        if not _SWEPT:
            _SWEPT = True
            for path in sweep():
                log.info("removed %s, left behind by a runner that was killed", path)

    @property
    def limits(self) -> Limits:
        return self.target.limits(self.devices)

    def close(self) -> None:
        """Stop the warm evaluator worker, if one runs (a runner made for one run: `arbot doctor --smoke`)."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def sandbox(self) -> Sandbox:
        """The sandbox per target.sandbox (unset: `require`), probed once; warns loudly when runs go unsandboxed."""
        if self._sandbox is None:
            try:
                box = resolve(self.target.sandbox or "require", self.limits, uid=self.target.sandbox_uid)
            except SandboxUnavailable as e:
                raise SandboxError(f"{e}. To run untrusted code without a sandbox anyway, set target.sandbox: auto "
                                   "in arbot.yml") from e
            if box.kind == "none":
                msg = (f"WARNING: candidate training and scoring run WITHOUT a sandbox ({box.note}). Not isolated: "
                       "training runs as this runner's user and can read and write its files (the repository, the "
                       "data cache with the val and holdout splits, ~/.ssh), reach the network, and see its processes "
                       "and, through /proc, their environment with any secrets in it; "
                       "the evaluator loads the model in a process of that user too. Still enforced: its own scrubbed "
                       "environment, the wall clock, the memory/process/file-size limits, the disk cap and the model "
                       "file check. Install bubblewrap, or set target.sandbox: require to refuse such runs.")
                if logging.getLogger().handlers:
                    log.warning(msg)
                else:
                    print(msg, file=sys.stderr, flush=True)
            self._sandbox = box
        return self._sandbox

    def run(
        self, candidate: str, champion: str, seed: int = 0, splits: tuple[str, ...] = ("val",),
        on_progress: ProgressCallback | None = None, stop: Callable[[], str] | None = None,
        timing: ChampionTiming | tuple[float, float] | None = None,
    ) -> RunResult:
        """One run of `candidate` scored by `champion`'s evaluator. `stop`, asked every second while it trains,
        ends the training at once with its answer as the reason when that is not empty (a run no longer needed).
        `timing`: the champion's measured times (`champion_timing` of its recorded runs), which a candidate is
        held to; None for the champion's own runs, or before it has any (budget + grace, the deadline floor)."""
        start = time.monotonic()
        candidate = self.repo.commit(candidate).hexsha
        champion = self.repo.commit(champion).hexsha
        result = RunResult(status="ok", commit=candidate, champion=champion, seed=seed, splits=list(splits))
        lap = Laps(result.phases, start)
        outcome = Outcome()
        try:
            changed = changed_paths(self.repo, champion, candidate)
        except ValueError as e:
            changed, outcome.unreadable = [], str(e)
        outcome.outside = forbidden_paths(changed, self.target.allowed_paths)
        outcome.irregular = irregular_paths(self.repo, candidate, changed)
        timing = None if candidate == champion or timing is None else ChampionTiming(*timing)
        limits = self.run_limits(timing, splits)
        lap("inspect")  # the guard: what the change is (its inspection adds to this phase)
        if not self._verdict(result, outcome, limits):
            box = self.sandbox()
            result.sandbox = box.kind
            limits = replace(limits, process=box.limits)
            with OwnedTempDir(prefix="arbot-run-") as tmp:
                self._train_and_score(Path(tmp), result, changed, outcome, limits, on_progress, box, lap, stop)
        lap("bookkeeping")  # the kept artifacts, the work dir removed
        result.total_seconds = round(time.monotonic() - start, 2)
        return result

    @staticmethod
    def _verdict(result: RunResult, outcome: Outcome, limits: RunLimits) -> bool:
        """Ask the gates; a verdict ends the run: it is written into the result with the candidate's output (its
        log tail, marked as such in the record) and True is returned."""
        verdict = first_verdict(outcome, limits)
        if verdict is None:
            return False
        result.status, result.reason = verdict
        if outcome.training is not None:
            result.log_tail = outcome.training.log_tail
        return True

    def run_limits(self, timing: ChampionTiming | None, splits: tuple[str, ...]) -> RunLimits:
        """What a run is held to, given the champion's measured times (None: budget + grace, the deadline floor)."""
        t = self.target
        deadline, why = score_deadline(self.evaluator, timing, splits)
        return RunLimits(allowed_paths=tuple(t.allowed_paths), budget=t.budget_seconds, grace=t.grace_seconds,
                         held=budget_limit(t, timing), disk_cap=int(t.max_disk_gb * 2**30), artifact=t.artifact,
                         process=self.limits,
                         score_deadline=deadline, score_deadline_why=why)

    def _blob(self, commit: str, path: str) -> bytes | None:
        try:
            return (self.repo.commit(commit).tree / path).data_stream.read()
        except KeyError:
            return None

    def inspect(self, champion: str, candidate: str, changed: list[str], splits: dict[str, str]) -> list[str]:
        """Flags for what the candidate's change touches and holds (runner.inspect), champion version vs candidate
        version, inspected in a bounded child process (InspectionError when it cannot finish)."""
        before: dict[str, str | None] = {}
        after: dict[str, str | None] = {}
        files: dict[str, str | bytes] = {}
        flags: list[str] = []
        for path in changed:
            old, new = self._blob(champion, path), self._blob(candidate, path)
            if max(len(old or b""), len(new or b"")) > MAX_INSPECT_BYTES:
                flags.append(f"embedded-data: {path}: too large to inspect ({len(new or b'')} bytes)")
                continue
            before[path] = None if old is None else old.decode("utf-8", "surrogateescape")
            after[path] = None if new is None else new.decode("utf-8", "surrogateescape")
            if new is not None:
                files[path] = after[path] if path.endswith(".py") else new
        return flags + inspect_bounded(before, after, files, splits)

    def _train_and_score(self, tmp: Path, result: RunResult, paths: list[str], outcome: Outcome, limits: RunLimits,
                         on_progress, box: Sandbox, lap: Laps, stop: Callable[[], str] | None) -> None:
        work, out = tmp / "work", tmp / "work" / "out"
        out.mkdir(parents=True)
        scorer = self._scorer(result.champion)
        data = self._prepared(result.champion, scorer.dir)
        scorer.data_dir = Path(os.path.realpath(data["val"])).parent
        result.evaluator_fingerprint = data["fingerprint"]
        lap("evaluator")  # its code exported, its protocol checked, the splits prepared: once per evaluator
        try:
            result.flags = self.inspect(result.champion, result.commit, paths,
                                        {name: data[name] for name in ("val", "holdout")})
        except InspectionError as e:
            outcome.inspection = str(e)
        lap("inspect")
        script = PurePosixPath(self.target.script)
        try:
            export_tree(self.repo, result.commit, str(script.parent), work)
        except (tarfile.TarError, OSError, git.GitCommandError) as e:
            outcome.unreadable = f"its {script.parent}/ cannot be exported ({type(e).__name__}: {e})"
        if self._verdict(result, outcome, limits):
            return
        # Only the training split is placed where the candidate can see it.
        shutil.copyfile(data["train"], work / "train.bin")
        argv = train_argv(script.name, work / "train.bin", out, self.target.budget_seconds, result.seed,
                          self.target.device, self.target.overrides)
        box.prepare(work)
        lap("checkout")
        outcome.training = run_untrusted(
            box.wrap(argv, work, work / script.parent), cwd=work / script.parent,
            env=scrubbed_env(work, self.target.threads, self.devices), deadline_seconds=limits.kill_at,
            on_progress=on_progress, limits=box.limits,
            watch=lambda: (stop() if stop else "") or over_disk_cap(work, limits.disk_cap),
        )
        result.train_seconds = round(outcome.training.wall_seconds, 2)
        result.peak_memory_gb = round(outcome.training.max_rss_gb, 3)
        lap("train")  # the sandboxed process: sandbox and interpreter start, imports, training, export, exit
        # The training process and everything it started are gone now (process group killed; in the sandbox,
        # its pid namespace is torn down). What it left on disk is measured before anything is taken from it.
        if not outcome.training.timed_out and not outcome.training.stopped:
            outcome.disk = disk_usage(work)
        if self._verdict(result, outcome, limits):
            return
        # The model is copied out and hashed: that copy is what gets scored.
        model, outcome.model = take_file(out / limits.artifact, tmp / limits.artifact, MAX_MODEL_BYTES)
        if self._verdict(result, outcome, limits):
            return
        result.model_sha256 = sha256_file(model)
        summary, _ = take_file(out / SUMMARY_FILE, tmp / SUMMARY_FILE, MAX_SUMMARY_BYTES)
        if summary is not None:
            result.flags += read_summary(summary, result)
        lap("copy_out")  # the disk cap measured, the model and summary copied out of the sandbox, the model hashed
        try:
            outcome.score = scorer.score(model, tuple(result.splits), self.evaluator.device,
                                         deadline=limits.score_deadline)
        except WorkerDied as e:
            outcome.score = {"status": "invalid", "reason": str(e)}
        except ScoreTimeout as e:
            outcome.score_timeout = result.score_seconds = round(e.seconds, 2)
        finally:
            lap("score")
        if outcome.score is not None:
            result.score_seconds = round(scorer.last_seconds or 0.0, 2)
            if outcome.score["status"] == "error":
                raise EvaluatorError(f"evaluator score failed: {outcome.score['reason']}")
        if self._verdict(result, outcome, limits):
            return
        score = outcome.score
        try:
            check_score(score, tuple(result.splits), self.evaluator.metric)
        except ProtocolError as e:
            raise EvaluatorError(f"the evaluator/ of champion {result.champion[:12]}: {e}") from e
        if score.get("fingerprint", data["fingerprint"]) != data["fingerprint"]:
            raise EvaluatorError(f"the evaluator scored on splits {score['fingerprint']}, not the ones prepared for this "
                                 f"run ({data['fingerprint']})")
        result.metrics = {k: round(v, 6) for k, v in score["metrics"].items()}
        if result.flags:
            result.log_tail = outcome.training.log_tail  # a flagged run waits for a human: show what it printed
        self._keep_artifacts(tmp, result)

    def evaluator_limits(self) -> Limits:
        return Limits(memory_bytes=self.limits.memory_bytes, max_processes=self.limits.max_processes,
                      max_file_bytes=EVALUATOR_FILE_BYTES)

    def evaluator_tree(self, champion: str) -> str:
        """The git tree id of the champion's evaluator/ (its content hash): champions with the same one have the
        same evaluator, byte for byte. The commit itself when it has none (exporting it then says so)."""
        try:
            return (self.repo.commit(champion).tree / EVALUATOR_DIR).hexsha
        except KeyError:
            return champion

    def _scorer(self, champion: str) -> EvaluatorWorker:
        """The warm evaluator of this champion's evaluator/, sandboxed like training (its own uid and limits)
        unless the sandbox is `none`. A new champion whose evaluator/ is the same tree (every win that changes
        only the training code) keeps the worker: the code it runs is identical; another one stops it."""
        tree = self.evaluator_tree(champion)
        if self._worker is None or self._worker_tree != tree:
            if self._worker is not None:
                self._worker.close()
            box = self.sandbox()
            evaluator_box = box.with_uid(self.evaluator.sandbox_uid, self.evaluator_limits()) if box.kind == "bwrap" else None
            self._worker = EvaluatorWorker(champion, self.cache, self.target.threads, sandbox=evaluator_box,
                                          devices=self.devices, cpus=self.limits.cpus)
            self._worker_tree = tree
            export_tree(self.repo, champion, EVALUATOR_DIR, self._worker.dir)
        return self._worker

    def _prepared(self, champion: str, evaluator_dir: Path) -> dict:
        """The data splits as the champion's evaluator prepares them (once per evaluator tree in this process)."""
        tree = self.evaluator_tree(champion)
        if tree not in self._splits:
            self._check_protocol(champion, evaluator_dir)
            try:
                key = self.evaluator.prepare_env()  # the secret split key reaches prepare only, never a sandbox
            except ValueError as e:
                raise EvaluatorError(str(e)) from e
            proc = subprocess.run([sys.executable, "-m", "evaluator", "prepare", "--cache", str(self.cache)],
                                  cwd=evaluator_dir, env={**scrubbed_env(evaluator_dir, self.target.threads, self.devices), **key},
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise EvaluatorError(f"evaluator prepare failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
            try:
                self._splits[tree] = check_prepared(last_json_line(proc.stdout))
            except ProtocolError as e:
                raise EvaluatorError(f"the evaluator/ of champion {champion[:12]}: {e}") from e
        return self._splits[tree]

    def _check_protocol(self, champion: str, evaluator_dir: Path) -> None:
        """The champion's evaluator speaks this runner's protocol and reports the configured metric, else a setup
        error (EvaluatorError: no candidate is charged with it)."""
        try:
            answer = handshake(evaluator_dir / EVALUATOR_DIR, sys.executable,
                               scrubbed_env(evaluator_dir, self.target.threads))
            check_metric(answer, self.evaluator.metric, self.evaluator.direction)
        except ProtocolError as e:
            raise EvaluatorError(f"the evaluator/ of champion {champion[:12]}: {e}") from e

    def _keep_artifacts(self, out: Path, result: RunResult) -> None:
        """Keep the scored model copy and the summary (both already copied out of the work dir)."""
        if self.artifacts is None:
            return
        dest = self.artifacts / result.commit[:12] / f"seed-{result.seed}"
        dest.mkdir(parents=True, exist_ok=True)
        for name in (self.target.artifact, SUMMARY_FILE):
            if (out / name).is_file():
                shutil.copyfile(out / name, dest / name)


def take_file(src: Path, dest: Path, max_bytes: int) -> tuple[Path | None, str]:
    """Copy a file the candidate wrote to a trusted place: a regular file only (no symlink to a host file),
    at most max_bytes. Returns (dest, "") or (None, why not)."""
    try:  # neither the file nor its directory may be a symlink (out/ -> /somewhere on the host)
        dfd = os.open(src.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        return None, f"its directory cannot be opened safely ({e.strerror}: a symlink?)"
    try:
        fd = os.open(src.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
    except FileNotFoundError:
        return None, NO_SUCH_FILE
    except OSError as e:
        return None, f"it cannot be opened safely ({e.strerror}: a symlink or special file?)"
    finally:
        os.close(dfd)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None, "it is not a regular file"
        if st.st_size > max_bytes:
            return None, f"it is {st.st_size} bytes, over the limit of {max_bytes}"
        with open(dest, "wb") as g:
            shutil.copyfileobj(f, g)
    return dest, ""


# --- limits measured from the champion's own runs ---------------------------------------------------------------


def champion_timing(runs: list[RunResult], budget_seconds: float) -> ChampionTiming | None:
    """(start-up and export seconds, scoring seconds per split) of a champion, from its recorded runs: the one
    source of the times a candidate is held to (every caller of Runner.run computes it from the records); None
    before it has an ok run.

    The start-up allowance is the longest the champion took beyond its budget plus STARTUP_SPREAD_FACTOR times
    the spread of that time across its runs: start-up (imports, a first compilation) moves from run to run by
    seconds, and a champion that stops early (a step cap) shows its start-up only in that spread, so a candidate
    as fast as the champion is not rejected over_budget for the machine's jitter."""
    ok = [r for r in runs if r.status == "ok" and r.train_seconds is not None and r.score_seconds]
    if not ok:
        return None
    beyond = [r.train_seconds - budget_seconds for r in ok]
    return ChampionTiming(max(max(beyond), 0.0) + STARTUP_SPREAD_FACTOR * (max(beyond) - min(beyond)),
                          max(r.score_seconds / max(len(r.splits), 1) for r in ok))


def budget_limit(target: TargetConfig, timing: ChampionTiming | None) -> BudgetLimit | None:
    """What a candidate's training is held to, measured from outside: budget + the champion's start-up and
    export time (its allowance) + a tolerance; None without the champion's timing."""
    if timing is None:
        return None
    budget, overhead = target.budget_seconds, timing.overhead
    tolerance = max(target.budget_tolerance_seconds, target.budget_tolerance * (budget + overhead))
    return BudgetLimit(allowance=overhead, tolerance=tolerance, reject=budget + overhead + tolerance,
                       kill=budget + overhead + 2 * tolerance)


def score_deadline(evaluator: EvaluatorConfig, timing: ChampionTiming | None,
                   splits: tuple[str, ...]) -> tuple[float, str]:
    """Seconds a scoring may take, and how it was set (for the reason of a run killed at it): timeout_factor x
    the champion's own scoring time + SCORE_DEADLINE_SLACK; evaluator.timeout_seconds only while the champion's
    time is unknown (its own runs, or before it has one)."""
    if timing is None:
        floor = evaluator.timeout_seconds
        return floor, f"the deadline is evaluator.timeout_seconds, {floor:g} s; the champion's scoring time is not measured yet"
    champion = timing.score_per_split * len(splits)
    deadline = evaluator.timeout_factor * champion + SCORE_DEADLINE_SLACK
    return deadline, (f"the deadline is {evaluator.timeout_factor:g} x the champion's own scoring time of "
                      f"{champion:.1f} s + {SCORE_DEADLINE_SLACK:g} s")


def over_disk_cap(work: Path, cap: int) -> str:
    """Why the work dir is over the run's disk cap (target.max_disk_gb), or "" when it is not."""
    return disk_reason(disk_usage(work), cap)


# --- training's own report: informational, type- and range-checked ---------------------------------------------

COUNTS = ("steps", "tokens", "params")  # whole numbers >= 0
RATES = ("tokens_per_second", "peak_memory_gb")  # finite numbers >= 0
MAX_COUNT = 2**63 - 1
DEVICE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def read_summary(path: Path, result: RunResult) -> list[str]:
    """Copy training's summary.json into the result, field by field, each only when it has the documented type
    and range (docs/evaluator.md#training-script); informational only, never part of a decision. Returns a
    `summary:` flag for each field that is not what it should be (that field is left out): the record stays
    valid whatever the candidate wrote, and a human sees what it tried."""
    try:
        summary = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return [f"summary: out/{SUMMARY_FILE} is not valid JSON; ignored"]
    if not isinstance(summary, dict):
        return [f"summary: out/{SUMMARY_FILE} is a JSON {type(summary).__name__}, not an object; ignored"]
    flags = []

    def bad(key: str, what: str) -> None:
        value = summary[key]
        shown = f"{value!r}"[:40] if type(value) in (int, float) else type(value).__name__
        flags.append(f"summary: out/{SUMMARY_FILE} field {key} is {shown}, not {what}; ignored")

    for key in COUNTS:
        if key in summary and summary[key] is not None:
            value = summary[key]
            if type(value) is int and 0 <= value <= MAX_COUNT:
                setattr(result, key, value)
            else:
                bad(key, "a whole number >= 0")
    for key in RATES:
        if key in summary and summary[key] is not None:
            value = summary[key]
            if type(value) in (int, float) and math.isfinite(value) and 0 <= value <= 1e15:
                setattr(result, key, round(float(value), 3) if key == "peak_memory_gb" else float(value))
            else:
                bad(key, "a finite number >= 0")
    if summary.get("device") is not None:
        if isinstance(summary["device"], str) and DEVICE.fullmatch(summary["device"]):
            result.device = summary["device"]
        else:
            bad("device", "a device name (letters, digits, _.:-, at most 64)")
    return flags

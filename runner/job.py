"""One experiment's job: guard -> train the candidate (untrusted) -> score with the champion's evaluator -> RunResult."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import git

from runner.config import SUMMARY_FILE, EvaluatorConfig, TargetConfig
from runner.guard import changed_paths, forbidden_paths
from runner.inspect import Shingles, data_overlap, inspect_change
from runner.limits import Limits, disk_usage
from runner.process import ProcessOutcome, ProgressCallback, run_untrusted, scrubbed_env
from runner.protocol import ProtocolError, check_metric, check_prepared, check_score, handshake, last_json_line
from runner.result import RunResult
from runner.scorer import EvaluatorWorker, ScoreTimeout, WorkerDied
from runner.sandbox import Sandbox, SandboxUnavailable, resolve
from runner.tempdirs import OwnedTempDir, sweep

log = logging.getLogger("arbot.runner")
MAX_MODEL_BYTES = 4 << 30  # an exported model larger than this is not copied out of the sandbox
MAX_INSPECT_BYTES = 8 << 20  # changed files larger than this are not inspected (only flagged)
EVALUATOR_FILE_BYTES = 256 << 20  # the scoring worker writes nothing but its log; no file it writes may exceed this
EVALUATOR_DIR = "evaluator"  # the champion's evaluator package, exported from its commit
TIMING_FILE = "timing.json"  # the champion's measured start-up/export and scoring times, next to its artifacts
TRAINING_CONTRACT = "the training contract (docs/evaluator.md#training-script)"
NO_SUCH_FILE = "it does not exist"  # take_file's answer for a file the candidate never wrote
_SWEPT = False  # stale temporary directories are swept once per process, by the first Runner
__all__ = ["EvaluatorError", "Runner", "SandboxError", "SandboxUnavailable", "default_cache_dir", "export_tree", "train_argv"]


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
        self._shingles: dict[str, dict[str, Shingles]] = {}  # split id -> its val and holdout shingles
        self._sandbox: Sandbox | None = None
        self._worker: EvaluatorWorker | None = None
        self._worker_tree: str | None = None  # the evaluator tree the worker runs
        self._timing: dict[str, dict[str, float]] = {}
        global _SWEPT
        if not _SWEPT:
            _SWEPT = True
            for path in sweep():
                log.info("removed %s, left behind by a runner that was killed", path)

    @property
    def limits(self) -> Limits:
        return self.target.limits(self.devices)

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
    ) -> RunResult:
        """One run of `candidate` scored by `champion`'s evaluator. `stop`, asked every second while it trains,
        ends the training at once with its answer as the reason when that is not empty (a run no longer needed)."""
        start = time.monotonic()
        candidate = self.repo.commit(candidate).hexsha
        champion = self.repo.commit(champion).hexsha
        result = RunResult(status="ok", commit=candidate, champion=champion, seed=seed, splits=list(splits))
        lap = Laps(result.phases, start)
        changed = changed_paths(self.repo, champion, candidate)
        result.flags = self.inspect(champion, candidate, changed)
        bad = forbidden_paths(changed, self.target.allowed_paths)
        lap("inspect")
        if bad:
            result.status = "rejected"
            result.reason = (
                f"changes paths outside the allowed ones ({', '.join(self.target.allowed_paths)}): {', '.join(bad)}"
            )
        else:
            box = self.sandbox()
            result.sandbox = box.kind
            with OwnedTempDir(prefix="arbot-run-") as tmp:
                self._train_and_score(Path(tmp), result, changed, splits, on_progress, box, lap, stop)
        lap("bookkeeping")  # the champion's timing, the kept artifacts, the work dir removed
        result.total_seconds = round(time.monotonic() - start, 2)
        return result

    def _blob(self, commit: str, path: str) -> bytes | None:
        try:
            return (self.repo.commit(commit).tree / path).data_stream.read()
        except KeyError:
            return None

    def inspect(self, champion: str, candidate: str, changed: list[str]) -> list[str]:
        """Flags for what the candidate's change touches (runner.inspect), champion version vs candidate version."""
        before: dict[str, str | None] = {}
        after: dict[str, str | None] = {}
        flags: list[str] = []
        for path in changed:
            old, new = self._blob(champion, path), self._blob(candidate, path)
            if max(len(old or b""), len(new or b"")) > MAX_INSPECT_BYTES:
                flags.append(f"embedded-data: {path}: too large to inspect ({len(new or b'')} bytes)")
                continue
            before[path] = None if old is None else old.decode("utf-8", "surrogateescape")
            after[path] = None if new is None else new.decode("utf-8", "surrogateescape")
        return flags + inspect_change(before, after)

    def _held_out(self, data: dict) -> dict[str, Shingles]:
        if data["split_id"] not in self._shingles:
            self._shingles[data["split_id"]] = {name: Shingles(Path(data[name]).read_bytes()) for name in ("val", "holdout")}
        return self._shingles[data["split_id"]]

    def _train_and_score(self, tmp: Path, result: RunResult, paths: list[str], splits: tuple[str, ...],
                         on_progress, box: Sandbox, lap: Laps, stop: Callable[[], str] | None) -> None:
        work, out = tmp / "work", tmp / "work" / "out"
        out.mkdir(parents=True)
        scorer = self._scorer(result.champion)
        data = self._prepared(result.champion, scorer.dir)
        scorer.data_dir = Path(os.path.realpath(data["val"])).parent
        result.evaluator_fingerprint = data["fingerprint"]
        lap("evaluator")  # its code exported, its protocol checked, the splits prepared: once per evaluator
        changed = {p: self._blob(result.commit, p) for p in paths}
        texts = {p: (b if not p.endswith(".py") else b.decode("utf-8", "surrogateescape"))
                 for p, b in changed.items() if b is not None and len(b) <= MAX_INSPECT_BYTES}
        result.flags += data_overlap(texts, self._held_out(data))
        lap("inspect")

        script = PurePosixPath(self.target.script)
        export_tree(self.repo, result.commit, str(script.parent), work)
        # Only the training split is placed where the candidate can see it.
        shutil.copyfile(data["train"], work / "train.bin")
        argv = train_argv(script.name, work / "train.bin", out, self.target.budget_seconds, result.seed,
                          self.target.device, self.target.overrides)
        box.prepare(work)
        # The worker starts (Python, torch, the splits) while this run trains, not after: a cold start costs the
        # first run of an evaluator seconds of scoring. It is idle until its first request, so the training it
        # overlaps pays only for that start-up, which on CPU lands in training's own start-up (imports).
        scorer.start()
        lap("checkout")
        champion_run = result.commit == result.champion
        held = None if champion_run else self.budget_limit(result.champion)
        budget, grace = self.target.budget_seconds, self.target.grace_seconds
        deadline = budget + grace if held is None else min(budget + grace, held.kill)
        cap = int(self.target.max_disk_gb * 2**30)
        outcome = run_untrusted(
            box.wrap(argv, work, work / script.parent), cwd=work / script.parent, env=scrubbed_env(work, self.target.threads, self.devices),
            deadline_seconds=deadline, on_progress=on_progress, limits=box.limits,
            watch=lambda: (stop() if stop else "") or over_disk_cap(work, cap),
        )
        result.train_seconds = round(outcome.wall_seconds, 2)
        result.peak_memory_gb = round(outcome.max_rss_gb, 3)
        lap("train")  # the sandboxed process: sandbox and interpreter start, imports, training, export, exit
        if outcome.stopped:
            result.status, result.log_tail = "rejected", outcome.log_tail
            result.reason = f"{outcome.stopped}; the run was killed while training"
            return
        if outcome.timed_out:
            result.status, result.log_tail = "timeout", outcome.log_tail
            if held is not None and deadline < budget + grace:
                result.reason = (f"over_budget: training ran past {deadline:.1f} s and was killed; it is held to its budget "
                                 f"of {budget:g} s + {held.allowance:.1f} s start-up and export allowance (measured from the "
                                 f"champion's runs) + {held.tolerance:.1f} s tolerance")
            else:
                result.reason = f"training ran past its budget of {budget:g} s plus {grace:g} s grace and was killed"
            result.reason += f"; {budget_contract(budget)}"
            return
        # The training process and everything it started are gone now (process group killed; in the sandbox,
        # its pid namespace is torn down). What it left on disk is measured before anything is taken from it.
        if why := over_disk_cap(work, cap):
            result.status, result.log_tail, result.reason = "rejected", outcome.log_tail, why
            return
        # A crash is named as one even when it also ran long: it has no model to score, and its reason says which
        # limit it hit (a memory bomb spends seconds filling its limit).
        if outcome.returncode != 0:
            result.status, result.log_tail = "crash", outcome.log_tail
            result.reason = crash_reason(outcome, box.limits)
            return
        if held is not None and outcome.wall_seconds > held.reject:
            result.status, result.log_tail = "rejected", outcome.log_tail
            result.reason = (f"over_budget: training took {outcome.wall_seconds:.1f} s of wall time (measured by the runner), "
                             f"more than its budget of {budget:g} s + {held.allowance:.1f} s start-up and export allowance "
                             f"(measured from the champion's runs) + {held.tolerance:.1f} s tolerance = {held.reject:.1f} s; "
                             f"{budget_contract(budget)}")
            return
        # The model is copied out and hashed: that copy is what gets scored.
        artifact = self.target.artifact
        model, why = take_file(out / artifact, tmp / artifact, MAX_MODEL_BYTES)
        if model is None:
            result.status, result.log_tail = "crash", outcome.log_tail
            result.reason = artifact_missing(artifact, why)
            return
        result.model_sha256 = sha256_file(model)
        summary, _ = take_file(out / SUMMARY_FILE, tmp / SUMMARY_FILE, 1 << 20)
        if summary is not None:
            self._read_summary(summary, result)
        lap("copy_out")  # the disk cap measured, the model and summary copied out of the sandbox, the model hashed

        score_deadline, why_deadline = self.score_deadline(result.champion, splits)
        try:
            score = scorer.score(model, splits, self.evaluator.device, deadline=score_deadline)
        except WorkerDied as e:
            score = {"status": "invalid", "reason": str(e)}
        except ScoreTimeout as e:
            result.score_seconds = round(e.seconds, 2)
            result.status, result.log_tail = "rejected", outcome.log_tail
            result.reason = f"scoring_timeout: the evaluator was killed: {e} ({why_deadline})"
            return
        finally:
            lap("score")
        result.score_seconds = round(scorer.last_seconds or 0.0, 2)
        if score["status"] == "error":
            raise EvaluatorError(f"evaluator score failed: {score['reason']}")
        if score["status"] != "ok":
            result.status, result.log_tail = "rejected", outcome.log_tail
            result.reason = f"the evaluator rejected the model: {score['reason']}"
            return
        try:
            check_score(score, splits, self.evaluator.metric)
        except ProtocolError as e:
            raise EvaluatorError(f"the evaluator/ of champion {result.champion[:12]}: {e}") from e
        if score.get("fingerprint", data["fingerprint"]) != data["fingerprint"]:
            raise EvaluatorError(f"the evaluator scored on splits {score['fingerprint']}, not the ones prepared for this "
                                 f"run ({data['fingerprint']})")
        result.metrics = {k: round(v, 6) for k, v in score["metrics"].items()}
        if result.flags:
            result.log_tail = outcome.log_tail  # a flagged run waits for a human: show what it printed
        if champion_run:
            self.measured(result.champion, outcome.wall_seconds - budget, scorer.last_seconds / max(len(splits), 1))
        self._keep_artifacts(tmp, result)

    # --- limits measured from the champion's own runs ---------------------------------------------------------
    def timing(self, champion: str) -> dict[str, float]:
        """The champion's measured times: `overhead` (training wall time beyond the budget: start-up and export)
        and `score_per_split` (scoring seconds per split), the largest seen; kept next to its artifacts so a
        resumed `arbot run` knows them without training the champion again."""
        if champion not in self._timing:
            known: dict[str, float] = {}
            if self.artifacts is not None:
                try:
                    raw = json.loads((self.artifacts / champion[:12] / TIMING_FILE).read_text())
                    known = {k: float(raw[k]) for k in ("overhead", "score_per_split") if isinstance(raw.get(k), (int, float))}
                except (OSError, ValueError, AttributeError):
                    pass
            self._timing[champion] = known
        return self._timing[champion]

    def measured(self, champion: str, overhead: float, score_per_split: float) -> None:
        """Add what the champion's runs took: here after each of its runs, or from its recorded runs when this
        runner never ran it (GitHub mode: a fresh runner per run, told by the bot that dispatched it)."""
        known = self.timing(champion)
        known["overhead"] = max(known.get("overhead", 0.0), max(overhead, 0.0))
        known["score_per_split"] = max(known.get("score_per_split", 0.0), score_per_split)
        if self.artifacts is not None:
            dest = self.artifacts / champion[:12]
            dest.mkdir(parents=True, exist_ok=True)
            (dest / TIMING_FILE).write_text(json.dumps({"budget_seconds": self.target.budget_seconds, **known}) + "\n")

    def budget_limit(self, champion: str) -> BudgetLimit | None:
        """What a candidate's training is held to, measured from outside: budget + the champion's start-up and
        export time (its allowance) + a tolerance; None until the champion's runs have been measured."""
        overhead = self.timing(champion).get("overhead")
        if overhead is None:
            return None
        budget = self.target.budget_seconds
        tolerance = max(self.target.budget_tolerance_seconds, self.target.budget_tolerance * (budget + overhead))
        return BudgetLimit(allowance=overhead, tolerance=tolerance, reject=budget + overhead + tolerance,
                           kill=budget + overhead + 2 * tolerance)

    def score_deadline(self, champion: str, splits: tuple[str, ...]) -> tuple[float, str]:
        """Seconds a scoring may take: evaluator.timeout_factor x the champion's own scoring time, at least
        evaluator.timeout_seconds; and how it was set (for the reason of a run killed at it)."""
        floor, factor = self.evaluator.timeout_seconds, self.evaluator.timeout_factor
        per_split = self.timing(champion).get("score_per_split")
        if per_split is None:
            return floor, f"the deadline is evaluator.timeout_seconds, {floor:g} s; the champion's scoring time is not measured yet"
        measured = factor * per_split * len(splits)
        if measured <= floor:
            return floor, (f"the deadline is the floor evaluator.timeout_seconds, {floor:g} s, above {factor:g} x the "
                           f"champion's {per_split * len(splits):.1f} s")
        return measured, f"the deadline is {factor:g} x the champion's own scoring time of {per_split * len(splits):.1f} s"

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
                                          devices=self.devices)
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

    def _read_summary(self, path: Path, result: RunResult) -> None:
        """Training's own report: informational only (steps, tokens, device); never used for the decision."""
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        for key in ("steps", "tokens", "tokens_per_second", "device", "params"):
            if isinstance(summary.get(key), (int, float, str)):
                setattr(result, key, summary[key])
        if isinstance(summary.get("peak_memory_gb"), (int, float)):
            result.peak_memory_gb = round(float(summary["peak_memory_gb"]), 3)

    def _keep_artifacts(self, out: Path, result: RunResult) -> None:
        """Keep the scored model copy and the summary (both already copied out of the work dir)."""
        if self.artifacts is None:
            return
        dest = self.artifacts / result.commit[:12] / f"seed-{result.seed}"
        dest.mkdir(parents=True, exist_ok=True)
        for name in (self.target.artifact, SUMMARY_FILE):
            if (out / name).is_file():
                shutil.copyfile(out / name, dest / name)


@dataclass(frozen=True)
class BudgetLimit:
    """A candidate's training wall time, measured by the runner: over `reject` it is rejected (over_budget),
    at `kill` it is killed (timeout)."""

    allowance: float  # the champion's start-up and export time (its training wall time beyond the budget)
    tolerance: float
    reject: float
    kill: float


def over_disk_cap(work: Path, cap: int) -> str:
    """Why the work dir is over the run's disk cap (target.max_disk_gb), or "" when it is not."""
    usage = disk_usage(work)
    if usage.unreadable:
        return f"disk_cap: the run made part of its work dir unreadable, so its disk use cannot be measured ({usage.unreadable})"
    if usage.bytes > cap:
        return (f"disk_cap: the run wrote {usage.bytes / 2**30:.2f} GiB in {usage.entries} files and directories, over "
                f"the cap of {cap / 2**30:g} GiB per run (target.max_disk_gb)")
    return ""


def champion_timing(runs: list[RunResult], budget_seconds: float) -> tuple[float, float] | None:
    """(start-up and export seconds, scoring seconds per split) of a champion, from its recorded runs, as the
    runner measures them after each champion run; None before it has an ok run."""
    ok = [r for r in runs if r.status == "ok" and r.train_seconds is not None and r.score_seconds]
    if not ok:
        return None
    return (max(max(r.train_seconds - budget_seconds, 0.0) for r in ok),
            max(r.score_seconds / max(len(r.splits), 1) for r in ok))


def budget_contract(budget: float) -> str:
    """What the contract says of --budget, for the reason of a run that ignored it."""
    return (f"{TRAINING_CONTRACT} requires the script to stop training within --budget seconds ({budget:g} here), "
            "then write its model and exit")


def artifact_missing(artifact: str, why: str) -> str:
    """Why a training that exited 0 has no artifact to score, naming the contract it broke."""
    if why == NO_SUCH_FILE:
        return (f"the training script exited 0 but wrote no out/{artifact}: {TRAINING_CONTRACT} requires it to write "
                f"its model into the --out directory as {artifact} (target.artifact in arbot.yml)")
    return (f"the training script's out/{artifact} is not usable: {why}; {TRAINING_CONTRACT} requires a regular file "
            f"of at most {MAX_MODEL_BYTES >> 30} GiB")


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


MEMORY_SIGNS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "can't allocate memory", "out of memory")
PROCESS_SIGNS = ("Resource temporarily unavailable", "BlockingIOError", "can't start new thread")


def crash_reason(outcome: ProcessOutcome, limits: Limits) -> str:
    """Why training failed, naming the limit it hit where the log shows one."""
    code = outcome.returncode
    if outcome.killed_by or (code is not None and code > 128):
        import signal as _signal

        sig = outcome.killed_by or code - 128
        try:
            name = _signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        reason = f"training was killed by {name}"
    else:
        reason = f"training exited with code {code}"
    tail = outcome.log_tail
    if any(s in tail for s in MEMORY_SIGNS) or (outcome.killed_by or 0) == 9:
        reason += f" (out of memory; the limit is {limits.describe()})"
    elif any(s in tail for s in PROCESS_SIGNS):
        reason += f" (process or thread limit reached; the limit is {limits.describe()})"
    elif "File too large" in tail or (outcome.killed_by or 0) == 25:
        reason += f" (file size limit reached; the limit is {limits.describe()})"
    elif tail.startswith("bwrap:"):
        reason += f" (the sandbox failed to start: {tail.splitlines()[0]})"
    return reason

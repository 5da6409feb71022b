"""One experiment's job: guard -> train the candidate (untrusted) -> score with the champion's evaluator -> RunResult."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

import git

from bot.config import EvaluatorConfig, TargetConfig
from bot.records import RunResult
from runner.guard import changed_paths, forbidden_paths
from runner.process import ProgressCallback, run_untrusted, scrubbed_env


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


class EvaluatorError(RuntimeError):
    """The trusted evaluator itself failed (not the candidate): a broken setup, not an experiment result."""


class Runner:
    """Runs candidates of one repository. The evaluator always comes from the champion commit."""

    def __init__(self, repo: git.Repo, target: TargetConfig, evaluator: EvaluatorConfig, artifacts: Path | None = None):
        self.repo = repo
        self.target = target
        self.evaluator = evaluator
        self.artifacts = artifacts
        self.cache = Path(evaluator.cache_dir) if evaluator.cache_dir else default_cache_dir()
        self._splits: dict[str, dict] = {}

    def run(
        self, candidate: str, champion: str, seed: int = 0, splits: tuple[str, ...] = ("val",),
        on_progress: ProgressCallback | None = None,
    ) -> RunResult:
        start = time.monotonic()
        candidate = self.repo.commit(candidate).hexsha
        champion = self.repo.commit(champion).hexsha
        result = RunResult(status="ok", commit=candidate, champion=champion, seed=seed)
        bad = forbidden_paths(changed_paths(self.repo, champion, candidate), self.target.allowed_paths)
        if bad:
            result.status = "rejected"
            result.reason = (
                f"changes paths outside the allowed ones ({', '.join(self.target.allowed_paths)}): {', '.join(bad)}"
            )
        else:
            with tempfile.TemporaryDirectory(prefix="arbot-run-") as tmp:
                self._train_and_score(Path(tmp), result, splits, on_progress)
        result.total_seconds = round(time.monotonic() - start, 2)
        return result

    def _train_and_score(self, tmp: Path, result: RunResult, splits: tuple[str, ...], on_progress) -> None:
        evaluator_dir, work, out = tmp / "trusted", tmp / "work", tmp / "work" / "out"
        for d in (evaluator_dir, work, out):
            d.mkdir(parents=True)
        export_tree(self.repo, result.champion, "evaluator", evaluator_dir)
        data = self._prepared(result.champion, evaluator_dir)
        result.evaluator_fingerprint = data["fingerprint"]

        script = PurePosixPath(self.target.script)
        export_tree(self.repo, result.commit, str(script.parent), work)
        # Only the training split is placed where the candidate can see it.
        shutil.copyfile(data["train"], work / "train.bin")
        argv = [sys.executable, str(script.name), "--data", str(work / "train.bin"), "--out", str(out),
                "--budget", str(self.target.budget_seconds), "--seed", str(result.seed),
                "--device", self.target.device]
        for name, value in self.target.overrides.items():
            argv += ["--set", f"{name}={value}"]
        outcome = run_untrusted(
            argv, cwd=work / script.parent, env=scrubbed_env(work, self.target.threads),
            deadline_seconds=self.target.budget_seconds + self.target.grace_seconds, on_progress=on_progress,
        )
        result.train_seconds = round(outcome.wall_seconds, 2)
        result.peak_memory_gb = round(outcome.max_rss_gb, 3)
        model = out / "model.pt2"
        if outcome.timed_out:
            result.status, result.log_tail = "timeout", outcome.log_tail
            result.reason = f"training ran past its budget of {self.target.budget_seconds:g} s plus {self.target.grace_seconds:g} s grace and was killed"
            return
        if outcome.returncode != 0 or not model.is_file():
            result.status, result.log_tail = "crash", outcome.log_tail
            result.reason = (f"training exited with code {outcome.returncode}" if outcome.returncode
                             else "training finished without writing out/model.pt2")
            return
        self._read_summary(out / "summary.json", result)

        score = self._evaluator(evaluator_dir, "score", "--model", str(model), "--cache", str(self.cache),
                                "--splits", ",".join(splits), "--device", self.evaluator.device, allow_invalid=True)
        if score["status"] != "ok":
            result.status, result.log_tail = "rejected", outcome.log_tail
            result.reason = f"the evaluator rejected the model: {score['reason']}"
            return
        result.metrics = {k: round(v, 6) for k, v in score["metrics"].items()}
        self._keep_artifacts(out, result)

    def _prepared(self, champion: str, evaluator_dir: Path) -> dict:
        """The data splits as the champion's evaluator prepares them (once per champion in this process)."""
        if champion not in self._splits:
            self._splits[champion] = self._evaluator(evaluator_dir, "prepare", "--cache", str(self.cache))
        return self._splits[champion]

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

    def _evaluator(self, evaluator_dir: Path, *args: str, allow_invalid: bool = False) -> dict:
        env = scrubbed_env(evaluator_dir, self.target.threads)
        proc = subprocess.run([sys.executable, "-m", "evaluator", *args], cwd=evaluator_dir, env=env,
                              capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode == 3 and allow_invalid and lines:
            return json.loads(lines[-1])
        if proc.returncode != 0 or not lines:
            raise EvaluatorError(f"evaluator {args[0]} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return json.loads(lines[-1])

    def _keep_artifacts(self, out: Path, result: RunResult) -> None:
        if self.artifacts is None:
            return
        dest = self.artifacts / result.commit[:12] / f"seed-{result.seed}"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("model.pt2", "summary.json"):
            if (out / name).is_file():
                shutil.copyfile(out / name, dest / name)

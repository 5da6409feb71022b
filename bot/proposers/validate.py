"""The last two steps of the validation cascade: is the candidate new, and does it train at all (a CPU smoke run)?

The smoke run trains the candidate script for about a second with a tiny model on synthetic bytes (never the
validation or holdout data), through the same untrusted-process path as real runs, and requires its artifact
(out/<target.artifact>).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import git

from bot.config import SmokeConfig
from bot.knobs import find_knobs
from bot.proposers.edits import EditError
from bot.core.records import ExperimentRecord
from runner.config import DEFAULT_ARTIFACT
from runner.job import export_tree, train_argv
from runner.process import run_untrusted, scrubbed_env
from runner.tempdirs import OwnedTempDir

LOG_TAIL_CHARS = 3000


class DuplicateError(EditError):
    stage = "duplicate"


class SmokeError(EditError):
    stage = "smoke"


def files_hash(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    return h.hexdigest()


def check_new(changed: dict[str, str], history: list[ExperimentRecord]) -> None:
    """Refuse files identical to an earlier experiment's (whatever proposer made it)."""
    digest = files_hash(changed)
    for rec in history:
        if files_hash(rec.proposal.files) == digest:
            verdict = rec.decision.verdict if rec.decision else "in flight"
            raise DuplicateError(f"this exact change was already tried as {rec.id} ({verdict}): "
                                 f"{rec.proposal.hypothesis!r}; propose something different")


def synthetic_bytes(n: int = 1 << 16) -> bytes:
    """Deterministic word salad: enough bytes for any sequence length the smoke run uses."""
    rng = random.Random(0)
    words = ("the model learns to predict the next byte of text from a small corpus while its loss falls "
             "attention layers mix tokens and the optimizer updates weights every step").split()
    out = bytearray()
    while len(out) < n:
        out += (" ".join(rng.choice(words) for _ in range(12)) + ".\n").encode()
    return bytes(out[:n])


class SmokeRunner:
    def __init__(self, cfg: SmokeConfig, script_path: str, repo: git.Repo | None = None,
                 sandbox: Callable[[], Any] | None = None, artifact: str = DEFAULT_ARTIFACT):
        self.cfg = cfg
        self.artifact = artifact  # target.artifact: the file the script must write in --out
        self.script = PurePosixPath(script_path)
        self.repo = repo
        self.sandbox = sandbox  # the runner's training sandbox (runner.sandbox.Sandbox), when there is one

    def run(self, champion: str, files: dict[str, str], changed: dict[str, str]) -> None:
        """Raise SmokeError unless the candidate trains a few steps and exports its model."""
        with OwnedTempDir(prefix="arbot-smoke-") as tmp:  # unmounts the work dir's tmpfs (Sandbox.prepare) first
            work = Path(tmp) / "work"
            work.mkdir()
            if self.repo is not None:  # the whole script directory, as the runner will see it
                export_tree(self.repo, champion, str(self.script.parent), work)
            for path, text in {**files, **changed}.items():
                (work / path).parent.mkdir(parents=True, exist_ok=True)
                (work / path).write_text(text)
            (work / "train.bin").write_bytes(synthetic_bytes())
            out = work / "out"
            text = changed.get(str(self.script), files.get(str(self.script), ""))
            knobs = {k.name for k in find_knobs(text)}
            # a knob the candidate removed is simply not set
            overrides = {name: value for name, value in self.cfg.overrides.items() if name in knobs}
            argv = train_argv(self.script.name, work / "train.bin", out, self.cfg.budget_seconds, 0, "cpu", overrides)
            cwd, extra = work / self.script.parent, {}
            run_argv = argv
            if self.sandbox is not None:  # the same sandbox and limits as real training runs
                box = self.sandbox()
                box.prepare(work)
                run_argv, extra = box.wrap(argv, work, cwd), {"limits": box.limits}
            outcome = run_untrusted(run_argv, cwd=cwd, env=scrubbed_env(work, self.cfg.threads),
                                    deadline_seconds=self.cfg.timeout_seconds, **extra)
            what = (f"the smoke run (train {self.script} on the CPU for {self.cfg.budget_seconds:g} s with a tiny "
                    f"model: {' '.join(argv[2:])})")
            tail = outcome.log_tail[-LOG_TAIL_CHARS:]
            if outcome.timed_out:
                raise SmokeError(f"{what} did not finish within {self.cfg.timeout_seconds:g} s. Output:\n{tail}")
            if outcome.returncode != 0:
                raise SmokeError(f"{what} failed with exit code {outcome.returncode}. Output:\n{tail}")
            if not (out / self.artifact).is_file():
                raise SmokeError(f"{what} exited 0 but wrote no out/{self.artifact}. Output:\n{tail}")

"""Shared fixtures: a throwaway research repository holding this project's target/ and evaluator/."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import git
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# Prepared data splits are shared by all tests (and kept between local runs).
os.environ.setdefault("ARBOT_CACHE", str(Path(os.environ.get("TMPDIR", "/tmp")) / "arbot-test-cache"))
# The bot's signing key for every test (bot.signing), kept out of the home directory.
os.environ.setdefault("ARBOT_SIGNING_KEY", str(Path(os.environ.get("TMPDIR", "/tmp")) / "arbot-test-signing-key"))

# A tiny model so a run takes a few seconds on 2 cores.
TINY = {"DEPTH": 1, "N_EMBD": 32, "N_HEAD": 2, "SEQ_LEN": 32, "BATCH_SIZE": 8}


def tiny_config(**sections) -> dict:
    cfg = {
        "target": {"budget_seconds": 1.5, "grace_seconds": 30, "overrides": dict(TINY), "threads": 1},
        "policy": {"rule": "margin", "margin": 0.0, "baseline_runs": 1},
        "run": {"workers": 1},  # one experiment at a time, whatever the machine's cores (run.workers: auto)
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


def make_repo(path: Path, config: dict, script_edit=None) -> git.Repo:
    """A new git repository with target/, evaluator/ and arbot.yml committed on main."""
    path.mkdir(parents=True, exist_ok=True)
    repo = git.Repo.init(path, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "arbot test")
        cw.set_value("user", "email", "test@example.com")
    for d in ("target", "evaluator"):
        shutil.copytree(ROOT / d, path / d, ignore=shutil.ignore_patterns("__pycache__"))
    if script_edit:
        script = path / "target" / "train.py"
        script.write_text(script_edit(script.read_text()))
    (path / "arbot.yml").write_text(yaml.safe_dump(config))
    (path / ".gitignore").write_text(".arbot/\nresults.tsv\n")
    repo.git.add(A=True)
    repo.index.commit("initial research target")
    return repo


@pytest.fixture
def research_repo(tmp_path) -> git.Repo:
    return make_repo(tmp_path / "research", tiny_config())


def commit_change(repo: git.Repo, branch: str, base: str, files: dict[str, str], message: str) -> str:
    """A candidate commit on its own branch, made in a worktree so main's checkout is untouched."""
    wt = Path(repo.working_tree_dir).parent / f"wt-{branch.replace('/', '-')}"
    repo.git.worktree("add", "-b", branch, str(wt), base)
    for rel, text in files.items():
        (wt / rel).parent.mkdir(parents=True, exist_ok=True)
        (wt / rel).write_text(text)
    subprocess.run(["git", "add", "-A"], cwd=wt, check=True)
    subprocess.run(["git", "commit", "-qm", message], cwd=wt, check=True)
    sha = repo.commit(branch).hexsha
    repo.git.worktree("remove", "--force", str(wt))
    return sha

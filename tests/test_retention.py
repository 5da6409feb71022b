"""Retention of model files (bot.retention, `arbot gc`, `arbot status`): the champion's, the open experiments' and
the last run.keep_models decided experiments' models stay; older ones go; records and summaries stay complete."""

import subprocess
import sys
from pathlib import Path

from bot import retention
from bot.core.records import Decision, Proposal, RunResult
from bot.forges.local import LocalForge

from .conftest import make_repo, tiny_config

MODEL = "model.pt"


def keep_model(root: Path, commit: str, seed: int = 0, size: int = 1000) -> Path:
    """What the runner keeps for a run (runner.job.Runner._keep_artifacts): the model and the summary."""
    d = root / retention.RUNS_DIR / commit[:12] / f"seed-{seed}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "summary.json").write_text("{}")
    (d / MODEL).write_bytes(b"m" * size)
    return d / MODEL


def campaign(tmp_path, decided: int, open_: int = 1):
    repo = make_repo(tmp_path / "r", tiny_config())
    root = Path(repo.working_tree_dir)
    forge = LocalForge(repo)
    forge.ensure_champion()
    champion = forge.champion()
    keep_model(root, champion)
    script = (root / "target/train.py").read_text()
    recs = []
    for i in range(decided + open_):
        rec = forge.open_experiment(Proposal(proposer="test", hypothesis=f"change {i}",
                                             files={"target/train.py": script + f"# {i}\n"}), champion, started_at="t")
        rec.runs = [RunResult(status="ok", commit=rec.commit, seed=0, metrics={"val_bpb": 3.0})]
        if i < decided:
            rec.decision = Decision(verdict="loss", rule="margin", reason="r")
            rec.finished_at = f"2026-01-01T00:00:{i:02d}+00:00"
        forge.save(rec)
        keep_model(root, rec.commit)
        recs.append(rec)
    return repo, root, forge, recs


def models(root: Path) -> set[str]:
    return set(retention.model_files(root / retention.RUNS_DIR))


def test_only_the_champion_the_open_and_the_last_k_models_stay(tmp_path):
    repo, root, forge, recs = campaign(tmp_path, decided=6)
    removed = retention.collect(forge, root / retention.RUNS_DIR, keep=2)
    assert removed.files == 4 and removed.bytes == 4000
    kept = {forge.champion()[:12]} | {r.commit[:12] for r in recs[4:]}  # exp-5, exp-6 decided last; exp-7 open
    assert models(root) == kept
    # the summaries and the records stay whole
    assert len(list((root / retention.RUNS_DIR).glob("*/seed-0/summary.json"))) == 8
    assert [len(r.runs) for r in forge.experiments()] == [1] * 7
    assert retention.collect(forge, root / retention.RUNS_DIR, keep=2).files == 0  # idempotent


def test_gc_and_status_show_and_bound_the_disk_used(tmp_path):
    repo, root, forge, recs = campaign(tmp_path, decided=5, open_=0)
    arbot = [sys.executable, "-m", "bot"]
    status = subprocess.run([*arbot, "status", "--repo", str(root)], capture_output=True, text=True)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "model files: 6 (0.0 MiB)" in status.stdout and "the last 5" in status.stdout
    gc = subprocess.run([*arbot, "gc", "--keep", "1", "--repo", str(root)], capture_output=True, text=True)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert "removed 4 model file(s)" in gc.stdout and "2 kept" in gc.stdout
    assert models(root) == {forge.champion()[:12], recs[-1].commit[:12]}


def test_the_projection_says_when_the_disk_is_too_small(tmp_path):
    root = tmp_path / "r"
    keep_model(root, "a" * 40, size=2**20)
    runs = root / retention.RUNS_DIR
    free = __import__("shutil").disk_usage(runs).free
    every = retention.projection(runs, None, 1, per_experiment=free / 2**20, experiments=10)
    assert every.short and "every model kept" in every.line
    bounded = retention.projection(runs, 5, 1, per_experiment=3, experiments=None)
    assert not bounded.short and "about 21 files, 21.0 MiB after 1000 experiments" in bounded.line

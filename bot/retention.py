"""Retention of the model files local runs keep (`.arbot/runs/<commit[:12]>/seed-<n>/<artifact>`).

Every run keeps the model it was scored on, beside the training's summary. A campaign of a thousand runs of a 100 MB
model fills a disk, so after each decision only the models of the current champion's commits, of the experiments
still open and of the last `run.keep_models` decided experiments are kept; the others are removed (`arbot gc`
does the same by hand). Records, notes, results and summaries are never touched: a removed model's run still
says what it scored, and an audit re-trains from the commits, not from kept files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from bot.config import Config
from bot.core import lifecycle as lc
from bot.executors.pool import worker_count
from bot.core.records import ExperimentRecord
from bot.forges.local import LocalForge
from runner.config import SUMMARY_FILE

RUNS_DIR = ".arbot/runs"  # relative to the repository root: where local runs keep their models and summaries
PROJECTED_EXPERIMENTS = 1000  # the campaign a projection assumes when run.experiments sets none


@dataclass
class Usage:
    files: int = 0
    bytes: int = 0

    @property
    def per_file(self) -> float | None:
        return self.bytes / self.files if self.files else None


def model_files(runs_dir: Path) -> dict[str, list[Path]]:
    """commit[:12] -> the model files kept for it (every regular file of a seed dir but the summary)."""
    found: dict[str, list[Path]] = {}
    if not runs_dir.is_dir():
        return found
    for commit_dir in sorted(runs_dir.iterdir()):
        if not commit_dir.is_dir() or commit_dir.is_symlink():
            continue
        for seed_dir in sorted(commit_dir.iterdir()):
            if seed_dir.is_dir() and not seed_dir.is_symlink():
                found.setdefault(commit_dir.name, []).extend(
                    f for f in sorted(seed_dir.iterdir()) if f.name != SUMMARY_FILE and f.is_file()
                    and not f.is_symlink())
    return {commit: files for commit, files in found.items() if files}


def usage(runs_dir: Path) -> Usage:
    files = [f for fs in model_files(runs_dir).values() for f in fs]
    return Usage(len(files), sum(f.stat().st_size for f in files))


def kept_commits(forge: LocalForge, keep: int, experiments: list[ExperimentRecord]) -> set[str]:
    """commit[:12] of every model to keep: the champion (and each commit its runs trained), the experiments open,
    the `keep` most recently decided ones (of `experiments`, every experiment in the notes)."""
    champion = forge.champion()
    kept = {champion[:12]} | {r.commit[:12] for r in forge.champion_record(champion).runs if r.commit}
    kept |= {r.commit[:12] for r in experiments if lc.is_active(r)}
    decided = sorted((r for r in experiments if not lc.is_active(r)), key=lambda r: (r.finished_at or "", r.number))
    if keep > 0:
        kept |= {r.commit[:12] for r in decided[-keep:]}
    return kept


def collect(forge: LocalForge, runs_dir: Path, keep: int, experiments: list[ExperimentRecord] | None = None) -> Usage:
    """Remove every model file not kept (kept_commits; `experiments`: the notes' experiments, when already read);
    the summaries stay. Returns what was removed."""
    kept = kept_commits(forge, keep, forge.experiments() if experiments is None else experiments)
    removed = Usage()
    for commit, files in model_files(runs_dir).items():
        if commit in kept:
            continue
        for f in files:
            size = f.stat().st_size
            f.unlink()
            removed.files += 1
            removed.bytes += size
    return removed


def runs_per_experiment(recs: list[ExperimentRecord]) -> float:
    """The mean number of runs a decided experiment made (its champion's floor aside), at least 1."""
    decided = [r for r in recs if r.decision is not None]
    return max(1.0, sum(len(r.runs) for r in decided) / len(decided)) if decided else 2.0


@dataclass
class Projection:
    line: str
    short: bool  # the disk has less free space than the projection needs


def projection(runs_dir: Path, keep: int | None, in_flight: int, per_experiment: float,
               experiments: int | None) -> Projection:
    """What the kept models take now and will take over the campaign (run.experiments, else
    PROJECTED_EXPERIMENTS), against the free space of the disk that holds them."""
    now = usage(runs_dir)
    where = runs_dir if runs_dir.exists() else runs_dir.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    line = f"model files: {now.files} ({mib(now.bytes)}) in {runs_dir}"
    if now.per_file is None:
        return Projection(line + f"; {mib(free)} free there (no model kept yet: nothing to project)", False)
    n = experiments or PROJECTED_EXPERIMENTS
    if keep is None:
        files, how = per_experiment * n, "every model kept (run.keep_models: null)"
    else:
        files, how = per_experiment * (keep + in_flight + 1), f"the champion's, {in_flight} open and the last {keep}"
    peak = files * now.per_file
    return Projection(line + f"; {how}: about {int(files)} files, {mib(peak)} after {n} experiments "
                      f"({mib(now.per_file)} each); {mib(free)} free there", peak - now.bytes > free)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


def config_projection(config: Config, root: Path, recs: list[ExperimentRecord]) -> Projection:
    """The projection for the configured campaign of the repository at `root`, whose experiments are `recs`."""
    run = config.run
    slots = worker_count(run.workers, config.target) if run.executor == "local" else config.slurm.max_jobs
    return projection(root / RUNS_DIR, run.keep_models, slots, runs_per_experiment(recs), run.experiments)

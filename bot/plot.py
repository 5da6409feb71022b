"""`arbot plot`: the research trajectory as an image, for people who would rather look than read.

Each decided experiment is a point (its measured mean), coloured by verdict; merged wins are stars; the
champion's value is a step line with its noise band (one sd of its single runs) around it.
"""

from __future__ import annotations

from pathlib import Path

from bot.progress import Point
from bot.core.records import Metric

COLOURS = {"win": "tab:green", "loss": "tab:grey", "rejected": "tab:orange", "crash": "tab:red",
           "timeout": "tab:red"}


def plot(points: list[Point], metric: Metric, path: Path, title: str = "") -> Path:
    """Write the trajectory of `points` to `path` (png, svg or pdf, by its suffix)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    xs = [p.number for p in points]
    champion = [p.champion for p in points]
    if any(c is not None for c in champion):
        low = [c - (p.noise or 0) if c is not None else None for c, p in zip(champion, points)]
        high = [c + (p.noise or 0) if c is not None else None for c, p in zip(champion, points)]
        ax.fill_between(xs, [v if v is not None else float("nan") for v in low],
                        [v if v is not None else float("nan") for v in high], step="mid", alpha=0.2,
                        color="tab:blue", label="champion ± 1 sd (noise)")
        ax.step(xs, [c if c is not None else float("nan") for c in champion], where="mid", color="tab:blue",
                label="champion")
    for verdict, colour in COLOURS.items():
        mine = [p for p in points if p.verdict == verdict and p.value is not None and not p.merged]
        if mine:
            ax.scatter([p.number for p in mine], [p.value for p in mine], color=colour, s=18, label=verdict)
    merged = [p for p in points if p.merged and p.value is not None]
    if merged:
        ax.scatter([p.number for p in merged], [p.value for p in merged], marker="*", s=160, color="tab:green",
                   edgecolor="black", zorder=3, label="merged win")
    ax.set_xlabel("experiment")
    ax.set_ylabel(f"{metric.key()} ({metric.better} is better)")
    ax.set_title(title or f"{len(points)} experiments, {len(merged)} merged")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

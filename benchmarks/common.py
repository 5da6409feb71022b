"""What the benchmarks share: a fresh clone of this checkout with its settings committed, `--set` knobs, a table."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH_GIT = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost", "GIT_COMMITTER_NAME": "bench",
             "GIT_COMMITTER_EMAIL": "bench@localhost", "PATH": "/usr/bin:/bin"}


def clone(dest: Path, settings: dict) -> None:
    """Clone this checkout's committed HEAD to `dest` and commit `settings` merged into its arbot.yml (one level
    deep: each section's keys replace the file's; a None section value removes nothing, it sets the key to null)."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    config = yaml.safe_load((dest / "arbot.yml").read_text()) or {}
    for section, values in settings.items():
        config.setdefault(section, {}).update(values)
    (dest / "arbot.yml").write_text(yaml.safe_dump(config))
    subprocess.run(["git", "-C", str(dest), "commit", "-qam", "benchmark settings"], check=True, env=BENCH_GIT)


def knob_values(items: list[str]) -> dict[str, int | float]:
    """`--set NAME=VALUE` items as the knobs' numbers (a value with a point or an exponent is a float)."""
    knobs: dict[str, int | float] = {}
    for item in items:
        name, _, value = item.partition("=")
        knobs[name] = float(value) if "." in value or "e" in value.lower() else int(value)
    return knobs


def print_table(columns: dict[str, str], rows: list[dict]) -> None:
    """`rows` as an aligned text table: `columns` maps each row key to its header; values are printed as given
    (format them first), the first column left-aligned, the others right-aligned."""
    cells = [list(columns.values())] + [[str(r[k]) for k in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print(" ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))

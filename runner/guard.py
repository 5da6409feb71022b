"""Path guard: a candidate may only change the allowed paths; anything else is rejected before training."""

from __future__ import annotations

from fnmatch import fnmatchcase

import git


def changed_paths(repo: git.Repo, base: str, candidate: str) -> list[str]:
    """Paths the candidate changes relative to its merge base with `base` (renames count as both paths)."""
    if repo.commit(base) == repo.commit(candidate):
        return []
    merge_base = repo.merge_base(base, candidate)
    if not merge_base:
        raise ValueError(f"{candidate[:12]} shares no history with the champion {base[:12]}")
    out = repo.git.diff("--name-only", "--no-renames", "-z", merge_base[0].hexsha, candidate)
    return sorted(p for p in out.split("\0") if p)


def forbidden_paths(paths: list[str], allowed: list[str]) -> list[str]:
    return [p for p in paths if not any(fnmatchcase(p, pattern) for pattern in allowed)]

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


REGULAR_MODES = (0o100644, 0o100755)  # the only git modes a candidate may change a path to
MODE_NAMES = {0o120000: "a symlink", 0o160000: "a submodule (gitlink)", 0o040000: "a directory"}


def irregular_paths(repo: git.Repo, commit: str, paths: list[str]) -> dict[str, str]:
    """The changed paths that `commit` holds as anything but a regular file (a symlink, a submodule), with what
    each is. A path the commit deletes is not listed."""
    tree = repo.commit(commit).tree
    out = {}
    for path in paths:
        try:
            mode = tree[path].mode
        except KeyError:
            continue
        if mode not in REGULAR_MODES:
            out[path] = MODE_NAMES.get(mode, f"git mode {mode:o}")
    return out

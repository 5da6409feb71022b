"""The runner's temporary directories (`arbot-run-*`, `arbot-evaluator-*`, `arbot-probe-*`): removed when done,
and swept by the next runner when the process that made one is gone (SIGKILL, out of memory, a power cut).

The owner keeps the directory itself locked (flock on the directory) for its lifetime and only then writes an
owner file into it. The kernel drops the lock when the owner dies however it dies, so a later runner that finds
the owner file and can take the lock knows the owner is gone and removes the directory; a directory without the
owner file is not known to be ours (or is still being set up) and is left alone. The owner file lives next to,
never inside, what a sandbox sees (the run's work/ and the evaluator's code and inbox)."""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
import weakref
from pathlib import Path

from runner.mounts import unmount_under

OWNER_FILE = ".arbot-owner"
PREFIXES = ("arbot-run-", "arbot-evaluator-", "arbot-probe-")


class OwnedTempDir:
    """tempfile.TemporaryDirectory with an owner lock: `name`, `cleanup()`, usable as a context manager."""

    def __init__(self, prefix: str, dir: str | os.PathLike | None = None):
        self.name = tempfile.mkdtemp(prefix=prefix, dir=dir)
        fd = os.open(self.name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with open(os.path.join(self.name, OWNER_FILE), "x") as f:  # written once locked: then it may be swept
            f.write(f"{os.getpid()}\n")
        self._finalizer = weakref.finalize(self, _remove, self.name, fd)

    def cleanup(self) -> None:
        self._finalizer()

    def __enter__(self) -> str:
        return self.name

    def __exit__(self, *exc) -> None:
        self.cleanup()


def _remove(path: str, fd: int) -> None:
    try:
        rmtree(path)
    finally:
        os.close(fd)


def rmtree(path: str | os.PathLike) -> None:
    """Remove a tree a candidate wrote into, also where it took away the permissions of its own directories, and
    unmount the run's work-dir tmpfs in it first (runner.mounts)."""
    unmount_under(path)

    def fix(func, p, exc):
        if isinstance(exc, FileNotFoundError):
            return
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
                shutil.rmtree(p, onerror=lambda *a: None)
            else:
                os.unlink(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=lambda func, p, info: fix(func, p, info[1]))


def sweep(root: str | os.PathLike | None = None) -> list[str]:
    """Remove the runner temporary directories under root (default: the temp dir) whose owner is gone: those
    holding the owner file whose lock no live process holds. Returns the removed paths."""
    root = Path(root or tempfile.gettempdir())
    removed: list[str] = []
    try:
        candidates = [e for e in os.scandir(root) if e.name.startswith(PREFIXES) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return removed
    for entry in candidates:
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not os.path.isfile(os.path.join(entry.path, OWNER_FILE)):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner still runs
            rmtree(entry.path)
            removed.append(entry.path)
        finally:
            os.close(fd)
    return removed

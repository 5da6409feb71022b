"""The size-limited filesystem a run's work dir lives on: a tmpfs the runner mounts (as root) and unmounts.

A write past its size fails at once with ENOSPC, inside the run, instead of being measured after the fact. Its
pages are memory: what the run writes there counts against its memory cgroup too (runner.box)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from runner.limits import MIN_ENTRY_BYTES

DISK_SOURCE = "arbot-disk"  # the source name of a run's work-dir tmpfs in /proc/self/mountinfo
_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def can_mount() -> bool:
    """Whether this runner may mount a tmpfs (root; a user namespace's root cannot mount on the host's dirs)."""
    return os.geteuid() == 0


def mount_disk(target: Path, size: int) -> None:
    """Mount a tmpfs of `size` bytes at target, with an inode for every MIN_ENTRY_BYTES of it (the disk cap's
    own count of a file), no device files and no set-uid programs. Raises OSError."""
    data = f"size={int(size)},nr_inodes={max(int(size) // MIN_ENTRY_BYTES, 64)},mode=0755"
    if _libc.mount(DISK_SOURCE.encode(), os.fsencode(target), b"tmpfs", _MS_NOSUID | _MS_NODEV, data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount the run's size-limited work dir: {os.strerror(err)}", str(target))


def disk_mounts() -> list[Path]:
    """The mount points of the runs' work-dir tmpfs mounts this process sees."""
    out = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split(" - ", 1)
        if len(fields) == 2 and fields[1].split()[:2] == ["tmpfs", DISK_SOURCE]:
            out.append(Path(_unescape(fields[0].split()[4])))
    return out


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    return os.fsdecode(field.encode().decode("unicode_escape").encode("latin-1"))


def disk_of(path: Path) -> Path | None:
    """The work-dir tmpfs that holds path, None when it is on no such mount."""
    real = Path(os.path.realpath(path))
    holders = [m for m in disk_mounts() if m == real or m in real.parents]
    return max(holders, key=lambda m: len(m.parts)) if holders else None


def unmount_under(root: str | os.PathLike) -> None:
    """Detach every work-dir tmpfs at or under root (deepest first), so removing root frees its memory."""
    real = Path(os.path.realpath(root))
    for mount in sorted((m for m in disk_mounts() if m == real or real in m.parents), key=lambda m: -len(m.parts)):
        if _libc.umount2(os.fsencode(mount), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot unmount a run's work dir: {os.strerror(err)}", str(mount))

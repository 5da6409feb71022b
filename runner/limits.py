"""Resource limits of the untrusted training process (setrlimit), shared by runner.process and runner.sandbox."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

MAX_FILE_BYTES = 2 << 30  # default largest file the candidate may write (target.max_file_gb)


@dataclass(frozen=True)
class Limits:
    """Per-process limits applied (setrlimit) to the training process and all it starts."""

    memory_bytes: int | None = None  # RLIMIT_DATA (heap and private mappings); None = no limit
    max_processes: int | None = None  # RLIMIT_NPROC (processes and threads of the uid); None = no limit
    max_file_bytes: int = MAX_FILE_BYTES  # RLIMIT_FSIZE: no single file may exceed this
    # the run's box (runner.box, runner.mounts): its memory and pids cgroups take memory_bytes and max_processes
    disk_bytes: int | None = None  # size of the tmpfs the work dir is put on (target.max_disk_gb); None = none
    cores: int | None = None  # CPU time it may use, in cores' worth (a cpu quota: target.threads); None = all
    cpus: tuple[int, ...] | None = None  # the cores it may run on (a cpuset: target.cpus); None = the runner's
    gpus: str | None = None  # the GPUs bound into its sandbox (CUDA_VISIBLE_DEVICES form); None = all visible

    def apply(self, nproc: bool = True) -> None:
        """Call in the child before exec (preexec_fn). `nproc` False: the processes are bounded per run by a pids
        cgroup instead (RLIMIT_NPROC counts every process of the uid, concurrent runs' included)."""
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_file_bytes, self.max_file_bytes))
        if self.memory_bytes:
            resource.setrlimit(resource.RLIMIT_DATA, (self.memory_bytes, self.memory_bytes))
        if self.max_processes and nproc:
            resource.setrlimit(resource.RLIMIT_NPROC, (self.max_processes, self.max_processes))

    def describe(self) -> str:
        parts = []
        if self.memory_bytes:
            parts.append(f"memory {self.memory_bytes / 2**30:g} GiB")
        if self.max_processes:
            parts.append(f"{self.max_processes} processes")
        parts.append(f"files {self.max_file_bytes / 2**30:g} GiB")
        if self.disk_bytes:
            parts.append(f"disk {self.disk_bytes / 2**30:g} GiB")
        if self.cores:
            parts.append(f"{self.cores} cores")
        return ", ".join(parts)


def default_memory_bytes() -> int:
    """75% of physical memory: a memory bomb fails inside the candidate instead of taking the machine down."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.75)
    except (ValueError, OSError):
        return 0


def parse_cpus(text: str) -> tuple[int, ...]:
    """A cpuset list ("0-3,6") as the cores it names."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return tuple(sorted(cpus))


MIN_ENTRY_BYTES = 4096  # every file, directory or link counts at least one block (an inode is not free either)


@dataclass
class DiskUsage:
    bytes: int = 0  # allocated bytes (hard links counted once), each entry at least MIN_ENTRY_BYTES
    entries: int = 0
    unreadable: str = ""  # a directory that could not be listed (a run that hides what it wrote)


def disk_usage(root: str | os.PathLike) -> DiskUsage:
    """What a run's work directory holds on disk: every entry under root, never following symlinks.

    Allocated blocks (st_blocks), not apparent sizes: a sparse file costs what it occupies. A directory the
    candidate made unlistable is made listable by its owner (the runner, or root) and listed; one that still
    cannot be read is reported in `unreadable`, so the caller can refuse the run rather than miss what is in it."""
    usage, seen = DiskUsage(), set()
    stack = [os.fspath(root)]
    while stack:
        path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except PermissionError:
            try:
                os.chmod(path, 0o700)
                entries = list(os.scandir(path))
            except OSError as e:
                usage.unreadable = f"{path}: {e.strerror}"
                continue
        except FileNotFoundError:
            continue  # removed while we looked
        except OSError as e:
            usage.unreadable = f"{path}: {e.strerror}"
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            usage.entries += 1
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            usage.bytes += max(st.st_blocks * 512, MIN_ENTRY_BYTES)
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return usage

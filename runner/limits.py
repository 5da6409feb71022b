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

    def apply(self) -> None:
        """Call in the child before exec (preexec_fn)."""
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_file_bytes, self.max_file_bytes))
        if self.memory_bytes:
            resource.setrlimit(resource.RLIMIT_DATA, (self.memory_bytes, self.memory_bytes))
        if self.max_processes:
            resource.setrlimit(resource.RLIMIT_NPROC, (self.max_processes, self.max_processes))

    def describe(self) -> str:
        parts = []
        if self.memory_bytes:
            parts.append(f"memory {self.memory_bytes / 2**30:g} GiB")
        if self.max_processes:
            parts.append(f"{self.max_processes} processes")
        parts.append(f"files {self.max_file_bytes / 2**30:g} GiB")
        return ", ".join(parts)


def default_memory_bytes() -> int:
    """75% of physical memory: a memory bomb fails inside the candidate instead of taking the machine down."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.75)
    except (ValueError, OSError):
        return 0

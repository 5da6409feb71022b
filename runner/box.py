"""One resource box per run, enforced by the kernel: a cgroup per run in each of the memory, pids, cpu and cpuset
controllers (cgroup v1, or v2 where the runner's cgroup may have children with them) and a size-limited tmpfs for
its work dir (runner.mounts).

  * memory: everything the run's processes hold, shared memory (memfd, /dev/shm) and the files it writes in its
    work dir included (RLIMIT_DATA counts none of these); over it the kernel kills inside the run (OOM).
  * pids: processes and threads of this run only (RLIMIT_NPROC counts every process of a uid, on the whole machine).
  * cpu: the CPU time the run may use, target.threads cores' worth, however many threads it starts;
  * cpuset: the cores it may run on (target.cpus; a pool gives each worker its own), whatever affinity it asks for.

The run's cgroups are children of the runner's own cgroup, so every limit above the runner still holds. The
training process joins them before it executes anything (runner.process), so all it starts is inside. The kernel's
own counters (an OOM kill, a refused fork, a full work dir) name the limit a run went over (`breach`); the runner
never reads them from anything the candidate writes."""

from __future__ import annotations

import errno
import functools
import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from runner import mounts
from runner.limits import Limits, parse_cpus

MEMORY, PIDS, CPU, CPUSET = "memory", "pids", "cpu", "cpuset"
CPU_PERIOD_US = 100_000  # the cpu quota's period: a run of n cores may use n x this of CPU time in each
RUN_PREFIX = "arbot-run-"  # a run's cgroup: arbot-run-<runner pid>-<n>
_PROBE_NAME = "arbot-probe-"
_counter = itertools.count()


class BoxError(RuntimeError):
    """A run's cgroups could not be set up although the machine has them: a machine failure, not the candidate's."""


@dataclass(frozen=True)
class Controller:
    """Where this runner makes its runs' cgroups of one controller."""

    name: str
    parent: Path  # the runner's own cgroup in this controller's hierarchy
    v2: bool

    def file(self, key: str) -> str:
        """The control file of `key` in this version (v1 and v2 name some differently)."""
        return (_V2 if self.v2 else _V1)[self.name].get(key, key)


# v1 name -> per-version file; keys not listed are the same in both
_V1 = {MEMORY: {"max": "memory.limit_in_bytes", "swap": "memory.memsw.limit_in_bytes", "peak": "memory.max_usage_in_bytes",
                "events": "memory.oom_control"},
       PIDS: {"max": "pids.max", "events": "pids.events"}, CPU: {"max": "cpu.cfs_quota_us"}, CPUSET: {"mems": "cpuset.mems"}}
_V2 = {MEMORY: {"max": "memory.max", "swap": "memory.swap.max", "peak": "memory.peak", "events": "memory.events"},
       PIDS: {"max": "pids.max", "events": "pids.events"}, CPU: {"max": "cpu.max"}, CPUSET: {"mems": "cpuset.mems.effective"}}


def _cgroup_mounts() -> list[tuple[Path, str, set[str]]]:
    """(mount point, fs type, options) of every cgroup filesystem this process sees."""
    out = []
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            out.append((Path(parts[1]), parts[2], set(parts[3].split(","))))
    return out


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under "" its v2 (unified) one."""
    out: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _, names, path = line.split(":", 2)
        for name in names.split(",") if names else [""]:
            out[name] = path
    return out


def find(name: str) -> Controller | str:
    """Where this runner's runs get their `name` cgroups (v1 first: a controller bound to v1 is absent from v2),
    or why they cannot."""
    own = _own_cgroups()
    found = _cgroup_mounts()
    for mount, kind, options in found:
        if kind == "cgroup" and name in options and name in own:
            return Controller(name, mount / own[name].lstrip("/"), v2=False)
    for mount, kind, _ in found:
        if kind == "cgroup2" and "" in own:
            parent = mount / own[""].lstrip("/")
            try:
                available = (parent / "cgroup.controllers").read_text().split()
                enabled = (parent / "cgroup.subtree_control").read_text().split()
            except OSError:
                continue
            if name not in available:
                continue
            if name not in enabled:
                try:
                    (parent / "cgroup.subtree_control").write_text(f"+{name}")
                except OSError as e:
                    return (f"cgroup v2: {name} cannot be enabled for children of the runner's cgroup {parent} "
                            f"({e.strerror}; v2 allows it only in a cgroup that holds no processes)")
            return Controller(name, parent, v2=True)
    return f"no {name} cgroup controller is mounted (neither /sys/fs/cgroup/{name}, v1, nor in v2's cgroup.controllers)"


@functools.cache
def controller(name: str) -> Controller | str:
    """The `name` controller where this runner can make a child cgroup and set its limit (tried once per
    process), or why not."""
    found = find(name)
    if isinstance(found, str):
        return found
    if os.geteuid() != 0:
        return f"the runner is not root, so it cannot make cgroups in {found.parent}"
    probe = found.parent / f"{_PROBE_NAME}{os.getpid()}"
    try:
        probe.mkdir(exist_ok=True)
        try:
            _configure(found, probe, _parent_cpus(found) if name == CPUSET else {MEMORY: 1 << 30, PIDS: 64, CPU: 1}[name])
        finally:
            probe.rmdir()
    except OSError as e:
        return f"cannot make a cgroup in {found.parent} ({e.strerror}: a read-only or unprivileged cgroup mount)"
    _sweep(found.parent)
    return found


def _sweep(parent: Path) -> None:
    """Remove the run cgroups a killed runner left behind (those whose runner pid is gone; rmdir refuses any
    that still holds a process)."""
    for group in parent.glob(f"{RUN_PREFIX}*"):
        pid = group.name[len(RUN_PREFIX):].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _empty_and_remove(group)


def _parent_cpus(ctrl: Controller) -> tuple[int, ...]:
    return parse_cpus((ctrl.parent / ("cpuset.cpus.effective" if ctrl.v2 else "cpuset.cpus")).read_text())


def _configure(ctrl: Controller, group: Path, value) -> None:
    """Set one run cgroup's limit: memory bytes (swap none), a pids count, cores' worth of CPU time, or the cores
    of a cpuset."""
    if ctrl.name == MEMORY:
        (group / ctrl.file("max")).write_text(str(value))
        try:
            (group / ctrl.file("swap")).write_text(str(0 if ctrl.v2 else value))
        except FileNotFoundError:
            pass  # no swap accounting: nothing to limit
    elif ctrl.name == PIDS:
        (group / ctrl.file("max")).write_text(str(value))
    elif ctrl.name == CPU and ctrl.v2:
        (group / "cpu.max").write_text(f"{value * CPU_PERIOD_US} {CPU_PERIOD_US}")
    elif ctrl.name == CPU:
        (group / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(value * CPU_PERIOD_US))
    else:
        (group / "cpuset.mems").write_text((ctrl.parent / ctrl.file("mems")).read_text().strip())
        (group / "cpuset.cpus").write_text(",".join(map(str, value)))


def _events(group: Path, ctrl: Controller) -> dict[str, int]:
    try:
        text = (group / ctrl.file("events")).read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if len(line.split()) == 2)}


class RunBox:
    """The cgroups of one run (those the machine has and its limits ask for) and the tmpfs its work dir is on.
    Use as a context manager: made on entry; on exit every process left in it is killed and the cgroups removed."""

    def __init__(self, limits: Limits, cwd: Path):
        self.limits = limits
        self.disk = mounts.disk_of(cwd)  # the size-limited work dir the run runs in, if it has one
        self.groups: dict[str, tuple[Controller, Path]] = {}

    def wanted(self) -> dict[str, object]:
        """Each controller's limit for this run (those the limits set)."""
        out: dict[str, object] = {}
        if self.limits.memory_bytes:
            out[MEMORY] = self.limits.memory_bytes
        if self.limits.max_processes:
            out[PIDS] = self.limits.max_processes
        if self.limits.cores:
            out[CPU] = self.limits.cores
        if self.limits.cpus:
            out[CPUSET] = self.limits.cpus
        return out

    def __enter__(self) -> RunBox:
        name = f"{RUN_PREFIX}{os.getpid()}-{next(_counter)}"
        try:
            for key, value in self.wanted().items():
                ctrl = controller(key)
                if isinstance(ctrl, str):
                    continue  # not on this machine: `arbot doctor` says so, and the pool refuses to share it
                group = ctrl.parent / name
                group.mkdir()
                self.groups[key] = (ctrl, group)
                _configure(ctrl, group, value)
        except OSError as e:
            self.close()
            raise BoxError(f"cannot set up the run's cgroup {name} ({e}): the machine's cgroups changed since "
                           "the runner started; see `arbot doctor`") from e
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def processes_bounded(self) -> bool:
        return PIDS in self.groups

    def join(self) -> None:
        """Move the calling process into the run's cgroups (in the child, before exec)."""
        for _, group in self.groups.values():
            with open(group / "cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

    def breach(self) -> str:
        """Which limit the run went over, by the kernel's own count (empty: none)."""
        if MEMORY in self.groups and _events(self.groups[MEMORY][1], self.groups[MEMORY][0]).get("oom_kill", 0):
            return (f"memory_limit: the run's memory (its processes, shared memory such as memfd and /dev/shm, and the "
                    f"files in its work dir) reached the limit of {self.limits.memory_bytes / 2**30:g} GiB "
                    "(target.memory_gb) and the kernel killed it")
        if PIDS in self.groups and _events(self.groups[PIDS][1], self.groups[PIDS][0]).get("max", 0):
            return (f"pids_limit: the run tried to hold more than {self.limits.max_processes} processes and threads "
                    "at once (target.max_processes) and the kernel refused")
        if self.disk is not None and self.limits.disk_bytes and _full(self.disk):
            return (f"disk_cap: the run filled its work dir, a filesystem of {self.limits.disk_bytes / 2**30:g} GiB "
                    "(target.max_disk_gb), and its next write failed")
        return ""

    def peak_memory_bytes(self) -> int | None:
        """The most memory the run held at once (its cgroup's peak, shared memory included), None without one."""
        if MEMORY not in self.groups:
            return None
        ctrl, group = self.groups[MEMORY]
        try:
            return int((group / ctrl.file("peak")).read_text())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """Kill what is left in the run's cgroups and remove them."""
        for ctrl, group in self.groups.values():
            _empty_and_remove(group)
        self.groups.clear()


def _full(disk: Path) -> bool:
    """Whether the tmpfs has no block or no inode left (a write or a new file there fails)."""
    try:
        st = os.statvfs(disk)
    except OSError:
        return False
    return st.f_bavail == 0 or st.f_favail == 0


GROUP_GONE_SECONDS = 10.0  # how long killed processes may take to leave a cgroup before it is given up on


def _empty_and_remove(group: Path) -> None:
    deadline = time.monotonic() + GROUP_GONE_SECONDS
    while True:
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            group.rmdir()
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                return  # left for the next runner's sweep (_sweep)
            time.sleep(0.02)


@dataclass(frozen=True)
class Enforcement:
    """Whether one limit of a run is enforced by the kernel on this machine: `by` what; where nothing enforces
    it (`by` empty), `why` not and the fix."""

    limit: str
    by: str
    why: str
    fix: str
    isolates: bool = True  # False: the limit does not keep concurrent runs apart (its absence alone is no reason to refuse workers)


ROOT_FIX = "run the runner as root on a machine with cgroup v1 controllers mounted (or v2 ones delegated to it)"


def enforcement(limits: Limits, sandboxed: bool) -> list[Enforcement]:
    """How each of a run's limits is enforced here: memory, processes, cores, disk and devices, one entry each."""
    def cgroup(name: str) -> tuple[str, str]:
        found = controller(name)
        return ("", found) if isinstance(found, str) else (f"its own {name} cgroup (v{2 if found.v2 else 1}, "
                                                          f"under {found.parent})", "")

    out = []
    by, why = cgroup(MEMORY)
    out.append(Enforcement("memory", f"{by}: shared memory (memfd, /dev/shm) and its work dir's files count" if by else "",
                           f"only RLIMIT_DATA per process, which counts no shared memory (memfd_create) and no files: {why}",
                           ROOT_FIX))
    by, why = cgroup(PIDS)
    if not by and os.geteuid() == 0 and sandboxed:
        by = "RLIMIT_NPROC of the run's own sandbox uid (one uid per worker; no pids cgroup: " + why + ")"
    out.append(Enforcement("processes and threads", by,
                           f"only RLIMIT_NPROC, which counts every process of the runner's uid, so parallel runs share "
                           f"it: {why}", ROOT_FIX))
    by, why = cgroup(CPU)
    if not limits.cores:
        out.append(Enforcement("cpu cores", "", "target.threads is 0: a run may use every core",
                               "set target.threads (each parallel worker then also gets its own cores)"))
    else:
        pinned, _ = cgroup(CPUSET) if limits.cpus else ("", "")
        by = f"{by}: {limits.cores} cores' worth of CPU time" + (f"; {pinned}: cores {','.join(map(str, limits.cpus))}"
                                                                 if pinned else "") if by else ""
        out.append(Enforcement("cpu cores", by, f"target.threads is only a request (OMP_NUM_THREADS): {why}", ROOT_FIX))
    out.append(Enforcement(
        "disk", f"a tmpfs of target.max_disk_gb per run ({(limits.disk_bytes or 0) / 2**30:g} GiB): a write past it fails "
        "at once" if mounts.can_mount() and limits.disk_bytes else "",
        "measured every second and after the run, so a run may write past target.max_disk_gb for up to a second "
        "(the runner is not root, so it cannot mount a size-limited work dir)", ROOT_FIX, isolates=False))
    out.append(Enforcement(
        "devices", "bubblewrap binds only the worker's GPUs (its CUDA_VISIBLE_DEVICES) and the driver's control "
        "nodes into its private /dev" if sandboxed else "",
        "runs are not sandboxed: they see every device of the runner", "install bubblewrap (target.sandbox: require)",
        isolates=False))
    return out

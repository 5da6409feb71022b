"""The training sandbox: bubblewrap (bwrap) around the untrusted training process (its resource limits: runner.limits).

Inside the sandbox the candidate sees:
  * a read-only view of the system directories (/usr, /etc, the lib dirs) and of the Python installation,
  * its work directory (the exported target tree, train.bin, out/) at the same path, writable,
  * a private /dev (plus the device nodes of its worker's GPUs: runner.gpus), /proc of its own pid namespace,
and nothing else: no network (own network namespace), no repository, no evaluator, no data cache, no /home,
no /root, no /tmp, no host processes. When the runner is root it drops to an unprivileged uid inside the
sandbox (so the process limit holds and root-owned files stay closed); otherwise it runs as the runner's user
in a user namespace. The wall clock is enforced from outside (runner.process); when bwrap dies its pid
namespace dies with it, so nothing the candidate started survives the run. A root runner puts the work directory
on a size-limited tmpfs (`prepare`); runner.box bounds its memory, processes and cores per run.

Where bwrap (found on PATH) is missing or cannot start, `auto` falls back to no sandbox and says so loudly (and
the run records `sandbox: none`); `require` refuses to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from runner import mounts
from runner.gpus import device_nodes
from runner.limits import Limits
from runner.process import scrubbed_env
from runner.tempdirs import OwnedTempDir, rmtree

# The uid/gid a root runner drops to inside the sandbox (nobody/nogroup on Debian).
DEFAULT_UID = 65534
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# Drop to the sandbox uid, then exec the real command (runs as root inside the sandbox, only until the exec).
_DROP = "import os,sys;os.setgroups([]);os.setgid(int(sys.argv[2]));os.setuid(int(sys.argv[1]));os.execv(sys.argv[3],sys.argv[3:])"


class SandboxUnavailable(RuntimeError):
    """The sandbox was required but cannot start on this machine."""


def python_roots() -> list[Path]:
    """Directories that hold the interpreter and its packages (bound read-only into the sandbox)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if sysconfig.get_path(key):
            paths.add(sysconfig.get_path(key))
    out: list[Path] = []
    for p in sorted({Path(os.path.realpath(p)) for p in paths} | {Path(p) for p in paths}, key=lambda p: len(p.parts)):
        if p.is_dir() and not any(p == q or q in p.parents for q in out) and not _under_system(p):
            out.append(p)
    return out


def _under_system(p: Path) -> bool:
    return any(str(p) == d or str(p).startswith(d + "/") for d in SYSTEM_DIRS if not os.path.islink(d))


@dataclass
class Sandbox:
    """How to start one untrusted command: `kind` is "bwrap" or "none" (recorded as RunResult.sandbox)."""

    kind: str
    bwrap: str | None = None
    drop_to: tuple[int, int] | None = None  # (uid, gid) when the runner is root
    limits: Limits = field(default_factory=Limits)
    note: str = ""  # why there is no sandbox, when kind == "none"

    def prepare(self, work: Path) -> None:
        """Put the work directory on a tmpfs of limits.disk_bytes (a root runner; its content moved there), and
        make it writable by the sandbox uid (a root runner drops to it)."""
        if self.limits.disk_bytes and mounts.can_mount() and mounts.disk_of(work) is None:
            _onto_disk(work, self.limits.disk_bytes)
        if self.kind != "bwrap" or self.drop_to is None:
            return
        uid, gid = self.drop_to
        for root, dirs, files in os.walk(work):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(name, uid, gid)

    def wrap(self, argv: list[str], work: Path, cwd: Path) -> list[str]:
        if self.kind == "none":
            return argv
        return self.command(argv, work, cwd)

    def with_uid(self, uid: int, limits: Limits) -> Sandbox:
        """The same sandbox for another untrusted role (the evaluator): its own uid (when the runner is root)
        and its own limits; no second probe is needed, bwrap itself was already shown to work."""
        return replace(self, drop_to=(uid, uid) if self.drop_to is not None else None, limits=limits)

    def command(self, argv: list[str], work: Path | None, cwd: Path, ro: Sequence[Path] = (),
                tmpfs: Sequence[tuple[Path, int]] = ()) -> list[str]:
        """The bwrap command line for argv: `work` is the one writable directory (None: none), `ro` more
        directories or files bound read-only at their own paths, `tmpfs` private size-limited scratch mounts
        (path, bytes), writable by the sandbox uid and gone with the sandbox."""
        cmd = [self.bwrap or "bwrap", "--die-with-parent", "--new-session",
               "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
               "--hostname", "arbot-sandbox"]
        if self.drop_to is None:
            cmd += ["--unshare-user"]  # unprivileged: the user namespace is what lets bwrap mount
        made: set[Path] = set()

        def parents(target: Path) -> list[str]:
            # bwrap copies the mode of host parents (e.g. /root 0700); make them traversable for the sandbox uid
            out = []
            for parent in reversed(target.parents):
                if parent != Path("/") and parent not in made:
                    made.add(parent)
                    out += ["--perms", "0755", "--dir", str(parent)]
            return out

        for d in SYSTEM_DIRS:
            if os.path.islink(d):
                cmd += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                cmd += ["--ro-bind", d, d]
                made.add(Path(d))
        for root in python_roots():
            cmd += parents(root) + ["--ro-bind", str(root), str(root)]
            made.add(root)
        cmd += ["--dev", "/dev", "--proc", "/proc"]
        gpus = device_nodes(self.limits.gpus)
        for dev in gpus:
            cmd += ["--dev-bind", dev, dev]
        if gpus and os.path.isdir("/sys"):
            cmd += ["--ro-bind", "/sys", "/sys"]
        for path, size in tmpfs:
            path = Path(path)
            cmd += parents(path) + ["--perms", "01777", "--size", str(int(size)), "--tmpfs", str(path)]
            made.add(path)
        for path in ro:
            path = Path(os.path.realpath(path))
            cmd += parents(path) + ["--ro-bind", str(path), str(path)]
            made.add(path)
        if work is not None:
            work = Path(os.path.realpath(work))
            cmd += parents(work) + ["--bind", str(work), str(work)]
        cmd += ["--remount-ro", "/", "--chdir", str(cwd)]
        if self.drop_to is not None:
            uid, gid = self.drop_to
            cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--",
                    sys.executable, "-I", "-S", "-c", _DROP, str(uid), str(gid), *argv]
        else:
            cmd += ["--", *argv]
        return cmd


def _onto_disk(work: Path, size: int) -> None:
    """Move work's content onto a fresh tmpfs of `size` bytes mounted at work (runner.mounts)."""
    staged = work.with_name(work.name + ".staged")
    work.rename(staged)
    work.mkdir()
    mounts.mount_disk(work, size)
    try:
        for entry in os.scandir(staged):
            shutil.move(entry.path, work / entry.name)
    except OSError as e:
        raise OSError(e.errno, f"the run's files do not fit its work dir of {size / 2**30:g} GiB (target.max_disk_gb): "
                      f"{e.strerror}", e.filename) from e
    rmtree(staged)


_PROBES: dict[tuple, Sandbox] = {}
_PROBE_LOCK = threading.Lock()


def resolve(mode: str, limits: Limits, uid: int = DEFAULT_UID, work_root: Path | None = None) -> Sandbox:
    """The sandbox to use for `mode` (auto | require | off). `auto` and `require` probe the bwrap on PATH once per
    process: it must start, import torch inside, and have no network. `require` raises SandboxUnavailable on failure."""
    if mode == "off":
        return Sandbox("none", limits=limits, note="sandbox disabled by config (target.sandbox: off)")
    exe = shutil.which("bwrap")
    key = (exe, uid, limits)
    with _PROBE_LOCK:
        if key not in _PROBES:
            _PROBES[key] = _probe(exe, limits, uid, work_root)
        box = _PROBES[key]
    if box.kind == "none" and mode == "require":
        raise SandboxUnavailable(f"target.sandbox is 'require' but the sandbox cannot start: {box.note}")
    return box


def _probe(exe: str | None, limits: Limits, uid: int, work_root: Path | None) -> Sandbox:
    if exe is None:
        return Sandbox("none", limits=limits, note="bubblewrap (bwrap) is not installed; install it (apt-get install bubblewrap)")
    drop = (uid, uid) if os.geteuid() == 0 else None
    box = Sandbox("bwrap", bwrap=exe, drop_to=drop, limits=limits)
    # torch is found, not imported: the import costs seconds in every runner process, and a torch that cannot
    # load inside the sandbox fails the first run loudly anyway
    check = ("import importlib.util, socket\n"
             "assert importlib.util.find_spec('torch'), 'torch is not importable inside the sandbox'\n"
             "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    print('NETWORK')\n"
             "except OSError:\n    print('SANDBOX-OK')\n")
    with OwnedTempDir(prefix="arbot-probe-", dir=work_root) as tmp:
        os.chmod(tmp, 0o711)
        work = Path(tmp) / "work"
        work.mkdir()
        box.prepare(work)
        try:
            proc = subprocess.run(box.command([sys.executable, "-c", check], work, work), env=scrubbed_env(work, 1),
                                  capture_output=True, text=True, timeout=120, preexec_fn=limits.apply)
        except (OSError, subprocess.TimeoutExpired) as e:
            return Sandbox("none", limits=limits, note=f"bwrap could not start: {e}")
    if "SANDBOX-OK" not in proc.stdout:
        tail = (proc.stderr or proc.stdout).strip()[-600:]
        return Sandbox("none", limits=limits, note=f"bwrap failed its probe (exit {proc.returncode}): {tail}")
    return box

"""The training sandbox and the runner's own defences, without training (fast)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import box as runbox
from runner import sandbox as sb
from runner.job import crash_reason, take_file
from runner.process import ProcessOutcome, run_untrusted, scrubbed_env

from .conftest import ROOT


@pytest.fixture(scope="module")
def box():
    b = sb.resolve("auto", sb.Limits(memory_bytes=2 << 30, max_processes=128))
    if b.kind != "bwrap":
        pytest.skip(f"bubblewrap cannot start here: {b.note}")
    return b


def run_in(box, tmp_path: Path, code: str, env: dict | None = None, deadline: float = 30) -> ProcessOutcome:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    box.prepare(work)
    env = env or scrubbed_env(work, 1)
    return run_untrusted(box.wrap([sys.executable, "-c", code], work, work), cwd=work, env=env,
                         deadline_seconds=deadline, limits=box.limits)


def test_command_mounts_only_system_python_and_work(tmp_path):
    box = sb.Sandbox("bwrap", bwrap="bwrap", drop_to=(65534, 65534))
    cmd = box.command([sys.executable, "train.py"], tmp_path / "work", tmp_path / "work")
    text = " ".join(cmd)
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session", "--remount-ro /"):
        assert flag in text
    mounted = [cmd[i + 2] for i, a in enumerate(cmd) if a in ("--bind", "--ro-bind", "--dev-bind")]
    writable = [cmd[i + 2] for i, a in enumerate(cmd) if a == "--bind"]
    assert writable == [str(Path(os.path.realpath(tmp_path / "work")))]
    # never the repository, the data cache or home directories
    cache = os.environ["ARBOT_CACHE"]
    for m in mounted:
        assert not (str(ROOT) == m or str(ROOT).startswith(m + "/") and m not in sb.SYSTEM_DIRS), m
        assert not cache.startswith(m + "/") or m in sb.SYSTEM_DIRS, m
        assert m not in ("/", "/home", "/root", "/tmp")


def test_sandbox_hides_the_host_and_has_no_network(box, tmp_path):
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "val.bin").write_bytes(b"held out")
    code = f"""
import os, socket
print("uid", os.getuid())
for p in [{str(secret_dir / 'val.bin')!r}, {os.environ['ARBOT_CACHE']!r}, {str(ROOT / 'evaluator')!r}, "/home"]:
    print("visible" if os.path.exists(p) and os.listdir(p if os.path.isdir(p) else os.path.dirname(p)) else "hidden", p)
print("root holds", sorted(os.listdir("/root")) if os.path.isdir("/root") else [])
try:
    open("/etc/shadow").read(); print("visible /etc/shadow")
except OSError:
    pass
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2); print("network open")
except OSError as e:
    print("network closed", e.errno)
open("written", "w").write("ok")
try:
    open("/usr/evil", "w")
except OSError:
    print("system read-only")
print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
"""
    out = run_in(box, tmp_path, code)
    assert out.returncode == 0, out.log_tail
    log = out.log_tail
    assert "visible" not in log, log
    # /root exists only as the way to the Python installation (if that lives there)
    allowed = {r.parts[2] for r in sb.python_roots() if len(r.parts) > 2 and r.parts[1] == "root"}
    assert set(eval(log.split("root holds ")[1].splitlines()[0])) <= allowed
    assert "network closed" in log and "system read-only" in log
    assert (tmp_path / "work" / "written").read_text() == "ok"
    if os.geteuid() == 0:
        assert "uid 65534" in log
    pids = eval(log.split("pids ")[1].splitlines()[0])
    assert max(pids) < 10  # its own pid namespace: no host processes


def test_environment_is_scrubbed(box, tmp_path, monkeypatch):
    monkeypatch.setenv("ARBOT_FAKE_SECRET", "hunter2-do-not-leak")
    code = "import os, glob\nprint(dict(os.environ))\nfor p in glob.glob('/proc/*/environ'):\n    try:\n        print(open(p).read())\n    except OSError as e:\n        print(p, e)"
    out = run_in(box, tmp_path, code, env=scrubbed_env(tmp_path / "work", 1))
    assert out.returncode == 0, out.log_tail
    assert "hunter2" not in out.log_tail and "HOME" in out.log_tail


def test_process_limit_stops_a_fork_bomb(box, tmp_path):
    """Its pids cgroup refuses the fork past the limit and names it at once; without one (no cgroups, not root)
    RLIMIT_NPROC refuses it and the wall clock kills the bomb."""
    code = "import os, time\nn = 0\nfor _ in range(100000):\n    try:\n        os.fork(); n += 1\n    except OSError:\n        time.sleep(0.01)\n"
    out = run_in(box, tmp_path, code, deadline=4)
    if isinstance(runbox.controller(runbox.PIDS), runbox.Controller):
        assert out.stopped.startswith("pids_limit:") and not out.timed_out, out
    else:
        assert out.timed_out
    if os.geteuid() == 0:  # nothing of it survives the run (other runs on this machine may share the uid)
        leftover = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if "\nUid:\t65534\t" in (proc / "status").read_text() and \
                        os.readlink(proc / "cwd").startswith(str(tmp_path)):
                    leftover.append(proc.name)
            except OSError:
                pass
        assert leftover == []


def test_memory_limit(box, tmp_path):
    out = run_in(box, tmp_path, "x = bytearray(4 << 30)")
    assert out.returncode != 0 and "MemoryError" in out.log_tail
    assert "out of memory" in crash_reason(out, box.limits)


def test_require_refuses_when_bwrap_is_missing(monkeypatch):
    monkeypatch.setattr(sb.shutil, "which", lambda name: None)
    monkeypatch.setattr(sb, "_PROBES", {})
    with pytest.raises(sb.SandboxUnavailable, match="bubblewrap"):
        sb.resolve("require", sb.Limits())
    assert sb.resolve("auto", sb.Limits()).kind == "none"
    assert sb.resolve("off", sb.Limits()).kind == "none"


def test_take_file_refuses_symlinks_and_special_files(tmp_path):
    (tmp_path / "out").mkdir()
    os.symlink("/etc/hostname", tmp_path / "out" / "model.pt2")
    got, why = take_file(tmp_path / "out" / "model.pt2", tmp_path / "copy", 1 << 20)
    assert got is None and "symlink" in why and not (tmp_path / "copy").exists()
    os.mkfifo(tmp_path / "out" / "fifo")
    assert take_file(tmp_path / "out" / "fifo", tmp_path / "copy", 1 << 20)[0] is None
    (tmp_path / "out" / "big").write_bytes(b"x" * 100)
    assert "over the limit" in take_file(tmp_path / "out" / "big", tmp_path / "copy", 10)[1]
    os.symlink("/etc", tmp_path / "linked")
    assert "directory" in take_file(tmp_path / "linked" / "hostname", tmp_path / "copy", 1 << 20)[1]
    (tmp_path / "out" / "ok").write_bytes(b"model")
    assert take_file(tmp_path / "out" / "ok", tmp_path / "copy", 10)[0].read_bytes() == b"model"


def test_bwrap_is_installed_where_ci_runs():
    """CI (.ci/run) installs bubblewrap; elsewhere this only reports."""
    if os.environ.get("CI") and shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is not installed on this CI machine (apt-get install -y bubblewrap)")


def test_runner_with_sandbox_required_fails_as_a_setup_error(research_repo, monkeypatch):
    from bot.config import EvaluatorConfig, TargetConfig
    from runner.job import EvaluatorError, Runner

    from .conftest import tiny_config

    monkeypatch.setattr(sb.shutil, "which", lambda name: None)
    monkeypatch.setattr(sb, "_PROBES", {})
    target = TargetConfig(**{**tiny_config()["target"], "sandbox": "require"})
    runner = Runner(research_repo, target, EvaluatorConfig())
    with pytest.raises(EvaluatorError, match="sandbox is 'require'"):
        runner.run("HEAD", "HEAD")


# --- the scoring sandbox's command, the disk cap, the temporary directories ----------------------------------

def test_command_for_the_evaluator_binds_only_code_inbox_and_data_read_only(tmp_path):
    box = sb.Sandbox("bwrap", bwrap="bwrap", drop_to=(65534, 65534)).with_uid(65533, sb.Limits(max_file_bytes=1 << 20))
    assert box.drop_to == (65533, 65533) and box.limits.max_file_bytes == 1 << 20
    code, inbox, data = tmp_path / "evaluator", tmp_path / "inbox", tmp_path / "cache" / "split"
    cmd = box.command([sys.executable, "-m", "evaluator", "serve"], None, tmp_path, ro=[code, inbox, data],
                      tmpfs=[(tmp_path / "scratch", 1 << 20)])
    assert "--bind" not in cmd  # nothing of the host is writable
    ro = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--ro-bind"]
    assert [p for p in ro if p.startswith(str(tmp_path))] == [str(Path(os.path.realpath(p))) for p in (code, inbox, data)]
    i = cmd.index("--tmpfs")
    assert cmd[i + 1] == str(tmp_path / "scratch") and cmd[i - 2:i] == ["--size", str(1 << 20)]
    assert cmd[cmd.index("--") + 4:cmd.index("--") + 6] == ["-c", sb._DROP] and "65533" in cmd
    text = " ".join(cmd)
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session", "--remount-ro /"):
        assert flag in text


def test_disk_usage_counts_what_occupies_the_disk(tmp_path):
    from runner.limits import MIN_ENTRY_BYTES, disk_usage

    (tmp_path / "a").write_bytes(b"x" * (1 << 20))
    os.link(tmp_path / "a", tmp_path / "hardlink")  # the same blocks: counted once
    with open(tmp_path / "sparse", "wb") as f:  # 1 GiB apparent size, almost nothing on disk
        f.truncate(1 << 30)
    hidden = tmp_path / "d" / "hidden"
    hidden.mkdir(parents=True)
    (hidden / "b").write_bytes(b"y" * (1 << 20))
    for i in range(50):
        (tmp_path / "d" / f"empty{i}").touch()
    os.chmod(hidden, 0)  # a directory made unlistable is still measured
    usage = disk_usage(tmp_path)
    assert 2 << 20 <= usage.bytes < (2 << 20) + 60 * MIN_ENTRY_BYTES + (1 << 20) and usage.entries == 56
    assert not usage.unreadable


def test_over_the_disk_cap_names_it(tmp_path):
    from runner.job import over_disk_cap

    for i in range(8):
        (tmp_path / f"f{i}").write_bytes(b"z" * (1 << 20))
    assert over_disk_cap(tmp_path, 16 << 20) == ""
    why = over_disk_cap(tmp_path, 4 << 20)
    assert why.startswith("disk_cap:") and "over the cap" in why and "max_disk_gb" in why


def test_watch_stops_a_run_at_once(tmp_path):
    calls = []

    def watch():
        calls.append(time.monotonic())
        return "enough" if len(calls) >= 2 else ""

    start = time.monotonic()
    out = run_untrusted([sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path, env=scrubbed_env(tmp_path, 1),
                        deadline_seconds=30, watch=watch, watch_every=0.2)
    assert out.stopped == "enough" and not out.timed_out and out.killed_by == 9
    assert time.monotonic() - start < 5


def test_the_temporary_directories_of_a_dead_owner_are_swept_and_no_others(tmp_path):
    from runner import tempdirs

    code = ("import os, sys\nsys.path.insert(0, sys.argv[1])\nfrom runner.tempdirs import OwnedTempDir\n"
            "d = OwnedTempDir('arbot-run-', dir=sys.argv[2])\nprint(d.name, flush=True)\nos.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), str(tmp_path)], capture_output=True, text=True)
    dead = Path(proc.stdout.strip())
    assert proc.returncode == -9 and dead.is_dir()  # killed: nothing cleaned up
    live = tempdirs.OwnedTempDir("arbot-evaluator-", dir=tmp_path)
    stranger = tmp_path / "arbot-run-notours"  # no owner file: not known to be ours, or still being set up
    stranger.mkdir()
    assert tempdirs.sweep(tmp_path) == [str(dead)]
    assert not dead.exists() and Path(live.name).is_dir() and stranger.is_dir()
    live.cleanup()
    assert not Path(live.name).exists()


# --- where the sandbox is required -------------------------------------------------------------------------------

def without_bwrap(monkeypatch, tmp_path) -> None:
    """PATH holds git and nothing else: the runner finds no bwrap (it looks it up on PATH)."""
    (tmp_path / "bin").mkdir(parents=True)
    os.symlink(shutil.which("git"), tmp_path / "bin" / "git")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))


def test_the_probe_follows_path(box, monkeypatch, tmp_path):
    """A bwrap probed earlier in this process does not hide that PATH no longer has one."""
    assert sb.resolve("auto", box.limits).kind == "bwrap"
    without_bwrap(monkeypatch, tmp_path)
    assert sb.resolve("auto", box.limits).kind == "none"
    with pytest.raises(sb.SandboxUnavailable, match="not installed"):
        sb.resolve("require", box.limits)


def test_an_unset_sandbox_is_required_by_the_runner(research_repo, monkeypatch, tmp_path):
    from bot.config import EvaluatorConfig, TargetConfig
    from runner.job import Runner, SandboxError

    from .conftest import tiny_config

    assert TargetConfig().sandbox is None
    without_bwrap(monkeypatch, tmp_path / "path")
    runner = Runner(research_repo, TargetConfig(**tiny_config()["target"]), EvaluatorConfig())
    with pytest.raises(SandboxError, match="sandbox is 'require'.*set target.sandbox: auto"):
        runner.run("HEAD", "HEAD")


@pytest.mark.parametrize("configured, proposer, expected", [
    (None, None, "auto"),  # the local search demo
    ({"run": {"proposer": "search"}}, "llm", None),  # --proposer llm: required
    ({"run": {"proposer": "llm"}}, None, None),
    ({"run": {"proposer": {"llm": 0.5, "search": 0.5}}}, None, None),
    ({"run": {"proposer": {"llm": 0, "search": 1}}}, None, "auto"),
    ({"target": {"sandbox": "require"}}, None, "require"),  # explicit settings win
    ({"target": {"sandbox": "auto"}, "run": {"proposer": "llm"}}, None, "auto"),
    ({"target": {"sandbox": "off"}}, "search", "off"),
])
def test_auto_only_for_the_local_search_demo(configured, proposer, expected):
    from bot.config import Config, local_sandbox

    assert local_sandbox(Config.model_validate(configured or {}), proposer) == expected


def test_unsandboxed_runs_say_what_is_not_isolated(research_repo, monkeypatch, tmp_path, caplog):
    from bot.config import EvaluatorConfig, TargetConfig
    from runner.job import Runner

    without_bwrap(monkeypatch, tmp_path)
    Runner(research_repo, TargetConfig(sandbox="auto"), EvaluatorConfig()).sandbox()
    warning = " ".join(caplog.text.split())
    for what in ("WITHOUT a sandbox", "bubblewrap (bwrap) is not installed", "val and holdout", "the network",
                 "through /proc", "the evaluator loads the model in a process of that user"):
        assert what in warning, what


# --- the run's box: cgroups, the size-limited work dir, the worker's GPUs ----------------------------------------

def fake_driver(tmp_path: Path, minors_by_bus: dict[str, int]) -> tuple[Path, Path]:
    """A /dev and a /proc/driver/nvidia/gpus as the NVIDIA driver lays them out (no GPU on this machine)."""
    dev, proc = tmp_path / "dev", tmp_path / "gpus"
    dev.mkdir()
    for name in ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", *(f"nvidia{m}" for m in minors_by_bus.values())):
        (dev / name).touch()
    (dev / "dri").mkdir()
    for bus, minor in minors_by_bus.items():
        (proc / bus).mkdir(parents=True)
        (proc / bus / "information").write_text(f"Model: \t\t NVIDIA H100\nIRQ:   \t\t 42\nGPU UUID: \t GPU-{minor}aa\n"
                                                f"Device Minor: \t {minor}\nBus Location: \t {bus}\n")
    return dev, proc


def test_a_workers_sandbox_gets_only_its_gpus_nodes(tmp_path):
    from runner import gpus

    # minors need not follow the bus order nvidia-smi (and so CUDA_VISIBLE_DEVICES' indices) numbers them by
    dev, proc = fake_driver(tmp_path, {"0000:c1:00.0": 0, "0000:41:00.0": 3, "0000:81:00.0": 1})
    control = [str(dev / n) for n in ("nvidia-uvm", "nvidia-uvm-tools", "nvidiactl")]
    assert [g.minor for g in gpus.nvidia_gpus(proc)] == [3, 1, 0]
    assert gpus.device_nodes("1", dev, proc) == sorted([str(dev / "nvidia1"), *control])
    assert gpus.device_nodes("0,2", dev, proc) == sorted([str(dev / "nvidia0"), str(dev / "nvidia3"), *control])
    assert gpus.device_nodes("GPU-0aa", dev, proc) == sorted([str(dev / "nvidia0"), *control])
    everything = sorted([str(dev / "dri"), *(str(p) for p in dev.glob("nvidia*"))])
    assert gpus.device_nodes(None, dev, proc) == everything  # no share: the runner's GPUs, as before
    assert gpus.device_nodes("7", dev, proc) == everything  # a name the driver does not list: not guessed at
    # inside the sandbox CUDA numbers only the GPUs it can open: the selection goes in as UUIDs
    assert gpus.visible_devices("1,2", proc) == "GPU-1aa,GPU-0aa"
    assert gpus.visible_devices("1", tmp_path / "no-driver") == "1"


def test_the_sandbox_binds_the_devices_its_limits_name(tmp_path, monkeypatch):
    dev, proc = fake_driver(tmp_path, {"0000:41:00.0": 0, "0000:81:00.0": 1})
    monkeypatch.setattr(sb, "device_nodes", lambda selection: __import__("runner.gpus").gpus.device_nodes(selection, dev, proc))
    cmd = sb.Sandbox("bwrap", bwrap="bwrap", drop_to=(65534, 65534), limits=sb.Limits(gpus="1")).command(
        [sys.executable], tmp_path / "work", tmp_path / "work")
    bound = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--dev-bind"]
    assert str(dev / "nvidia1") in bound and str(dev / "nvidia0") not in bound and str(dev / "nvidiactl") in bound


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and mounts need a root runner (CI runs as root)")


@needs_root
def test_a_run_gets_its_own_cgroups_and_they_go_with_it(tmp_path):
    from runner.limits import Limits

    limits = Limits(memory_bytes=300 << 20, max_processes=40, cores=1, cpus=(0,))
    code = "print(open('/proc/self/cgroup').read())"
    out = run_untrusted([sys.executable, "-c", code], cwd=tmp_path, env=scrubbed_env(tmp_path, 1), deadline_seconds=30,
                        limits=limits)
    assert out.returncode == 0 and not out.stopped, out
    groups = {line.split(":")[1]: line.split(":")[2] for line in out.log_tail.splitlines() if line.count(":") >= 2}
    for name in (runbox.MEMORY, runbox.PIDS, runbox.CPU, runbox.CPUSET):
        ctrl = runbox.controller(name)
        assert isinstance(ctrl, runbox.Controller), ctrl
        assert os.path.basename(groups[name]).startswith(runbox.RUN_PREFIX), groups
        assert not list(ctrl.parent.glob(f"{runbox.RUN_PREFIX}{os.getpid()}-*"))  # removed after the run
    assert 0 < out.max_rss_gb < 0.3  # the cgroup's peak


@needs_root
def test_the_work_dir_is_a_filesystem_of_the_disk_cap_and_is_unmounted_with_its_tree(tmp_path):
    from runner import mounts
    from runner.tempdirs import OwnedTempDir

    box = sb.Sandbox("none", limits=sb.Limits(disk_bytes=8 << 20))
    with OwnedTempDir(prefix="arbot-run-", dir=tmp_path) as tmp:
        work = Path(tmp) / "work"
        (work / "out").mkdir(parents=True)
        (work / "train.bin").write_bytes(b"t" * 1000)
        box.prepare(work)
        assert mounts.disk_of(work / "out") == work and (work / "train.bin").read_bytes() == b"t" * 1000
        with pytest.raises(OSError, match="No space left"):
            (work / "big").write_bytes(b"x" * (9 << 20))
        st = os.statvfs(work)
        assert st.f_blocks * st.f_frsize == 8 << 20
    assert mounts.disk_of(work) is None and not Path(tmp).exists()

"""The training sandbox and the runner's own defences, without training (fast)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

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


def test_process_limit_stops_a_fork_bomb_and_the_wall_clock_kills_it(box, tmp_path):
    code = "import os, time\nn = 0\nfor _ in range(100000):\n    try:\n        os.fork(); n += 1\n    except OSError:\n        time.sleep(0.01)\n"
    out = run_in(box, tmp_path, code, deadline=4)
    assert out.timed_out
    if os.geteuid() == 0:  # nothing of the sandbox uid survives the run
        leftover = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                if "\nUid:\t65534\t" in status.read_text():
                    leftover.append(status.parent.name)
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

"""`arbot doctor` (bot/doctor.py): each check on a real repository, a real evaluator run as the runner runs it, the
real sandbox probe and torch, and GitHub mode against the fake GitHub (contract-checked): what it finds, its fix,
and the exit code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import git
import pytest
import yaml
from typer.testing import CliRunner

from bot.cli import app
from bot.config import Config
from bot.doctor import (FAIL, OK, WARN, TorchInfo, check_allowed_paths, check_champion, check_champion_runs,
                        check_devices, check_disk, check_threads,
                        check_evaluator, check_git, check_limits, check_sandbox, check_script, check_splits, check_uncommitted,
                        committed_files, diagnose, free_bytes, github_checks, probe_torch, read_config, uncommitted)
from bot.github.setup import run_setup
from bot.executors.pool import AUTO_MAX_CPU_WORKERS, SPARE_CORES, cores, shares, threads_per_worker
from runner.config import TargetConfig
from runner.process import scrubbed_env
from bot.init import Answers, apply, plan
from runner.job import Runner
from runner.protocol import PROTOCOL_VERSION
from tests.fake_github.serving import serving
from tests.test_github_forge import (APP_ID, FAST, INSTALLATION, REPO, TOKEN, app_fake, app_forge_for, fake,  # noqa: F401
                                     forge_for, local)
from tests.test_init import FILLED, TOY_SCRIPT

ACTOR = git.Actor("t", "t@example.com")
WORKFLOW = ".github/workflows/arbot-evaluate.yml"


def commit(repo: git.Repo, message: str) -> str:
    repo.git.add(A=True)
    return repo.index.commit(message, author=ACTOR, committer=ACTOR).hexsha


@pytest.fixture
def ready(tmp_path, monkeypatch) -> git.Repo:
    """A repository after `arbot init` for its toy training script in train/, the evaluator filled in, committed."""
    monkeypatch.setenv("ARBOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ARBOT_SPLIT_KEY", "a secret")
    root = tmp_path / "toy"
    (root / "train").mkdir(parents=True)
    (root / "train/train.py").write_text(TOY_SCRIPT)
    repo = git.Repo.init(root, initial_branch="main")
    commit(repo, "a toy training script")
    apply(root, plan(root, Answers(script="train/train.py", allowed_paths=["train/*.py"], budget_seconds=2,
                                   metric="loss", direction="minimize", device="cpu")))
    main = root / "evaluator/__main__.py"
    text = main.read_text()
    for skeleton, filled in FILLED.items():
        text = text.replace(skeleton, filled)
    main.write_text(text)
    commit(repo, "arbot init, the evaluator filled in")
    return repo


def root_of(repo: git.Repo) -> Path:
    return Path(repo.working_tree_dir)


def config_of(repo: git.Repo, **sections) -> Config:
    data = yaml.safe_load((root_of(repo) / "arbot.yml").read_text())
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return Config.model_validate(data)


def doctor(repo: git.Repo, *args: str):
    return CliRunner().invoke(app, ["doctor", "--repo", str(root_of(repo)), *args])


def said(output: str) -> str:
    return " ".join(output.split())  # rich wraps lines at the terminal's width


def evaluator_check(repo: git.Repo, main_py: str, tmp_path: Path, **sections):
    """check_evaluator on a commit whose evaluator/__main__.py is main_py."""
    (root_of(repo) / "evaluator/__main__.py").write_text(main_py)
    sha = commit(repo, "another evaluator")
    dest = tmp_path / "exported"
    dest.mkdir()
    return check_evaluator(repo, sha, committed_files(repo, sha), config_of(repo, **sections), dest), dest


# --- the whole run, through the command line ----------------------------------------------------------------
def test_a_ready_repository_passes_every_check_and_exits_0(ready):
    r = doctor(ready)
    assert r.exit_code == 0, r.output
    text = said(r.output)
    for line in ("ok git: git version", "ok arbot.yml:", "ok champion: no champion branch yet: the first `arbot run` "
                 "creates it from HEAD", "ok training script: train/train.py (runs get a copy of train/)",
                 "ok allowed paths: train/*.py", f"ok evaluator: evaluator/ of {ready.head.commit.hexsha[:7]} speaks "
                 f"protocol {PROTOCOL_VERSION}", "ok data splits: fingerprint toy-1",
                 "ok torch and CUDA: target.device and evaluator.device are cpu", "ok disk (work dirs):",
                 "ready for `arbot run`"):
        assert line in text, text
    assert "FAIL" not in text and "GitHub" not in text  # no github section: no GitHub checks


def test_a_blocking_check_exits_1_and_names_it(ready):
    (root_of(ready) / "arbot.yml").write_text("target:\n  script: train/train.py\n  budgett: 3\n")
    r = doctor(ready)
    assert r.exit_code == 1, r.output
    text = said(r.output)
    assert "FAIL arbot.yml:" in text and "target.budgett: unknown key" in text
    assert "the checks that need it did not run" in text
    assert "a run is blocked by 1 check(s): arbot.yml" in text and "Traceback" not in text


def test_an_invalid_config_stops_the_checks_that_need_it(ready):
    (root_of(ready) / "arbot.yml").write_text("target: [not, a, mapping\n")
    checks = list(diagnose(root_of(ready)))
    assert [c.name for c in checks] == ["git", "repository", "arbot.yml"]
    assert checks[-1].status == FAIL and "not valid YAML" in checks[-1].detail


def test_outside_a_repository_it_fails_with_the_fix(tmp_path):
    checks = list(diagnose(tmp_path))
    assert [c.name for c in checks] == ["git", "repository"]
    assert checks[-1].blocks and "is not inside a git repository" in checks[-1].detail
    assert "git init" in checks[-1].fix


# --- git --------------------------------------------------------------------------------------------------
def fake_git(tmp_path: Path, version: str) -> str:
    """A PATH whose git prints `version` (and nothing else)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(f"#!/bin/sh\necho '{version}'\n")
    (bin_dir / "git").chmod(0o755)
    return str(bin_dir)


def test_an_old_git_or_none_fails_with_the_version_needed(tmp_path, monkeypatch):
    assert check_git().status == OK
    monkeypatch.setenv("PATH", fake_git(tmp_path, "git version 2.30.1"))
    old = check_git()
    assert old.blocks and "git version 2.30.1" in old.detail and "merge-tree --write-tree" in old.detail
    assert old.fix == "upgrade git to 2.38 or later"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    missing = check_git()
    assert missing.blocks and "git does not run" in missing.detail and "apt-get install git" in missing.fix


# --- the champion and uncommitted changes -------------------------------------------------------------------
def test_a_dirty_champion_checked_out_fails(ready):
    root = root_of(ready)
    ready.git.branch("champion")
    ready.git.switch("champion")
    (root / "train/train.py").write_text(TOY_SCRIPT.replace("LR = 0.001", "LR = 0.01"))
    config = config_of(ready)
    check = check_champion(ready, config, uncommitted(ready))
    assert check.blocks
    assert check.detail == ("the current branch is champion, which arbot moves on every win; uncommitted changes on "
                            "it: train/train.py")
    assert check.fix == "commit or stash the changes, then check out another branch (git switch main) and run again"
    ready.git.switch("-f", "main")
    assert check_champion(ready, config, uncommitted(ready)).detail == \
        f"champion at {ready.commit('champion').hexsha[:7]}"


def test_a_champion_whose_runs_failed_is_a_warning_once_and_blocks_twice(ready):
    """A failed champion run may be the machine's (the next run makes another): a warning. Two are the champion's:
    every `arbot run` stops, and the fix says how to move the champion to a commit that trains."""
    from bot.core.records import ChampionRecord, RunResult
    from bot.forges.local import LocalForge

    ready.git.branch("champion")
    sha = ready.commit("champion").hexsha
    forge, config = LocalForge(ready), config_of(ready)
    assert check_champion_runs(ready, config, sha).status == OK
    failed = [RunResult(status=s, commit=sha, champion=sha, seed=i, reason=f"run {i} failed")
              for i, s in enumerate(("timeout", "crash"))]
    forge.save(ChampionRecord(commit=sha, runs=failed[:1]))
    once = check_champion_runs(ready, config, sha)
    assert once.status == WARN and "1 of the champion's runs failed, the last (timeout): run 0 failed" in once.detail
    forge.save(ChampionRecord(commit=sha, runs=failed))
    twice = check_champion_runs(ready, config, sha)
    assert twice.blocks and "2 of the champion's runs failed, the last (crash): run 1 failed" in twice.detail
    assert "`arbot adopt <branch>`" in twice.fix
    r = doctor(ready)
    assert r.exit_code == 1 and "FAIL champion runs:" in said(r.output), r.output


def test_uncommitted_training_code_or_evaluator_is_a_warning_naming_them(ready):
    root = root_of(ready)
    config = config_of(ready)
    assert check_uncommitted(config, uncommitted(ready), False).status == OK
    (root / "train/train.py").write_text(TOY_SCRIPT + "# tuned\n")
    (root / "train/model.py").write_text("# new\n")  # untracked, under the allowed train/*.py
    (root / "evaluator/extra.py").write_text("# new\n")
    (root / "notes.txt").write_text("not used by any run\n")
    check = check_uncommitted(config, uncommitted(ready), False)
    assert check.status == WARN
    assert check.detail == ("evaluator/extra.py, train/model.py, train/train.py: runs use the committed files of HEAD, "
                            "from which the first run creates champion, not these")
    assert check.fix == "commit them (or discard them) before `arbot run`"
    moved = check_uncommitted(config, uncommitted(ready), True)  # champion exists: it is what runs use
    assert moved.status == WARN and "runs use the committed files of the champion branch" in moved.detail
    assert moved.fix == ("commit them (while champion has no merged win, the next run takes them up; after one, "
                         "`arbot adopt` brings them in), or discard them")


# --- the training script and the allowed paths --------------------------------------------------------------
def test_a_missing_or_uncommitted_script_fails_with_the_fix(ready):
    root = root_of(ready)
    sha = ready.head.commit.hexsha
    files = committed_files(ready, sha)
    assert check_script(config_of(ready), files, root, sha).status == OK
    missing = check_script(config_of(ready, target={"script": "src/train.py"}), files, root, sha)
    assert missing.blocks and missing.detail == f"target.script src/train.py does not exist (commit {sha[:7]})"
    assert missing.fix == "set target.script in arbot.yml to your training script, relative to the repository root"
    (root / "train/new.py").write_text(TOY_SCRIPT)
    loose = check_script(config_of(ready, target={"script": "train/new.py"}), files, root, sha)
    assert loose.blocks and "is in the working tree but not committed" in loose.detail and loose.fix == "commit it"


def test_a_script_at_the_root_is_a_warning(ready):
    root = root_of(ready)
    shutil.copy(root / "train/train.py", root / "train.py")
    sha = commit(ready, "a script at the root")
    check = check_script(config_of(ready, target={"script": "train.py"}), committed_files(ready, sha), root, sha)
    assert check.status == WARN and "every run gets a copy of the whole repository, evaluator/ included" in check.detail


def test_allowed_paths_that_open_the_evaluator_or_the_config_fail(ready):
    files = committed_files(ready, ready.head.commit.hexsha)
    assert check_allowed_paths(config_of(ready), files).status == OK
    wide = check_allowed_paths(config_of(ready, target={"allowed_paths": ["*.py", "arbot.yml"]}), files)
    assert wide.blocks
    assert ("lets a proposal change arbot.yml, evaluator/__init__.py, evaluator/__main__.py: a merged win would "
            "change how every later experiment is judged") in wide.detail
    assert "train/*.py, not *.py" in wide.fix
    none = check_allowed_paths(config_of(ready, target={"allowed_paths": ["src/*.py"]}), files)
    assert none.status == WARN and none.detail == "no committed file matches target.allowed_paths (src/*.py)"


# --- the evaluator and the splits -----------------------------------------------------------------------------
def test_no_evaluator_fails_pointing_at_init(ready, tmp_path):
    root = root_of(ready)
    shutil.rmtree(root / "evaluator")
    sha = commit(ready, "no evaluator")
    check = check_evaluator(ready, sha, committed_files(ready, sha), config_of(ready), tmp_path)
    assert check.blocks and check.detail == f"commit {sha[:7]} has no evaluator/__main__.py"
    assert "`arbot init` writes a skeleton" in check.fix


def test_a_program_that_is_not_an_evaluator_fails(ready, tmp_path):
    check, _ = evaluator_check(ready, "print('hello')\n", tmp_path)
    assert check.blocks
    assert "does not answer the protocol command (`python -m evaluator protocol` exited 0: hello): it is not an " \
           "arbot evaluator" in check.detail
    assert check.fix == "fix evaluator/ and commit it (docs/evaluator.md)"


def test_an_evaluator_of_another_protocol_version_fails(ready, tmp_path):
    check, _ = evaluator_check(ready, "import json\nprint(json.dumps({'protocol': 2}))\n", tmp_path)
    assert check.blocks and f"speaks protocol 2, this runner speaks {PROTOCOL_VERSION}: upgrade arbot" in check.detail


def test_an_evaluator_of_another_metric_fails(ready, tmp_path):
    text = (root_of(ready) / "evaluator/__main__.py").read_text()
    check, _ = evaluator_check(ready, text, tmp_path, evaluator={"metric": "accuracy", "direction": "maximize"})
    assert check.blocks and check.detail == ("the evaluator reports loss (minimize), but arbot.yml says "
                                             "evaluator.metric: accuracy, evaluator.direction: maximize: make them agree")


def test_the_splits_prepare_and_match_their_fingerprint(ready, tmp_path):
    text = (root_of(ready) / "evaluator/__main__.py").read_text()
    check, dest = evaluator_check(ready, text, tmp_path)
    assert check.status == OK
    splits = check_splits(dest, config_of(ready), tmp_path / "cache")
    assert splits.check.status == OK and splits.check.detail.startswith("fingerprint toy-1 (0.0 MiB in ")
    assert splits.bytes == len("train") + len("val") + len("holdout")


def test_splits_whose_fingerprint_differs_from_prepares_fail(ready, tmp_path):
    text = (root_of(ready) / "evaluator/__main__.py").read_text()
    # each process names other splits: prepare's fingerprint is not the one the fingerprint command answers
    check, dest = evaluator_check(ready, text.replace('"fingerprint": "toy-1"', '"fingerprint": str(os.getpid())'),
                                  tmp_path)
    assert check.status == OK
    splits = check_splits(dest, config_of(ready), tmp_path / "cache")
    assert splits.check.blocks and "but the evaluator's fingerprint command answers fingerprint" in splits.check.detail
    assert "prepare and fingerprint must name the same splits" in splits.check.fix


def test_no_split_key_is_a_warning(ready, tmp_path, monkeypatch):
    monkeypatch.delenv("ARBOT_SPLIT_KEY")
    text = (root_of(ready) / "evaluator/__main__.py").read_text()
    _, dest = evaluator_check(ready, text, tmp_path)
    check = check_splits(dest, config_of(ready), tmp_path / "cache").check
    assert check.status == WARN and "no split key ($ARBOT_SPLIT_KEY is unset)" in check.detail
    assert check.fix == "set $ARBOT_SPLIT_KEY (or evaluator.split_key_file) to a secret on the runner"


# --- the machine ------------------------------------------------------------------------------------------
def test_no_bwrap_on_path_fails_where_the_sandbox_is_required(ready, tmp_path, monkeypatch):
    if shutil.which("bwrap"):
        assert check_sandbox(config_of(ready, target={"sandbox": "require"}),
                             Runner(ready, config_of(ready).target, config_of(ready).evaluator)).status == OK
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    def check(**sections):
        config = config_of(ready, **sections)
        return check_sandbox(config, Runner(ready, config.target, config.evaluator))

    required = check(target={"sandbox": "require"})
    assert required.blocks and "bubblewrap (bwrap) is not installed" in required.detail
    assert "apt-get install bubblewrap" in required.fix and "target.sandbox: auto" in required.fix
    assert check(github={"repo": REPO}).blocks  # unset means require in GitHub mode
    demo = check()  # unset, the local search demo: auto
    assert demo.status == WARN and demo.detail.startswith("runs go unsandboxed: bubblewrap (bwrap) is not installed")
    assert check(target={"sandbox": "off"}).status == WARN


LIMITS = ["limit: memory", "limit: processes and threads", "limit: cpu cores", "limit: disk", "limit: devices"]


def test_the_limits_say_what_enforces_each_on_this_machine(ready):
    """Root with cgroups (this machine and CI): each limit of a run is the kernel's, per run."""
    checks = {c.name: c for c in check_limits(config_of(ready, target={"threads": 1}), sandboxed=True)}
    assert list(checks) == LIMITS
    assert checks["limit: devices"].status == OK and "only the worker's GPUs" in checks["limit: devices"].detail
    if os.geteuid() != 0:
        assert all(checks[n].status == WARN and "not root" in checks[n].detail for n in LIMITS[:3])
        return
    assert all(c.status == OK for c in checks.values()), checks
    assert "memory cgroup" in checks["limit: memory"].detail and "memfd" in checks["limit: memory"].detail
    assert "pids cgroup" in checks["limit: processes and threads"].detail
    assert "cpu cgroup" in checks["limit: cpu cores"].detail and "1 cores' worth" in checks["limit: cpu cores"].detail
    pinned = {c.name: c for c in check_limits(config_of(ready, target={"threads": 1, "cpus": "1"}), sandboxed=True)}
    assert "cpuset cgroup" in pinned["limit: cpu cores"].detail and "cores 1" in pinned["limit: cpu cores"].detail
    assert "tmpfs" in checks["limit: disk"].detail
    every = {c.name: c for c in check_limits(config_of(ready, target={"threads": 0}, run={"workers": 1}), sandboxed=True)}
    assert f"{max(1, cores() - SPARE_CORES)} cores' worth" in every["limit: cpu cores"].detail  # 0: a quota too


def test_threads_are_the_cores_split_between_the_workers_and_oversubscription_warns(ready, monkeypatch):
    """target.threads: 0 never asks for more threads than cores, and leaves one to the rest of the machine (the
    issue: two threads per run on two busy cores, 10-20x slower steps); threads set by hand past the cores is a
    warning naming the fix."""
    for workers in (1, 2, 3):
        config = config_of(ready, target={"threads": 0}, run={"workers": workers})
        [(share, _), *_] = shares(config.target, workers, [])
        assert share.threads == threads_per_worker(config.target, workers) >= 1
        assert check_threads(config).status == (OK if workers <= cores() else WARN)
    real = os.sched_getaffinity
    for have, workers, each in ((2, 1, 1), (2, 2, 1), (4, 1, 3), (4, 2, 2), (8, 4, 2), (16, 4, 4), (16, 1, 15)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, have=have: set(range(have)))
        assert threads_per_worker(TargetConfig(), workers) == each
    monkeypatch.setattr(os, "sched_getaffinity", real)
    over = check_threads(config_of(ready, target={"threads": cores()}, run={"workers": 2}))
    assert over.status == WARN and f"2 worker(s) x {cores()} thread(s) on {cores()} core(s)" in over.detail
    assert "set target.threads: 0" in over.fix
    env = scrubbed_env(root_of(ready), shares(config_of(ready).target, 1, [])[0][0].threads)
    assert env["OMP_NUM_THREADS"] == str(max(1, cores() - SPARE_CORES))  # one worker: told, not left to guess


UNPRIVILEGED = """
import json, os, sys
from bot.config import Config
from bot.doctor import check_limits
from bot.executors.pool import refuse_unboxed, worker_count
config = Config.model_validate(json.loads(sys.argv[1]))
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # imported first: this Python lives under /root
out = {"checks": [[c.name, c.status, c.detail, c.fix] for c in check_limits(config, sandboxed=True)],
       "auto": worker_count("auto", config.target, gpus=[])}
try:
    refuse_unboxed(config.target, 2)
    out["refused"] = ""
except ValueError as e:
    out["refused"] = str(e)
print(json.dumps(out))
"""


def test_a_runner_that_cannot_enforce_the_limits_says_so_and_refuses_parallel_workers(ready):
    """A real unprivileged runner process (uid 65534): no cgroup of its own, no mount, one uid for every run."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process that is not (CI runs as root)")

    def unprivileged(**target):
        data = yaml.safe_load((root_of(ready) / "arbot.yml").read_text())
        data["run"] = {"workers": 2}
        data["target"].update(target)
        proc = subprocess.run([sys.executable, "-c", UNPRIVILEGED, json.dumps(data)], capture_output=True, text=True,
                              cwd=Path(__file__).parent.parent)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    out = unprivileged(threads=1)
    checks = {name: (status, detail, fix) for name, status, detail, fix in out["checks"]}
    for name in LIMITS[:3]:
        status, detail, fix = checks[name]
        assert status == FAIL and detail.startswith("not enforced:") and "not root" in detail, checks[name]
        assert "refuses" in detail and "allow_unboxed_workers" in fix and "run.workers: 1" in fix
    assert checks["limit: disk"][0] == WARN and "cannot mount" in checks["limit: disk"][1]
    assert "memory: only RLIMIT_DATA" in out["refused"] and "processes and threads" in out["refused"]
    assert "target.allow_unboxed_workers: true" in out["refused"]
    assert out["auto"] == 1  # run.workers: auto asks for one worker here, never for what would be refused
    allowed = unprivileged(threads=1, allow_unboxed_workers=True)
    assert allowed["refused"] == "" and {s for _, s, _, _ in allowed["checks"]} == {OK, WARN}
    assert allowed["auto"] == min(cores(), AUTO_MAX_CPU_WORKERS)


def test_cuda_asked_for_needs_a_cuda_build_that_sees_a_gpu(ready):
    cuda = config_of(ready, target={"device": "cuda"})
    cpu_build = check_devices(cuda, TorchInfo(version="2.5.1+cpu"))
    assert cpu_build.blocks and cpu_build.detail == "target.device ask for cuda, but torch 2.5.1+cpu (a CPU build)"
    assert "install a CUDA build of torch" in cpu_build.fix
    no_gpu = check_devices(cuda, TorchInfo(version="2.5.1+cu124", cuda="12.4"))
    assert no_gpu.blocks and "sees no GPU" in no_gpu.detail and "nvidia-smi" in no_gpu.fix
    gpu = TorchInfo(version="2.5.1+cu124", cuda="12.4", gpus=["NVIDIA H200"])
    assert check_devices(cuda, gpu).status == OK
    auto = check_devices(config_of(ready, target={"device": "auto"}), gpu)
    assert auto.detail == "torch 2.5.1+cu124 (CUDA 12.4); target.device: auto uses cuda (1 x NVIDIA H200)"
    on_cpu = check_devices(config_of(ready, target={"device": "auto"}), TorchInfo(version="2.5.1+cpu"))
    assert on_cpu.status == OK and on_cpu.detail.endswith("target.device: auto uses the CPU")
    broken = check_devices(config_of(ready, evaluator={"device": "cuda"}), TorchInfo(error="ImportError: no torch"))
    assert broken.blocks and "evaluator.device ask for cuda, but torch does not import: ImportError" in broken.detail


def test_the_torch_probe_reports_this_machines_torch():
    info = probe_torch()  # torch is imported in a child process only: seconds, once
    assert info.error == "" and info.version == version("torch")
    assert info.cuda is None or info.cuda[0].isdigit()
    assert all(isinstance(name, str) and name for name in info.gpus)


def test_too_little_free_disk_for_a_run_fails(ready, tmp_path):
    _, free = free_bytes(Path(tempfile.gettempdir()))
    gib = free / 2**30
    work, cache = check_disk(config_of(ready), tmp_path / "cache" / "not-yet", 1)
    assert work.status == OK and cache.status == OK and cache.detail.endswith(f"free in {tmp_path}")
    over = check_disk(config_of(ready, target={"max_disk_gb": gib * 2}), tmp_path, 1)[0]
    assert over.blocks and "less than one run may use (target.max_disk_gb:" in over.detail
    assert "point TMPDIR at a larger disk" in over.fix
    workers = check_disk(config_of(ready, target={"max_disk_gb": gib * 0.6}, run={"workers": 2}), tmp_path, 1)[0]
    assert workers.status == WARN and "less than 2 runs at once may use" in workers.detail
    assert check_disk(config_of(ready), tmp_path, free * 2)[1].status == WARN  # the splits would not fit again


# --- GitHub mode --------------------------------------------------------------------------------------------
def pat_config(url: str, **auth) -> Config:
    return Config.model_validate({"github": {"repo": REPO, "base_url": f"{url}/api/v3", "auth": auth}})


def app_config(url: str, tmp_path: Path, installation: int = INSTALLATION) -> Config:
    return Config.model_validate({"github": {"repo": REPO, "base_url": f"{url}/api/v3", "auth": {
        "app_id": APP_ID, "private_key_path": str(tmp_path / "app.pem"), "installation_id": installation}}})


def github(config: Config, environ=None, files=(WORKFLOW,)) -> dict:
    checks = list(github_checks(config, list(files), {} if environ is None else environ, FAST))
    names = [c.name for c in checks]
    assert len(names) == len(set(names)), names
    return {c.name: c for c in checks}


def writes(fake) -> list[tuple[str, str]]:
    """What the checks asked GitHub to change (an installation token is not a change)."""
    return [(m, p) for m, p, _ in fake.requests if m != "GET" and not p.endswith("/access_tokens")]


def test_github_with_a_pat_after_setup_passes_and_changes_nothing(fake, local):
    with serving(fake.asgi) as url:
        run_setup(forge_for(url, fake))
        before = len(writes(fake))
        checks = github(pat_config(url), {"ARBOT_GITHUB_TOKEN": TOKEN})
    assert all(c.status == OK for c in checks.values()), checks
    assert checks["github access"].detail.startswith(f"the token's user may push to {REPO} (a fine-grained token")
    assert checks["github protection"].detail == ("champion requires arbot/verdict from any source, up to date, "
                                                  "code-owner reviews")
    assert len(writes(fake)) == before


def test_github_without_setup_fails_naming_arbot_setup(fake, local):
    with serving(fake.asgi) as url:
        checks = github(pat_config(url), {"ARBOT_GITHUB_TOKEN": TOKEN}, files=())
        assert checks["github workflow"].blocks and "`arbot init` writes it" in checks["github workflow"].fix
        protection = checks["github protection"]
        assert protection.blocks and protection.detail == f"no champion branch on {REPO}"
        assert protection.fix == "run `arbot setup`"
        assert checks["github auto-merge"].status == OK  # optional: the bot merges wins itself
        assert checks["github default branch"].blocks and checks["github tag ruleset"].blocks
        forge_for(url, fake).ensure_champion()
        protection = github(pat_config(url), {"ARBOT_GITHUB_TOKEN": TOKEN})["github protection"]
    assert protection.blocks and protection.detail == (
        "champion is not protected as the bot needs: not yet requires arbot/verdict from any source (a PAT cannot pin "
        "an app); branches must be up to date; code owners must review changes to their paths")
    assert writes(fake) == [("POST", f"/repos/{REPO}/git/refs")]  # ensure_champion's, none of the doctor's


def test_github_with_a_token_that_may_not_push_fails(fake, local):
    fake.collaborators["arbot-user"] = "read"
    with serving(fake.asgi) as url:
        checks = github(pat_config(url), {"ARBOT_GITHUB_TOKEN": TOKEN})
    access = checks["github access"]
    assert access.blocks and access.detail.startswith(f"the token's user may not push to {REPO}")
    assert "github protection" not in checks  # nothing more can be read


def test_github_with_a_bad_or_no_token_fails(fake, local):
    with serving(fake.asgi) as url:
        refused = github(pat_config(url), {"ARBOT_GITHUB_TOKEN": "ghp_wrong"})["github access"]
        none = github(pat_config(url), {})["github credentials"]
    assert refused.blocks and refused.detail == "the credentials were refused (GitHub answered 401: Bad credentials)"
    assert refused.fix == "set ARBOT_GITHUB_TOKEN to a valid token"
    assert none.blocks and "no GitHub credentials: set ARBOT_GITHUB_TOKEN" in none.detail


def test_github_app_installed_and_set_up_passes(app_fake, tmp_path):
    fake = app_fake()
    with serving(fake.asgi) as url:
        run_setup(app_forge_for(url, fake, tmp_path))
        checks = github(app_config(url, tmp_path))
    assert all(c.status == OK for c in checks.values()), checks
    assert checks["github app"].detail == (
        f"arbot-app (app {APP_ID}) installed on {REPO} (installation {INSTALLATION}) with contents: write, "
        "pull_requests: write, checks: write, issues: write, actions: write, metadata: read")
    assert checks["github protection"].detail.startswith("champion requires arbot/verdict from the app arbot-app")


def test_github_app_without_a_permission_fails_naming_it(app_fake, tmp_path):
    fake = app_fake()
    fake.app_permissions["actions"] = "read"
    with serving(fake.asgi) as url:
        checks = github(app_config(url, tmp_path))
    app_check = checks["github app"]
    assert app_check.blocks and app_check.detail == "arbot-app's installation lacks permissions actions: write"
    assert "accept them on the installation" in app_check.fix
    assert list(checks) == ["github workflow", "github app"]


def test_github_app_not_installed_or_another_installation_fails(app_fake, tmp_path):
    fake = app_fake()
    with serving(fake.asgi) as url:
        other = github(app_config(url, tmp_path, installation=999))["github app"]
        fake.installed = False
        missing = github(app_config(url, tmp_path))["github app"]
    assert other.blocks and other.fix == f"set github.auth.installation_id: {INSTALLATION}"
    assert missing.blocks and missing.detail == f"the App arbot-app is not installed on {REPO}"


def test_github_app_without_the_events_is_a_warning(app_fake, tmp_path):
    fake = app_fake()
    fake.app_events.remove("workflow_run")
    with serving(fake.asgi) as url:
        run_setup(app_forge_for(url, fake, tmp_path))
        check = github(app_config(url, tmp_path))["github app"]
    assert check.status == WARN and "not subscribed to workflow_run" in check.detail


def test_a_github_config_adds_the_github_checks_to_the_command(ready, fake, monkeypatch):
    with serving(fake.asgi) as url:
        config = yaml.safe_load((root_of(ready) / "arbot.yml").read_text())
        config["github"] = {"repo": REPO, "base_url": f"{url}/api/v3"}
        config["target"]["sandbox"] = "auto"  # this test is about GitHub, not the sandbox
        (root_of(ready) / "arbot.yml").write_text(yaml.safe_dump(config))
        monkeypatch.setenv("ARBOT_GITHUB_TOKEN", TOKEN)
        checks = {c.name: c for c in diagnose(root_of(ready), github_kwargs=FAST)}
    assert checks["github workflow"].status == OK  # arbot init wrote it
    assert checks["github protection"].blocks
    assert read_config(root_of(ready), None)[0].status == OK


def test_github_unreachable_fails_naming_the_url(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    checks = github(pat_config(url), {"ARBOT_GITHUB_TOKEN": TOKEN})
    assert checks["github"].blocks and checks["github"].detail.startswith(f"cannot reach {url}/api/v3: ")
    assert checks["github"].fix == "check github.base_url and the network"

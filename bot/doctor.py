"""`arbot doctor`: is this repository, and this machine as a runner, ready for `arbot run`? One check per line,
each a `Check` with its status (ok, warn, FAIL) and, when not ok, the fix. A FAIL blocks a run; a warning does not.

The checks run in order and stop early where every later one would only repeat a failure (no git, no repository,
an invalid arbot.yml, no GitHub access). What is checked is what a run uses: the committed files of the commit the
champion is (or will be created from), the evaluator exported from it and run as the runner runs it, the sandbox
probe, the torch build and the free disk of this machine, and in GitHub mode what `arbot setup` sets up.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

import git
from github import GithubException, GithubIntegration
from requests.exceptions import RequestException

from bot.config import CONFIG_FILE, Config, ConfigError, GitHubAuthConfig, load_config, local_sandbox
from bot.core.lifecycle import CHAMPION_FAILURES
from bot.core.records import val_runs
from bot.executors.pool import SPARE_CORES, cores, shares, threads_per_worker, unboxed, visible_gpus, worker_count
from bot import retention
from bot.forges.local import LocalForge
from bot.signing import KEY_ENV, KEYS_FILE, SigningError, default_key_path
from bot.github.forge import EVALUATE_WORKFLOW, VERDICT_CHECK, GitHubForge, GitHubForgeError, connect
from bot.github.setup import GUARDED
from runner.box import enforcement
from runner.job import EvaluatorError, Runner, export_tree
from runner.process import scrubbed_env
from runner.protocol import ProtocolError, check_metric, handshake, last_json_line
from runner.sandbox import resolve
from runner.tempdirs import OwnedTempDir

OK, WARN, FAIL = "ok", "warn", "FAIL"
MIN_GIT = (2, 38)  # `git merge-tree --write-tree` (bot/forges/local.py merges and replays with it) came in 2.38
EVALUATOR_DIR = "evaluator"  # the package the runner exports from the champion and runs as `python -m evaluator`
EVALUATOR_SECONDS = 600  # prepare may download and split a corpus once; longer is a hung evaluator
TORCH_SECONDS = 120
SHOWN = 5  # paths named in one line before "and N more"
SMOKE_SECONDS = 1.0  # the training budget of `doctor --smoke`'s run
TAIL_LINES = 8  # lines of a failed smoke run's output shown
# What the bot's GitHub App needs (README, "Run it on GitHub"); administration only while `arbot setup` runs.
APP_PERMISSIONS = {"contents": "write", "pull_requests": "write", "checks": "write", "issues": "write",
                   "actions": "write", "metadata": "read"}
APP_EVENTS = ("pull_request", "check_run", "issue_comment", "push", "workflow_run")
LEVELS = {"read": 1, "write": 2, "admin": 3}
# Run in the runner's Python: which torch, which CUDA build, which GPUs the training would see.
TORCH_PROBE = """\
import json
try:
    import torch
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
else:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    print(json.dumps({"version": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus}))
"""


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str  # what was found
    fix: str = ""  # what to do, when not ok

    @property
    def blocks(self) -> bool:
        return self.status == FAIL


def ok(name: str, detail: str) -> Check:
    return Check(name, OK, detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, WARN, detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, FAIL, detail, fix)


def listed(paths: list[str]) -> str:
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(paths[:SHOWN]) + more


# --- git and the repository -------------------------------------------------------------------------------
def check_git() -> Check:
    try:
        out = subprocess.run(["git", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return fail("git", f"git does not run: {e}", f"install git {'.'.join(map(str, MIN_GIT))} or later "
                    "(apt-get install git) and put it on PATH")
    found = re.search(r"(\d+)\.(\d+)", out)
    if found is None or (int(found[1]), int(found[2])) < MIN_GIT:
        return fail("git", f"{out or 'no version'}: arbot merges with `git merge-tree --write-tree`, which needs git "
                    f"{'.'.join(map(str, MIN_GIT))}", f"upgrade git to {'.'.join(map(str, MIN_GIT))} or later")
    return ok("git", out)


def open_repository(path: Path) -> tuple[Check, git.Repo | None]:
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return fail("repository", f"{path} is not inside a git repository",
                    "run arbot in your project's clone (or `git init` it and commit your training script)"), None
    if repo.bare:
        return fail("repository", f"{path} is a bare repository", "run arbot in a clone with a working tree"), None
    if not repo.head.is_valid():
        return fail("repository", f"{repo.working_tree_dir} has no commit yet",
                    "commit your training script (arbot trains the committed files)"), None
    where = "detached HEAD" if repo.head.is_detached else f"branch {repo.active_branch.name}"
    return ok("repository", f"{repo.working_tree_dir} ({where} at {repo.head.commit.hexsha[:7]})"), repo


def read_config(root: Path, path: Path | None) -> tuple[Check, Config | None]:
    path = path or root / CONFIG_FILE
    try:
        config = load_config(path)
    except ConfigError as e:
        return fail("arbot.yml", str(e), "fix the file as it says, then run `arbot doctor` again (the checks that "
                    "need it did not run)"), None
    if not path.exists():
        return warn("arbot.yml", f"no {path}: the defaults apply (the built-in target, {config.target.script})",
                    "`arbot init` writes one for your training script"), config
    return ok("arbot.yml", f"{path} is valid (metric {config.metric.key()}, {config.evaluator.direction})"), config


def local_forge(repo: git.Repo, config: Config) -> LocalForge:
    return LocalForge(repo, champion_branch=config.run.champion_branch, branch_prefix=config.run.branch_prefix)


def champion_source(repo: git.Repo, config: Config) -> tuple[str, bool]:
    """The commit runs use: the champion's, or HEAD when the first `arbot run` is yet to create champion from it,
    or when champion, with no merged win yet, follows HEAD there (LocalForge.follow_target)."""
    try:
        sha = repo.commit(config.run.champion_branch).hexsha
    except (git.BadName, ValueError):
        return repo.head.commit.hexsha, False
    return local_forge(repo, config).follow_target() or sha, True


def uncommitted(repo: git.Repo) -> list[str]:
    """Paths with changes not committed (staged, unstaged or untracked, ignored files aside)."""
    entries = repo.git.status("--porcelain", "-z", "--untracked-files=all").split("\0")
    paths, skip = [], False
    for entry in entries:
        if skip or not entry:
            skip = False
            continue
        paths.append(entry[3:])
        skip = entry[0] in "RC"  # a rename or copy is followed by its original path
    return sorted(paths)


def check_champion(repo: git.Repo, config: Config, dirty: list[str]) -> Check:
    branch = config.run.champion_branch
    sha, exists = champion_source(repo, config)
    if not repo.head.is_detached and repo.active_branch.name == branch:
        changes = f"; uncommitted changes on it: {listed(dirty)}" if dirty else ""
        return fail("champion", f"the current branch is {branch}, which arbot moves on every win{changes}",
                    ("commit or stash the changes, then " if dirty else "") + "check out another branch "
                    "(git switch main) and run again")
    if exists and sha != repo.commit(branch).hexsha:
        return ok("champion", f"{branch} has no merged win yet, so it follows your branch: the next `arbot run` moves "
                  f"it from {repo.commit(branch).hexsha[:7]} to HEAD ({sha[:7]}) and measures it")
    if exists and (behind := local_forge(repo, config).not_adopted()):
        mine = repo.active_branch.name
        return warn("champion", f"{branch} at {sha[:7]}; your branch {mine} has {behind} commit(s) it lacks, which "
                    "no run uses", f"`arbot adopt {mine}` merges them into {branch} (a hand edit, a fixed "
                    "evaluator), or leave them out")
    if exists:
        return ok("champion", f"{branch} at {sha[:7]}")
    return ok("champion", f"no {branch} branch yet: the first `arbot run` creates it from HEAD ({sha[:7]})")


def check_champion_runs(repo: git.Repo, config: Config, sha: str) -> Check:
    """Whether the champion's own runs failed: once may be the machine's (the next run makes another), twice is
    the champion's, and nothing can be compared against it until it moves to a commit that trains."""
    failed = [r for r in val_runs(local_forge(repo, config).champion_record(sha).runs) if not r.ok]
    if not failed:
        return ok("champion runs", "none failed")
    last = failed[-1]
    what = f"{len(failed)} of the champion's runs failed, the last ({last.status}): {last.reason[:300]}"
    if len(failed) < CHAMPION_FAILURES:
        return warn("champion runs", what, "nothing: the next `arbot run` makes another run in its place (one failure "
                    "may be the machine's)")
    return fail("champion runs", f"{what}; every `arbot run` stops until the champion trains",
                f"fix what fails (`arbot log` shows each run) and commit the fix on your branch; then `arbot adopt "
                f"<branch>` merges it into {config.run.champion_branch} (while {config.run.champion_branch} has no "
                "merged win, the next `arbot run` moves it there by itself)")


def check_records(repo: git.Repo, config: Config) -> Check:
    """Whether this machine holds the bot's signing key, others can verify it, and every note verifies."""
    forge = LocalForge(repo, champion_branch=config.run.champion_branch, branch_prefix=config.run.branch_prefix)
    try:
        signer = forge.signer()
        trusted, problems = forge.verify()
    except SigningError as e:
        return fail("records", str(e), f"point {KEY_ENV} at the bot's signing key")
    if problems:
        return warn("records", f"{len(problems)} notes are skipped, the first: {problems[0]}",
                    "`arbot audit --verify` names each; remove forged ones, or sign an earlier arbot's unsigned "
                    "notes with `arbot sign --adopt-unsigned` once you trust them (docs/security.md)")
    if signer is None:
        return warn("records", f"{trusted} notes verify; no signing key at {default_key_path()} (the first `arbot "
                    "run` creates one)", f"a bot that already signed notes elsewhere: point {KEY_ENV} at its key")
    if config.github.repo and signer.public.id not in {k.id for k in forge.committed_keys()[0]}:
        return warn("records", f"{trusted} notes verify; signing key {signer.public.id} is not in {KEYS_FILE} on "
                    f"{config.run.champion_branch}, so nobody else can verify them",
                    "`arbot sign` prints the line to commit there (through a reviewed PR)")
    return ok("records", f"{trusted} notes verify; signing key {signer.public.id} ({signer.path})")


def check_uncommitted(config: Config, dirty: list[str], champion_exists: bool) -> Check:
    """Changes to what runs use (the training script's directory, the allowed paths, the evaluator) that are not
    committed: arbot trains and scores committed files only, so these are in no run."""
    script_dir = str(PurePosixPath(config.target.script).parent)
    used = [p for p in dirty if p == config.target.script or p.startswith(f"{EVALUATOR_DIR}/")
            or (script_dir != "." and p.startswith(f"{script_dir}/"))
            or any(fnmatchcase(p, pattern) for pattern in config.target.allowed_paths)]
    if not used:
        return ok("uncommitted changes", "none to the training code or the evaluator")
    branch = config.run.champion_branch
    if champion_exists:
        return warn("uncommitted changes", f"{listed(used)}: runs use the committed files of the {branch} branch, "
                    "not these", f"commit them (while {branch} has no merged win, the next run takes them up; after "
                    "one, `arbot adopt` brings them in), or discard them")
    return warn("uncommitted changes", f"{listed(used)}: runs use the committed files of HEAD, from which the first "
                f"run creates {branch}, not these", "commit them (or discard them) before `arbot run`")


# --- what the runs use --------------------------------------------------------------------------------------
def committed_files(repo: git.Repo, sha: str) -> list[str]:
    return [p for p in repo.git.ls_tree("-r", "--name-only", "-z", sha).split("\0") if p]


def check_script(config: Config, files: list[str], root: Path, sha: str) -> Check:
    script = config.target.script
    if script not in files:
        where = "is in the working tree but not committed" if (root / script).is_file() else "does not exist"
        return fail("training script", f"target.script {script} {where} (commit {sha[:7]})",
                    "commit it" if (root / script).is_file() else "set target.script in arbot.yml to your training "
                    "script, relative to the repository root")
    if PurePosixPath(script).parent == PurePosixPath("."):
        return warn("training script", f"{script} is at the repository root: every run gets a copy of the whole "
                    f"repository, {EVALUATOR_DIR}/ included",
                    "move your training code into a directory of its own and set target.script to it")
    return ok("training script", f"{script} (runs get a copy of {PurePosixPath(script).parent}/)")


def check_allowed_paths(config: Config, files: list[str]) -> Check:
    allowed = config.target.allowed_paths
    judged = [p for p in files if p == CONFIG_FILE or any(p.startswith(g.strip("/") + "/") for g in GUARDED)]
    open_to = [p for p in judged if any(fnmatchcase(p, pattern) for pattern in allowed)]
    if open_to:
        return fail("allowed paths", f"target.allowed_paths ({', '.join(allowed)}) lets a proposal change "
                    f"{listed(open_to)}: a merged win would change how every later experiment is judged",
                    "narrow the patterns to your training code (a * matches / too: train/*.py, not *.py)")
    if not any(fnmatchcase(p, pattern) for p in files for pattern in allowed):
        return warn("allowed paths", f"no committed file matches target.allowed_paths ({', '.join(allowed)})",
                    "check the patterns: they are globs relative to the repository root")
    return ok("allowed paths", ", ".join(allowed))


def check_evaluator(repo: git.Repo, sha: str, files: list[str], config: Config, dest: Path) -> Check:
    """Export the committed evaluator as the runner does and shake hands with it (runner.protocol)."""
    if f"{EVALUATOR_DIR}/__main__.py" not in files:
        return fail("evaluator", f"commit {sha[:7]} has no {EVALUATOR_DIR}/__main__.py",
                    "`arbot init` writes a skeleton of the evaluator protocol: fill it in and commit it")
    export_tree(repo, sha, EVALUATOR_DIR, dest)
    try:
        answer = handshake(dest / EVALUATOR_DIR, sys.executable, scrubbed_env(dest, config.target.threads))
        check_metric(answer, config.evaluator.metric, config.evaluator.direction)
    except ProtocolError as e:
        return fail("evaluator", str(e), f"fix {EVALUATOR_DIR}/ and commit it (docs/evaluator.md)")
    return ok("evaluator", f"{EVALUATOR_DIR}/ of {sha[:7]} speaks protocol {answer['protocol']}")


def run_evaluator(dest: Path, command: str, cache: Path, env: dict[str, str]) -> tuple[dict | None, str]:
    """`python -m evaluator <command> --cache DIR` as the runner runs it: its JSON answer (None when it failed)
    and what it said on stderr."""
    try:
        proc = subprocess.run([sys.executable, "-m", EVALUATOR_DIR, command, "--cache", str(cache)], cwd=dest,
                              env=env, capture_output=True, text=True, timeout=EVALUATOR_SECONDS)
    except subprocess.TimeoutExpired:
        return None, f"`{command}` did not finish within {EVALUATOR_SECONDS} s"
    answer = last_json_line(proc.stdout)
    said = proc.stderr.strip()
    if proc.returncode != 0 or not isinstance(answer, dict):
        return None, f"`{command}` exited {proc.returncode}: {said.splitlines()[-1] if said else 'no output'}"
    return answer, said


@dataclass
class Splits:
    check: Check
    bytes: int = 0  # the prepared splits' size on disk


def check_splits(dest: Path, config: Config, cache: Path) -> Splits:
    """The evaluator prepares the splits (as the runner does: scrubbed environment and the split key) and its
    fingerprint command names the same splits."""
    try:
        key = config.evaluator.prepare_env()
    except ValueError as e:
        return Splits(fail("data splits", str(e), "fix evaluator.split_key_file, or unset it"))
    env = {**scrubbed_env(dest, config.target.threads), **key}
    prepared, said = run_evaluator(dest, "prepare", cache, env)
    if prepared is None:
        return Splits(fail("data splits", f"the evaluator's prepare failed: {said}",
                           f"fix prepare() in {EVALUATOR_DIR}/__main__.py and commit it (docs/evaluator.md)"))
    missing = [s for s in ("train", "val", "holdout") if not isinstance(prepared.get(s), str) or not Path(prepared[s]).is_file()]
    if missing or not prepared.get("fingerprint"):
        what = f"no file for split {', '.join(missing)}" if missing else "no fingerprint"
        return Splits(fail("data splits", f"prepare answered {what}",
                           "prepare() must return the paths of train, val and holdout and a fingerprint (docs/evaluator.md)"))
    size = sum(Path(prepared[s]).stat().st_size for s in ("train", "val", "holdout"))
    named, said_too = run_evaluator(dest, "fingerprint", cache, env)
    if named is None or named.get("fingerprint") != prepared["fingerprint"]:
        got = said_too if named is None else f"fingerprint {named.get('fingerprint')!r}"
        return Splits(fail("data splits", f"prepare made splits with fingerprint {prepared['fingerprint']!r}, but the "
                           f"evaluator's fingerprint command answers {got}",
                           "prepare and fingerprint must name the same splits (deterministic from the data and the "
                           "split key)"), size)
    found = f"fingerprint {prepared['fingerprint']} ({size / 2**20:.1f} MiB in {cache})"
    if not key:
        return Splits(warn("data splits", f"{found}; no split key (${config.evaluator.split_key_env} is unset): val "
                           "and holdout follow the evaluator's public rule, so a candidate can know them",
                           f"set ${config.evaluator.split_key_env} (or evaluator.split_key_file) to a secret on the "
                           "runner"), size)
    warned = [line for line in (said + "\n" + said_too).splitlines() if "warning" in line.lower()]
    if warned:
        return Splits(warn("data splits", f"{found}; the evaluator warned: {warned[0]}",
                           f"see what it says; its code is {EVALUATOR_DIR}/"), size)
    return Splits(ok("data splits", found), size)


# --- the machine ------------------------------------------------------------------------------------------
def sandbox_mode(config: Config) -> str:
    """target.sandbox as runs read it: unset is `require`, except `auto` for a local search-only `arbot run`."""
    if config.github.repo:
        return config.target.sandbox or "require"
    return local_sandbox(config) or "require"


def check_sandbox(config: Config, runner: Runner) -> Check:
    mode = sandbox_mode(config)
    if mode == "off":
        return warn("sandbox", "target.sandbox is off: candidates train and are scored unsandboxed",
                    "install bubblewrap and remove target.sandbox: off (trusted code only)")
    box = resolve("auto", runner.limits, uid=config.target.sandbox_uid)
    if box.kind == "bwrap":
        return ok("sandbox", f"bubblewrap starts ({box.bwrap}): no network, only the run's own files")
    install = "install bubblewrap (apt-get install bubblewrap) where unprivileged user namespaces are allowed"
    if mode == "require":
        return fail("sandbox", f"target.sandbox is require (unset means require here) and {box.note}",
                    f"{install}, or set target.sandbox: auto to run unsandboxed (trusted code only)")
    return warn("sandbox", f"runs go unsandboxed: {box.note}", f"{install}, or set target.sandbox: require")


def check_limits(config: Config, sandboxed: bool) -> list[Check]:
    """One line per limit of a run (runner.box): what enforces it here, or why nothing does and the fix. Where
    parallel workers would share a limit the kernel cannot split, the pool refuses them: a FAIL, unless the
    operator allowed it (target.allow_unboxed_workers)."""
    workers = worker_count(config.run.workers, config.target)
    try:
        share = shares(config.target, workers, visible_gpus())[0][0]
    except ValueError:  # more workers than GPUs: `arbot run` says so itself
        share = config.target
    refused = workers > 1 and not config.target.allow_unboxed_workers and unboxed(share, sandboxed)
    checks = []
    for e in enforcement(share.limits(), sandboxed):
        name = f"limit: {e.limit}"
        if e.by:
            checks.append(ok(name, f"enforced per run by {e.by}"))
        elif refused and f"{e.limit}: {e.why}" in refused:
            checks.append(fail(name, f"not enforced: {e.why}; run.workers is {workers}, so `arbot run` refuses to "
                               "start its workers", f"{e.fix}, or set run.workers: 1, or target.allow_unboxed_workers: "
                               "true to accept that one run may starve or crash another"))
        else:
            checks.append(warn(name, f"not enforced: {e.why}", e.fix))
    return checks


def check_threads(config: Config) -> Check:
    """Whether the runs made at once ask for more threads than this machine has cores: OpenMP threads that share
    a core spin, and every run slows by 10x or more (so does the champion's noise floor)."""
    if config.run.executor == "slurm":
        return ok("threads", f"each Slurm job trains with its slurm.cpus_per_task ({config.slurm.cpus_per_task})")
    workers = worker_count(config.run.workers, config.target)
    each, have = threads_per_worker(config.target, workers), cores()
    what = f"{workers} worker(s) x {each} thread(s) on {have} core(s)"
    if workers * each > have:
        return warn("threads", f"{what}: more threads than cores, so runs slow each other down (spinning OpenMP "
                    "threads) and the noise floor widens", f"set target.threads: 0 (the cores less {SPARE_CORES} split "
                    f"between the workers) or at most {max(1, have // workers)}, or fewer run.workers")
    return ok("threads", what + ("" if config.target.threads else f" (target.threads: 0, the cores less {SPARE_CORES} "
                                 "split between the workers)"))


def check_smoke(repo: git.Repo, config: Config, sha: str) -> Check:
    """`doctor --smoke`: the champion trained for SMOKE_SECONDS and scored on val and holdout by its evaluator,
    sandboxed, as a run makes it (nothing is recorded): what a first run would stop on (an artifact the script does
    not write, an evaluator that prints text on stdout) shows here first."""
    target = config.target.model_copy(update={"budget_seconds": SMOKE_SECONDS, "sandbox": local_sandbox(config),
                                              "threads": threads_per_worker(config.target, 1)})
    runner = Runner(repo, target, config.evaluator)
    fix = ("fix what it says (the training contract and the evaluator protocol: docs/evaluator.md), commit, and "
           "run `arbot doctor --smoke` again")
    try:
        result = runner.run(sha, sha, seed=0, splits=("val", "holdout"))
    except EvaluatorError as e:
        return fail("smoke run", f"the evaluator failed on the champion's {SMOKE_SECONDS:g} s model: {e}", fix)
    finally:
        runner.close()
    key = config.metric.key()
    if not result.ok:
        tail = "\n".join(result.log_tail.splitlines()[-TAIL_LINES:])
        return fail("smoke run", f"the champion's {SMOKE_SECONDS:g} s run ended {result.status}: {result.reason}"
                    + (f"; its output ends: {tail}" if tail else ""), fix)
    scores = ", ".join(f"{k} {config.metric.fmt(v)}" for k, v in sorted(result.metrics.items()))
    return ok("smoke run", f"trained {SMOKE_SECONDS:g} s and scored in {result.total_seconds:.1f} s (sandbox: "
              f"{result.sandbox}): {scores or key}")


@dataclass(frozen=True)
class TorchInfo:
    version: str | None = None
    cuda: str | None = None  # the CUDA version torch was built for; None for a CPU build
    gpus: list[str] = field(default_factory=list)
    error: str = ""  # why torch did not import


def probe_torch() -> TorchInfo:
    """Import torch in the runner's Python with the environment training gets (its visible GPUs)."""
    with tempfile.TemporaryDirectory(prefix="arbot-doctor-") as tmp:
        try:
            proc = subprocess.run([sys.executable, "-c", TORCH_PROBE], env=scrubbed_env(Path(tmp), 1),
                                  capture_output=True, text=True, timeout=TORCH_SECONDS)
        except subprocess.TimeoutExpired:
            return TorchInfo(error=f"importing torch took over {TORCH_SECONDS} s")
    answer = last_json_line(proc.stdout)
    if not isinstance(answer, dict):
        return TorchInfo(error=f"the probe exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return TorchInfo(**answer)


def devices(config: Config) -> dict[str, str]:
    return {"target.device": config.target.device, "evaluator.device": config.evaluator.device}


def check_devices(config: Config, torch: TorchInfo | None) -> Check:
    """CUDA where target.device or evaluator.device ask for it; what `auto` resolves to (torch: the probe's
    answer, None where both are cpu and nothing needs it)."""
    settings = devices(config)
    if torch is None:
        return ok("torch and CUDA", "target.device and evaluator.device are cpu: CUDA is not needed")
    cuda = [name for name, device in settings.items() if device == "cuda"]
    build = f"torch {torch.version}" + (f" (CUDA {torch.cuda})" if torch.cuda else " (a CPU build)")
    if torch.error:
        if cuda:
            return fail("torch and CUDA", f"{' and '.join(cuda)} ask for cuda, but torch does not import: "
                        f"{torch.error}", f"install a CUDA build of torch in {sys.executable}'s environment")
        return ok("torch and CUDA", f"torch does not import ({torch.error}); nothing asks for cuda")
    if cuda and not torch.cuda:
        return fail("torch and CUDA", f"{' and '.join(cuda)} ask for cuda, but {build}",
                    "install a CUDA build of torch (pytorch.org, Get started), or set the device to auto or cpu")
    if cuda and not torch.gpus:
        return fail("torch and CUDA", f"{' and '.join(cuda)} ask for cuda, but {build} sees no GPU",
                    "check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES")
    auto = [name for name, device in settings.items() if device == "auto"]
    using = f"cuda ({len(torch.gpus)} x {torch.gpus[0]})" if torch.gpus else "the CPU"
    said = f"{build}; " + (f"{' and '.join(auto)}: auto uses {using}" if auto else
                            ", ".join(f"{name}: {device}" for name, device in settings.items()))
    return ok("torch and CUDA", said)


def free_bytes(path: Path) -> tuple[Path, int]:
    """Free space of the filesystem that holds path (or would: its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path, shutil.disk_usage(path).free


def check_disk(config: Config, cache: Path, splits_bytes: int) -> list[Check]:
    """Each run may fill target.max_disk_gb in its work dir (in the temp dir), one per worker; a new champion's
    evaluator prepares its splits again in the cache."""
    per_run, workers = config.target.max_disk_gb * 2**30, worker_count(config.run.workers, config.target)
    work, free = free_bytes(Path(tempfile.gettempdir()))
    gib = lambda n: f"{n / 2**30:.1f} GiB"  # noqa: E731
    if free < per_run:
        work_check = fail("disk (work dirs)", f"{gib(free)} free in {work}, less than one run may use "
                          f"(target.max_disk_gb: {config.target.max_disk_gb:g})",
                          "free space, point TMPDIR at a larger disk, or lower target.max_disk_gb")
    elif free < per_run * workers:
        work_check = warn("disk (work dirs)", f"{gib(free)} free in {work}, less than {workers} runs at once may use "
                          f"({workers} x target.max_disk_gb {config.target.max_disk_gb:g})",
                          "free space, point TMPDIR at a larger disk, or lower run.workers or target.max_disk_gb")
    else:
        work_check = ok("disk (work dirs)", f"{gib(free)} free in {work} (a run may use {config.target.max_disk_gb:g} "
                        f"GiB, {workers} at once)")
    where, free = free_bytes(cache)
    if free < splits_bytes:
        cache_check = warn("disk (cache)", f"{gib(free)} free in {where}, less than the prepared splits take "
                           f"({gib(splits_bytes)}): a new champion's evaluator prepares them again",
                           "free space, or set evaluator.cache_dir (or $ARBOT_CACHE) to a larger disk")
    else:
        cache_check = ok("disk (cache)", f"{gib(free)} free in {where}")
    return [work_check, cache_check]


def check_models(config: Config, repo: git.Repo) -> Check:
    """The model files local runs keep, and what the configured campaign will keep (bot.retention)."""
    forge = LocalForge(repo, config.run.champion_branch, config.run.branch_prefix)
    seen = retention.config_projection(config, Path(repo.working_tree_dir), forge.experiments())
    if seen.short:
        return warn("disk (models)", seen.line, "free space, or lower run.keep_models (null keeps every model)")
    return ok("disk (models)", seen.line)


# --- GitHub mode ------------------------------------------------------------------------------------------
def answered(e: GithubException) -> str:
    message = e.data.get("message") if isinstance(e.data, dict) else e.data
    return f"GitHub answered {e.status}: {message}"


def check_app(forge: GitHubForge, installation_id: int | None) -> Check:
    """The App's own credentials, its installation on the repository, its permissions and events."""
    try:
        app_id, slug = forge.app()
    except GithubException as e:
        return fail("github app", f"the App's credentials were refused ({answered(e)})",
                    "check github.auth.app_id and private_key_path (the App's current private key)")
    owner, name = forge.full_name.split("/")
    try:
        installation = GithubIntegration(auth=forge.app_auth, base_url=forge.base_url,
                                         **forge.github_kwargs).get_repo_installation(owner, name)
    except GithubException as e:
        if e.status == 404:
            return fail("github app", f"the App {slug} is not installed on {forge.full_name}",
                        "install it: the App's settings, Install App, this repository")
        return fail("github app", f"cannot read {slug}'s installation on {forge.full_name} ({answered(e)})",
                    "check github.auth and the App's installation")
    if installation.id != installation_id:
        return fail("github app", f"github.auth.installation_id is {installation_id}, but {slug}'s installation on "
                    f"{forge.full_name} is {installation.id}", f"set github.auth.installation_id: {installation.id}")
    if installation.suspended_at is not None:
        return fail("github app", f"{slug}'s installation on {forge.owner} is suspended",
                    "unsuspend it (the owner's settings, GitHub Apps, Configure)")
    have = installation.permissions or {}
    missing = [f"{p}: {level}" for p, level in APP_PERMISSIONS.items() if LEVELS.get(have.get(p), 0) < LEVELS[level]]
    if missing:
        return fail("github app", f"{slug}'s installation lacks permissions {', '.join(missing)}",
                    "raise them in the App's settings (Permissions and events), then accept them on the installation")
    events = [e for e in APP_EVENTS if e not in (installation.events or [])]
    if events:
        return warn("github app", f"{slug} is installed but not subscribed to {', '.join(events)}: `arbot serve` "
                    "does not hear of them", "subscribe to them in the App's settings (the serverless set-up, "
                    "arbot-propose.yml, needs no events)")
    return ok("github app", f"{slug} (app {app_id}) installed on {forge.full_name} (installation {installation.id}) "
              f"with {', '.join(f'{p}: {have[p]}' for p in APP_PERMISSIONS)}")


def check_access(forge: GitHubForge, auth: GitHubAuthConfig) -> Check:
    """The repository is reachable with the bot's credentials; a token's user may write to it."""
    try:
        repo = forge.repo
    except GithubException as e:
        if e.status == 401:
            return fail("github access", f"the credentials were refused ({answered(e)})",
                        f"set {auth.token_env} to a valid token" if not auth.is_app else "check github.auth")
        return fail("github access", f"{forge.full_name}: {answered(e)}",
                    "check github.repo and that the token (or the App's installation) can see it")
    if auth.is_app:
        return ok("github access", f"{forge.full_name} as the App's installation")
    perms = repo.permissions
    if not (perms and perms.push):
        return fail("github access", f"the token's user may not push to {forge.full_name}: arbot pushes experiment "
                    "branches, opens PRs, sets statuses and dispatches the evaluate workflow",
                    "use a token of a user with write access (or a GitHub App)")
    scopes = forge.gh.oauth_scopes  # a classic token's (the X-OAuth-Scopes header); None for a fine-grained one
    enough = {"repo"} if repo.private else {"repo", "public_repo"}
    if scopes is not None and not enough & set(scopes):
        return fail("github access", f"the classic token's scopes are {', '.join(scopes) or 'none'}",
                    "create a token with the repo scope")
    kind = f"scopes {', '.join(scopes)}" if scopes is not None else \
        "a fine-grained token needs contents, pull requests, issues, commit statuses and actions at read and write"
    return ok("github access", f"the token's user may push to {forge.full_name} ({kind})")


def check_protection(forge: GitHubForge, app: tuple[int, str] | None) -> Check:
    """Champion on GitHub, protected as `arbot setup` protects it (read back, nothing changed)."""
    branch = forge.champion_branch
    try:
        forge.champion()
        missing = forge.protect_champion(*(app or (None, None)), apply=False)
    except GithubException as e:
        if e.status == 404:
            return fail("github protection", f"no {branch} branch on {forge.full_name}", "run `arbot setup`")
        return warn("github protection", f"cannot read {branch}'s protection ({answered(e)}): the credentials have "
                    "no administration permission", "check it in the repository settings, or run `arbot setup`")
    if missing:
        return fail("github protection", f"{branch} is not protected as the bot needs: not yet {'; '.join(missing)}",
                    "run `arbot setup` (with administration: write while it runs)")
    source = f"the app {app[1]}" if app else "any source"
    return ok("github protection", f"{branch} requires {VERDICT_CHECK} from {source}, up to date, code-owner reviews")


def check_default_protection(forge: GitHubForge) -> Check:
    """The default branch, whose evaluate workflow the bot dispatches, takes changes only through reviewed pull
    requests (GitHubForge.protect_default, read back, nothing changed): else a push there runs anyone's workflow
    as the bot's evaluation."""
    branch = forge.repo.default_branch
    try:
        missing = forge.protect_default(apply=False)
    except GithubException as e:
        return warn("github default branch", f"cannot read {branch}'s protection ({answered(e)})",
                    "check it in the repository settings, or run `arbot setup`")
    if missing:
        return fail("github default branch", f"{branch} is not protected: not yet {'; '.join(missing)}. Anyone who "
                    f"can push to {branch} changes the evaluate workflow the bot dispatches, and so its results",
                    "run `arbot setup --owner @you` (with administration: write while it runs)")
    return ok("github default branch", f"{branch} takes changes only through pull requests, with code-owner review")


def check_tag_ruleset(forge: GitHubForge) -> Check:
    """No tag may be named like the bot's branches (GitHubForge.ensure_tag_ruleset, read back)."""
    try:
        missing = forge.ensure_tag_ruleset(apply=False)
    except GithubException as e:
        return warn("github tag ruleset", f"cannot read the rulesets ({answered(e)})",
                    "check Settings, Rules, or run `arbot setup`")
    if missing:
        return fail("github tag ruleset", f"not yet: {'; '.join(missing)}. A tag named like a branch passes for it "
                    "where GitHub reports a tag's name as a branch", "run `arbot setup`")
    return ok("github tag ruleset", f"no tag may be created as {', '.join(forge.tag_patterns())}")


def check_workflow(files: list[str]) -> Check:
    path = f".github/workflows/{EVALUATE_WORKFLOW}"
    if path not in files:
        return fail("github workflow", f"{path} is not committed: no runner can evaluate an experiment",
                    "`arbot init` writes it: commit it to the default branch")
    return ok("github workflow", path)


def github_checks(config: Config, files: list[str], environ: Mapping[str, str] | None,
                  github_kwargs: Mapping) -> Iterator[Check]:
    try:
        forge = connect(config.github, environ, champion_branch=config.run.champion_branch, **github_kwargs)
    except (GitHubForgeError, OSError) as e:
        yield fail("github credentials", str(e), "set the token variable or github.auth as docs/github.md says")
        return
    yield check_workflow(files)
    try:
        if forge.app_auth is not None:
            app_check = check_app(forge, config.github.auth.installation_id)
            yield app_check
            if app_check.blocks:
                return
        access = check_access(forge, config.github.auth)
        yield access
        if access.blocks:
            return
        yield check_protection(forge, forge.app())
        yield check_default_protection(forge)
        yield check_tag_ruleset(forge)
        if not forge.repo.allow_auto_merge:
            yield ok("github auto-merge", f"auto-merge is off on {forge.full_name} (optional): the bot merges wins "
                     "itself, and a win GitHub refuses for now (another required check pending) is tried again on "
                     "the next event")
    except RequestException as e:
        yield fail("github", f"cannot reach {forge.base_url}: {e}", "check github.base_url and the network")


# --- all of it --------------------------------------------------------------------------------------------
def diagnose(repo_dir: Path, config_path: Path | None = None, environ: Mapping[str, str] | None = None,
             github_kwargs: Mapping | None = None, smoke: bool = False) -> Iterator[Check]:
    """Every check, in order, each as soon as it is made; with `smoke`, last, a smoke run (`check_smoke`) where
    nothing before blocks one."""
    checked = check_git()
    yield checked
    if checked.blocks:
        return
    checked, repo = open_repository(repo_dir)
    yield checked
    if repo is None:
        return
    root = Path(repo.working_tree_dir)
    checked, config = read_config(root, config_path)
    yield checked
    if config is None:
        return
    sha, _ = champion_source(repo, config)
    blocked = False
    for checked in local_checks(repo, config):
        blocked = blocked or checked.blocks
        yield checked
    if smoke:
        yield check_smoke(repo, config, sha) if not blocked else Check(
            "smoke run", FAIL, "not made: a check above blocks a run", "fix the checks that FAIL first")
    if config.github.repo:
        yield from github_checks(config, committed_files(repo, repo.head.commit.hexsha), environ, github_kwargs or {})


def local_checks(repo: git.Repo, config: Config) -> Iterator[Check]:
    """The checks of this repository and this machine as a runner, in order."""
    root = Path(repo.working_tree_dir)
    dirty = uncommitted(repo)
    sha, exists = champion_source(repo, config)
    files = committed_files(repo, sha)
    yield check_champion(repo, config, dirty)
    if exists:
        yield check_champion_runs(repo, config, sha)
    yield check_records(repo, config)
    yield check_uncommitted(config, dirty, exists)
    yield check_script(config, files, root, sha)
    yield check_allowed_paths(config, files)
    runner = Runner(repo, config.target, config.evaluator)
    splits_bytes = 0
    with OwnedTempDir(prefix="arbot-evaluator-") as tmp:
        checked = check_evaluator(repo, sha, files, config, Path(tmp))
        yield checked
        if not checked.blocks:
            splits = check_splits(Path(tmp), config, runner.cache)
            splits_bytes = splits.bytes
            yield splits.check
    checked = check_sandbox(config, runner)
    yield checked
    yield from check_limits(config, sandboxed=checked.status == OK)
    yield check_threads(config)
    yield check_devices(config, None if set(devices(config).values()) == {"cpu"} else probe_torch())
    yield from check_disk(config, runner.cache, splits_bytes)
    yield check_models(config, repo)

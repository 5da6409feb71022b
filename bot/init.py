"""`arbot init`: set arbot up in an existing git repository. A plan of files from the answers, then apply it:
files that exist are kept (and said so) unless --force; a second run writes nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from pathlib import Path

import git
import yaml
from pydantic import ValidationError

from bot.config import CONFIG_FILE, Config, ConfigError
from bot.github.setup import GUARDED, codeowners

WORKFLOWS = ("arbot-evaluate.yml", "arbot-propose.yml")
# GitHub reads the first of these that exists; a new one goes into .github/.
CODEOWNERS_PATHS = (".github/CODEOWNERS", "CODEOWNERS", "docs/CODEOWNERS")
TEMPLATES = files("bot") / "templates"
# The one line of each workflow that says where arbot comes from; the templates install this repository's checkout.
PACKAGE_LINE = '  ARBOT_PACKAGE: {}\n'
TEMPLATE_PACKAGE = "."
EXAMPLE_PACKAGE = "arbot @ git+https://github.com/ORG/arbot@v0.1.0"  # said where a spec is asked for


@dataclass(frozen=True)
class Answers:
    script: str
    allowed_paths: list[str]
    budget_seconds: float
    metric: str
    direction: str
    device: str = "auto"
    owner: str | None = None


@dataclass(frozen=True)
class File:
    path: str  # relative to the repository root
    content: str
    extends: bool = False  # the content adds lines to the existing file, so writing it loses nothing
    note: str = ""  # said when the file is written
    summary: str = ""  # said once after the per-file lines when this file (or another with it) is written


def repo_root(path: Path) -> Path:
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise ConfigError(f"{path} is not inside a git repository: run `arbot init` in your project's clone "
                          "(or `git init` it first)") from None
    if repo.bare:
        raise ConfigError(f"{path} is a bare repository: run `arbot init` in a clone with a working tree")
    return Path(repo.working_tree_dir)


def check(root: Path, answers: Answers, config: str) -> None:
    """Refuse answers that make no working set-up: the script must exist, arbot.yml must pass the schema."""
    script = (root / answers.script).resolve()
    if not script.is_file() or not script.is_relative_to(root.resolve()):
        raise ConfigError(f"training script {answers.script}: no such file in the repository ({root})")
    if not answers.allowed_paths:
        raise ConfigError("allowed paths: name at least one file a proposal may change (e.g. the training script)")
    try:
        Config.model_validate(yaml.safe_load(config))
    except ValidationError as e:
        raise ConfigError("\n".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err['input']!r})"
                                     for err in e.errors())) from None


def config_text(answers: Answers) -> str:
    j = json.dumps  # JSON is YAML, quoted where needed
    return f"""\
# arbot configuration, written by `arbot init`; every key: arbot's README.md, "Configuration".
target:
  script: {j(answers.script)}  # run as: python SCRIPT --data --out --budget --seed --device [--set NAME=VALUE]
  allowed_paths: {j(answers.allowed_paths)}  # a proposal changing anything else is rejected before training
  budget_seconds: {answers.budget_seconds!r}  # training time per run
  device: {j(answers.device)}  # auto | cpu | cuda
evaluator:
  metric: {j(answers.metric)}  # evaluator/ reports val_<metric> (and holdout_<metric>); val decides
  direction: {j(answers.direction)}  # minimize | maximize
"""


def installed_package() -> str:
    """The pip requirement of the arbot running `arbot init`: the default of what the workflows install."""
    try:
        return f"arbot=={version('arbot')}"
    except PackageNotFoundError:
        raise ConfigError("arbot is not installed as a package, so init cannot name it for the workflows: pass "
                          f"--arbot-package SPEC (e.g. {json.dumps(EXAMPLE_PACKAGE)})") from None


def check_package(spec: str) -> None:
    """The spec is one argument of `pip install` inside a workflow: a requirement or a path, not an option."""
    if not spec.strip() or spec.startswith("-") or "${{" in spec or any(not c.isprintable() for c in spec):
        raise ConfigError(f"--arbot-package {spec!r}: give one pip requirement or path, e.g. arbot==0.1.0 or "
                          f"{json.dumps(EXAMPLE_PACKAGE)} (on one line, no option such as -e, no ${{{{ }}}})")


def workflow_text(name: str, package: str) -> str:
    """The packaged workflow with ARBOT_PACKAGE set to this spec."""
    text = (TEMPLATES / name).read_text()
    template_line = PACKAGE_LINE.format(json.dumps(TEMPLATE_PACKAGE))
    if text.count(template_line) != 1:  # a template edited out of shape must not ship the checkout's "."
        raise RuntimeError(f"bot/templates/{name} must hold the line {template_line.strip()!r} exactly once")
    return text.replace(template_line, PACKAGE_LINE.format(json.dumps(package)))


def plan(root: Path, answers: Answers, package: str | None = None) -> list[File]:
    """The files `arbot init` writes for these answers; the workflows install arbot with `pip install PACKAGE`
    (default: the arbot running this)."""
    config = config_text(answers)
    check(root, answers, config)
    package = installed_package() if package is None else package
    check_package(package)
    skeleton = (TEMPLATES / "evaluator_main.py").read_text()
    for key in ("metric", "direction"):
        skeleton = skeleton.replace(f'"{{{key}}}"', json.dumps(getattr(answers, key)))
    out = [File(CONFIG_FILE, config),
           *(File(f".github/workflows/{name}", workflow_text(name, package), summary=(
               f"the workflows install arbot with pip install {json.dumps(package)}: another with --arbot-package "
               f"(e.g. {json.dumps(EXAMPLE_PACKAGE)}), or edit ARBOT_PACKAGE at their top"))
             for name in WORKFLOWS),
           # a regular package: a namespace one would lose to the `evaluator` package installed with arbot
           File("evaluator/__init__.py", ""),
           File("evaluator/__main__.py", skeleton,
                note="a skeleton that fails until you fill in prepare() and score()")]
    if answers.owner:
        path = next((p for p in CODEOWNERS_PATHS if (root / p).is_file()), CODEOWNERS_PATHS[0])
        old = (root / path).read_text() if (root / path).is_file() else ""
        out.append(File(path, codeowners(old, answers.owner), extends=True))
    return out


def apply(root: Path, planned: list[File], force: bool = False) -> list[str]:
    """Write what is missing; one line per file: wrote, added to, overwrote (--force) or kept."""
    lines, written = [], []
    for f in planned:
        dest = root / f.path
        old = dest.read_text() if dest.is_file() else None
        if old == f.content:
            lines.append(f"kept {f.path} (up to date)")
            continue
        if old is not None and not (force or f.extends):
            lines.append(f"kept {f.path} (exists and differs from what init writes; --force overwrites it)")
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(f.content)
        written.append(f)
        if old is None:
            lines.append(f"wrote {f.path}" + (f": {f.note}" if f.note else ""))
        elif f.extends:
            lines.append(f"added to {f.path}: owners of {', '.join(GUARDED)}")
        else:
            lines.append(f"overwrote {f.path} (--force)")
    lines += dict.fromkeys(f.summary for f in written if f.summary)
    lines.append("review the files written and commit them to the default branch" if written
                 else "nothing written: every file is in place")
    return lines

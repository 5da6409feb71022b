"""`arbot init`: set arbot up in an existing git repository. A plan of files from the answers, then apply it:
files that exist are kept (and said so) unless --force; a second run writes nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from pathlib import Path

import git
import yaml
from pydantic import ValidationError

from bot.config import CONFIG_FILE, Config, ConfigError, RunConfig
from bot.github.setup import GUARDED, codeowners
from runner.config import DEFAULT_ARTIFACT

WORKFLOWS = ("arbot-evaluate.yml", "arbot-propose.yml")
# GitHub reads the first of these that exists; a new one goes into .github/.
CODEOWNERS_PATHS = (".github/CODEOWNERS", "CODEOWNERS", "docs/CODEOWNERS")
TEMPLATES = files("bot") / "templates"
# The one line of each workflow that says where arbot comes from; the templates install this repository's checkout.
PACKAGE_LINE = '  ARBOT_PACKAGE: {}\n'
TEMPLATE_PACKAGE = "."
EXAMPLE_PACKAGE = "arbot @ git+https://github.com/ORG/arbot@v0.1.0"  # said where a spec is asked for
DEFAULT_BUDGET = 300.0  # training seconds per run, where neither --budget nor an answer gives one
ASSUMED_METRIC = "loss"
# What arbot writes in a repository and nothing should commit: its run artifacts and the exported results table.
IGNORED = (".arbot/", RunConfig.model_fields["results_file"].default)
# Metric names whose direction is known: a word of the name (split at _ - .) in one of these sets.
HIGHER_IS_BETTER = {"accuracy", "acc", "f1", "auc", "auroc", "precision", "recall", "score", "bleu", "rouge", "iou",
                    "map", "r2", "reward", "return", "ndcg", "mrr", "top1", "top5", "dice", "psnr", "ssim"}
LOWER_IS_BETTER = {"loss", "error", "err", "perplexity", "ppl", "bpb", "bpc", "mse", "mae", "rmse", "nll", "wer",
                   "cer", "fid", "regret", "latency"}
# A string literal naming a file in a model format, in the training script: the artifact it likely writes.
ARTIFACT_LITERAL = re.compile(r"""["']([\w.-]+\.(?:pt2|pt|pth|npz|npy|onnx|safetensors|ckpt|json|msgpack|h5))["']""")
SCRIPT_NAME = re.compile(r"(^|/)[^/]*train[^/]*\.py$")
NOT_TRAINING = ("evaluator/", "tests/", "test/", ".github/", ".venv/", "venv/")
Ask = Callable[..., object]  # typer.prompt's signature: (text, default=..., type=...) -> the answer


@dataclass(frozen=True)
class Answers:
    script: str
    allowed_paths: list[str]
    budget_seconds: float
    metric: str
    direction: str
    device: str = "auto"
    owner: str | None = None
    artifact: str = DEFAULT_ARTIFACT


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
  artifact: {j(answers.artifact)}  # the file the script writes in --out, which evaluator/ scores
evaluator:
  metric: {j(answers.metric)}  # evaluator/ reports val_<metric> (and holdout_<metric>); val decides
  direction: {j(answers.direction)}  # minimize | maximize
"""


def training_scripts(root: Path) -> list[str]:
    """The repository's files that look like a training script (train*.py, *_train.py, ...; evaluator/ and tests
    aside), shallowest first: what init offers, or takes when there is one."""
    files = git.Repo(root).git.ls_files("--cached", "--others", "--exclude-standard", "-z").split("\0")
    found = [f for f in files if SCRIPT_NAME.search(f) and not f.startswith(NOT_TRAINING)]
    return sorted(found, key=lambda f: (f.count("/"), f))


def guess_direction(metric: str) -> str | None:
    """maximize or minimize when a word of the metric's name says which (accuracy, f1; loss, error), else None."""
    words = set(re.split(r"[_.-]", metric.lower()))
    up, down = bool(words & HIGHER_IS_BETTER), bool(words & LOWER_IS_BETTER)
    return None if up == down else "maximize" if up else "minimize"


def guess_artifact(script_text: str) -> str | None:
    """The one model file name the training script spells out (e.g. "model.npz"), or None (none, or several)."""
    names = set(ARTIFACT_LITERAL.findall(script_text))
    return names.pop() if len(names) == 1 else None


def check_metric_name(metric: str) -> str:
    """The metric as evaluator.metric names it: without a split prefix (the evaluator reports val_<metric>)."""
    for split in ("val_", "holdout_"):
        if metric.startswith(split) and len(metric) > len(split):
            raise ConfigError(f"--metric {metric}: name the metric without its split: the evaluator reports "
                              f"val_<metric> and holdout_<metric>, so this would be val_{metric}; did you mean "
                              f"--metric {metric[len(split):]}?")
    return metric


def gather(root: Path, ask: Ask | None, *, script: str | None = None, allowed: str | None = None,
           budget: float | None = None, metric: str | None = None, direction: str | None = None,
           artifact: str | None = None, device: str = "auto", owner: str | None = None) -> tuple[Answers, list[str]]:
    """The answers from the options given; the rest asked for (`ask`: typer.prompt, with the inferred value as its
    default) or, with no one to ask (`ask` None: --yes, or no terminal), inferred or defaulted and said so. Only
    what cannot be inferred is an error naming the option. Returns the answers and the lines saying what was
    assumed."""
    said = []

    def take(what: str, option: str, guess, text: str, why: str, kind=str):
        if ask is not None:
            return ask(text, default=guess, type=kind) if guess is not None else ask(text, type=kind)
        if guess is None:
            raise ConfigError(f"{what}: {why}; pass {option}")
        said.append(f"assumed {what} {guess} ({why}; {option} to change)")
        return guess

    found = training_scripts(root)
    script = script or take("the training script", "--script", found[0] if found else None, "Training script",
                            f"found {', '.join(found[:3])}" if found else "no train*.py in the repository")
    allowed = allowed or take("the paths a proposal may change", "--allowed", script,
                              "Files a proposal may change (comma-separated globs)", "the training script only")
    budget = budget if budget is not None else take("the budget", "--budget", DEFAULT_BUDGET,
                                                    "Training budget per run, in seconds", "seconds per run", float)
    metric = check_metric_name(metric or take("the metric", "--metric", ASSUMED_METRIC, "Metric (your evaluator "
                                              "reports val_<metric>; e.g. loss, accuracy)", "the default"))
    guessed = guess_direction(metric)
    if direction is None:
        if ask is None and guessed is None:
            raise ConfigError(f"--direction: cannot tell whether a higher or a lower {metric} is better; pass "
                              "--direction maximize or --direction minimize")
        direction = take("the direction", "--direction", guessed or "minimize", "Direction (minimize or maximize)",
                         f"{metric} is a name where {'higher' if guessed == 'maximize' else 'lower'} is better")
    text = (root / script).read_text(errors="replace") if (root / script).is_file() else ""
    inferred = guess_artifact(text)
    artifact = artifact or take("the artifact", "--artifact", inferred or DEFAULT_ARTIFACT,
                                "The model file your script writes in --out (target.artifact)",
                                f"{script} names it" if inferred else "no single model file name in the script")
    return Answers(script=script, allowed_paths=[p.strip() for p in str(allowed).split(",") if p.strip()],
                   budget_seconds=float(budget), metric=metric, direction=direction, device=device, owner=owner,
                   artifact=artifact), said


def gitignore(root: Path) -> File:
    """.gitignore with the entries for what arbot writes (IGNORED) added where missing."""
    old = (root / ".gitignore").read_text() if (root / ".gitignore").is_file() else ""
    have = {line.strip() for line in old.splitlines()}
    missing = [entry for entry in IGNORED if entry not in have and entry.rstrip("/") not in have]
    text = old + ("\n" if old and not old.endswith("\n") else "") + "".join(f"{e}\n" for e in missing)
    return File(".gitignore", text, extends=True, note=f"{', '.join(missing)} (what arbot writes)")


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
        out.append(File(path, codeowners(old, answers.owner), extends=True, note=f"owners of {', '.join(GUARDED)}"))
    return out + [gitignore(root)]


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
            lines.append(f"added to {f.path}: {f.note}")
        else:
            lines.append(f"overwrote {f.path} (--force)")
    lines += dict.fromkeys(f.summary for f in written if f.summary)
    lines.append("review the files written and commit them to the default branch" if written
                 else "nothing written: every file is in place")
    return lines

"""`arbot init` (bot/init.py) in a fresh repository holding only a toy training script: what it writes, that it
keeps what exists, that a second run writes nothing, that the evaluator skeleton fails loudly, and that once it
is filled in `arbot run` makes a first experiment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import git
import pytest
import yaml
from typer.testing import CliRunner

from bot.cli import app
from bot.config import load_config
from bot.forges.local import LocalForge

ROOT = Path(__file__).resolve().parents[1]
TOY_SCRIPT = """\
import argparse, json, math, pathlib, random
LR = 0.001
p = argparse.ArgumentParser()
for flag in ("--data", "--out", "--budget", "--seed", "--device"):
    p.add_argument(flag)
p.add_argument("--set", action="append", default=[])
args = p.parse_args()
random.seed(int(args.seed))
pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
(pathlib.Path(args.out) / "model.pt2").write_text(json.dumps({"loss": abs(math.log10(LR) + 2) + random.gauss(0, 0.05)}))
"""
# The skeleton's two functions filled in for the toy: fixed splits, and the loss the toy's model file carries.
FILLED = {
    '    raise FillMeIn("prepare()")': '''\
    import os, pathlib
    d = pathlib.Path(cache) / "toy"
    if not os.environ.get("ARBOT_SPLIT_ID"):  # prepare builds; scoring (a read-only cache) only finds
        d.mkdir(parents=True, exist_ok=True)
        for name in ("train", "val", "holdout"):
            (d / name).write_text(name)
    return {"split_id": "toy", "fingerprint": "toy-1", "split_key": "none",
            **{name: str(d / name) for name in ("train", "val", "holdout")}}''',
    '    raise FillMeIn("score()")': '''\
    import pathlib
    loss = json.loads(pathlib.Path(model).read_text())["loss"]
    return {"status": "ok", "metrics": {f"{split}_{METRIC}": loss for split in splits}, "reason": "",
            "fingerprint": prepared["fingerprint"]}''',
}
FLAGS = ["--script", "train.py", "--allowed", "train.py, model/*.py", "--budget", "60",
         "--metric", "accuracy", "--direction", "maximize", "--artifact", "model.pt2", "--owner", "@org/ml"]
WRITTEN = ["arbot.yml", ".github/workflows/arbot-evaluate.yml", ".github/workflows/arbot-propose.yml",
           "evaluator/__init__.py", "evaluator/__main__.py", ".github/CODEOWNERS", ".gitignore"]
THIS_REPOSITORYS_PACKAGE = 'ARBOT_PACKAGE: "."'  # this repository's workflows install its checkout
GIT_PACKAGE = "arbot @ git+https://example.com/arbot@v1"


@pytest.fixture
def toy(tmp_path) -> Path:
    root = tmp_path / "toy"
    root.mkdir()
    repo = git.Repo.init(root, initial_branch="main")
    (root / "train.py").write_text(TOY_SCRIPT)
    repo.index.add(["train.py"])
    repo.index.commit("a toy training script", author=git.Actor("t", "t@example.com"),
                      committer=git.Actor("t", "t@example.com"))
    return root


def init(root: Path, *args: str, input: str | None = None):
    return CliRunner().invoke(app, ["init", *args, "--repo", str(root)], input=input, terminal_width=200)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and ".git" not in p.parts}


def test_init_with_flags_writes_every_file(toy):
    r = init(toy, *FLAGS)
    assert r.exit_code == 0, r.output
    assert [line.split()[1].rstrip(":") for line in r.output.splitlines() if line.startswith("wrote")] == WRITTEN
    assert yaml.safe_load((toy / "arbot.yml").read_text()) == {
        "target": {"script": "train.py", "allowed_paths": ["train.py", "model/*.py"], "budget_seconds": 60,
                   "device": "auto", "artifact": "model.pt2"},
        "evaluator": {"metric": "accuracy", "direction": "maximize"},
    }
    default = f"arbot=={version('arbot')}"  # the arbot that ran init
    for name in ("arbot-evaluate.yml", "arbot-propose.yml"):
        ours = (ROOT / ".github/workflows" / name).read_text()
        assert (toy / ".github/workflows" / name).read_text() == ours.replace(
            THIS_REPOSITORYS_PACKAGE, f'ARBOT_PACKAGE: "{default}"')
    assert (f'the workflows install arbot with pip install "{default}": another with --arbot-package '
            '(e.g. "arbot @ git+https://github.com/ORG/arbot@v0.1.0"), or edit ARBOT_PACKAGE at their top'
            ) in r.output.splitlines()
    assert "/evaluator/ @org/ml\n/.github/ @org/ml\n" in (toy / ".github/CODEOWNERS").read_text()
    assert 'METRIC, DIRECTION = "accuracy", "maximize"' in (toy / "evaluator/__main__.py").read_text()
    assert (toy / "train.py").read_text() == TOY_SCRIPT


def test_written_config_loads_with_the_config_loader(toy):
    assert init(toy, *FLAGS).exit_code == 0
    config = load_config(toy / "arbot.yml")
    assert config.target.script == "train.py" and config.target.allowed_paths == ["train.py", "model/*.py"]
    assert config.target.budget_seconds == 60 and config.target.device == "auto"
    assert (config.evaluator.metric, config.evaluator.direction) == ("accuracy", "maximize")


def test_second_run_writes_nothing_and_says_so(toy):
    assert init(toy, *FLAGS).exit_code == 0
    before = snapshot(toy)
    r = init(toy, *FLAGS)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [f"kept {path} (up to date)" for path in WRITTEN] + [
        "nothing written: every file is in place"]
    assert snapshot(toy) == before


def test_an_existing_file_is_kept_and_reported_unless_forced(toy):
    mine = "target:\n  script: train.py\n  budget_seconds: 5\n"
    (toy / "arbot.yml").write_text(mine)
    r = init(toy, *FLAGS)
    assert r.exit_code == 0, r.output
    assert "kept arbot.yml (exists and differs from what init writes; --force overwrites it)" in r.output
    assert (toy / "arbot.yml").read_text() == mine
    assert "wrote evaluator/__main__.py" in r.output

    r = init(toy, *FLAGS, "--force")
    assert "overwrote arbot.yml (--force)" in r.output
    assert not any(line.startswith("wrote") for line in r.output.splitlines())
    assert yaml.safe_load((toy / "arbot.yml").read_text())["evaluator"]["metric"] == "accuracy"


def test_owners_are_added_to_the_codeowners_file_github_reads(toy):
    (toy / "CODEOWNERS").write_text("* @org/everyone\n/evaluator/ @org/eval\n")
    r = init(toy, *FLAGS)
    assert "added to CODEOWNERS: owners of /evaluator/, /.github/" in r.output
    assert (toy / "CODEOWNERS").read_text() == ("* @org/everyone\n/evaluator/ @org/eval\n# arbot: the evaluator and "
                                                "the workflows decide what wins; changes to them need an owner's "
                                                "review\n/.github/ @org/ml\n")
    assert not (toy / ".github/CODEOWNERS").exists()


def test_the_evaluator_skeleton_fails_loudly_until_filled_in(toy):
    assert init(toy, *FLAGS).exit_code == 0
    (toy / "model.pt2").write_bytes(b"toy")
    for command in (["score", "--model", "model.pt2"], ["prepare"]):
        proc = subprocess.run([sys.executable, "-m", "evaluator", *command, "--cache", str(toy / "cache")],
                              cwd=toy, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout == ""
        assert "evaluator/__main__.py is the skeleton `arbot init` wrote; fill me in" in proc.stderr


def test_outside_a_git_repository_it_refuses_and_writes_nothing(tmp_path):
    (tmp_path / "train.py").write_text(TOY_SCRIPT)
    r = init(tmp_path, *FLAGS)
    assert r.exit_code == 2
    assert "is not inside a git repository" in " ".join(r.output.split()) and "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.py"]


def test_a_missing_script_or_a_bad_answer_is_one_clear_error(toy):
    r = init(toy, *FLAGS, "--script", "nope.py")
    assert r.exit_code == 2 and "training script nope.py: no such file in the repository" in " ".join(r.output.split())
    r = init(toy, *FLAGS, "--direction", "up")
    assert r.exit_code == 2 and "evaluator.direction: Input should be 'minimize' or 'maximize' (got 'up')" in r.output
    r = init(toy, *FLAGS, "--budget", "-1")
    assert r.exit_code == 2 and "target.budget_seconds: Input should be greater than 0 (got -1.0)" in r.output
    assert not (toy / "arbot.yml").exists()


def in_a_terminal(root: Path, answers: list[str]) -> str:
    """`arbot init` on a real pseudo-terminal: each answer typed after the next prompt shows. Returns the output."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "bot", "init", "--repo", str(root)], stdin=slave, stdout=slave,
                            stderr=slave, close_fds=True)
    os.close(slave)
    out, pending = b"", list(answers)
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        assert ready, out.decode()
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed: init exited
            break
        if not chunk:
            break
        out += chunk
        if pending and out.rstrip().endswith(b":"):
            os.write(master, pending.pop(0).encode() + b"\n")
    proc.wait(timeout=60)
    os.close(master)
    text = out.decode().replace("\r\n", "\n")
    assert proc.returncode == 0, text
    return text


def test_it_asks_for_what_the_flags_do_not_give_in_a_terminal(toy):
    # script (default: the one found), allowed paths (default: the script), budget, metric, direction (default: from
    # the metric's name), artifact (default: the one the script names)
    out = in_a_terminal(toy, ["", "", "120", "loss", "", ""])
    assert "Training script [train.py]:" in out  # a script that exists
    assert "Files a proposal may change (comma-separated globs) [train.py]:" in out
    assert "Direction (minimize or maximize) [minimize]:" in out
    assert "The model file your script writes in --out (target.artifact) [model.pt2]:" in out
    assert yaml.safe_load((toy / "arbot.yml").read_text()) == {
        "target": {"script": "train.py", "allowed_paths": ["train.py"], "budget_seconds": 120, "device": "auto",
                   "artifact": "model.pt2"},
        "evaluator": {"metric": "loss", "direction": "minimize"},
    }
    assert not (toy / ".github/CODEOWNERS").exists()  # no --owner, no CODEOWNERS


def test_without_a_terminal_it_infers_what_it_can_and_says_what_it_assumed(toy):
    """No terminal (CliRunner's stdin, CI), or --yes: nothing is asked; each value not given is inferred or the
    default, and said."""
    (toy / "train.py").write_text(TOY_SCRIPT.replace('"model.pt2"', '"weights.npz"'))
    r = init(toy, "--metric", "accuracy")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    for line in ("assumed the training script train.py (found train.py; --script to change)",
                 "assumed the budget 300.0 (seconds per run; --budget to change)",
                 "assumed the direction maximize (accuracy is a name where higher is better; --direction to change)",
                 "assumed the artifact weights.npz (train.py names it; --artifact to change)",
                 "wrote .gitignore: .arbot/, results.tsv (what arbot writes)"):
        assert line in lines, r.output
    config = load_config(toy / "arbot.yml")
    assert (config.evaluator.metric, config.evaluator.direction, config.target.artifact) == (
        "accuracy", "maximize", "weights.npz")
    assert (toy / ".gitignore").read_text() == ".arbot/\nresults.tsv\n"
    assert "assumed the metric loss" in init(toy, "--yes", "--force").output  # --yes: the same in a terminal


def test_the_gitignore_gets_only_the_entries_it_lacks(toy):
    (toy / ".gitignore").write_text("*.pyc\n.arbot\n")
    r = init(toy, *FLAGS)
    assert "added to .gitignore: results.tsv (what arbot writes)" in r.output.splitlines()
    assert (toy / ".gitignore").read_text() == "*.pyc\n.arbot\nresults.tsv\n"


@pytest.mark.parametrize("args, error", [
    (["--metric", "val_accuracy"], "--metric val_accuracy: name the metric without its split: the evaluator reports "
     "val_<metric> and holdout_<metric>, so this would be val_val_accuracy; did you mean --metric accuracy?"),
    (["--metric", "kappa"], "--direction: cannot tell whether a higher or a lower kappa is better; pass --direction "
     "maximize or --direction minimize"),
    (["--script", "nope.py"], "training script nope.py: no such file in the repository"),
])
def test_what_it_cannot_infer_is_one_clear_error_and_writes_nothing(toy, args, error):
    r = init(toy, "--yes", *args)
    assert r.exit_code == 2 and error in " ".join(r.output.split()), r.output
    assert not (toy / "arbot.yml").exists()


def test_without_a_training_script_to_find_it_names_the_option(toy):
    git.Repo(toy).git.mv("train.py", "main.py")
    r = init(toy, "--yes")
    assert r.exit_code == 2
    assert "the training script: no train*.py in the repository; pass --script" in " ".join(r.output.split())


@pytest.mark.parametrize("name", ["arbot-evaluate.yml", "arbot-propose.yml"])
def test_the_packaged_workflows_are_this_repositorys(name):
    """`arbot init` writes bot/templates/<name> with its own ARBOT_PACKAGE: after changing
    .github/workflows/<name>, copy it there."""
    ours = (ROOT / ".github/workflows" / name).read_text()
    assert (ROOT / "bot/templates" / name).read_text() == ours
    assert ours.count(f"\n  {THIS_REPOSITORYS_PACKAGE}\n") == 1  # the one line init replaces


def workflow(root: Path, name: str) -> dict:
    return yaml.safe_load((root / ".github/workflows" / name).read_text())


def pip_arguments(wf: dict, job: str, tmp: Path) -> list[list[str]]:
    """Each `Install` step of the job, run as GitHub runs it with the workflow's env and stand-ins for python3 and
    pip: the arguments pip got, one list per step."""
    bin_dir, pip, log = tmp / "bin", tmp / "pip", tmp / "pip-args"
    bin_dir.mkdir(exist_ok=True)
    pip.write_text(f'#!/bin/bash\nprintf "%s\\0" "$@" > {log}\n')
    (bin_dir / "python3").write_text(f'#!/bin/bash\n[ "$1 $2" = "-m venv" ] || exit 9\nmkdir -p .venv/bin\n'
                                     f'cp {pip} .venv/bin/pip\n')
    for stub in (pip, bin_dir / "python3"):
        stub.chmod(0o755)
    out = []
    for step in (s for s in wf["jobs"][job]["steps"] if s.get("name", "").startswith("Install")):
        work = tmp / f"{job}-{len(out)}"
        work.mkdir()
        subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=work, check=True,
                       env={"PATH": f"{bin_dir}:/usr/bin:/bin", **wf["env"]}, timeout=60)
        out.append(log.read_text().split("\0")[:-1])
    return out


def test_the_workflows_install_exactly_the_arbot_package_given(toy, tmp_path):
    r = init(toy, *FLAGS, "--arbot-package", GIT_PACKAGE)
    assert r.exit_code == 0, r.output
    assert f'the workflows install arbot with pip install "{GIT_PACKAGE}"' in r.output
    evaluate, propose = workflow(toy, "arbot-evaluate.yml"), workflow(toy, "arbot-propose.yml")
    assert evaluate["env"] == propose["env"] == {"ARBOT_PACKAGE": GIT_PACKAGE}
    assert pip_arguments(evaluate, "train", tmp_path) == [["install", "--quiet", GIT_PACKAGE]]
    assert pip_arguments(evaluate, "report", tmp_path) == [["install", "--quiet", "--no-deps", GIT_PACKAGE]]
    assert pip_arguments(propose, "decide-and-propose", tmp_path) == [
        ["install", "--quiet", "--extra-index-url", "https://download.pytorch.org/whl/cpu", GIT_PACKAGE]]
    render = next(s for s in evaluate["jobs"]["report"]["steps"] if s["name"].startswith("Render"))
    assert render["run"].startswith(".venv/bin/python -I -m bot.github.report --result artifact/result.json ")


def test_the_report_step_renders_with_the_installed_module_not_a_bot_package_of_the_checkout(toy, tmp_path):
    assert init(toy, *FLAGS).exit_code == 0
    report = workflow(toy, "arbot-evaluate.yml")["jobs"]["report"]
    work = tmp_path / "report"
    (work / "bot/github").mkdir(parents=True)  # the user's own `bot` package, which must not shadow arbot's
    for name in ("bot/__init__.py", "bot/github/__init__.py"):
        (work / name).write_text("")
    (work / "bot/github/report.py").write_text("raise SystemExit('the checkout bot package ran')\n")
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)  # this project's venv: the installed arbot
    (work / ".arbot-notes").mkdir()
    render = next(s for s in report["steps"] if s["name"].startswith("Render"))
    env = {**os.environ, "COMMIT": "a" * 40, "CHAMPION": "c" * 40, "REQUEST": "exp-1:aaaa:seed-0:val",
           "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "o/r", "GITHUB_RUN_ID": "7",
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    r = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", render["run"]], cwd=work, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    check = json.loads((work / "check-run.json").read_text())  # no artifact: a failure check run, still posted
    assert check["conclusion"] == "failure" and check["external_id"] == "exp-1:aaaa:seed-0:val"


def test_the_report_module_needs_nothing_but_the_standard_library():
    """The report job installs arbot with --no-deps: `-m bot.github.report` with no site-packages at all."""
    r = subprocess.run([sys.executable, "-E", "-S", "-m", "bot.github.report", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--result" in r.stdout, r.stderr


@pytest.mark.parametrize("spec", ["-e .", "", "arbot==1\nrm -rf /", "arbot @ ${{ github.ref }}"])
def test_an_arbot_package_that_is_not_one_pip_argument_is_refused(toy, spec):
    r = init(toy, *FLAGS, "--arbot-package", spec)
    assert r.exit_code == 2 and "give one pip requirement or path" in " ".join(r.output.split()), r.output
    assert not (toy / ".github").exists()


def doctor(root: Path) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["doctor", "--repo", str(root)])
    return r.exit_code, " ".join(r.output.split())  # rich wraps lines at the terminal's width


def test_after_init_doctor_rejects_the_skeleton_accepts_it_filled_in_and_a_first_experiment_runs(toy, tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.setenv("ARBOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ARBOT_SPLIT_KEY", "a secret")  # else doctor warns that val and holdout follow a public rule
    r = init(toy, "--script", "train.py", "--allowed", "train.py", "--budget", "2", "--metric", "loss",
             "--direction", "minimize", "--device", "cpu")  # cpu: doctor need not import torch to say what auto uses
    assert r.exit_code == 0, r.output
    repo = git.Repo(toy)
    actor = git.Actor("t", "t@example.com")
    repo.git.add(A=True)
    repo.index.commit("arbot init", author=actor, committer=actor)
    code, said = doctor(toy)
    assert code == 1, said
    assert ("FAIL data splits: the evaluator's prepare failed: `prepare` exited 2: evaluator error: prepare() is not "
            "written yet: evaluator/__main__.py is the skeleton `arbot init` wrote; fill me in") in said
    assert said.endswith("a run is blocked by 1 check(s): data splits")

    main = toy / "evaluator/__main__.py"
    text = main.read_text()
    for skeleton, filled in FILLED.items():
        assert skeleton in text
        text = text.replace(skeleton, filled)
    main.write_text(text)
    code, said = doctor(toy)  # filled in but not committed: runs use the committed skeleton
    assert code == 1 and "warn uncommitted changes: evaluator/__main__.py" in said and "FAIL data splits" in said
    repo.git.add(A=True)
    repo.index.commit("the evaluator filled in", author=actor, committer=actor)
    code, said = doctor(toy)
    assert code == 0, said
    assert "ok data splits: fingerprint toy-1" in said and "FAIL" not in said and "ready for `arbot run`" in said

    proc = subprocess.run([sys.executable, "-m", "bot", "run", "-n", "1", "--repo", str(toy)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [rec] = LocalForge(repo).experiments()
    assert rec.id == "exp-1" and rec.decision is not None and rec.decision.verdict in {"win", "loss"}
    assert rec.runs and all("val_loss" in run.metrics for run in rec.runs)

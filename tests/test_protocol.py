"""The evaluator protocol (docs/evaluator.md): the built-in evaluator's real answers against the committed schemas
(runner/schemas/), wrong answers failing them, the version handshake and its errors, the runner's checks, a
configured artifact, and the training-contract errors of a script that writes nothing or ignores --budget."""

from __future__ import annotations

import io
import json
import sys
import textwrap
import time
from pathlib import Path

import git
import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from bot.cli import app
from runner import protocol
from runner.config import EvaluatorConfig, TargetConfig
from runner.job import ChampionTiming, EvaluatorError, Runner, budget_limit
from runner.process import scrubbed_env
from runner.protocol import (PROTOCOL_VERSION, ProtocolError, check_metric, check_prepared, check_score, handshake,
                             schema)
from runner.scorer import EvaluatorWorker

from evaluator import data
from evaluator.__main__ import serve

from .test_evaluator import MakesNaN, Uniform, cache, evaluator_cli, export, prepared  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = sorted(p.name.removesuffix(".schema.json") for p in (ROOT / "runner/schemas").glob("*.schema.json"))


def valid(name: str, answer: object) -> None:
    jsonschema.validate(answer, schema(name), cls=jsonschema.Draft202012Validator)


def invalid(name: str, answer: object) -> str:
    with pytest.raises(jsonschema.ValidationError) as e:
        valid(name, answer)
    return e.value.message


def test_the_schemas_are_json_schemas_of_every_message():
    assert SCHEMAS == ["fingerprint-answer", "prepare-answer", "protocol-answer", "score-answer", "score-request"]
    for name in SCHEMAS:
        jsonschema.Draft202012Validator.check_schema(schema(name))


# --- the built-in evaluator's real answers --------------------------------------------------------------------


def test_protocol_answer_of_the_built_in_evaluator():
    proc = evaluator_cli("protocol")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    valid("protocol-answer", answer)
    assert answer == {"protocol": PROTOCOL_VERSION, "metric": "bpb", "direction": "minimize"}
    assert handshake(ROOT / "evaluator", sys.executable, scrubbed_env(ROOT, 1)) == answer


def test_prepare_and_fingerprint_answers(prepared):
    answer = json.loads(evaluator_cli("prepare", "--cache", prepared.dir.parent).stdout)
    valid("prepare-answer", answer)
    assert answer["train"] == str(prepared.train) and answer["fingerprint"] == prepared.fingerprint
    answer = json.loads(evaluator_cli("fingerprint", "--cache", prepared.dir.parent).stdout)
    valid("fingerprint-answer", answer)
    assert answer["fingerprint"] == prepared.fingerprint


def test_score_answers_ok_invalid_and_error(prepared, tmp_path, monkeypatch, capsys):
    """The warm worker's loop (serve, in this process: torch is imported already) answers each kind; `score`
    prints the same answers (its exit codes: tests/test_evaluator.py)."""
    requests = [{"model": str(export(Uniform(), tmp_path / "uniform.pt2")), "splits": ["val"], "device": "cpu"},
                {"model": str(export(MakesNaN(), tmp_path / "nan.pt2")), "splits": ["val"], "device": "cpu"},
                {"model": str(tmp_path / "missing.pt2"), "splits": ["val", "holdout"], "device": "cpu"}]
    for request in requests:
        valid("score-request", request)
    monkeypatch.delenv(data.SPLIT_ID_ENV, raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in requests)))
    assert serve(str(prepared.dir.parent)) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["status"] for a in answers] == ["ok", "invalid", "error"]
    for answer in answers:
        valid("score-answer", answer)
    assert answers[0]["metrics"] == {"val_bpb": pytest.approx(8.0)}
    check_score(answers[0], ("val",), "bpb")


def test_the_runners_score_request_is_the_schemas(tmp_path):
    """The request line the warm worker sends, as an evaluator reads it on stdin (echoed back in the reason)."""
    worker = EvaluatorWorker("c" * 40, tmp_path / "cache", threads=1)
    (worker.dir / "evaluator").mkdir()
    (worker.dir / "evaluator/__main__.py").write_text(
        "import json, sys\nfor line in sys.stdin:\n"
        "    print(json.dumps({'status': 'error', 'reason': line.strip()}), flush=True)\n")
    try:
        answer = worker.score(tmp_path / "weights.npz", ("val", "holdout"), "cpu", deadline=60)
    finally:
        worker.close()
    valid("score-answer", answer)
    request = json.loads(answer["reason"])
    valid("score-request", request)
    assert request == {"model": str(tmp_path / "weights.npz"), "splits": ["val", "holdout"], "device": "cpu"}


@pytest.mark.parametrize("printed", ["loading the model...", '["ok"]', '{"status": "fine"}'])
def test_an_answer_line_outside_the_protocol_is_the_evaluators_failure(tmp_path, printed):
    """Not the candidate's: the runner stops with a setup error (status error) instead of charging the model."""
    worker = EvaluatorWorker("c" * 40, tmp_path / "cache", threads=1)
    (worker.dir / "evaluator").mkdir()
    (worker.dir / "evaluator/__main__.py").write_text(f"import sys\nfor line in sys.stdin:\n    print({printed!r}, flush=True)\n")
    try:
        answer = worker.score(tmp_path / "model.pt2", ("val",), "cpu", deadline=60)
    finally:
        worker.close()
    assert answer["status"] == "error" and "not a score answer of the protocol (docs/evaluator.md#score" in answer["reason"]
    assert printed in answer["reason"]


@pytest.mark.parametrize("name, answer, complaint", [
    ("protocol-answer", {"protocol": "1"}, "is not of type 'integer'"),
    ("protocol-answer", {"version": 1}, "'protocol' is a required property"),
    ("protocol-answer", {"protocol": 1, "direction": "up"}, "is not one of"),
    ("prepare-answer", {"split_id": "x", "train": "/t", "val": "/v", "holdout": "/h", "split_key": "none"},
     "'fingerprint' is a required property"),
    ("fingerprint-answer", {"fingerprint": "", "split_id": "x", "split_key": "none"}, "should be non-empty"),
    ("score-request", {"model": "/m", "splits": ["train"], "device": "cpu"}, "is not one of"),
    ("score-request", {"model": "/m", "splits": ["val", "val"], "device": "cpu"}, "non-unique"),
    ("score-answer", {"status": "ok", "metrics": {"val_bpb": "3.1"}, "reason": "", "fingerprint": "f"},
     "'3.1' is not of type 'number'"),
    ("score-answer", {"status": "ok", "metrics": {"train_bpb": 3.1}, "reason": "", "fingerprint": "f"},
     "'train_bpb' does not match"),
    ("score-answer", {"status": "ok", "metrics": {}, "reason": "", "fingerprint": "f"}, "should be non-empty"),
    ("score-answer", {"status": "ok", "metrics": {"val_bpb": 3.1}, "reason": ""}, "'fingerprint' is a required"),
    ("score-answer", {"status": "invalid", "reason": ""}, "'' should be non-empty"),
    ("score-answer", {"status": "invalid", "reason": "NaN", "metrics": {"val_bpb": 3.0}}, "is expected to be empty"),
    ("score-answer", {"status": "maybe", "reason": "?"}, "'maybe' is not one of ['ok', 'invalid', 'error']"),
])
def test_a_wrong_answer_fails_its_schema(name, answer, complaint):
    assert complaint in invalid(name, answer)


# --- the handshake ----------------------------------------------------------------------------------------------


def evaluator_package(root: Path, main: str) -> Path:
    package = root / "evaluator"
    package.mkdir(parents=True)
    (package / "__main__.py").write_text(textwrap.dedent(main))
    return package


def test_an_evaluator_of_another_version_is_refused_with_the_fix(tmp_path):
    newer = evaluator_package(tmp_path / "new", 'print(\'{"protocol": 2}\')')
    with pytest.raises(ProtocolError, match=f"speaks protocol 2, this runner speaks {PROTOCOL_VERSION}: upgrade arbot"):
        handshake(newer, sys.executable, scrubbed_env(tmp_path, 1))
    older = evaluator_package(tmp_path / "old", 'print(\'{"protocol": 0}\')')
    with pytest.raises(ProtocolError, match="speaks protocol 0, .*: update the evaluator to protocol 1"):
        handshake(older, sys.executable, scrubbed_env(tmp_path, 1))


@pytest.mark.parametrize("main", [
    # an evaluator written before the protocol had versions: argparse refuses the command
    """import argparse; p = argparse.ArgumentParser(); p.add_argument("command", choices=["prepare", "score"]); p.parse_args()""",
    """print("hello")""",
    """print('{"protocol": "one"}')""",
])
def test_a_program_that_does_not_answer_the_protocol_is_not_an_arbot_evaluator(tmp_path, main):
    package = evaluator_package(tmp_path, main)
    with pytest.raises(ProtocolError, match="does not answer the protocol command .*it is not an arbot evaluator of "
                                            "protocol 1, see docs/evaluator.md"):
        handshake(package, sys.executable, scrubbed_env(tmp_path, 1))


def test_no_package_and_a_hung_evaluator(tmp_path, monkeypatch):
    with pytest.raises(ProtocolError, match="no evaluator at .*: expected a Python package with an __main__.py"):
        handshake(tmp_path / "evaluator", sys.executable, scrubbed_env(tmp_path, 1))
    monkeypatch.setattr(protocol, "HANDSHAKE_SECONDS", 0.5)
    hung = evaluator_package(tmp_path, "import time; time.sleep(30)")
    with pytest.raises(ProtocolError, match="did not answer the protocol command within 0.5 s"):
        handshake(hung, sys.executable, scrubbed_env(tmp_path, 1))


def test_the_metric_and_the_score_answer_are_checked_against_the_configuration():
    check_metric({"protocol": 1}, "accuracy", "maximize")  # an evaluator need not say
    check_metric({"protocol": 1, "metric": "accuracy", "direction": "maximize"}, "accuracy", "maximize")
    with pytest.raises(ProtocolError, match="reports bpb \\(minimize\\), but arbot.yml says evaluator.metric: "
                                            "accuracy, evaluator.direction: maximize: make them agree"):
        check_metric({"protocol": 1, "metric": "bpb", "direction": "minimize"}, "accuracy", "maximize")
    with pytest.raises(ProtocolError, match="answered without holdout_accuracy \\(it reported val_accuracy\\)"):
        check_score({"status": "ok", "metrics": {"val_accuracy": 0.9}}, ("val", "holdout"), "accuracy")
    with pytest.raises(ProtocolError, match="not finite numbers: val_accuracy"):
        check_score({"status": "ok", "metrics": {"val_accuracy": float("nan")}}, ("val",), "accuracy")
    with pytest.raises(ProtocolError, match="prepare answered without holdout, fingerprint \\(it answered split_id, "):
        check_prepared({"split_id": "x", "train": "/t", "val": "/v", "split_key": "none"})
    with pytest.raises(ProtocolError, match="prepare printed no JSON object"):
        check_prepared(None)


# --- the runner: the handshake, a configured artifact, the training contract ---------------------------------------

# A toy evaluator speaking the protocol (stdlib only): its splits are three small files; it scores a JSON artifact
# by the accuracy written in it, refusing any file not named as target.artifact says.
TOY_EVALUATOR = """\
import argparse, json, os, pathlib, sys
PROTOCOL = {protocol}
p = argparse.ArgumentParser()
sub = p.add_subparsers(dest="command", required=True)
sub.add_parser("protocol")
for command in ("prepare", "fingerprint", "serve"):
    sub.add_parser(command).add_argument("--cache", required=True)
args = p.parse_args()
if args.command == "protocol":
    print(json.dumps({{"protocol": PROTOCOL, "metric": "acc", "direction": "maximize"}}))
    sys.exit(0)
d = pathlib.Path(args.cache) / "toy"
if not os.environ.get("ARBOT_SPLIT_ID"):
    d.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val", "holdout"):
        (d / name).write_text(name)
prepared = {{"split_id": "toy", "fingerprint": "toy-1", "split_key": "none",
            **{{name: str(d / name) for name in ("train", "val", "holdout")}}}}
if args.command != "serve":
    print(json.dumps(prepared))
    sys.exit(0)
for line in sys.stdin:
    model = pathlib.Path(json.loads(line)["model"])
    if model.name != "weights.json":
        out = {{"status": "invalid", "reason": f"expected weights.json, got {{model.name}}"}}
    else:
        out = {{"status": "ok", "metrics": {{"val_acc": json.loads(model.read_text())["acc"]}}, "reason": "",
               "fingerprint": "toy-1"}}
    print(json.dumps(out), flush=True)
"""
WRITES_WEIGHTS = """\
import argparse, json, pathlib
p = argparse.ArgumentParser()
for flag in ("--data", "--out", "--budget", "--seed", "--device"):
    p.add_argument(flag)
p.add_argument("--set", action="append", default=[])
args = p.parse_args()
pathlib.Path(args.out, "weights.json").write_text(json.dumps({"acc": 0.75}))
"""
WRITES_NOTHING = "print('trained, but saved nothing')\n"
IGNORES_BUDGET = "import time\nprint('training for as long as I like')\ntime.sleep(60)\n"
CONFIG = {"target": {"script": "train/train.py", "allowed_paths": ["train/train.py"], "artifact": "weights.json",
                     "budget_seconds": 0.5, "grace_seconds": 1.0, "budget_tolerance_seconds": 0.1, "threads": 1},
          "evaluator": {"metric": "acc", "direction": "maximize"}}


def toy_repo(path: Path, script: str, protocol_version: int = PROTOCOL_VERSION) -> git.Repo:
    path.mkdir(parents=True)
    repo = git.Repo.init(path, initial_branch="main")
    for rel, text in {"train/train.py": script, "evaluator/__main__.py": TOY_EVALUATOR.format(protocol=protocol_version),
                      "arbot.yml": yaml.safe_dump(CONFIG)}.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    repo.git.add(A=True)
    repo.index.commit("toy", author=git.Actor("t", "t@example.com"), committer=git.Actor("t", "t@example.com"))
    return repo


def toy_runner(repo: git.Repo, tmp_path: Path) -> Runner:
    return Runner(repo, TargetConfig(**CONFIG["target"]),
                  EvaluatorConfig(**CONFIG["evaluator"], cache_dir=str(tmp_path / "cache")),
                  artifacts=tmp_path / "runs")


def test_the_configured_artifact_is_what_the_evaluator_scores(tmp_path):
    repo = toy_repo(tmp_path / "r", WRITES_WEIGHTS)
    result = toy_runner(repo, tmp_path).run("HEAD", "HEAD")
    assert result.ok, result.reason
    assert result.metrics == {"val_acc": 0.75} and result.sandbox == "bwrap"
    kept = tmp_path / "runs" / repo.head.commit.hexsha[:12] / "seed-0" / "weights.json"
    assert json.loads(kept.read_text()) == {"acc": 0.75}


def test_a_script_that_writes_no_artifact_is_told_the_contract(tmp_path):
    repo = toy_repo(tmp_path / "r", WRITES_NOTHING)
    result = toy_runner(repo, tmp_path).run("HEAD", "HEAD")
    assert result.status == "crash"
    assert result.reason == ("the training script exited 0 but wrote no out/weights.json: the training contract "
                             "(docs/evaluator.md#training-script) requires it to write its model into the --out "
                             "directory as weights.json (target.artifact in arbot.yml)")


def test_a_script_that_ignores_the_budget_is_told_the_contract(tmp_path):
    repo = toy_repo(tmp_path / "r", IGNORES_BUDGET)
    runner = toy_runner(repo, tmp_path)
    result = runner.run("HEAD", "HEAD")  # the champion: killed at budget + grace
    assert result.status == "timeout" and result.train_seconds < 30
    assert result.reason.startswith("training ran past its budget of 0.5 s plus 1 s grace and was killed; the training "
                                    "contract (docs/evaluator.md#training-script) requires the script to stop training "
                                    "within --budget seconds (0.5 here)")
    head = repo.head.commit.hexsha
    candidate = repo.index.commit("a candidate", parent_commits=[repo.head.commit], head=False,
                                  author=git.Actor("t", "t@example.com"), committer=git.Actor("t", "t@example.com"))
    # a candidate: held to budget + the champion's start-up + tolerance
    result = runner.run(candidate.hexsha, head, timing=ChampionTiming(0.2, 0.1))
    assert result.status == "timeout" and result.reason.startswith("over_budget: training ran past")
    assert "requires the script to stop training within --budget seconds (0.5 here)" in result.reason


SLOW_THEN_OUT_OF_MEMORY = "import time\ntime.sleep(6.5)\nraise MemoryError('filled its memory limit')\n"


def test_a_crash_that_also_ran_long_is_named_a_crash(tmp_path):
    """A memory bomb spends seconds filling its limit before it dies: its record names the limit it hit, not the
    time it took (it has no model either way, so the verdict cannot be a win)."""
    repo = toy_repo(tmp_path / "r", SLOW_THEN_OUT_OF_MEMORY)
    target = TargetConfig(**{**CONFIG["target"], "budget_tolerance_seconds": 4.0, "grace_seconds": 10.0})
    runner = Runner(repo, target, EvaluatorConfig(**CONFIG["evaluator"], cache_dir=str(tmp_path / "cache")))
    head = repo.head.commit
    timing = ChampionTiming(0.5, 0.1)  # held: rejected past 0.5 + 0.5 + 4 = 5 s, killed at 9 s (slack to start)
    candidate = repo.index.commit("a candidate", parent_commits=[head], head=False,
                                  author=git.Actor("t", "t@example.com"), committer=git.Actor("t", "t@example.com"))
    result = runner.run(candidate.hexsha, head.hexsha, timing=timing)
    assert result.train_seconds > budget_limit(target, timing).reject
    assert result.status == "crash" and result.reason.startswith("training exited with code 1 (out of memory")


def test_a_run_no_longer_needed_is_stopped_while_it_trains(tmp_path):
    """A pool cancels a run whose experiment was decided or went stale (bot.executors.pool): the runner asks
    `stop` while the script trains and kills it at once, instead of training to the budget for nothing."""
    repo = toy_repo(tmp_path / "r", IGNORES_BUDGET)
    runner = Runner(repo, TargetConfig(**{**CONFIG["target"], "budget_seconds": 30, "grace_seconds": 30}),
                    EvaluatorConfig(**CONFIG["evaluator"], cache_dir=str(tmp_path / "cache")))
    start = time.monotonic()
    result = runner.run("HEAD", "HEAD", stop=lambda: "cancelled: no longer needed" if time.monotonic() > start + 2 else "")
    assert result.status == "rejected" and result.reason == "cancelled: no longer needed; the run was killed while training"
    assert result.train_seconds < 10 and not result.metrics


def test_an_evaluator_of_another_version_stops_the_run_as_a_setup_error(tmp_path):
    """`arbot evaluate` exits 2 with the clear error; no candidate is charged with it (no result record)."""
    repo = toy_repo(tmp_path / "r", WRITES_WEIGHTS, protocol_version=2)
    with pytest.raises(EvaluatorError, match="speaks protocol 2, this runner speaks 1"):
        toy_runner(repo, tmp_path).run("HEAD", "HEAD")
    r = CliRunner().invoke(app, ["evaluate", "HEAD", "--json", "--repo", str(tmp_path / "r")], terminal_width=300)
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "error: the evaluator/ of champion" in text and "speaks protocol 2, this runner speaks 1: upgrade arbot" in text
    assert "Traceback" not in r.output and '"status"' not in r.output

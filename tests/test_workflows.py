"""The GitHub Actions workflows: both validators pass, the train job is locked down, the report is data only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.github.report import BadResult, baseline_values, extract, fence, load_runs, render
from bot.core.records import ChampionRecord, RunResult
from tests.fake_github.contract import validate_request

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
EVALUATE = ROOT / ".github" / "workflows" / "arbot-evaluate.yml"
BIN = Path(sys.executable).parent
HEAD = "a" * 40
CHAMPION = "c" * 40


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is missing: install the dev extra (pip install -e '.[dev]')"
    return str(path)


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def test_workflows_exist():
    assert EVALUATE in WORKFLOWS


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_check_jsonschema_accepts_the_workflow(workflow):
    r = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(workflow)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_actionlint_accepts_the_workflow(workflow):
    r = subprocess.run([tool("actionlint"), "-config-file", str(ROOT / ".github" / "actionlint.yaml"), str(workflow)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_validators_reject_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: pull_request\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n"
                   "        uses: actions/checkout@v5\n")
    assert subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(bad)],
                          capture_output=True, timeout=120).returncode != 0
    assert subprocess.run([tool("actionlint"), str(bad)], capture_output=True, timeout=120).returncode != 0


INPUTS = {"request", "commit", "champion", "seed", "splits", "champion_overhead", "champion_score_seconds", "pull"}


def code(path: Path) -> str:
    """The workflow without its comments."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


def steps(job: dict, prefix: str) -> dict:
    return next(s for s in job["steps"] if s.get("name", "").startswith(prefix))


def test_evaluate_is_dispatched_by_the_bot_only():
    """One run per workflow_dispatch (the bot's), on the default branch: nothing a PR does starts it."""
    wf = load(EVALUATE)
    assert set(wf["on"]) == {"workflow_dispatch"}
    inputs = wf["on"]["workflow_dispatch"]["inputs"]
    assert set(inputs) == INPUTS and all(i["type"] == "string" for i in inputs.values())
    assert [n for n, i in inputs.items() if i.get("required")] == ["request", "commit", "champion", "seed"]
    assert inputs["splits"]["default"] == "val"
    assert inputs["champion_overhead"]["default"] == inputs["champion_score_seconds"]["default"] == ""
    text = code(EVALUATE)
    for trigger in ("pull_request", "pull_request_target", "workflow_run", "github.event.pull_request", "head_ref"):
        assert trigger not in text
    assert wf["permissions"] == {}
    assert wf["run-name"] == "arbot-evaluate ${{ inputs.request }}"  # the bot checks the run it reads by this title
    assert wf["concurrency"] == {"group": "arbot-evaluate-${{ inputs.request }}", "cancel-in-progress": False}
    # that the driver dispatches exactly these inputs is checked where it dispatches: tests/test_github_driver.py runs
    # against this file in the fake GitHub, which refuses unknown or missing inputs as GitHub does


def test_inputs_reach_the_shell_through_env_only():
    """`${{ inputs.x }}` inside a run script would be script injection: inputs go through env and are checked."""
    wf = load(EVALUATE)
    for name, job in wf["jobs"].items():
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), (name, step.get("name"))
    train, report = wf["jobs"]["train"], wf["jobs"]["report"]
    assert train["env"] == {"COMMIT": "${{ inputs.commit }}", "CHAMPION": "${{ inputs.champion }}",
                            "SEED": "${{ inputs.seed }}", "SPLITS": "${{ inputs.splits }}",
                            "OVERHEAD": "${{ inputs.champion_overhead }}",
                            "SCORE_SECONDS": "${{ inputs.champion_score_seconds }}", "PULL": "${{ inputs.pull }}"}
    assert report["env"] == {"COMMIT": "${{ inputs.commit }}", "CHAMPION": "${{ inputs.champion }}",
                             "REQUEST": "${{ inputs.request }}"}


def run_step(script: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """A `run:` step as GitHub runs it on Linux (bash --noprofile --norc -eo pipefail)."""
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], env={"PATH": "/usr/bin:/bin", **env},
                          cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("env, ok", [
    ({"COMMIT": HEAD, "CHAMPION": CHAMPION, "SEED": "3", "SPLITS": "val"}, True),
    ({"COMMIT": HEAD, "CHAMPION": CHAMPION, "SEED": "0", "SPLITS": "val,holdout"}, True),
    ({"COMMIT": "main", "CHAMPION": CHAMPION, "SEED": "0", "SPLITS": "val"}, False),  # not a full sha
    ({"COMMIT": HEAD, "CHAMPION": CHAMPION[:12], "SEED": "0", "SPLITS": "val"}, False),
    ({"COMMIT": HEAD + "; rm -rf /", "CHAMPION": CHAMPION, "SEED": "0", "SPLITS": "val"}, False),
    ({"COMMIT": HEAD, "CHAMPION": CHAMPION, "SEED": "1; id", "SPLITS": "val"}, False),
    ({"COMMIT": HEAD, "CHAMPION": CHAMPION, "SEED": "-1", "SPLITS": "val"}, False),
    ({"COMMIT": HEAD, "CHAMPION": CHAMPION, "SEED": "0", "SPLITS": "holdout"}, False),
    ({"COMMIT": HEAD, "CHAMPION": CHAMPION, "SEED": "0", "SPLITS": ""}, False),
    ({"COMMIT": HEAD, "CHAMPION": CHAMPION, "SEED": "0", "SPLITS": "val", "OVERHEAD": "3.25", "SCORE_SECONDS": "1"}, True),
    ({"COMMIT": HEAD, "CHAMPION": CHAMPION, "SEED": "0", "SPLITS": "val", "OVERHEAD": "1e9", "SCORE_SECONDS": ""}, False),
    ({"COMMIT": HEAD, "CHAMPION": CHAMPION, "SEED": "0", "SPLITS": "val", "OVERHEAD": "", "SCORE_SECONDS": "2; id"}, False),
    ({"COMMIT": HEAD, "CHAMPION": CHAMPION, "SEED": "0", "SPLITS": "val", "PULL": "12"}, True),
    ({"COMMIT": HEAD, "CHAMPION": CHAMPION, "SEED": "0", "SPLITS": "val", "PULL": "12/head:x"}, False),
])
def test_the_train_job_checks_its_inputs_first(env, ok, tmp_path):
    train = load(EVALUATE)["jobs"]["train"]
    assert train["steps"][0]["name"].startswith("Check the inputs")
    r = run_step(train["steps"][0]["run"], env, tmp_path)
    assert (r.returncode == 0) == ok, r.stderr


@pytest.mark.parametrize("splits, timing, extra", [
    ("val", {}, []), ("val,holdout", {}, ["--holdout"]),
    ("val", {"OVERHEAD": "3.5", "SCORE_SECONDS": "1.25"}, ["--champion-overhead", "3.5", "--champion-score-seconds", "1.25"]),
])
def test_the_train_step_runs_arbot_evaluate_on_the_requested_run(splits, timing, extra, tmp_path):
    """The step, run with a stand-in for arbot that prints its arguments: even a failing run leaves its output."""
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    stub = tmp_path / ".venv" / "bin" / "arbot"
    stub.write_text('#!/bin/bash\nprintf \'%s\\n\' "$@"\necho "training" >&2\nexit 1\n')
    stub.chmod(0o755)
    step = steps(load(EVALUATE)["jobs"]["train"], "Train and evaluate")
    r = run_step(step["run"], {"COMMIT": HEAD, "CHAMPION": CHAMPION, "SEED": "4", "SPLITS": splits, **timing}, tmp_path)
    assert r.returncode == 0, r.stderr  # the report job turns a failed run into its check run
    assert "arbot evaluate exited with 1" in r.stdout and "training" in r.stdout  # the log tail
    argv = (tmp_path / "result.json").read_text().split()
    assert argv == ["evaluate", HEAD, "--champion", CHAMPION, "--seed", "4", *extra, "--json"]
    assert (tmp_path / "evaluate.log").read_text() == "training\n"


def test_train_job_has_no_secrets_and_read_only_permissions():
    train = load(EVALUATE)["jobs"]["train"]
    assert train["runs-on"] == ["self-hosted", "gpu"]
    assert train["permissions"] == {"contents": "read"}
    text = yaml.safe_dump(train)
    assert "secrets" not in text and "github.token" not in text and "GITHUB_TOKEN" not in text
    assert "github.event" not in text  # only the dispatch's inputs, checked
    checkouts = [s for s in train["steps"] if str(s.get("uses", "")).startswith("actions/checkout")]
    assert checkouts and all(s["with"]["persist-credentials"] is False for s in checkouts)
    # trusted code comes from the default branch (the dispatched ref), the evaluator from the champion commit;
    # the commit to train is only a commit, read from git objects
    root, pull = checkouts
    assert root["with"] == {"fetch-depth": 0, "persist-credentials": False}
    # an adopted PR's head, only as git objects: refs/pull/<n>/head of this repository (a fork's head is there too)
    assert pull["if"] == "env.PULL != ''" and pull["with"] == {
        "ref": "refs/pull/${{ inputs.pull }}/head", "path": ".arbot-pull", "fetch-depth": 0, "persist-credentials": False}
    assert steps(train, "Make sure the commit")["run"].splitlines() == [
        'if [ -n "$PULL" ]; then git fetch --quiet --no-tags .arbot-pull "+HEAD:refs/remotes/pull/$PULL"; fi',
        'git cat-file -e "${COMMIT}^{commit}" && git cat-file -e "${CHAMPION}^{commit}"']
    runs = "\n".join(s.get("run", "") for s in train["steps"])
    assert '.venv/bin/arbot evaluate "$COMMIT" --champion "$CHAMPION" --seed "$SEED" "${extra[@]}" --json' in runs
    assert "> result.json 2> evaluate.log" in runs
    upload = next(s for s in train["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["name"] == "arbot-result"


def test_report_job_posts_the_check_run_from_the_default_branchs_script():
    report = load(EVALUATE)["jobs"]["report"]
    assert report["needs"] == "train" and report["if"] == "always()"  # a crashed train job is reported too
    assert report["permissions"] == {"contents": "read", "checks": "write"}
    assert "secrets" not in yaml.safe_dump(report)
    checkouts = [s for s in report["steps"] if str(s.get("uses", "")).startswith("actions/checkout")]
    assert [s["with"] for s in checkouts] == [
        {"persist-credentials": False},  # report.py comes from the default branch, never from a PR
        {"ref": "refs/notes/arbot", "path": ".arbot-notes", "persist-credentials": False}]  # data: the baseline
    render_step = steps(report, "Render")["run"]
    assert ".venv/bin/python -I -m bot.github.report --result artifact/result.json" in render_step  # the installed one
    for arg in ('--head-sha "$COMMIT"', '--champion-sha "$CHAMPION"', "--notes .arbot-notes",
                '--external-id "$REQUEST"', "--out check-run.json"):
        assert arg in render_step
    post = steps(report, "Post")
    assert post["env"] == {"GH_TOKEN": "${{ github.token }}"}
    assert post["run"] == 'gh api --method POST "repos/${GITHUB_REPOSITORY}/check-runs" --input check-run.json'


# --- the report script ---------------------------------------------------------------------------------
def ok_run(seed=0, bpb=1.2345, **kw) -> RunResult:
    return RunResult(status="ok", commit=HEAD, champion=CHAMPION, metrics={"val_bpb": bpb}, seed=seed, steps=120,
                     tokens=1_000_000, tokens_per_second=52_000.0, train_seconds=300.0, total_seconds=330.5,
                     peak_memory_gb=11.25, evaluator_fingerprint="sha256:abc123", **kw)


def test_report_renders_the_summary_table():
    baseline = ChampionRecord(commit=CHAMPION, runs=[ok_run(bpb=1.25), ok_run(seed=1, bpb=1.27)]).model_dump_json()
    check = render(load_runs(ok_run().model_dump_json()), HEAD, baseline_values(baseline))
    validate_request("post", "/repos/o/r/check-runs", check)  # a valid body for GitHub's API
    assert check["conclusion"] == "success" and check["name"] == "arbot/evaluate" and check["head_sha"] == HEAD
    summary = check["output"]["summary"]
    for cell in ("| 1.2345 | 1.2600 (2 runs) | -0.0255 | 0 | sha256:abc123 |", "| 0 | ok | 1.2345 | 120 | 52000 | 11.25 | 300.0 | 330.5 |"):
        assert cell in summary
    assert "text" not in check["output"]
    assert check["output"]["title"] == "val_bpb 1.2345 (-0.0255 vs champion)"


def test_report_embeds_the_runs_for_the_bot():
    nasty = ok_run(reason="--> <!-- --- \\--").model_dump()
    check = render(load_runs(json.dumps([nasty])), HEAD, [])
    summary = check["output"]["summary"]
    block = summary[summary.rindex("<!-- arbot:result "):]
    assert block.endswith(" -->") and block.count("-->") == 1  # the hidden comment cannot be closed early
    (run,) = extract(summary)
    assert RunResult.model_validate(run).reason == "--> <!-- --- \\--" and run["metrics"] == {"val_bpb": 1.2345}
    assert "log_tail" not in run
    with pytest.raises(BadResult):
        extract("no block here")


def test_report_shows_the_runners_flags():
    flagged = ok_run().model_dump()
    flagged["flags"] = ["reads the validation split | <script>"]
    check = render(load_runs(json.dumps(flagged)), HEAD, [])
    assert "Flags: reads the validation split \\| &lt;script&gt;" in check["output"]["summary"]


def test_report_of_several_seeds_and_no_baseline():
    runs = json.dumps([json.loads(ok_run(seed=s, bpb=1.0 + s / 10).model_dump_json()) for s in range(3)])
    check = render(load_runs(runs), HEAD, [])
    assert "| 1.1000 | n/a (0 runs) | n/a | 0, 1, 2 |" in check["output"]["summary"]


def test_report_of_a_crash_shows_the_log_tail_safely():
    log = "\n".join(f"line {i}" for i in range(100)) + "\n```\n@everyone <img src=x> | pipe"
    crash = RunResult(status="crash", commit=HEAD, champion=CHAMPION, reason="exit 1 | <b>bad</b> @someone", log_tail=log)
    check = render(load_runs(crash.model_dump_json()), HEAD, [])
    validate_request("post", "/repos/o/r/check-runs", check)
    assert check["conclusion"] == "failure"
    assert "exit 1 \\| &lt;b&gt;bad&lt;/b&gt; @\u200bsomeone" in check["output"]["summary"]
    text = check["output"]["text"]
    assert text.startswith("Log tail:\n\n````text\n") and text.endswith("\n````") and "line 39" not in text
    assert "line 99" in text


def test_report_rejects_a_result_for_another_commit_or_bad_data(tmp_path):
    check = render(load_runs(ok_run().model_dump_json().replace(HEAD, "b" * 40)), HEAD, [])
    assert check["conclusion"] == "failure" and f"not the commit trained {HEAD}" in check["output"]["summary"]
    for bad in ('{"status": "pwned", "commit": "x"}', "[]", "not json", '{"status": "ok"}'):
        with pytest.raises(ValueError):
            load_runs(bad)
    assert fence("a ````` b").startswith("``````text")


def test_report_script_runs_without_arbot_installed(tmp_path):
    """The report job runs the script with a bare python3: standard library only."""
    out, summary = tmp_path / "check.json", tmp_path / "summary.md"
    (tmp_path / "result.json").write_text(ok_run().model_dump_json())
    script = ROOT / "bot" / "github" / "report.py"
    r = subprocess.run([sys.executable, "-I", "-S", str(script), "--result", str(tmp_path / "result.json"),
                        "--head-sha", HEAD, "--out", str(out), "--summary", str(summary)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["conclusion"] == "success"
    assert summary.read_text().startswith("## arbot/evaluate: success")
    # no artifact at all (the train job died): still a check run, a failure
    r = subprocess.run([sys.executable, "-I", "-S", str(script), "--result", str(tmp_path / "missing.json"),
                        "--head-sha", HEAD, "--log", str(tmp_path / "none.log")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    check = json.loads(r.stdout)
    assert check["conclusion"] == "failure" and "missing" in check["output"]["title"]
    validate_request("post", "/repos/o/r/check-runs", check)


def test_report_embeds_the_splits_and_the_holdout_metric():
    """A holdout confirmation run keeps its splits and holdout_bpb through the check run (the bot reads both)."""
    run = ok_run(seed=2).model_copy(update={"splits": ["val", "holdout"], "metrics": {"val_bpb": 1.2, "holdout_bpb": 1.23}})
    check = render(load_runs(run.model_dump_json()), HEAD, [])
    (back,) = extract(check["output"]["summary"])
    assert back["splits"] == ["val", "holdout"] and back["metrics"] == {"val_bpb": 1.2, "holdout_bpb": 1.23}
    assert RunResult.model_validate(back).model_dump(exclude={"log_tail", "model_sha256"}) == \
        run.model_dump(exclude={"log_tail", "model_sha256"})


def test_report_script_takes_the_baseline_from_the_notes_and_sets_the_external_id(tmp_path):
    script = ROOT / "bot" / "github" / "report.py"
    notes = tmp_path / "notes"
    (notes / CHAMPION[:2]).mkdir(parents=True)  # git's fan-out layout
    record = ChampionRecord(commit=CHAMPION, runs=[ok_run(seed=0).model_copy(update={"commit": CHAMPION})])
    (notes / CHAMPION[:2] / CHAMPION[2:]).write_text(record.model_dump_json())
    out = tmp_path / "check.json"
    (tmp_path / "result.json").write_text(ok_run().model_dump_json())
    request = f"exp-1:{HEAD[:12]}:seed-0:val"
    subprocess.run([sys.executable, "-I", "-S", str(script), "--result", str(tmp_path / "result.json"), "--head-sha", HEAD,
                    "--champion-sha", CHAMPION, "--notes", str(notes), "--details-url", "https://github.com/o/r/actions/runs/5",
                    "--external-id", request, "--out", str(out)], check=True, timeout=60)
    check = json.loads(out.read_text())
    assert check["external_id"] == request  # how the bot finds this run's result
    assert check["details_url"] == "https://github.com/o/r/actions/runs/5" and "(1 runs)" in check["output"]["summary"]
    validate_request("post", "/repos/o/r/check-runs", check)
    # the train job left nothing: still the request's check run (a failure the bot records as that run's crash)
    subprocess.run([sys.executable, "-I", "-S", str(script), "--result", str(tmp_path / "none.json"), "--head-sha", HEAD,
                    "--external-id", request, "--details-url", "javascript:alert(1)", "--out", str(out)],
                   check=True, timeout=60)
    check = json.loads(out.read_text())
    assert check["external_id"] == request and check["conclusion"] == "failure" and "details_url" not in check
    with pytest.raises(BadResult):
        extract(check["output"]["summary"])
    validate_request("post", "/repos/o/r/check-runs", check)
    # the removed sub-command is gone: one script, one job
    r = subprocess.run([sys.executable, "-I", "-S", str(script), "needs-champion-run"], capture_output=True, timeout=60)
    assert r.returncode == 2


PROPOSE = ROOT / ".github" / "workflows" / "arbot-propose.yml"


def test_propose_workflow_runs_arbot_from_the_default_branch_with_the_app_key_only_there():
    wf = load(PROPOSE)
    assert set(wf["on"]) == {"schedule", "workflow_dispatch", "workflow_run"}
    assert wf["on"]["workflow_run"] == {"workflows": ["arbot-evaluate"], "types": ["completed"]}
    assert wf["permissions"] == {}
    (job,) = wf["jobs"].values()
    assert job["permissions"] == {"contents": "read"}
    assert job["environment"] == "arbot"  # the key is an environment secret only the default branch may read
    checkout = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout"))
    assert "ref" not in checkout["with"] and checkout["with"]["persist-credentials"] is False  # never a PR's code
    runs = [s.get("run", "") for s in job["steps"]]
    assert ".venv/bin/arbot decide" in runs and ".venv/bin/arbot propose" in runs
    assert "secrets." not in code(EVALUATE)  # the key is this workflow's alone
    assert "pull_request_target" not in PROPOSE.read_text()


def test_ci_workflow_runs_the_projects_own_suite():
    wf = load(ROOT / ".github" / "workflows" / "ci.yml")
    assert wf["permissions"] == {"contents": "read"} and "pull_request_target" not in wf["on"]
    runs = [s.get("run", "") for s in wf["jobs"]["test"]["steps"]]
    assert ".ci/run" in runs  # make test, then make test-slow (the README's commands)

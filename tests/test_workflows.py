"""The GitHub Actions workflows: both validators pass, the train job is locked down, the report is data only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.github.report import BadResult, baseline_values, extract, fence, load_runs, render
from bot.records import ChampionRecord, RunResult
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


def test_evaluate_runs_on_pull_requests_into_champion_never_pull_request_target():
    wf = load(EVALUATE)
    assert set(wf["on"]) == {"pull_request"}
    code = "\n".join(line for line in EVALUATE.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert "pull_request_target" not in code and "workflow_run" not in code
    trigger = wf["on"]["pull_request"]
    assert trigger["types"] == ["opened", "synchronize", "reopened"] and trigger["branches"] == ["champion"]
    assert wf["permissions"] == {}


def test_train_job_has_no_secrets_and_read_only_permissions():
    train = load(EVALUATE)["jobs"]["train"]
    assert train["runs-on"] == ["self-hosted", "gpu"]
    assert train["permissions"] == {"contents": "read"}
    text = yaml.safe_dump(train)
    assert "secrets" not in text and "github.token" not in text and "GITHUB_TOKEN" not in text
    assert train["if"] == "github.event.pull_request.head.repo.full_name == github.repository"
    checkouts = [s for s in train["steps"] if str(s.get("uses", "")).startswith("actions/checkout")]
    assert checkouts and all(s["with"]["persist-credentials"] is False for s in checkouts)
    # trusted code comes from the champion; the PR head is only a commit to evaluate; the notes are data
    root = [s for s in checkouts if "path" not in s["with"]]
    assert len(root) == 1 and root[0]["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    assert all(s["with"] == {"ref": "refs/notes/arbot", "path": ".arbot-notes", "persist-credentials": False}
               for s in checkouts if s not in root)
    runs = "\n".join(s.get("run", "") for s in train["steps"])
    assert 'arbot evaluate "$HEAD_SHA" --champion "$CHAMPION_SHA" --seed "$((GITHUB_RUN_ATTEMPT - 1))"' in runs
    assert "--json > result.json" in runs
    assert any(str(s.get("uses", "")).startswith("actions/upload-artifact") for s in train["steps"])


def test_report_job_posts_the_check_run_from_the_champions_script():
    report = load(EVALUATE)["jobs"]["report"]
    assert report["needs"] == "train"
    assert report["permissions"] == {"contents": "read", "checks": "write", "pull-requests": "write"}
    runs = "\n".join(s.get("run", "") for s in report["steps"])
    assert "python3 bot/github/report.py" in runs and "check-runs" in runs
    checkout = next(s for s in report["steps"] if str(s.get("uses", "")).startswith("actions/checkout"))
    assert checkout["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"


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
    assert check["conclusion"] == "failure" and "not the PR head" in check["output"]["summary"]
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


def test_report_of_a_run_with_the_champion_measured_too(tmp_path):
    champion_run = RunResult(status="ok", commit=CHAMPION, champion=CHAMPION, metrics={"val_bpb": 1.3}, seed=1)
    runs = load_runs(json.dumps([ok_run(seed=1).model_dump(), champion_run.model_dump()]))
    check = render(runs, HEAD, [1.25], champion_sha=CHAMPION)
    summary = check["output"]["summary"]
    assert check["conclusion"] == "success" and "| 1.2345 | 1.2750 (2 runs) | -0.0405 | 1 |" in summary
    assert "| 1 (champion) | ok | 1.3000 |" in summary
    assert [r["commit"] for r in extract(summary)] == [HEAD, CHAMPION]  # the bot adds it to the champion's note
    # without --champion-sha a run of another commit is refused, as before
    assert render(runs, HEAD, [])["conclusion"] == "failure"


def test_report_says_when_the_train_job_must_measure_the_champion(tmp_path):
    script = ROOT / "bot" / "github" / "report.py"
    notes = tmp_path / "notes"

    def needed(seed: int) -> bool:
        r = subprocess.run([sys.executable, "-I", "-S", str(script), "needs-champion-run", "--notes", str(notes),
                            "--champion-sha", CHAMPION, "--seed", str(seed)], capture_output=True, text=True, timeout=60)
        assert r.returncode in (0, 1), r.stderr
        return r.returncode == 0

    assert needed(0)  # no notes checked out at all (the first champion)
    (notes / CHAMPION[:2]).mkdir(parents=True)  # git's fan-out layout
    record = ChampionRecord(commit=CHAMPION, runs=[ok_run(seed=0).model_copy(update={"commit": CHAMPION})])
    (notes / CHAMPION[:2] / CHAMPION[2:]).write_text(record.model_dump_json())
    assert not needed(0) and needed(1)
    out = tmp_path / "check.json"
    (tmp_path / "result.json").write_text(ok_run().model_dump_json())
    subprocess.run([sys.executable, "-I", "-S", str(script), "--result", str(tmp_path / "result.json"), "--head-sha", HEAD,
                    "--champion-sha", CHAMPION, "--notes", str(notes), "--details-url", "https://github.com/o/r/actions/runs/5",
                    "--out", str(out)], check=True, timeout=60)
    check = json.loads(out.read_text())
    assert check["details_url"] == "https://github.com/o/r/actions/runs/5" and "(1 runs)" in check["output"]["summary"]
    validate_request("post", "/repos/o/r/check-runs", check)


PROPOSE = ROOT / ".github" / "workflows" / "arbot-propose.yml"


def test_propose_workflow_runs_arbot_from_the_default_branch_with_the_app_key_only_there():
    wf = load(PROPOSE)
    assert set(wf["on"]) == {"schedule", "workflow_dispatch", "workflow_run"}
    assert wf["on"]["workflow_run"] == {"workflows": ["arbot-evaluate"], "types": ["completed"]}
    assert wf["permissions"] == {}
    (job,) = wf["jobs"].values()
    assert job["permissions"] == {"contents": "read"}
    checkout = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout"))
    assert "ref" not in checkout["with"] and checkout["with"]["persist-credentials"] is False  # never a PR's code
    runs = [s.get("run", "") for s in job["steps"]]
    assert ".venv/bin/arbot decide" in runs and ".venv/bin/arbot propose" in runs
    assert "secrets." not in EVALUATE.read_text()  # the key is this workflow's alone
    assert "pull_request_target" not in PROPOSE.read_text()


def test_ci_workflow_runs_the_projects_own_suite():
    wf = load(ROOT / ".github" / "workflows" / "ci.yml")
    assert wf["permissions"] == {"contents": "read"} and "pull_request_target" not in wf["on"]
    runs = [s.get("run", "") for s in wf["jobs"]["test"]["steps"]]
    assert ".ci/run" in runs  # make test, then make test-slow (the README's commands)

"""Experiment tracking (bot.tracking) against a real `mlflow server` with a SQLite store, started by the test: a
scripted campaign is logged run by run with its decisions; an outage loses nothing (`arbot track --backfill`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bot.config import Config, ConfigError, load_config
from bot.core.policy import make_policy
from bot.forges.local import LocalForge
from bot.loop import Loop
from bot.tracking import INSTALL, MLflowTracker, keyed_runs, make_tracker, owner_key, records
from tests.scripted import ScriptedProposer, ScriptedRunner, make_world
from tests.test_parity import CONFIG, EXPECTED, STEPS, WORLD, play

MLFLOW = Path(sys.executable).parent / "mlflow"
START_SECONDS = 240  # an MLflow server's start on 2 busy cores (its first start creates the SQLite tables)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MLflowServer:
    """`mlflow server` on a free local port, its SQLite store and artifacts under `root`; stopped and started again
    on the same port and store (an outage)."""

    def __init__(self, root: Path):
        if not MLFLOW.exists():
            pytest.fail(f"{MLFLOW} is missing: install the tracking extra (pip install -e '.[dev,tracking]'; "
                        "`make test` does)")
        self.root, self.port, self.proc = root, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer in {START_SECONDS} s: {self.log()}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def log(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MLflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server
    server.stop()


class TailRunner(ScriptedRunner):
    """The scripted world's runs, with the log tail a real run prints."""

    def run(self, candidate, champion, seed=0, splits=("val",), on_progress=None, stop=None, timing=None):
        result = super().run(candidate, champion, seed, splits, on_progress, stop, timing)
        return result.model_copy(update={"log_tail": f"step 100 | loss 3.1 | seed {seed}\n"})


def campaign(path: Path, url: str, experiment: str, steps=STEPS, between=None) -> tuple[LocalForge, MLflowTracker]:
    """The parity campaign (every rule, a stale replay, held wins approved), logged to MLflow as it runs;
    `between(i)` is called before step i."""
    repo = make_world(path, {**CONFIG, "tracking": {"mlflow": {"uri": url, "experiment": experiment}}})
    config = load_config(path / "arbot.yml")
    forge = LocalForge(repo)
    forge.ensure_champion()
    tracker = make_tracker(config.tracking, repo)
    names = [s for s in steps if not s.startswith("approve")]
    loop = Loop(forge, TailRunner(repo, WORLD), ScriptedProposer(*names), make_policy(config.policy),
                config.target, tracker=tracker)
    play(loop, forge, steps, before=between)
    return forge, tracker


def logged(url: str, experiment: str) -> dict[str, list]:
    """Every active MLflow run of the experiment, by its arbot.key."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    exp = client.get_experiment_by_name(experiment)
    by_key: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], max_results=5000):
        by_key.setdefault(run.data.tags.get("arbot.key", ""), []).append(run)
    return by_key


def assert_everything_logged_once(forge: LocalForge, url: str, experiment: str) -> None:
    """Each record of the notes is one parent run, each of its runs one child run of it, with its metrics,
    params, log tail and the decision; nothing else, nothing twice."""
    from mlflow import MlflowClient

    by_key = logged(url, experiment)
    client = MlflowClient(url)
    wanted = set()
    for owner in records(forge):
        key = owner_key(owner)
        wanted.add(key)
        [parent] = by_key[key]
        tags = parent.data.tags
        assert tags["arbot.commit"] == owner.commit and parent.info.status == "FINISHED"
        if owner.kind == "experiment":
            d = owner.decision
            assert (tags["arbot.experiment"], tags["arbot.verdict"], tags["arbot.rule"]) == (owner.id, d.verdict, d.rule)
            assert tags.get("arbot.merged_as") == owner.merged_as and tags["arbot.proposer"] == "scripted"
            assert tags.get("arbot.review") == owner.review
            if d.effect is not None:
                assert parent.data.metrics["decision.effect"] == pytest.approx(d.effect)
            assert parent.data.params["commit"] == owner.commit and parent.data.params["champion"] == owner.parent
            assert "target/train.py" in parent.data.params["diff"]
        else:
            assert tags["arbot.made_by"] == (owner.experiment or "start")
            assert tags["arbot.runs"] == str(len(owner.runs))
        for run_key, result in keyed_runs(owner):
            wanted.add(run_key)
            [child] = by_key[run_key]
            assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert child.info.status == ("FINISHED" if result.ok else "FAILED")
            assert child.data.params["seed"] == str(result.seed) and child.data.params["commit"] == result.commit
            assert child.data.params["champion"] == result.champion
            for name, value in result.metrics.items():
                assert child.data.metrics[name] == pytest.approx(value)
            assert child.data.metrics["total_seconds"] == result.total_seconds
            assert child.data.tags["arbot.status"] == result.status
            if result.log_tail:
                tail = client.download_artifacts(child.info.run_id, "log_tail.txt", str(forge.repo.git_dir))
                assert Path(tail).read_text() == result.log_tail
            else:
                assert client.list_artifacts(child.info.run_id) == []
    assert set(by_key) == wanted, set(by_key) ^ wanted


@pytest.mark.slow
def test_a_campaign_is_logged_to_mlflow_run_by_run_with_its_decisions(tmp_path, mlflow_server):
    forge, tracker = campaign(tmp_path / "world", mlflow_server.url, "campaign")
    assert {r.id: (r.proposal.hypothesis, r.decision.verdict, r.decision.rule, bool(r.merged_as))
            for r in forge.experiments()} == EXPECTED  # tracking changed nothing in the research
    assert tracker.missed == {}
    assert_everything_logged_once(forge, mlflow_server.url, "campaign")
    # every verdict and rule of the campaign reads back from MLflow
    parents = [runs[0] for runs in logged(mlflow_server.url, "campaign").values()
               if runs[0].data.tags["arbot.kind"] == "experiment"]
    assert {(p.data.tags["arbot.verdict"], p.data.tags["arbot.rule"]) for p in parents} == \
        {(v, r) for _, v, r, _ in EXPECTED.values()}
    # logging it all again from the notes adds nothing
    assert tracker.backfill(forge).runs == 0
    assert_everything_logged_once(forge, mlflow_server.url, "campaign")


@pytest.mark.slow
def test_a_tracker_outage_loses_nothing_backfill_logs_it_from_the_notes(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    def outage(i: int) -> None:
        if i == 3:  # down from the 4th proposal until the campaign ends
            mlflow_server.stop()

    try:
        forge, tracker = campaign(tmp_path / "world", mlflow_server.url, "outage", between=outage)
        assert {r.id: r.decision.rule for r in forge.experiments()} == {k: v[2] for k, v in EXPECTED.items()}
        assert tracker.missed  # what it could not log is known, and in the notes
    finally:
        mlflow_server.start()
    missing = set()
    have = logged(mlflow_server.url, "outage")
    for owner in records(forge):
        missing |= {k for k in [owner_key(owner)] + [k for k, _ in keyed_runs(owner)] if k not in have}
    assert missing
    # the outage may also cut a run half logged: made, not closed; the backfill makes it again whole
    client = MlflowClient(mlflow_server.url)
    half = sorted(k for k in missing if "/seed-" in k)[0]
    owner = next(o for o in records(forge) if half.startswith(owner_key(o) + "/"))
    exp = client.get_experiment_by_name("outage").experiment_id
    parent = have.get(owner_key(owner))
    client.create_run(exp, tags={"arbot.key": half, "arbot.owner": owner_key(owner),
                                 **({"mlflow.parentRunId": parent[0].info.run_id} if parent else {})})

    root = forge.repo.working_tree_dir
    first = subprocess.run([sys.executable, "-m", "bot", "track", "--backfill", "--repo", root], capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{len([k for k in missing if '/seed-' in k])} runs logged now" in " ".join(first.stdout.split())
    assert_everything_logged_once(forge, mlflow_server.url, "outage")
    again = subprocess.run([sys.executable, "-m", "bot", "track", "--backfill", "--repo", root], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and " 0 runs logged now" in " ".join(again.stdout.split()), again.stdout + again.stderr
    assert_everything_logged_once(forge, mlflow_server.url, "outage")
    # the campaign's own tracker, asked again once the server is back, logs what it kept: nothing twice either
    tracker.retry_seconds = 0
    tracker.decided(forge.experiments()[-1])
    assert tracker.missed == {}
    assert_everything_logged_once(forge, mlflow_server.url, "outage")


@pytest.mark.slow
def test_github_mode_logs_the_same_campaign_through_the_bot(tmp_path, mlflow_server):
    import git

    from bot.surfaces.github import mirror
    from tests.test_parity import run_github

    tracker = make_tracker(Config.model_validate({"tracking": {"mlflow": {"uri": mlflow_server.url,
                                                                          "experiment": "github"}}}).tracking,
                           mirror(tmp_path / "mirror.git"))
    decisions, _, _ = run_github(tmp_path, tracker)
    assert {d[0]: d[1:] for d in decisions} == EXPECTED and tracker.missed == {}
    bot_notes = LocalForge(git.Repo(tmp_path / "mirror.git"))  # the bot's mirror: the records it logged from
    assert_everything_logged_once(bot_notes, mlflow_server.url, "github")


@pytest.mark.slow
def test_arbot_run_logs_real_runs_with_their_model_files(research_repo, mlflow_server, tmp_path):
    import hashlib

    import yaml
    from mlflow import MlflowClient

    root = Path(research_repo.working_tree_dir)
    config = yaml.safe_load((root / "arbot.yml").read_text())
    config["tracking"] = {"mlflow": {"uri": mlflow_server.url, "experiment": "real", "log_models": True}}
    (root / "arbot.yml").write_text(yaml.safe_dump(config))
    research_repo.git.commit("-qam", "track with MLflow")
    ran = subprocess.run([sys.executable, "-m", "bot", "run", "-n", "1", "--repo", str(root)], capture_output=True,
                         text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "View run" not in ran.stdout  # MLflow prints nothing on the terminal arbot draws on
    forge = LocalForge(research_repo)
    by_key = logged(mlflow_server.url, "real")
    client = MlflowClient(mlflow_server.url)
    ok = [(k, r) for o in records(forge) for k, r in keyed_runs(o) if r.ok]
    assert ok
    for key, result in ok:
        [child] = by_key[key]
        assert child.data.metrics["train_seconds"] == pytest.approx(result.train_seconds)
        assert child.data.metrics["tokens_per_second"] == pytest.approx(result.tokens_per_second)
        assert {f"phase.{p}" for p in result.phases} <= set(child.data.metrics)
        model = client.download_artifacts(child.info.run_id, "model", str(tmp_path / child.info.run_id))
        [path] = Path(model).iterdir()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == result.model_sha256  # the file it scored
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert names == {"model"} | ({"log_tail.txt"} if result.log_tail else set())  # a tail only where one was kept


# --- without a server ---------------------------------------------------------------------------------------------
def test_tracking_is_off_by_default_and_a_bad_uri_is_one_clear_error(tmp_path):
    assert Config().tracking.mlflow is None and make_tracker(Config().tracking) is None
    (tmp_path / "arbot.yml").write_text("tracking:\n  mlflow:\n    uri: localhost:5000\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "arbot.yml")
    assert "tracking.mlflow.uri" in str(e.value) and "http://localhost:5000" in str(e.value)
    (tmp_path / "arbot.yml").write_text("tracking:\n  wandb: {}\n")
    with pytest.raises(ConfigError, match="tracking.wandb: unknown key; allowed keys here: mlflow"):
        load_config(tmp_path / "arbot.yml")


def test_tracking_without_mlflow_installed_names_the_install_command(tmp_path):
    code = ("import sys; sys.modules['mlflow'] = None\n"  # as if it were not installed
            "from bot.config import TrackingConfig\nfrom bot.tracking import make_tracker\n"
            "make_tracker(TrackingConfig.model_validate({'mlflow': {'uri': 'http://127.0.0.1:9'}}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "ConfigError" in out.stderr and INSTALL in out.stderr, out.stderr


def test_a_tracker_that_is_down_never_stops_research_and_keeps_what_it_missed(tmp_path, caplog):
    repo = make_world(tmp_path / "world", CONFIG)
    forge = LocalForge(repo)
    forge.ensure_champion()
    down = make_tracker(Config.model_validate({"tracking": {"mlflow": {"uri": f"http://127.0.0.1:{free_port()}",
                                                                       "timeout_seconds": 2}}}).tracking, repo)
    loop = Loop(forge, TailRunner(repo, WORLD), ScriptedProposer("win", "worse"), make_policy(load_config(
        tmp_path / "world" / "arbot.yml").policy), load_config(tmp_path / "world" / "arbot.yml").target, tracker=down)
    loop.measure_champion()
    for _ in range(2):
        loop.step()
    assert [r.decision.verdict for r in forge.experiments()] == ["win", "loss"]
    assert set(down.missed) >= {owner_key(r) for r in forge.experiments()}
    assert "arbot track --backfill" in caplog.text


def test_github_mode_logs_through_the_bot(tmp_path):
    from bot.github.forge import connect
    from bot.server.app import ServerSettings
    from bot.server.run import build_driver
    from bot.server.store import Store
    from tests.test_github_forge import REPO, TOKEN

    cfg = Config.model_validate({"github": {"repo": REPO}, "tracking": {"mlflow": {"uri": "http://127.0.0.1:9"}}})
    store = Store(tmp_path / "state.sqlite")
    try:
        driver = build_driver(cfg, tmp_path, connect(cfg.github, {"ARBOT_GITHUB_TOKEN": TOKEN}), store,
                              ServerSettings(secret="", state_path=store.path, repo=REPO), mirror_path=tmp_path / "m.git")
        assert isinstance(driver.stepper.tracker, MLflowTracker)
        assert Path(driver.stepper.tracker.repo.git_dir) == tmp_path / "m.git"  # the diffs come from the bot's mirror
    finally:
        store.close()


def test_backfill_without_a_tracker_or_with_mlflow_down_is_one_clear_error(tmp_path):
    repo = make_world(tmp_path / "world", CONFIG)
    root = repo.working_tree_dir
    off = subprocess.run([sys.executable, "-m", "bot", "track", "--backfill", "--repo", root], capture_output=True,
                         text=True, env={**os.environ, "COLUMNS": "400"})
    assert off.returncode == 2 and "no tracker is configured: add tracking:" in off.stdout, off.stdout + off.stderr
    (Path(root) / "arbot.yml").write_text(f"tracking:\n  mlflow:\n    uri: http://127.0.0.1:{free_port()}\n")
    down = subprocess.run([sys.executable, "-m", "bot", "track", "--backfill", "--repo", root], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "400"})
    assert down.returncode == 2 and "failed" in down.stdout and "nothing is lost" in down.stdout, down.stdout
    assert "Traceback" not in down.stdout + down.stderr

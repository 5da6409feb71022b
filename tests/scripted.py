"""A scripted research world for executor tests (no training): proposals are marker lines in target/train.py,
and a run's result is computed from the markers of the commit it trains.

Both executors meet the same world: the local loop through `ScriptedRunner` (the runner's interface), GitHub
mode through `ScriptedWorkflow` (the evaluate workflow, played on each dispatch: it posts the arbot/evaluate
check run with report.py's rendering and the request as external_id, with the Actions token).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import git
import httpx

from bot.github import report
from bot.core.records import Proposal, RunResult

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "target/train.py"
MARK = "# arbot-test: "
SLOTS = 12
BASE = 3.0
NOISE = [0.0, 0.01, -0.01, 0.005, -0.005, 0.008, -0.008, 0.003, -0.003, 0.006]  # by seed
GAP = 0.02  # (holdout - val) / val of an honest model
ACTIONS_TOKEN = "ghs_actions"


@dataclass(frozen=True)
class Variant:
    effect: float = 0.0  # added to val_bpb (negative: better)
    status: str = "ok"  # or crash / timeout
    flags: tuple[str, ...] = ()  # what the runner's diff inspection would find
    gap: float = GAP
    ticks: int = 1  # how many steps of a campaign its runs take (bot.stepper: one poll of the executor each)


def train_py() -> str:
    """A target whose slots let every proposal change its own lines, so any two merge cleanly."""
    slots = "".join(f"# slot {i}\n\n\n\n" for i in range(1, SLOTS + 1))
    return f"LEARNING_RATE = 0.001\nDEPTH = 2\n\n\n\n{slots}"


def make_world(path: Path, config: dict) -> git.Repo:
    """A repository with the scripted target, arbot.yml and the evaluate workflow, committed on main."""
    import yaml

    path.mkdir(parents=True)
    repo = git.Repo.init(path, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "arbot test")
        cw.set_value("user", "email", "test@example.com")
    (path / "target").mkdir()
    (path / SCRIPT).write_text(train_py())
    (path / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(ROOT / ".github" / "workflows" / "arbot-evaluate.yml", path / ".github" / "workflows")
    (path / "arbot.yml").write_text(yaml.safe_dump(config))
    repo.git.add(A=True)
    repo.index.commit("initial research target")
    return repo


class ScriptedProposer:
    """Proposes the named variants in order, each writing its marker into its own slot."""

    name = "scripted"

    def __init__(self, *names: str):
        self.names = list(names)
        self.slot = 0

    def propose(self, ctx) -> Proposal:
        name = self.names.pop(0)
        self.slot += 1
        text = ctx.files[SCRIPT].replace(f"# slot {self.slot}\n", f"{MARK}{name}\n", 1)
        return Proposal(proposer=self.name, hypothesis=name, rationale=f"scripted: {name}", files={SCRIPT: text})


def markers(text: str) -> list[str]:
    return [line[len(MARK):].strip() for line in text.splitlines() if line.startswith(MARK)]


def result(world: dict[str, Variant], text: str, champion_text: str, commit: str, champion: str, seed: int,
           splits: list[str]) -> RunResult:
    """What a run of `commit` (train.py `text`) scored by `champion` reports in this world."""
    variants = [world[m] for m in markers(text)]
    new = [world[m] for m in markers(text) if m not in markers(champion_text)]
    common = dict(commit=commit, champion=champion, seed=seed, splits=splits, evaluator_fingerprint="scripted",
                  flags=[f for v in new for f in v.flags], total_seconds=10.0)
    failed = next((v.status for v in variants if v.status != "ok"), None)
    if failed:
        return RunResult(status=failed, reason=f"scripted {failed}", **common)
    val = BASE + sum(v.effect for v in variants) + NOISE[seed % len(NOISE)]
    metrics = {"val_bpb": val}
    if "holdout" in splits:
        metrics["holdout_bpb"] = val * (1 + max([GAP] + [v.gap for v in variants]))
    return RunResult(status="ok", metrics=metrics, **common)


class Schedule:
    """When each run ends, the same in every mode: a run handed over after tick t ends at tick t + `ticks` of the
    change it measures (the variants its commit adds to its champion's; a champion run: 1), so the runs of a slow
    change are still in flight while other experiments are decided. A tick is one poll of the executor (local,
    Slurm) or one round of played workflow runs before the bot's step (GitHub)."""

    def __init__(self, world: dict[str, Variant], show):
        self.world, self.show, self.now = world, show, 0
        self.waiting: list[tuple[int, object]] = []  # (the tick it ends at, the run)

    def add(self, run, commit: str, champion: str) -> None:
        new = [m for m in markers(self.show(commit)) if m not in markers(self.show(champion))]
        self.waiting.append((self.now + max([self.world[m].ticks for m in new] or [1]), run))

    def drop(self, keep) -> None:
        self.waiting = [(at, run) for at, run in self.waiting if keep(run)]

    def tick(self) -> list:
        """The runs that end now, in the order they were handed over."""
        self.now += 1
        due = [run for at, run in self.waiting if at <= self.now]
        self.waiting = [(at, run) for at, run in self.waiting if at > self.now]
        return due


class ScriptedExecutor:
    """An executor (bot.executors.Executor) whose runs end on the Schedule, answered from the world."""

    def __init__(self, repo: git.Repo, world: dict[str, Variant], slots: int):
        self.runner, self.slots = ScriptedRunner(repo, world), slots
        self.schedule = Schedule(world, lambda sha: repo.git.show(f"{sha}:{SCRIPT}"))
        self.cancelled: list[str] = []

    def submit(self, spec, timing):
        self.schedule.add(spec, spec.commit, spec.champion)
        return spec

    def resume(self, spec) -> bool:
        return False

    def poll(self, timeout: float) -> list:
        from bot.executors import Finished

        return [Finished(s, self.runner.run(s.commit, s.champion, s.seed, tuple(s.splits))) for s in self.schedule.tick()]

    def cancel(self, spec) -> None:
        self.cancelled.append(spec.key)
        self.schedule.drop(lambda s: s.key != spec.key)

    def busy(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        self.schedule.waiting.clear()


class ScriptedRunner:
    """The runner's interface (runner.job.Runner.run), answered from the world."""

    def __init__(self, repo: git.Repo, world: dict[str, Variant]):
        from runner.config import TargetConfig

        self.repo, self.world, self.target = repo, world, TargetConfig()

    def run(self, candidate: str, champion: str, seed: int = 0, splits=("val",), on_progress=None, stop=None,
            timing=None) -> RunResult:
        show = lambda sha: self.repo.git.show(f"{sha}:{SCRIPT}")  # noqa: E731
        return result(self.world, show(candidate), show(champion), candidate, champion, seed, list(splits))


class ScriptedWorkflow:
    """arbot-evaluate.yml on a dispatch, played: the train job (the result from the world, uploaded as the run's
    `arbot-result` artifact), the report job (report.py's check run, for humans), then the run completed (the
    workflow_run webhook). `tamper(dispatch, run)` may change the run before it is uploaded (an attacker's test)."""

    def __init__(self, fake, url: str, repo: str, world: dict[str, Variant], tamper=None):
        self.fake, self.url, self.repo, self.world, self.tamper = fake, url, repo, world, tamper

    def __call__(self, dispatch: dict) -> None:
        i = dispatch["inputs"]
        show = lambda sha: self.fake.git("show", f"{sha}:{SCRIPT}").stdout  # noqa: E731
        run = result(self.world, show(i["commit"]), show(i["champion"]), i["commit"], i["champion"], int(i["seed"]),
                     i["splits"].split(","))
        if self.tamper is not None:
            run = self.tamper(dispatch, run)
        self.fake.add_artifact(dispatch["id"], "arbot-result", {"result.json": run.model_dump_json().encode(),
                                                                "evaluate.log": b"scripted\n"})
        check = report.render(report.load_runs(json.dumps(run.model_dump(mode="json"))), i["commit"], [])
        check["external_id"] = i["request"]
        httpx.post(f"{self.url}/api/v3/repos/{self.repo}/check-runs", json=check,
                   headers={"Authorization": f"token {ACTIONS_TOKEN}"}).raise_for_status()
        self.fake.complete_run(dispatch["id"], "success")  # after the report job: the workflow_run webhook

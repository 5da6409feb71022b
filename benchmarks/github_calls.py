"""GitHub API calls the bot makes, counted at the fake GitHub (tests/fake_github) in the scripted world.

    python -m benchmarks.github_calls [--runners 8] [--run-minutes 5] [--json]

- per decision: one experiment opened, measured on one champion run and one candidate run, decided and merged
  (margin 0, one champion run), every event of it handled as `arbot serve` handles them (advance_all per event);
- per idle event: with N experiments in flight (N = 1, 8, 32), their runs dispatched and not reported: one event
  that names no run that ended (a check run, a PR closed, a push), and one pass of the catch-up timer, which asks
  GitHub about every run in flight (conditional requests);
- the projection: with --runners runners each finishing a run every --run-minutes, the requests an hour (a decision
  per two runs, with its events; two more events per decision that name no run; the catch-up timer every
  --catch-up-minutes), and how many count against the rate limit (a 304 Not Modified answer to a conditional
  request does not). GitHub allows a PAT or a standard App installation 5,000 requests an hour.

REST and GraphQL requests are counted; the mirror's git commands (fetch, ls-remote, push) are not API requests,
and are shown apart for the decision (the lease's own pushes are not among them).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

from bot.config import Config, GitHubConfig
from bot.core.policy import make_policy
from bot.github.forge import connect
from bot.proposers.failures import SpendCapReached
from bot.server.dispatch import polled
from bot.server.driver import Driver
from bot.server.events import Evaluated
from bot.surfaces.github import mirror
from benchmarks.common import print_table
from tests.fake_github.server import FakeGitHub
from tests.fake_github.serving import serving
from bot.core.records import Proposal
from tests.scripted import ACTIONS_TOKEN, MARK, SCRIPT, ScriptedWorkflow, Variant, make_world

REPO, TOKEN = "octo-org/research", "ghp_bench"
WORLD = {"win": Variant(effect=-0.3), "worse": Variant(effect=0.2)}
RATE_LIMIT = 5000  # requests an hour: a personal access token, or a standard GitHub App installation
IN_FLIGHT = (1, 8, 32)


def settings(in_flight: int) -> dict:
    return {"policy": {"rule": "margin", "margin": 0.0, "baseline_runs": 1}, "target": {"holdout_max_gap": None},
            "github": {"repo": REPO, "max_in_flight": in_flight}}


class Proposer:
    """The scripted world's proposals, as many as asked: `first`, then `worse` ones, each a line of its own."""

    name = "scripted"

    def __init__(self, first: str, limit: int):
        self.made, self.first, self.limit = 0, first, limit

    def propose(self, ctx) -> Proposal:
        if self.made == self.limit:
            raise SpendCapReached("the benchmark's proposals are made")
        self.made += 1
        name = self.first if self.made == 1 else "worse"
        text = ctx.files[SCRIPT] + f"{MARK}{name}\n# variant {self.made}\n"
        return Proposal(proposer=self.name, hypothesis=f"{name} {self.made}", files={SCRIPT: text})


class Counted:
    """The bot's API requests at the fake since it was made (the scripted workflow's own are not the bot's), and
    how many were answered 304 Not Modified."""

    def __init__(self, fake: FakeGitHub, bot: str = "arbot-user"):
        self.fake, self.bot, self.mark = fake, bot, (len(fake.calls), len(fake.not_modified))

    @property
    def calls(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, user in self.fake.calls[self.mark[0]:] if user == self.bot]

    @property
    def requests(self) -> int:
        return len(self.calls)

    @property
    def not_modified(self) -> int:
        return len(self.fake.not_modified) - self.mark[1]


@contextmanager
def github(tmp: Path, in_flight: int, proposals: int):
    """A fake GitHub set up for the bot, and a driver on it."""
    world = make_world(tmp / "src", settings(in_flight))
    fake = FakeGitHub(tmp / "remote", token=TOKEN)
    fake.tokens[ACTIONS_TOKEN] = "github-actions[bot]"
    world.git.push(str(fake.bare), "main:refs/heads/main")
    try:
        with serving(fake.asgi) as url:
            forge = connect(GitHubConfig.model_validate({"repo": REPO, "base_url": f"{url}/api/v3"}),
                            {"ARBOT_GITHUB_TOKEN": TOKEN}, git_url=str(fake.bare), retry=None, timeout=10)
            forge.ensure_champion()
            forge.ensure_labels()
            forge.protect_champion()
            cfg = Config.model_validate(settings(in_flight))
            driver = Driver(forge, mirror(tmp / "mirror.git"), cfg, Proposer("win", proposals), make_policy(cfg.policy))
            driver.gits = []  # the mirror's git commands (fetch, ls-remote, push): not API requests, counted apart
            run_git = driver.surface.git
            driver.surface.git = lambda *args: driver.gits.append(args[0]) or run_git(*args)
            yield fake, driver, ScriptedWorkflow(fake, url, REPO, WORLD)
    finally:
        fake.close()


def per_decision(tmp: Path) -> dict:
    """One experiment from its PR to its merge, each event handled as `arbot serve` handles it: the evaluate
    workflow's report job posts its check run (a nudge naming no run that ended), then its run completes (the
    workflow_run event names it)."""
    with github(tmp, 1, proposals=1) as (fake, driver, workflow):
        driver.forge.login(), driver.forge.repo  # once per process: not part of any decision
        counted, gits = Counted(fake), len(driver.gits)
        driver.advance_all()  # the first event: the experiment opened, the champion's run dispatched
        while not any(pr.merged for pr in fake.prs.values()):
            held = [d for d in fake.dispatches if fake.runs[d["id"]]["status"] != "completed"]
            if not held:
                raise RuntimeError("the experiment did not go on")
            for dispatch in held:
                workflow(dispatch)
                driver.advance_all(polled(Evaluated(dispatch["sha"], "success", "check_run")))
                driver.advance_all(polled(Evaluated(dispatch["sha"], "success", "workflow_run", dispatch["id"])))
        git_ops = driver.gits[gits:]
        return {"requests": counted.requests, "not_modified": counted.not_modified, "by_kind": kinds(counted.calls),
                "git": {verb: git_ops.count(verb) for verb in sorted(set(git_ops))}}


def kinds(calls: list[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for method, path in calls:
        key = f"{method} {'/'.join(p if not p.isdigit() and len(p) < 40 else '*' for p in path.split('/')[4:])}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def per_idle_event(tmp: Path, in_flight: int) -> dict:
    """With `in_flight` experiments open, their runs dispatched and not reported: one event that names no run that
    ended (a check run, a pull request, a push), and one pass of the catch-up timer (every run in flight asked)."""
    with github(tmp, in_flight, proposals=in_flight) as (fake, driver, workflow):
        driver.advance_all()
        [champion] = fake.dispatches
        workflow(champion)  # the champion's run is in: every experiment dispatches its run
        driver.advance_all()
        if len(fake.dispatches) != in_flight + 1:
            raise RuntimeError(f"{len(fake.dispatches) - 1} runs in flight, not {in_flight}")
        driver.advance_all()  # the conditional requests have their ETags
        event = Counted(fake)
        driver.advance_all(())
        event = event.calls
        timer = Counted(fake)
        driver.advance_all()
        return {"in_flight": in_flight, "event": len(event), "timer": timer.requests,
                "timer_not_modified": timer.not_modified}


def project(decision: dict, idle: dict, runners: int, run_minutes: float, catch_up_minutes: float) -> dict:
    """Requests an hour with `runners` runners each finishing a run every `run_minutes`: per decision (its two runs
    and their events), two more events per decision that name no run (its PR closed, champion pushed on a merge),
    and the catch-up timer's passes."""
    runs = runners * 60 / run_minutes
    decisions = runs / 2
    passes = 60 / catch_up_minutes
    total = decisions * decision["requests"] + decisions * 2 * idle["event"] + passes * idle["timer"]
    counted = total - decisions * decision["not_modified"] - passes * idle["timer_not_modified"]
    return {"runners": runners, "runs": round(runs), "decisions": round(decisions), "requests": round(total),
            "counted": round(counted), "limit": RATE_LIMIT}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runners", type=int, default=8)
    ap.add_argument("--run-minutes", type=float, default=5.0)
    ap.add_argument("--catch-up-minutes", type=float, default=GitHubConfig.model_fields["catch_up_minutes"].default)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        decision = per_decision(Path(tmp) / "decision")
        idle = [per_idle_event(Path(tmp) / f"idle-{n}", n) for n in IN_FLIGHT]
    at = next(i for i in idle if i["in_flight"] == args.runners) if args.runners in IN_FLIGHT else per_idle_event(
        Path(tempfile.mkdtemp()), args.runners)
    projection = project(decision, at, args.runners, args.run_minutes, args.catch_up_minutes)
    if args.json:
        print(json.dumps({"decision": decision, "idle": idle, "projection": projection}, indent=1))
        return
    print(f"one experiment decided on one champion run and one candidate run: {decision['requests']} requests "
          f"({decision['not_modified']} answered 304)")
    for kind, n in decision["by_kind"].items():
        print(f"  {n:3d}  {kind}")
    print(f"and git on the mirror (not API requests): {', '.join(f'{n} {verb}' for verb, n in decision['git'].items())}")
    print()
    print_table({"in_flight": "in flight", "event": "requests per event naming no run",
                 "timer": "per catch-up pass", "timer_not_modified": "of them 304"}, idle)
    print()
    print_table({"runners": "runners", "runs": "runs/hour", "decisions": "decisions/hour", "requests": "requests/hour",
                 "counted": "counted against the limit", "limit": "limit"}, [projection])


if __name__ == "__main__":
    main()

"""The verdict of one experiment PR, without I/O: evaluated runs in, the `arbot/verdict` check out.

The driver (bot.github.driver) reads the candidate's runs from the `arbot/evaluate` check runs
(`report.extract`), the champion's runs from its record (the git note), calls `decide`, then posts
`verdict_check` with `GitHubForge.post_check` and the comment with `results_comment`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.policy import Policy
from bot.records import Decision, Evidence, RunResult, ok_metric

VERDICT_CHECK = "arbot/verdict"


@dataclass(frozen=True)
class VerdictCheck:
    conclusion: str | None  # success (a win), failure (anything else), None: not final, more runs are needed
    title: str
    summary: str


def evidence(champion_runs: list[RunResult], candidate_runs: list[RunResult], metric: str = "val_bpb",
             removes_code: bool = False) -> Evidence:
    """What the policy sees, built like the local loop's (bot.loop.Loop._evidence)."""
    failed = next((r for r in candidate_runs if not r.ok), None)
    return Evidence(metric=metric, champion=ok_metric(champion_runs, metric), candidate=ok_metric(candidate_runs, metric),
                    candidate_status=failed.status if failed else "ok", candidate_reason=failed.reason if failed else "",
                    removes_code=removes_code)


def decide(policy: Policy, champion_runs: list[RunResult], candidate_runs: list[RunResult], *, pr_base: str,
           champion: str, metric: str = "val_bpb", removes_code: bool = False) -> Decision:
    """The policy's decision, refusing a candidate measured against another champion than the current one."""
    stale = [r.commit[:12] for r in candidate_runs if r.champion and r.champion != champion]
    if pr_base != champion or stale:
        return Decision(verdict="rejected", rule="stale-base", metric=metric,
                        reason=f"measured against {pr_base[:12]}, but champion is {champion[:12]}: update the branch "
                               f"and evaluate again")
    return policy.decide(evidence(champion_runs, candidate_runs, metric, removes_code))


def verdict_check(decision: Decision) -> VerdictCheck:
    """The `arbot/verdict` check: success only for a win, so branch protection lets only wins merge."""
    if not decision.final:
        return VerdictCheck(None, f"more runs: {decision.more_candidate_runs} candidate, "
                                  f"{decision.more_champion_runs} champion", decision.reason)
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    delta = "" if decision.effect is None else f" ({-decision.effect:+.4f})"
    title = f"{decision.verdict}: {decision.metric} {fmt(decision.candidate_mean)} vs {fmt(decision.champion_mean)}{delta}"
    return VerdictCheck("success" if decision.verdict == "win" else "failure", title[:200],
                        f"{decision.reason}\n\nRule: {decision.rule}")

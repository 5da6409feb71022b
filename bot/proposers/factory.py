"""Build the configured proposer: search, llm, agent, or a weighted mix (`run.proposer: {llm: 0.7, search: 0.3}`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import git

from bot.config import Config, ConfigError
from bot.forges.local import LocalForge
from bot.proposers.base import ProposalContext, Proposer, SearchExhausted
from bot.proposers.failures import SpendCapReached
from bot.core.records import Proposal

PROPOSERS = ("search", "llm", "agent")


class MixProposer:
    """Picks a proposer per experiment so that the history's shares track the weights (deterministic, so a
    resumed campaign continues the same sequence). A proposer that reached its spend cap drops out of the mix; one
    whose search space around this champion ran out sits this proposal out."""

    name = "mix"

    def __init__(self, members: dict[str, Proposer], weights: dict[str, float]):
        self.members = members
        total = sum(weights.values())
        self.weights = {k: v / total for k, v in weights.items()}
        self.exhausted: set[str] = set()

    def check(self) -> None:
        for p in self.members.values():
            if hasattr(p, "check"):
                p.check()

    def choose(self, history, skip: set[str] = frozenset()) -> str:
        counts = {k: 0 for k in self.members}
        for rec in history:
            if rec.proposal.proposer in counts:
                counts[rec.proposal.proposer] += 1
        n = sum(counts.values()) + 1
        live = [k for k in self.members if k not in self.exhausted | skip]
        return max(live, key=lambda k: (self.weights[k] * n - counts[k], self.weights[k]))

    def propose(self, ctx: ProposalContext) -> Proposal:
        ran_out: set[str] = set()
        while True:
            name = self.choose(ctx.history, ran_out)
            try:
                return self.members[name].propose(ctx)
            except SpendCapReached:
                self.exhausted.add(name)
                if len(self.exhausted | ran_out) == len(self.members):
                    raise
            except SearchExhausted:
                ran_out.add(name)
                if len(self.exhausted | ran_out) == len(self.members):
                    raise


def make_proposer(config: Config, repo: git.Repo | None = None, name: str | None = None,
                  model: str | None = None, sandbox: Callable[[], Any] | None = None) -> Proposer:
    """The proposer `arbot run` uses: `name` (--proposer) overrides run.proposer, `model` (--model) llm.model.
    `sandbox`: returns the runner's training sandbox, which the LLM proposer's smoke runs then use too."""
    if model:
        config.llm.model = model
    spec = name or config.run.proposer
    if isinstance(spec, str):
        return _one(spec, config, repo, sandbox)
    bad = {k: w for k, w in spec.items() if w < 0}
    if bad or not any(w > 0 for w in spec.values()):
        raise ConfigError(f"run.proposer: mix weights must be >= 0 and not all 0 (got {spec})")
    weights = {k: w for k, w in spec.items() if w > 0}
    return MixProposer({k: _one(k, config, repo, sandbox) for k in weights}, weights)


def _one(name: str, config: Config, repo: git.Repo | None, sandbox=None) -> Proposer:
    if name == "search":
        from bot.proposers.search import SearchProposer

        return SearchProposer(config.search, pinned=config.target.overrides)
    if name == "llm":
        from bot.proposers.llm import LLMProposer

        spent = LocalForge(repo).spent_today if repo is not None else None
        return LLMProposer(config.llm, config.target, repo=repo, spent_today=spent, sandbox=sandbox)
    if name == "agent":
        from bot.proposers.agent import AgentProposer

        spent = LocalForge(repo).spent_today if repo is not None else None
        return AgentProposer(config.agent, config.target, repo, spent_today=spent, sandbox=sandbox)
    raise ConfigError(f"unknown proposer {name!r}; choose one of: {', '.join(PROPOSERS)}")

"""What a proposer is shown and what happens to its answer: the one proposal step both executors take."""

from __future__ import annotations

from bot.forges.local import LocalForge
from bot.knobs import find_knobs
from bot.proposers.base import ProposalContext, ProposalError, Proposer
from bot.proposers.failures import ProposalRejected
from bot.core.records import Metric, Proposal
from runner.config import TargetConfig


def context(forge: LocalForge, target: TargetConfig, champion: str, metric: Metric) -> ProposalContext:
    """The champion's allowed files, its knobs and program.md, the decided history, the experiments in flight,
    the metric."""
    files = forge.allowed_files(champion, target.allowed_paths)
    if target.script not in files:
        raise ProposalError(f"the champion has no {target.script} among the allowed paths {target.allowed_paths}")
    program = forge.text(champion, target.script.rsplit("/", 1)[0] + "/program.md") or ""
    experiments = forge.experiments()
    return ProposalContext(champion=champion, script_path=target.script, files=files,
                           knobs=find_knobs(files[target.script]),
                           history=[r for r in experiments if r.decision is not None],
                           pending=[r for r in experiments if r.decision is None], program=program, metric=metric)


def propose(forge: LocalForge, proposer: Proposer, target: TargetConfig, champion: str, metric: Metric) -> Proposal:
    """One proposal against `champion`; one the validation cascade refused is recorded in git, then re-raised."""
    try:
        return proposer.propose(context(forge, target, champion, metric))
    except ProposalRejected as e:
        if e.record is not None:
            forge.save_failed_proposal(e.record)
        raise

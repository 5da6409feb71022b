"""The research loop, written once: propose -> experiment -> runs until the policy decides -> promote or record.

Every step is saved to git notes as soon as it happens, so an interrupted loop resumes where it stopped:
runs already made are kept, a decided win that was not merged yet is merged, nothing is proposed twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from bot.config import TargetConfig
from bot.forges.local import LocalForge, trailers_for
from bot.knobs import find_knobs
from bot.policy import Policy
from bot.proposers.base import ProposalContext, Proposer
from bot.proposers.failures import ProposalRejected, save_failed_proposal
from bot.records import ChampionRecord, Decision, Evidence, ExperimentRecord, RunResult, ok_metric
from bot.results import results_table
from runner.guard import forbidden_paths
from runner.job import Runner

RunHook = Callable[[str, str, int], Callable[[dict], None] | None]  # (label, commit, seed) -> progress callback


class ChampionBroken(RuntimeError):
    """The champion itself does not train and score: nothing can be compared against it."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Loop:
    def __init__(self, forge: LocalForge, runner: Runner, proposer: Proposer, policy: Policy, target: TargetConfig,
                 on_run: RunHook | None = None):
        self.forge = forge
        self.runner = runner
        self.proposer = proposer
        self.policy = policy
        self.target = target
        self.allowed_paths = target.allowed_paths
        self.script_path = target.script
        self.on_run = on_run or (lambda label, commit, seed: None)

    def _run(self, label: str, commit: str, champion: str, seed: int, splits: tuple[str, ...] = ("val",)) -> RunResult:
        return self.runner.run(commit, champion, seed=seed, splits=splits, on_progress=self.on_run(label, commit, seed))

    # --- the champion's noise floor ---------------------------------------------------------
    def measure_champion(self, runs: int | None = None) -> ChampionRecord:
        """Make sure the current champion has at least `runs` (default: the policy's baseline) ok runs."""
        sha = self.forge.champion()
        rec = self.forge.champion_record(sha)
        want = runs if runs is not None else self.policy.baseline_runs
        while len(ok_metric(rec.runs)) < want:
            result = self._run("champion", sha, sha, seed=len(rec.runs))
            if not result.ok:
                raise ChampionBroken(
                    f"the champion {sha[:12]} itself fails ({result.status}): {result.reason}\n{result.log_tail}"
                )
            rec.runs.append(result)
            self.forge.save(rec)
        return rec

    # --- one experiment --------------------------------------------------------------------------
    def step(self) -> ExperimentRecord:
        """Finish an interrupted experiment if there is one, else propose and run a new one."""
        pending = [r for r in self.forge.experiments() if r.decision is None or self._unmerged_win(r)]
        rec = pending[0] if pending else self._open()
        if rec.parent != self.forge.champion():
            rec = self._remeasure(rec)
        self.forge.ensure_branch(rec)
        if rec.decision is None:
            self._decide(rec)
        if rec.decision.verdict == "win" and rec.merged_as is None and rec.review != "needed":
            self._promote(rec)
        return rec

    def _remeasure(self, stale: ExperimentRecord) -> ExperimentRecord:
        """A decision is valid only against the champion it was measured on: when champion moved before the
        decision (or the merge), close the old experiment and measure its change again, on the new champion."""
        champion = self.forge.champion()
        files = self.forge.replay_files(stale, champion)
        fresh = None
        if files is not None:
            fresh = self.forge.open_experiment(stale.proposal.model_copy(update={"files": files}), champion, now())
        why = (f"champion moved from {stale.parent[:12]} to {champion[:12]} before this was merged; "
               + (f"measured again as {fresh.id}" if fresh else "its change conflicts with the new champion"))
        stale.decision = Decision(verdict="rejected", rule="stale", reason=why)
        stale.finished_at = now()
        self.forge.save(stale)
        return fresh or stale

    def _unmerged_win(self, rec: ExperimentRecord) -> bool:
        return (rec.decision is not None and rec.decision.verdict == "win" and rec.merged_as is None
                and rec.review != "needed")

    def approve(self, experiment_id: str) -> ExperimentRecord:
        """A human's approval of a flagged win (review: needed): merge it now."""
        rec = next((r for r in self.forge.experiments() if r.id == experiment_id), None)
        if rec is None or rec.review != "needed":
            raise ValueError(f"{experiment_id} is not a win waiting for review")
        rec.review = "approved"
        self.forge.save(rec)
        self._promote(rec)
        return rec

    def _open(self) -> ExperimentRecord:
        champion = self.forge.champion()
        ctx = self.context(champion)
        try:
            proposal = self.proposer.propose(ctx)
        except ProposalRejected as e:  # failed the validation cascade: no branch, but a durable record
            if e.record is not None:
                save_failed_proposal(self.forge.repo, e.record)
            raise
        return self.forge.open_experiment(proposal, champion, started_at=now())

    def context(self, champion: str) -> ProposalContext:
        commit = self.forge.repo.commit(champion)
        files = {}
        for blob in commit.tree.traverse():
            if blob.type == "blob" and self._allowed(blob.path):
                files[blob.path] = blob.data_stream.read().decode()
        if self.script_path not in files:
            raise ChampionBroken(f"the champion has no {self.script_path} among the allowed paths {self.allowed_paths}")
        program = self.script_path.rsplit("/", 1)[0] + "/program.md"
        try:
            program_text = (commit.tree / program).data_stream.read().decode()
        except KeyError:
            program_text = ""
        return ProposalContext(
            champion=champion, script_path=self.script_path, files=files, knobs=find_knobs(files[self.script_path]),
            history=[r for r in self.forge.experiments() if r.decision is not None], program=program_text,
        )

    def _allowed(self, path: str) -> bool:
        return not forbidden_paths([path], self.allowed_paths)

    def _decide(self, rec: ExperimentRecord) -> None:
        """Run the candidate (and the champion) until the policy reaches a final decision. Each run is saved."""
        champion = self.forge.champion_record(rec.parent)
        more_candidate, more_champion = (0 if rec.runs else 1), 0
        while True:
            for _ in range(more_champion):
                champion.runs.append(self._run("champion", rec.parent, rec.parent, seed=len(champion.runs)))
                self.forge.save(champion)
            for _ in range(more_candidate):
                rec.runs.append(self._run(rec.id, rec.commit, rec.parent, seed=len(rec.runs)))
                self.forge.save(rec)
            evidence = self._evidence(rec, champion)
            decision = self.policy.decide(evidence)
            if decision.final:
                break
            more_candidate, more_champion = decision.more_candidate_runs, decision.more_champion_runs
            if more_candidate + more_champion == 0:
                raise RuntimeError(f"policy {self.policy.name} asked for more runs but named none: {decision}")
        if decision.verdict == "win":
            decision = self._confirm_holdout(rec, champion, decision)
        decision, review = hold_flagged(decision, rec.runs, self.target.review_flagged)
        if review:
            rec.review = review  # the verdict stands, but no automatic merge: a human approves (Loop.approve)
        rec.evidence, rec.decision, rec.finished_at = evidence, decision, now()
        self.forge.save(rec)

    def _confirm_holdout(self, rec: ExperimentRecord, champion: ChampionRecord, decision):
        """Confirm a win with one run scored on val and holdout. The relative gap (holdout_bpb - val_bpb) / val_bpb
        is very stable across seeds of one model; one much larger than the champion's means the candidate fits
        val itself (it has seen it): rejected."""
        max_gap = self.target.holdout_max_gap
        if max_gap is None:
            return decision

        def gap(r: RunResult) -> float | None:
            m = r.metrics
            ok = r.ok and "holdout_bpb" in m and m.get("val_bpb", 0) > 0
            return (m["holdout_bpb"] - m["val_bpb"]) / m["val_bpb"] if ok else None

        both = ("val", "holdout")
        if not [g for g in map(gap, champion.runs) if g is not None]:
            champion.runs.append(self._run("champion", rec.parent, rec.parent, seed=len(champion.runs), splits=both))
            self.forge.save(champion)
        confirm = self._run(rec.id, rec.commit, rec.parent, seed=len(rec.runs), splits=both)
        rec.runs.append(confirm)
        self.forge.save(rec)
        reference = [g for g in map(gap, champion.runs) if g is not None]
        if gap(confirm) is None or not reference:
            why = confirm.reason if not confirm.ok else "the champion's holdout could not be measured"
            return decision.model_copy(update={"verdict": "rejected", "rule": "holdout_gap",
                                               "reason": f"the holdout confirmation run failed: {why}"})
        excess = gap(confirm) - sum(reference) / len(reference)
        if excess > max_gap:
            return decision.model_copy(update={"verdict": "rejected", "rule": "holdout_gap", "reason": (
                f"holdout confirmation: (holdout_bpb - val_bpb) / val_bpb is {gap(confirm):+.4f}, {excess:.4f} more "
                f"than the champion's (limit {max_gap:g}); the candidate fits val better than unseen text, so it has "
                f"likely seen val. Was: {decision.reason}")})
        return decision.model_copy(update={"reason": f"{decision.reason}; holdout confirmed (gap excess {excess:+.4f})"})

    def _evidence(self, rec: ExperimentRecord, champion: ChampionRecord) -> Evidence:
        failed = next((r for r in rec.runs if not r.ok), None)
        return Evidence(
            champion=ok_metric(champion.runs),
            candidate=ok_metric(rec.runs),
            candidate_status=failed.status if failed else "ok",
            candidate_reason=failed.reason if failed else "",
            removes_code=self._removes_code(rec),
        )

    def _removes_code(self, rec: ExperimentRecord) -> bool:
        parent = self.forge.repo.commit(rec.parent)
        before = after = 0
        for path, text in rec.proposal.files.items():
            try:
                before += len((parent.tree / path).data_stream.read().decode().splitlines())
            except KeyError:
                pass
            after += len(text.splitlines())
        return after < before

    def _promote(self, rec: ExperimentRecord) -> None:
        fingerprint = next((r.evaluator_fingerprint for r in rec.runs if r.evaluator_fingerprint), None)
        merge = self.forge.promote(rec, trailers_for(rec, rec.decision, fingerprint))
        # The merge's tree is the candidate's, so the candidate's runs measure the new champion.
        self.forge.save(champion_after(rec, merge))
        rec.merged_as = merge
        self.forge.save(rec)


def hold_flagged(decision: Decision, runs: list[RunResult], review_flagged: bool) -> tuple[Decision, str | None]:
    """A win whose runs carry diff-inspection flags is held for a human (review "needed") when the target asks
    for it; the verdict stands. Shared by the local loop and GitHub mode (bot.github.driver)."""
    flags = sorted({f.split(":", 1)[0] for r in runs for f in r.flags})
    if decision.verdict != "win" or not flags or not review_flagged:
        return decision, None
    return decision.model_copy(update={
        "reason": f"{decision.reason}; held for human review, the diff touches: {', '.join(flags)}"}), "needed"


def champion_after(rec: ExperimentRecord, merge: str) -> ChampionRecord:
    """The record of the champion a win's merge made: its tree is the candidate's, so the candidate's runs
    measure it. Shared by the local loop and GitHub mode."""
    return ChampionRecord(commit=merge, experiment=rec.id, runs=rec.runs)


def export_results(forge: LocalForge, path: Path) -> None:
    """results.tsv: autoresearch's columns (commit val_bpb memory_gb status description), then arbot's own."""
    path.write_text(results_table(forge.experiments()))

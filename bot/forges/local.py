"""The local forge: experiments as real git branches, wins as merge commits with trailers, records as git notes.

Nothing here touches the working tree or the index of the repository: commits are built from trees
(GitPython's IndexFile.from_tree works on a temporary index), refs are moved with compare-and-swap.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from io import BytesIO
from typing import TypeVar

import git
import pydantic
from git.objects import Commit
from gitdb import IStream

from bot.core.records import ChampionRecord, ExperimentRecord, FailedProposal, Proposal
from runner.guard import forbidden_paths
from runner.result import clean_text

log = logging.getLogger("arbot.forge")
NOTES_REF = "arbot"  # refs/notes/arbot: experiment and champion records
PROPOSALS_REF = "arbot-proposals"  # refs/notes/arbot-proposals: proposals refused before any branch existed
UNREADABLE_REF = "arbot-unreadable"  # a note that could not be read is kept here before it is written over
NOTES_REFS = tuple(f"refs/notes/{r}" for r in (NOTES_REF, PROPOSALS_REF))
Record = TypeVar("Record", bound=pydantic.BaseModel)
ZERO = "0" * 40


class ForgeError(RuntimeError):
    pass


Edit = tuple[int, int, tuple[str, ...]]  # base lines [i, j) replaced by these lines


def _edits(base: list[str], text: str) -> list[Edit]:
    ops = difflib.SequenceMatcher(None, base, lines := text.splitlines(keepends=True), autojunk=False).get_opcodes()
    return [(i1, i2, tuple(lines[j1:j2])) for tag, i1, i2, j1, j2 in ops if tag != "equal"]


def _clash(a: Edit, b: Edit) -> bool:
    """Two edits of one base that cannot both be made: they change a line in common, or insert at one place
    (which goes first is unknown), or one inserts inside the lines the other replaces."""
    (i1, i2, _), (k1, k2, _) = a, b
    if i1 == i2 and k1 == k2:
        return i1 == k1
    return max(i1, k1) < min(i2, k2) or (k1 == k2 and i1 < k1 < i2) or (i1 == i2 and k1 < i1 < k2)


def merge_lines(base: str | None, ours: str, theirs: str | None) -> str | None:
    """`ours` (a change of `base`) made on `theirs` (another change of it), line by line; None when they conflict.

    Unlike git's three-way merge, changes to different lines merge even when they touch: a knob changed on one
    line and another knob on the next are separate changes (git calls that a conflict, and a replay would be
    lost). Changes to a line in common, two insertions at one place, or a file added or deleted on one side and
    changed on the other are conflicts. `None` for base or theirs: the file does not exist there."""
    if theirs == base or ours == theirs:
        return ours
    if base is None or theirs is None:
        return None
    lines = base.splitlines(keepends=True)
    mine, other = _edits(lines, ours), _edits(lines, theirs)
    if any(_clash(a, b) for a in mine for b in other if a != b):
        return None
    out, at = [], 0
    for i1, i2, new in sorted(set(mine + other)):
        out += lines[at:i1] + list(new)
        at = i2
    return "".join(out + lines[at:])


class LocalForge:
    def __init__(self, repo: git.Repo, champion_branch: str = "champion", branch_prefix: str = "arbot/exp-"):
        self.repo = repo
        self.champion_branch = champion_branch
        self.branch_prefix = branch_prefix
        self.unreadable: dict[tuple[str, str], tuple[str, str]] = {}  # (ref, commit) -> (note blob, why) of a skipped note

    # --- champion -------------------------------------------------------------------------
    def ensure_champion(self) -> str:
        """Create the champion branch from HEAD on the first run; return its sha."""
        if not self.repo.head.is_detached and self.repo.active_branch.name == self.champion_branch:
            raise ForgeError(
                f"the current branch is '{self.champion_branch}', which arbot moves on every win; "
                f"check out another branch (git switch main) and run again"
            )
        ref = f"refs/heads/{self.champion_branch}"
        if not self.has_ref(ref):
            self.repo.git.update_ref(ref, self.repo.head.commit.hexsha, ZERO)
        return self.champion()

    def champion(self) -> str:
        return self.repo.commit(self.champion_branch).hexsha

    # --- notes ----------------------------------------------------------------------------
    def _notes(self, ref: str = NOTES_REF) -> dict[str, dict | list]:
        """Every note under refs/notes/<ref> that is JSON, keyed by the commit it annotates; any other is skipped
        and reported (`unreadable_notes`), never an error."""
        try:
            listing = self.repo.git.notes(f"--ref={ref}", "list")
        except git.GitCommandError:
            return {}
        notes = {}
        for line in listing.splitlines():
            blob, commit = line.split()
            try:
                notes[commit] = json.loads(self.repo.odb.stream(bytes.fromhex(blob)).read())
            except (ValueError, RecursionError) as e:
                self._skip(ref, commit, blob, f"it is not JSON ({type(e).__name__})")
        return notes

    def _skip(self, ref: str, commit: str, blob: str, why: str) -> None:
        if (ref, commit) not in self.unreadable:
            log.warning("skipped the note on %s under refs/notes/%s: %s", commit[:12], ref, why)
        self.unreadable[(ref, commit)] = (blob, why)

    def _load(self, model: type[Record], note: object, commit: str, ref: str = NOTES_REF) -> Record | None:
        """The record a note holds, or None (skipped and reported) when it is not a valid one."""
        try:
            return model.model_validate(note)
        except pydantic.ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the note"
            blob = self.repo.git.notes(f"--ref={ref}", "list", commit)
            self._skip(ref, commit, blob, f"not a valid {model.__name__}: {where}: {first['msg']} "
                                          f"({e.error_count()} errors)")
            return None

    def unreadable_notes(self) -> list[str]:
        """One line per note skipped so far (by any read), with what is wrong and what to do."""
        return [clean_text(f"the note on {commit[:12]} under refs/notes/{ref} is skipped: {why}. Read it with "
                           f"`git notes --ref={ref} show {commit[:12]}`; fix it, or remove it with `git notes "
                           f"--ref={ref} remove {commit[:12]}` (arbot keeps a copy under refs/notes/{UNREADABLE_REF} "
                           "whenever it writes over one)")
                for (ref, commit), (_, why) in sorted(self.unreadable.items())]

    def _write_note(self, commit: str, payload: str, ref: str = NOTES_REF) -> None:
        if (ref, commit) in self.unreadable:  # nothing is lost: the unreadable note is kept before it is replaced
            blob, _ = self.unreadable.pop((ref, commit))
            self.repo.git.notes(f"--ref={UNREADABLE_REF}", "add", "-f", "-C", blob, commit)
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            f.write(payload)
            f.flush()
            self.repo.git.notes(f"--ref={ref}", "add", "-f", "-F", f.name, commit)

    def experiments(self) -> list[ExperimentRecord]:
        notes = self._notes()
        recs = [self._load(ExperimentRecord, n, c) for c, n in notes.items()
                if isinstance(n, dict) and n.get("kind") == "experiment"]
        return sorted((r for r in recs if r is not None), key=lambda r: r.number)

    def save(self, rec: ExperimentRecord | ChampionRecord) -> None:
        self._write_note(rec.commit, rec.model_dump_json(indent=1))

    def champion_record(self, sha: str) -> ChampionRecord:
        note = self._notes().get(sha)
        if isinstance(note, dict) and note.get("kind") == "champion":
            return self._load(ChampionRecord, note, sha) or ChampionRecord(commit=sha)
        return ChampionRecord(commit=sha)

    def champion_records(self, shas: Iterable[str]) -> dict[str, ChampionRecord]:
        """The records of these champion commits, from one read of the notes (champion_record reads them all for
        one): what `status`, `log`, `plot` and the report need at once."""
        notes = self._notes()
        out = {}
        for sha in shas:
            note = notes.get(sha)
            loaded = self._load(ChampionRecord, note, sha) if isinstance(note, dict) and note.get("kind") == "champion" \
                else None
            out[sha] = loaded or ChampionRecord(commit=sha)
        return out

    # --- proposals refused before a branch existed: a JSON list noted on the champion commit ---------------
    def save_failed_proposal(self, rec: FailedProposal) -> None:
        items = self._notes(PROPOSALS_REF).get(rec.champion, [])
        items = (items if isinstance(items, list) else []) + [rec.model_dump(mode="json")]
        self._write_note(rec.champion, json.dumps(items, indent=1), PROPOSALS_REF)

    def failed_proposals(self) -> list[FailedProposal]:
        """Every refused proposal, oldest first."""
        out = [self._load(FailedProposal, i, commit, PROPOSALS_REF) for commit, items in self._notes(PROPOSALS_REF).items()
               if isinstance(items, list) for i in items if isinstance(i, dict)]
        return sorted((r for r in out if r is not None), key=lambda r: r.at)

    def spent_today(self) -> float:
        """USD spent on proposals today (UTC): experiments started today plus refused proposals made today."""
        today = datetime.now(timezone.utc).date().isoformat()
        return (sum(r.cost.usd for r in self.failed_proposals() if r.at.startswith(today))
                + sum(r.proposal.cost.usd for r in self.experiments() if r.started_at.startswith(today)))

    # --- what a proposer and the lifecycle read from the tree ----------------------------------------------
    def text(self, sha: str, path: str) -> str | None:
        try:
            return (self.repo.commit(sha).tree / path).data_stream.read().decode()
        except KeyError:
            return None

    def allowed_files(self, sha: str, allowed_paths: list[str]) -> dict[str, str]:
        """The text of every file of `sha` a proposal may change."""
        return {b.path: b.data_stream.read().decode() for b in self.repo.commit(sha).tree.traverse()
                if b.type == "blob" and not forbidden_paths([b.path], allowed_paths)}

    def removes_code(self, rec: ExperimentRecord) -> bool:
        """Whether rec's change deletes lines on net (the policy may promote a no-worse simplification)."""
        before = sum(len((self.text(rec.parent, path) or "").splitlines()) for path in rec.proposal.files)
        return sum(len(t.splitlines()) for t in rec.proposal.files.values()) < before

    # --- experiments ----------------------------------------------------------------------
    def next_number(self) -> int:
        numbers = [r.number for r in self.experiments()]
        pattern = re.compile(re.escape(self.branch_prefix) + r"(\d+)$")
        numbers += [int(m.group(1)) for h in self.repo.heads if (m := pattern.match(h.name))]
        return max(numbers, default=0) + 1

    def open_experiment(self, proposal: Proposal, parent: str, started_at: str) -> ExperimentRecord:
        """One commit on top of the champion, its note, then its branch: the record exists before the branch."""
        number = self.next_number()
        exp_id = f"exp-{number}"
        message = (
            f"{proposal.hypothesis}\n\n{proposal.rationale}\n\n"
            f"Experiment: {exp_id}\nProposer: {proposal.proposer}\nChampion: {parent}\n"
        )
        commit = self._commit_files(parent, proposal.files, message)
        rec = ExperimentRecord(
            id=exp_id, number=number, branch=f"{self.branch_prefix}{number}", commit=commit, parent=parent,
            proposal=proposal, started_at=started_at,
        )
        self.save(rec)
        self.ensure_branch(rec)
        return rec

    def moved_branch(self, rec: ExperimentRecord) -> str | None:
        """Why rec's branch no longer holds its commit (someone moved it), or None."""
        ref = f"refs/heads/{rec.branch}"
        sha = self.repo.git.rev_parse(ref) if self.has_ref(ref) else rec.commit
        return None if sha == rec.commit else f"branch {rec.branch} points at {sha[:12]}, not the experiment's commit {rec.commit[:12]}"

    def ensure_branch(self, rec: ExperimentRecord) -> None:
        ref = f"refs/heads/{rec.branch}"
        if not self.has_ref(ref):
            self.repo.git.update_ref(ref, rec.commit, ZERO)

    def _commit_files(self, parent: str, files: dict[str, str], message: str) -> str:
        parent_commit = self.repo.commit(parent)
        index = git.IndexFile.from_tree(self.repo, parent_commit.tree)
        entries = []
        for path, text in files.items():
            data = text.encode()
            binsha = self.repo.odb.store(IStream("blob", len(data), BytesIO(data))).binsha
            try:
                mode = parent_commit.tree[path].mode
            except KeyError:
                mode = 0o100644
            entries.append(git.BaseIndexEntry((mode, binsha, 0, path)))
        index.add(entries)
        tree = index.write_tree()
        if tree.binsha == parent_commit.tree.binsha:
            raise ForgeError("the proposal changes nothing: its files equal the champion's")
        return Commit.create_from_tree(self.repo, tree, message, parent_commits=[parent_commit], head=False).hexsha

    def replay_files(self, rec: ExperimentRecord, onto: str) -> dict[str, str] | None:
        """rec's change applied onto another champion, file by file (`merge_lines`): the new text of each file it
        changes, or None when it conflicts."""
        out = {}
        for path, text in rec.proposal.files.items():
            if (merged := merge_lines(self.text(rec.parent, path), text, self.text(onto, path))) is None:
                return None
            out[path] = merged
        return out

    # --- promotion ------------------------------------------------------------------------
    def promote(self, rec: ExperimentRecord, trailers: dict[str, str]) -> str:
        """Merge a win into champion with trailers; refuses if champion moved since it was measured."""
        champion = self.champion()
        if champion != rec.parent:
            raise ForgeError(f"{rec.id} was measured against {rec.parent[:12]} but champion is now {champion[:12]}")
        try:
            tree = self.repo.git.merge_tree("--write-tree", champion, rec.commit).splitlines()[0]
        except git.GitCommandError as e:
            raise ForgeError(f"{rec.id} does not merge cleanly into {self.champion_branch}: {e.stdout}") from e
        body = "\n".join(f"{k}: {v}" for k, v in trailers.items())
        message = f"arbot: {rec.proposal.hypothesis} ({rec.id})\n\n{rec.proposal.rationale}\n\n{body}\n"
        merge = Commit.create_from_tree(
            self.repo, self.repo.tree(tree), message,
            parent_commits=[self.repo.commit(champion), self.repo.commit(rec.commit)], head=False,
        )
        self.repo.git.update_ref(f"refs/heads/{self.champion_branch}", merge.hexsha, champion)
        return merge.hexsha

    def revert(self, rec: ExperimentRecord, subject: str, trailers: dict[str, str]) -> str:
        """A commit on champion that undoes rec's change (git revert in a throwaway worktree), moved with CAS."""
        champion = self.champion()
        with tempfile.TemporaryDirectory(prefix="arbot-revert-") as tmp:
            self.repo.git.worktree("add", "--detach", tmp, champion)
            try:
                wt = git.Repo(tmp)
                try:
                    wt.git.revert("--no-commit", rec.commit)
                except git.GitCommandError as e:
                    raise ForgeError(f"{rec.id} cannot be reverted cleanly; later wins changed the same lines: "
                                     f"{e.stderr.strip()}") from e
                tree = wt.git.write_tree()
            finally:
                self.repo.git.worktree("remove", "--force", tmp)
        body = "\n".join(f"{k}: {v}" for k, v in trailers.items())
        commit = Commit.create_from_tree(self.repo, self.repo.tree(tree), f"{subject}\n\n{body}\n",
                                         parent_commits=[self.repo.commit(champion)], head=False)
        self.repo.git.update_ref(f"refs/heads/{self.champion_branch}", commit.hexsha, champion)
        return commit.hexsha

    def merged(self, rec: ExperimentRecord) -> bool:
        return self.repo.is_ancestor(rec.commit, self.champion())

    def champion_log(self) -> list[tuple[str, dict[str, str]]]:
        """(sha, trailers) of each arbot commit on the champion branch (wins and reverts), newest first."""
        out = self.repo.git.log(
            self.champion_branch, "--first-parent", "--format=%H%x00%(trailers:unfold,separator=%x01)%x00%x02"
        )
        log = []
        for chunk in out.split("\x02"):
            if not chunk.strip():
                continue
            sha, trailers, _ = chunk.strip().split("\x00")
            pairs = dict(t.split(": ", 1) for t in trailers.split("\x01") if ": " in t)
            if "Experiment" in pairs:
                log.append((sha, pairs))
        return log

    def has_ref(self, ref: str) -> bool:
        try:
            self.repo.git.rev_parse("--verify", "--quiet", ref)
            return True
        except git.GitCommandError:
            return False


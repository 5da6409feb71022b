"""The local forge: experiments as real git branches, wins as merge commits with trailers, records as git notes.

Nothing here touches the working tree or the index of the repository: commits are built from trees
(GitPython's IndexFile.from_tree works on a temporary index), refs are moved with compare-and-swap.
"""

from __future__ import annotations

import bisect
import difflib
import json
import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from collections.abc import Iterable
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path
from typing import TypeVar

import git
import pydantic
from git.objects import Commit
from gitdb import IStream, LooseObjectDB

from bot import signing
from bot.core.lifecycle import is_active
from bot.core.records import ChampionRecord, ExperimentRecord, FailedProposal, Proposal
from bot.signing import KEYS_FILE, Signer, Verifier
from runner.guard import forbidden_paths
from runner.result import clean_text

log = logging.getLogger("arbot.forge")
NOTES_REF = "arbot"  # refs/notes/arbot: experiment and champion records
PROPOSALS_REF = "arbot-proposals"  # refs/notes/arbot-proposals: proposals refused before any branch existed
UNREADABLE_REF = "arbot-unreadable"  # a note that could not be read is kept here before it is written over
NOTES_REFS = tuple(f"refs/notes/{r}" for r in (NOTES_REF, PROPOSALS_REF))
Record = TypeVar("Record", bound=pydantic.BaseModel)
ZERO = "0" * 40
_PLAIN_REF = re.compile(r"refs/(heads|notes)/[A-Za-z0-9._+/-]+")  # the refs `_ref_sha` reads itself
_SHA = re.compile(rb"[0-9a-f]{40}")


class ForgeError(RuntimeError):
    pass


Edit = tuple[int, int, tuple[str, ...]]  # base lines [i, j) replaced by these lines
Region = tuple[list[str], list[str], list[str]]  # one region git left in conflict: (ours, base, theirs) lines


def _edits(base: list[str], lines: list[str]) -> list[Edit]:
    ops = difflib.SequenceMatcher(None, base, lines, autojunk=False).get_opcodes()
    return [(i1, i2, tuple(lines[j1:j2])) for tag, i1, i2, j1, j2 in ops if tag != "equal"]


def _clash(a: Edit, b: Edit) -> bool:
    """Two edits of one base that cannot both be made: they change a line in common, or insert at one place
    (which goes first is unknown), or one inserts inside the lines the other replaces."""
    (i1, i2, _), (k1, k2, _) = a, b
    if i1 == i2 and k1 == k2:
        return i1 == k1
    return max(i1, k1) < min(i2, k2) or (k1 == k2 and i1 < k1 < i2) or (i1 == i2 and k1 < i1 < k2)


def _touching(ours: list[str], base: list[str], theirs: list[str]) -> list[str] | None:
    """One region git left in conflict, merged when its two changes only touch (changes to different lines, an
    insertion right after a changed line); None when they change a line in common or insert at one place."""
    mine, other = _edits(base, ours), _edits(base, theirs)
    if any(_clash(a, b) for a in mine for b in other if a != b):
        return None
    out, at = [], 0
    for i1, i2, new in sorted(set(mine + other)):
        out += base[at:i1] + list(new)
        at = i2
    return out + base[at:]


def _lines(text: str) -> list[str]:
    """`text`'s lines as git counts them (ended by a newline only), each with its ending."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _git_merge(base: str, ours: str, theirs: str) -> list[str | Region]:
    """git's three-way merge of one file (`git merge-file --diff3`, as `git rebase` merges it): the merged lines,
    with each region it left in conflict as (ours, base, theirs). The conflict markers are longer than any line
    of the three texts, so no line of theirs reads as one."""
    size = max(len(line) for text in (base, ours, theirs) for line in [""] + _lines(text)) + 1
    start, middle, sep, end = "<" * size, "|" * size, "=" * size, ">" * size
    with tempfile.TemporaryDirectory(prefix="arbot-merge-") as tmp:
        paths = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            (path := Path(tmp) / name).write_bytes(text.encode())
            paths.append(str(path))
        done = subprocess.run(["git", "merge-file", "-p", "--diff3", f"--marker-size={size}", *paths],
                              capture_output=True)
    if done.returncode >= 128 or done.returncode < 0:
        raise ForgeError(f"git merge-file failed: {done.stderr.decode(errors='replace').strip()}")
    out: list[str | Region] = []
    region: Region | None = None
    part = 0
    for line in _lines(done.stdout.decode()):
        if line.startswith(start):
            region, part = ([], [], []), 0
        elif region is not None and line.startswith(middle):
            part = 1
        elif region is not None and line.rstrip("\r\n") == sep:  # git ends its markers as the file's lines end
            part = 2
        elif region is not None and line.startswith(end):
            out.append(region)
            region = None
        elif region is not None:
            region[part].append(line)
        else:
            out.append(line)
    return out


def merge_lines(base: str | None, ours: str, theirs: str | None) -> str | None:
    """`ours` (a change of `base`) made on `theirs` (another change of it): git's three-way merge (`git
    merge-file`), None when they conflict.

    One extension: where git reports a conflict because two changes touch (a knob changed on one line and
    another knob on the next, a line changed and one inserted right after it), they merge: they are separate
    changes, and a replay would be lost. Changes to a line in common, two insertions at one place, or a file
    added or deleted on one side and changed on the other are conflicts. `None` for base or theirs: the file
    does not exist there."""
    if theirs == base or ours == theirs:
        return ours
    if base is None or theirs is None:
        return None
    if ours == base:
        return theirs
    texts = (base, ours, theirs)
    newline = [not t or t.endswith("\n") for t in texts]
    if not all(newline):  # merged as lines that all end in one; the last line's ending merged as any line's
        base, ours, theirs = (t if nl else t + "\n" for t, nl in zip(texts, newline))
    if any("\0" in t for t in texts):  # git merges no file it takes for binary: the whole file as one region
        pieces: list[str | Region] = [(_lines(ours), _lines(base), _lines(theirs))]
    else:
        pieces = _git_merge(base, ours, theirs)
    out = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
        elif (merged := _touching(*piece)) is None:
            return None
        else:
            out += merged
    text = "".join(out)
    ends = newline[1] if newline[1] != newline[0] else newline[2]
    return text if ends or not text.endswith("\n") else text[:-1]


@dataclass(frozen=True)
class Listing:
    """One notes ref as read at `tip`: every note's blob by commit, and the trusted notes (blob, JSON)."""

    tip: str | None
    blobs: dict[str, str]
    notes: dict[str, tuple[str, dict]]


@dataclass(frozen=True)
class Experiments:
    """The experiment records of `notes` (one `Listing.notes`): all by number, and the active ones."""

    notes: dict[str, tuple[str, dict]]
    by_number: list[ExperimentRecord]
    active: list[ExperimentRecord]
    by_id: dict[str, ExperimentRecord]


class LocalForge:
    def __init__(self, repo: git.Repo, champion_branch: str = "champion", branch_prefix: str = "arbot/exp-",
                 key_path: Path | None = None):
        """`key_path`: the bot's signing key (default: signing.default_key_path())."""
        self.repo = repo
        self.champion_branch = champion_branch
        self.branch_prefix = branch_prefix
        self.unreadable: dict[tuple[str, str], tuple[str, str]] = {}  # (ref, commit) -> (note blob, why) of a skipped note
        self.key_problems: list[str] = []  # lines of KEYS_FILE that are not keys
        self._key_path, self._signer = key_path, None
        self._objects = LooseObjectDB(os.path.join(repo.common_dir, "objects"))
        self._keys_at: str | None = None  # the champion commit KEYS_FILE was read from
        self._verifier: Verifier | None = None
        self._listing: dict[str, Listing] = {}  # ref -> its notes at its tip
        self._checked: dict[tuple[str, str, str], tuple[object, str | None]] = {}  # (ref, commit, blob) -> JSON, why not trusted
        self._signed: dict[tuple[str, str], str] = {}  # (ref, commit) -> the latest trusted blob this process read
        self._models: dict[tuple, tuple[pydantic.BaseModel | None, str | None]] = {}  # (blob, model, item) -> record, why not
        self._experiments: Experiments | None = None
        self._branch_number: int | None = None  # the highest experiment branch number when first asked
        self._warned: set[tuple[str, str, str]] = set()
        self._packed: tuple[tuple[int, int, int], dict[str, str]] | None = None  # packed-refs: (its stat, refs)
        self._removes: dict[str, bool] = {}  # experiment commit -> removes_code (its parent and files are in it)

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
        return self._ref_sha(f"refs/heads/{self.champion_branch}") or self.repo.commit(self.champion_branch).hexsha

    def has_history(self) -> bool:
        """Whether champion holds a commit arbot made on it (a merged win, a revert, an adoption: a commit with an
        `Experiment:` or `Adopted:` trailer): until then it is only where the user's branch was, and it follows
        that branch (`follow_head`)."""
        return bool(self.repo.git.log(self.champion_branch, "--first-parent", "-n1", "--format=%H", "-E",
                                      "--grep=^(Experiment|Adopted): ").strip())

    def head_ahead(self) -> str | None:
        """The commit of the branch checked out (not champion, not an experiment branch, not a detached HEAD)
        when it holds commits champion lacks, else None."""
        if not self.has_ref(f"refs/heads/{self.champion_branch}") or self.repo.head.is_detached:
            return None
        branch = self.repo.active_branch.name
        if branch == self.champion_branch or branch.startswith(self.branch_prefix):
            return None
        head = self.repo.head.commit.hexsha
        return None if self.repo.is_ancestor(head, self.champion()) else head

    def follow_target(self) -> str | None:
        """The commit champion moves to at the next `arbot run`, or None: while it has no history of its own, it
        follows the branch checked out to any commit it does not already hold (`head_ahead`), so a fix committed
        after a failed first run is what the next run measures."""
        head = self.head_ahead()
        return None if head is None or self.has_history() else head

    def not_adopted(self) -> int:
        """How many commits of the branch checked out champion lacks once it no longer follows it (it has a
        history of its own): what `arbot adopt` would bring in; 0 when none or while it follows."""
        head = self.head_ahead()
        if head is None or not self.has_history():
            return 0
        return int(self.repo.git.rev_list("--count", f"{self.champion()}..{head}"))

    def follow_head(self) -> str | None:
        """Move champion to `follow_target` (compare-and-swap); the commit it moved from, or None."""
        if (head := self.follow_target()) is None:
            return None
        old = self.champion()
        self.repo.git.update_ref(f"refs/heads/{self.champion_branch}", head, old)
        return old

    def adopt(self, ref: str, reason: str) -> str:
        """Merge `ref` (a hand edit, a fixed evaluator) into champion: a merge commit with `Adopted:` and `Reason:`
        trailers, moved with compare-and-swap. The merge is a new champion, so its noise floor is measured again
        before anything is compared with it. Returns the merge commit."""
        try:
            theirs = self.repo.commit(ref)
        except (git.BadName, ValueError) as e:
            raise ForgeError(f"{ref!r} names no commit: give a branch, tag or sha (e.g. main)") from e
        champion = self.champion()
        if self.repo.is_ancestor(theirs.hexsha, champion):
            raise ForgeError(f"{ref} ({theirs.hexsha[:12]}) is already in {self.champion_branch}: nothing to adopt")
        try:
            tree = self.repo.git.merge_tree("--write-tree", "--name-only", champion, theirs.hexsha).splitlines()
        except git.GitCommandError as e:
            paths = [p for p in e.stdout.strip().strip("'").splitlines()[1:] if p and not p.startswith(("Auto-merging",
                                                                                                    "CONFLICT"))]
            raise ForgeError(f"{ref} does not merge cleanly into {self.champion_branch}: both changed "
                             f"{', '.join(sorted(set(paths))) or 'the same lines'}. Merge {self.champion_branch} into "
                             f"{ref} first (git merge {self.champion_branch}), resolve, commit, then adopt again") from e
        message = (f"arbot: adopt {ref} ({theirs.hexsha[:12]})\n\n{reason}\n\n"
                   f"Adopted: {theirs.hexsha}\nReason: {clean_text(reason).replace(chr(10), ' ')}\n")
        merge = Commit.create_from_tree(self.repo, self.repo.tree(tree[0]), message,
                                        parent_commits=[self.repo.commit(champion), theirs], head=False)
        self.repo.git.update_ref(f"refs/heads/{self.champion_branch}", merge.hexsha, champion)
        return merge.hexsha

    # --- notes: read once per notes ref tip, each note checked once -------------------------------------------
    def signer(self, create: bool = False) -> Signer | None:
        """The bot's signing key (created on first use by a writer); None for a reader on a machine without it."""
        if self._signer is None:
            self._signer = signing.signer(self._key_path, create=create)
        return self._signer

    def _ref_sha(self, ref: str) -> str | None:
        """The commit a full ref name points at, or None; read in process (no git command). A branch or notes ref is
        read as git stores it (its loose file, else packed-refs); any other name, or a symbolic ref, by GitPython
        (which checks each path it opens: several times slower, and the bot reads refs at every step)."""
        if _PLAIN_REF.fullmatch(ref) and ".." not in ref.split("/"):
            try:
                with open(os.path.join(self.repo.common_dir, ref), "rb") as f:
                    value = f.read().strip()
            except (FileNotFoundError, NotADirectoryError):
                return self._packed_refs().get(ref)
            if _SHA.fullmatch(value):
                return value.decode()
        try:
            return git.SymbolicReference.dereference_recursive(self.repo, ref)
        except ValueError:
            return None

    def _packed_refs(self) -> dict[str, str]:
        """packed-refs as {ref: sha}, read again when the file changes."""
        path = os.path.join(self.repo.common_dir, "packed-refs")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return {}
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._packed is None or self._packed[0] != key:
            with open(path, "rb") as f:
                refs = dict(reversed(line.decode().split()[:2]) for line in f
                            if line[:1] not in (b"#", b"^") and len(line.split()) >= 2)
            self._packed = (key, refs)
        return self._packed[1]

    def _trust(self) -> None:
        """The keys notes are verified with: this bot's and those committed in KEYS_FILE on the champion branch
        (read again when the champion moves; every note is checked again when they change)."""
        champion = self._ref_sha(f"refs/heads/{self.champion_branch}")
        if self._verifier is not None and champion == self._keys_at:
            return
        keys, self.key_problems = self.committed_keys()
        if (own := self.signer()) is not None:
            keys.append(own.public)
        verifier = Verifier(keys)
        if self._verifier is None or verifier.keys.keys() != self._verifier.keys.keys():
            self._checked.clear()
            self._listing.clear()
        self._keys_at, self._verifier = champion, verifier

    def committed_keys(self) -> tuple[list[signing.PublicKey], list[str]]:
        """The public keys in KEYS_FILE on the champion branch (none before it exists), and what is wrong with
        its other lines."""
        champion = self._ref_sha(f"refs/heads/{self.champion_branch}")
        return signing.parse_keys(self.text(champion, KEYS_FILE) or "") if champion else ([], [])

    def _notes(self, ref: str = NOTES_REF) -> dict[str, tuple[str, dict]]:
        """Every note under refs/notes/<ref> signed by a trusted key, keyed by the commit it annotates: (its blob,
        its JSON). Any other is skipped and reported (`unreadable_notes`), never an error; where it replaced a
        signed note this process read, that one stands. Listed again only when the ref moved."""
        self._trust()
        tip = self._ref_sha(f"refs/notes/{ref}")
        if (cached := self._listing.get(ref)) is not None and cached.tip == tip:
            return cached.notes
        blobs = {}
        for line in (self.repo.git.notes(f"--ref={ref}", "list").splitlines() if tip else []):
            blob, commit = line.split()
            blobs[commit] = blob
        for key in [k for k in self.unreadable if k[0] == ref]:
            del self.unreadable[key]
        notes = {}
        for commit, blob in blobs.items():
            value, why = self._check(ref, commit, blob)
            if why is None:
                notes[commit] = (blob, value)
                self._signed[(ref, commit)] = blob
                continue
            last = self._signed.get((ref, commit))
            if last is not None and self._check(ref, commit, last)[1] is not None:
                last = None  # signed by a key no longer trusted
            self._skip(ref, commit, blob, why + (f"; the signed note it replaced ({last[:12]}) stands" if last else ""))
            if last is not None:
                notes[commit] = (last, self._check(ref, commit, last)[0])
        self._listing[ref] = Listing(tip, blobs, notes)
        self._forget()
        return notes

    def _forget(self) -> None:
        """Drop what was checked and loaded of notes no longer listed (a long-running bot stays small)."""
        live = {(ref, commit, blob) for ref, listing in self._listing.items() for commit, blob in listing.blobs.items()}
        live |= {(ref, commit, blob) for (ref, commit), blob in self._signed.items()}
        self._checked = {k: v for k, v in self._checked.items() if k in live}
        blobs = {blob for _, _, blob in live}
        self._models = {k: v for k, v in self._models.items() if k[0] in blobs}

    def _check(self, ref: str, commit: str, blob: str) -> tuple[object, str | None]:
        """A note's JSON and why it is not to be trusted (None: signed by a trusted key), once per note blob."""
        if (ref, commit, blob) not in self._checked:
            try:
                value = json.loads(self.repo.odb.stream(bytes.fromhex(blob)).read())
                self._checked[(ref, commit, blob)] = (value, self._verifier.check(ref, commit, value))
            except (ValueError, RecursionError) as e:
                self._checked[(ref, commit, blob)] = (None, f"it is not JSON ({type(e).__name__})")
        return self._checked[(ref, commit, blob)]

    def _skip(self, ref: str, commit: str, blob: str, why: str) -> None:
        if (ref, commit, blob) not in self._warned:
            self._warned.add((ref, commit, blob))
            log.warning("skipped the note on %s under refs/notes/%s: %s", commit[:12], ref, why)
        self.unreadable[(ref, commit)] = (blob, why)

    def _load(self, model: type[Record], note: tuple[str, object], commit: str, ref: str = NOTES_REF,
              item: int = 0) -> Record | None:
        """The record a note holds, or None (skipped and reported) when it is not a valid one; once per note blob.
        The record is shared by every read until it is saved again (save drops it): change it only to save it."""
        blob, value = note
        if (blob, model, item) not in self._models:
            try:
                self._models[(blob, model, item)] = (model.model_validate(value), None)
            except pydantic.ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "the note"
                self._models[(blob, model, item)] = (None, f"not a valid {model.__name__}: {where}: {first['msg']} "
                                                     f"({e.error_count()} errors)")
        record, why = self._models[(blob, model, item)]
        if why is not None:
            self._skip(ref, commit, blob, why)
        return record

    def unreadable_notes(self) -> list[str]:
        """One line per note skipped in the latest reads, with what is wrong and what to do."""
        return [self._skipped_line(ref, commit, why) for (ref, commit), (_, why) in sorted(self.unreadable.items())]

    def skipped_about(self, rec: ExperimentRecord) -> list[str]:
        """The skipped notes that concern `rec`: on its commit or its champion's, or claiming its id."""
        self.experiments()
        out = []
        for (ref, commit), (blob, why) in sorted(self.unreadable.items()):
            value = self._checked.get((ref, commit, blob), (None, None))[0]
            if commit in (rec.commit, rec.parent) or (isinstance(value, dict) and value.get("id") == rec.id):
                out.append(self._skipped_line(ref, commit, why))
        return out

    @staticmethod
    def _skipped_line(ref: str, commit: str, why: str) -> str:
        return clean_text(f"the note on {commit[:12]} under refs/notes/{ref} is skipped: {why}. Read it with "
                          f"`git notes --ref={ref} show {commit[:12]}`; `arbot audit --verify` lists every such "
                          f"note, `arbot sign --adopt-unsigned` signs the unsigned ones you trust (docs/security.md)")

    def _write_note(self, commit: str, payload: str, ref: str = NOTES_REF) -> None:
        """`payload` (a JSON object) signed and noted on `commit`; the index follows without listing the notes
        again, unless another writer moved the ref meanwhile."""
        value = self.signer(create=True).sign(ref, commit, json.loads(payload))
        before = self._notes(ref)
        if (ref, commit) in self.unreadable:  # nothing is lost: the unreadable note is kept before it is replaced
            old, _ = self.unreadable.pop((ref, commit))
            self.repo.git.notes(f"--ref={UNREADABLE_REF}", "add", "-f", "-C", old, commit)
        stale = {self._listing[ref].blobs.get(commit), self._signed.get((ref, commit))} - {None}
        for old in stale:  # a record changed in place is never read again
            self._checked.pop((ref, commit, old), None)
            for model in (ExperimentRecord, ChampionRecord):
                self._models.pop((old, model, 0), None)
        data = json.dumps(value, indent=1).encode()
        blob = self._store_blob(data).hex()
        self.repo.git.notes(f"--ref={ref}", "add", "-f", "-C", blob, commit)
        listing, tip = self._listing[ref], self._ref_sha(f"refs/notes/{ref}")
        if [p.hexsha for p in self.repo.commit(tip).parents] == ([listing.tip] if listing.tip else []):
            self._checked[(ref, commit, blob)] = (value, None)
            self._signed[(ref, commit)] = blob
            self._listing[ref] = Listing(tip, {**listing.blobs, commit: blob}, notes := {**before, commit: (blob, value)})
            if ref == NOTES_REF and self._experiments is not None and self._experiments.notes is before:
                self._experiments = self._patched(self._experiments, commit, notes)

    def experiments(self) -> list[ExperimentRecord]:
        """Every experiment, by number: one record per id (a second note claiming an id is skipped and reported)."""
        return list(self._index().by_number)

    def active(self) -> list[ExperimentRecord]:
        """The experiments an executor still owes work (lifecycle.is_active), by number."""
        return list(self._index().active)

    def experiment(self, experiment_id: str) -> ExperimentRecord | None:
        return self._index().by_id.get(experiment_id)

    def _index(self) -> Experiments:
        notes = self._notes()
        if self._experiments is None or self._experiments.notes is not notes:
            recs = sorted((r for c, n in notes.items() if isinstance(n[1], dict) and n[1].get("kind") == "experiment"
                           if (r := self._load(ExperimentRecord, n, c)) is not None),
                          key=lambda r: (r.started_at, r.commit))
            first: dict[str, ExperimentRecord] = {}
            for rec in recs:
                if (other := first.setdefault(rec.id, rec)) is not rec:
                    self._skip(NOTES_REF, rec.commit, notes[rec.commit][0],
                               f"it claims {rec.id}, whose record is the note on {other.commit[:12]}")
            by_number = sorted(first.values(), key=lambda r: r.number)
            self._experiments = Experiments(notes, by_number, [r for r in by_number if is_active(r)], first)
        return self._experiments

    def _patched(self, old: Experiments, commit: str, notes: dict[str, tuple[str, dict]]) -> Experiments | None:
        """`old` with the note the bot just wrote on `commit`, without reading the others again; None when it is a
        second record of an id (everything is read again)."""
        by_number = [r for r in old.by_number if r.commit != commit]
        active = [r for r in old.active if r.commit != commit]
        by_id = {i: r for i, r in old.by_id.items() if r.commit != commit}
        value = notes[commit][1]
        if isinstance(value, dict) and value.get("kind") == "experiment":
            if (rec := self._load(ExperimentRecord, notes[commit], commit)) is not None:
                if rec.id in by_id:
                    return None
                by_id[rec.id] = rec
                bisect.insort(by_number, rec, key=lambda r: r.number)
                if is_active(rec):
                    bisect.insort(active, rec, key=lambda r: r.number)
        return Experiments(notes, by_number, active, by_id)

    def save(self, rec: ExperimentRecord | ChampionRecord) -> None:
        self._write_note(rec.commit, rec.model_dump_json())

    def champion_record(self, sha: str) -> ChampionRecord:
        note = self._notes().get(sha)
        if note is not None and isinstance(note[1], dict) and note[1].get("kind") == "champion":
            return self._load(ChampionRecord, note, sha) or ChampionRecord(commit=sha)
        return ChampionRecord(commit=sha)

    # --- verification of a whole history, and the one-time adoption of unsigned notes -------------------------
    def verify(self) -> tuple[int, list[str]]:
        """(notes that verify, one line per note that does not) over both notes refs."""
        self.experiments()
        self.failed_proposals()
        for commit, (_, value) in self._notes().items():
            if isinstance(value, dict) and value.get("kind") == "champion":
                self.champion_record(commit)
        listed = sum(len(self._listing[ref].blobs) for ref in (NOTES_REF, PROPOSALS_REF))
        return listed - len(self.unreadable), self.unreadable_notes()

    def adopt_unsigned(self) -> list[tuple[str, str]]:
        """Sign every unsigned JSON note as it is (the owner vouches for them): (ref, commit) of each. Notes
        whose signature does not verify are left alone: they were changed after arbot signed them."""
        adopted = []
        for ref in (NOTES_REF, PROPOSALS_REF):
            self._notes(ref)
            for commit, blob in dict(self._listing[ref].blobs).items():
                value, why = self._check(ref, commit, blob)
                if why != signing.UNSIGNED:
                    continue
                if ref == PROPOSALS_REF and isinstance(value, list):  # the list arbot wrote before notes were signed
                    value = {"kind": "proposals", "items": value}
                self.unreadable.pop((ref, commit), None)
                self._write_note(commit, json.dumps(value), ref)
                adopted.append((ref, commit))
        return adopted

    def champion_records(self, shas: Iterable[str]) -> dict[str, ChampionRecord]:
        """The records of these champion commits, each from the index of the notes: what `status`, `log`, `plot`
        and the report need at once."""
        return {sha: self.champion_record(sha) for sha in shas}

    # --- proposals refused before a branch existed: a JSON list noted on the champion commit ---------------
    def save_failed_proposal(self, rec: FailedProposal) -> None:
        note = self._notes(PROPOSALS_REF).get(rec.champion)
        items = note[1].get("items", []) if note is not None and isinstance(note[1], dict) else []
        items = (items if isinstance(items, list) else []) + [rec.model_dump(mode="json")]
        self._write_note(rec.champion, json.dumps({"kind": "proposals", "items": items}), PROPOSALS_REF)

    def failed_proposals(self) -> list[FailedProposal]:
        """Every refused proposal, oldest first."""
        out = []
        for commit, (blob, value) in self._notes(PROPOSALS_REF).items():
            items = value.get("items") if isinstance(value, dict) else None
            for i, item in enumerate(items if isinstance(items, list) else []):
                out.append(self._load(FailedProposal, (blob, item), commit, PROPOSALS_REF, i) if isinstance(item, dict)
                           else None)
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
        """Whether rec's change deletes lines on net (the policy may promote a no-worse simplification); read once
        per experiment commit (it is asked at every step)."""
        if (known := self._removes.get(rec.commit)) is None:
            before = sum(len((self.text(rec.parent, path) or "").splitlines()) for path in rec.proposal.files)
            known = self._removes[rec.commit] = sum(len(t.splitlines()) for t in rec.proposal.files.values()) < before
        return known

    # --- experiments ----------------------------------------------------------------------
    def next_number(self) -> int:
        """One more than any experiment's number and any experiment branch's (listed once per forge: a branch
        without a record is left by a note lost or skipped; every later branch is made with its record)."""
        if self._branch_number is None:
            pattern = re.compile(re.escape(self.branch_prefix) + r"(\d+)$")
            self._branch_number = max((int(m.group(1)) for h in self.repo.heads if (m := pattern.match(h.name))),
                                      default=0)
        recs = self.experiments()
        return max(self._branch_number, recs[-1].number if recs else 0) + 1

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
        sha = self._ref_sha(ref) or rec.commit
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
            binsha = self._store_blob(data)
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

    def champion_log(self, adoptions: bool = False) -> list[tuple[str, dict[str, str]]]:
        """(sha, trailers) of each arbot commit on the champion branch (wins and reverts, and with `adoptions` the
        commits `arbot adopt` merged), newest first."""
        out = self.repo.git.log(
            self.champion_branch, "--first-parent", "--format=%H%x00%(trailers:unfold,separator=%x01)%x00%x02"
        )
        log = []
        for chunk in out.split("\x02"):
            if not chunk.strip():
                continue
            sha, trailers, _ = chunk.strip().split("\x00")
            pairs = dict(t.split(": ", 1) for t in trailers.split("\x01") if ": " in t)
            if "Experiment" in pairs or (adoptions and "Adopted" in pairs):
                log.append((sha, pairs))
        return log

    def has_ref(self, ref: str) -> bool:
        """Whether the full ref name `ref` (refs/...) exists."""
        return self._ref_sha(ref) is not None

    def _store_blob(self, data: bytes) -> bytes:
        """A blob written as a loose object in process (no git command); its binary sha."""
        return self._objects.store(IStream("blob", len(data), BytesIO(data))).binsha


"""Signed records on a local repository: what the bot trusts in refs/notes/arbot is what it signed (or a key
committed in .github/arbot-signing-keys on the champion branch signed); everything else is skipped and named,
`arbot audit --verify` checks a whole history, `arbot sign --adopt-unsigned` migrates an earlier one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import git
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.core.records import ChampionRecord, Decision, FailedProposal, Proposal, RunResult
from bot.forges.local import NOTES_REF, PROPOSALS_REF, LocalForge
from bot.signing import FIELD, KEYS_FILE, Signer
from tests.conftest import commit_change

ARBOT = [sys.executable, "-m", "bot"]


def arbot(repo: git.Repo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ARBOT, *args, "--repo", repo.working_tree_dir], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400"})


def history(repo: git.Repo) -> tuple[LocalForge, str, list]:
    """A champion with a measured run, two experiments (a win with its run, one still open) and a refused
    proposal, all written by the bot."""
    forge = LocalForge(repo)
    champion = forge.ensure_champion()
    forge.save(ChampionRecord(commit=champion, runs=[RunResult(status="ok", commit=champion, metrics={"val_bpb": 3.0})]))
    recs = []
    for n in (1, 2):
        rec = forge.open_experiment(Proposal(proposer="test", hypothesis=f"idea {n}",
                                             files={"target/train.py": f"# change {n}\n"}), champion, f"2026-01-0{n}")
        if n == 1:
            rec.runs.append(RunResult(status="ok", commit=rec.commit, metrics={"val_bpb": 2.5}))
            rec.decision = Decision(verdict="win", rule="margin", reason="better")
            forge.save(rec)
        recs.append(rec)
    forge.save_failed_proposal(FailedProposal(champion=champion, proposer="test", stage="guard", reason="edits evaluator/",
                                              at="2026-01-01T00:00:00+00:00"))
    return forge, champion, recs


def note(repo: git.Repo, commit: str, ref: str = NOTES_REF) -> dict:
    return json.loads(repo.git.notes(f"--ref={ref}", "show", commit))


def write(repo: git.Repo, commit: str, value: object, ref: str = NOTES_REF) -> None:
    """A note as anyone who can push refs/notes/* writes it."""
    repo.git.notes(f"--ref={ref}", "add", "-f", "-m", json.dumps(value), commit)


def views(forge: LocalForge, champion: str) -> tuple:
    """Everything the bot decides from: every experiment, the champion's record, the refused proposals."""
    return ([r.model_dump() for r in forge.experiments()], forge.champion_record(champion).model_dump(),
            [p.model_dump() for p in forge.failed_proposals()])


def test_a_signed_note_binds_its_content_commit_and_ref(research_repo):
    forge, champion, (win, _) = history(research_repo)
    signed = note(research_repo, win.commit)
    assert signed[FIELD].startswith(f"ed25519:{forge.signer().public.id}:")
    honest = views(LocalForge(research_repo), champion)

    edited = {**signed, "runs": [{**signed["runs"][0], "metrics": {"val_bpb": 0.1}}]}
    write(research_repo, win.commit, edited)  # the win's metric improved by hand
    other = commit_change(research_repo, "elsewhere", champion, {"target/train.py": "# other\n"}, "other")
    write(research_repo, other, {**signed, "commit": other})  # the signed note copied onto another commit
    write(research_repo, champion, signed, PROPOSALS_REF)  # ... and under the other ref

    fresh = LocalForge(research_repo)
    assert [r.id for r in fresh.experiments()] == ["exp-2"]  # the edited exp-1 is skipped, the copy too
    assert fresh.failed_proposals() == []
    skipped = " ".join(fresh.unreadable_notes())
    assert f"the note on {win.commit[:12]} under refs/notes/arbot is skipped: its signature by key" in skipped
    assert f"the note on {other[:12]} under refs/notes/arbot is skipped: its signature" in skipped
    assert f"{champion[:12]} under refs/notes/arbot-proposals is skipped: its signature" in skipped
    # the bot that read the signed notes keeps them: an edit never replaces what it knows
    assert views(forge, champion) == honest


def test_only_the_bots_key_and_keys_committed_on_champion_are_trusted(research_repo, tmp_path):
    other = LocalForge(research_repo, key_path=tmp_path / "another-bot.key")
    champion = other.ensure_champion()
    other.save(ChampionRecord(commit=champion, runs=[RunResult(status="ok", commit=champion, metrics={"val_bpb": 1.0})]))
    mine = LocalForge(research_repo)
    assert mine.champion_record(champion).runs == []
    assert "which is neither this bot's nor in .github/arbot-signing-keys" in " ".join(mine.unreadable_notes())
    # a key committed on main is not trusted: only the champion branch (protected, code owners) names keys
    keys = {KEYS_FILE: f"# the other bot\n{other.signer().public.line()}\nnot a key\n"}
    on_main = commit_change(research_repo, "keys", "main", keys, "trust the other bot")
    assert LocalForge(research_repo).champion_record(champion).runs == []
    research_repo.git.update_ref("refs/heads/champion", on_main)  # merged into champion through review
    trusting = LocalForge(research_repo)
    assert [r.metrics for r in trusting.champion_record(champion).runs] == [{"val_bpb": 1.0}]
    assert [p.split(" (")[0] for p in trusting.key_problems] == [f"{KEYS_FILE} line 3 is not an OpenSSH public key"]


def test_one_record_per_experiment_id(research_repo):
    forge, champion, (win, _) = history(research_repo)
    # a second signed record claiming exp-1 (the bot never makes one; a writer of the notes could only copy one)
    again = commit_change(research_repo, "again", champion, {"target/train.py": "# again\n"}, "again")
    copy = win.model_copy(update={"commit": again, "started_at": "2026-02-01"})
    forge.save(copy)
    fresh = LocalForge(research_repo)
    assert [(r.id, r.commit) for r in fresh.experiments()] == [("exp-1", win.commit), ("exp-2", fresh.experiments()[1].commit)]
    assert f"the note on {again[:12]} under refs/notes/arbot is skipped: it claims exp-1, whose record is the note " \
           f"on {win.commit[:12]}" in " ".join(fresh.unreadable_notes())


def test_audit_verify_passes_a_clean_history_and_names_a_forged_note(research_repo):
    forge, champion, recs = history(research_repo)
    r = arbot(research_repo, "audit", "--verify")
    assert r.returncode == 0 and "4 notes verify, 0 do not" in " ".join(r.stdout.split()), r.stdout + r.stderr
    forged = commit_change(research_repo, "arbot/exp-3", champion, {"target/train.py": "# backdoor\n"}, "forged")
    write(research_repo, forged, {**note(research_repo, recs[0].commit), "id": "exp-3", "number": 3, "commit": forged})
    r = arbot(research_repo, "audit", "--verify")
    out = " ".join(r.stdout.split())
    assert r.returncode == 1 and "4 notes verify, 1 do not" in out, out
    assert f"does not verify: the note on {forged[:12]} under refs/notes/arbot is skipped: its signature by key" in out


def test_an_unsigned_history_is_named_and_adopted_by_its_owner(research_repo):
    """Notes an arbot before signed records wrote: skipped with the way forward, never a crash; `arbot sign
    --adopt-unsigned` signs them as they are, and leaves a note whose signature fails alone."""
    forge, champion, (win, open_) = history(research_repo)
    for commit in (champion, win.commit, open_.commit):  # as the earlier arbot wrote them
        write(research_repo, commit, {k: v for k, v in note(research_repo, commit).items() if k != FIELD})
    items = note(research_repo, champion, PROPOSALS_REF)["items"]
    write(research_repo, champion, items, PROPOSALS_REF)  # the earlier format: a bare list
    edited = commit_change(research_repo, "edited", champion, {"target/train.py": "# e\n"}, "edited")
    forge.save(win.model_copy(update={"commit": edited, "id": "exp-9", "number": 9}))
    write(research_repo, edited, {**note(research_repo, edited), "id": "exp-8"})

    r = arbot(research_repo, "log")
    out = " ".join(r.stdout.split())
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"the note on {win.commit[:12]} under refs/notes/arbot is skipped: it is not signed" in out, out
    assert "`arbot sign --adopt-unsigned` signs the unsigned ones you trust" in out

    r = arbot(research_repo, "sign", "--adopt-unsigned")
    out = " ".join(r.stdout.split())
    assert r.returncode == 0 and "4 unsigned notes signed" in out, out + r.stderr
    assert f"not in {KEYS_FILE} on champion yet" in out and "ssh-ed25519 AAAA" in out
    fresh = LocalForge(research_repo)
    assert [r.id for r in fresh.experiments()] == ["exp-1", "exp-2"]
    assert [r.metrics for r in fresh.champion_record(champion).runs] == [{"val_bpb": 3.0}]
    assert [p.reason for p in fresh.failed_proposals()] == ["edits evaluator/"]
    r = arbot(research_repo, "audit", "--verify")
    assert r.returncode == 1 and f"the note on {edited[:12]}" in r.stdout and "4 notes verify, 1 do not" in \
        " ".join(r.stdout.split())


ATTACKS = st.lists(st.tuples(
    st.sampled_from(["champion", "win", "open", "new"]),  # the commit the note goes on
    st.sampled_from(["experiment", "champion", "proposals"]),  # what it claims to be
    st.sampled_from(["unsigned", "foreign key", "edited", "copied", "garbage"]),  # how it is (not) signed
    st.floats(0, 10, allow_nan=False), st.integers(1, 9)), min_size=1, max_size=4)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attacks=ATTACKS)
def test_a_note_not_signed_by_a_trusted_key_changes_nothing_the_bot_decides_from(research_repo, tmp_path, attacks):
    """Any notes written by someone without the bot's key, on any commit, claiming anything: the bot that read the
    honest notes sees exactly them; a bot started afterwards sees no record that the bot did not write."""
    if not hasattr(research_repo, "honest"):
        forge, champion, (win, open_) = history(research_repo)
        new = commit_change(research_repo, "arbot/exp-7", champion, {"target/train.py": "# evil\n"}, "evil")
        research_repo.honest = (forge, champion, {"champion": champion, "win": win.commit, "open": open_.commit,
                                                  "new": new}, views(forge, champion),
                                {r: research_repo.git.rev_parse(f"refs/notes/{r}") for r in (NOTES_REF, PROPOSALS_REF)})
    forge, champion, commits, honest, tips = research_repo.honest
    attacker = Signer.create(tmp_path / f"attacker-{len(attacks)}-{attacks[0][3]}.key")
    for target, kind, how, metric, number in attacks:
        commit = commits[target]
        run = {"status": "ok", "commit": commit, "metrics": {"val_bpb": metric}}
        value = {"kind": kind, "commit": commit, "runs": [run], "id": f"exp-{number}", "number": number,
                 "branch": f"arbot/exp-{number}", "parent": champion, "started_at": "2026-01-01",
                 "proposal": {"proposer": "x", "hypothesis": "x", "files": {}},
                 "decision": {"verdict": "win", "rule": "margin", "reason": "forged"},
                 "items": [{"champion": champion, "proposer": "x", "stage": "x", "reason": "x", "at": "2026-01-01T00:00:00+00:00",
                            "cost": {"usd": 1000.0}}]}
        ref = PROPOSALS_REF if kind == "proposals" else NOTES_REF
        if how == "foreign key":
            value = attacker.sign(ref, commit, value)
        elif how == "edited":
            value = {**forge.signer().sign(ref, commit, value), "number": number + 1}  # signed by the bot, then changed
        elif how == "copied":
            value = forge.signer().sign(ref, commits["new"] if commit != commits["new"] else champion, value)
        elif how == "garbage":
            value = {"kind": kind, FIELD: f"ed25519:{forge.signer().public.id}:AAAA"}
        write(research_repo, commit, value, ref)
    try:
        assert views(forge, champion) == honest
        restarted = LocalForge(research_repo)
        exps, champ, refused = views(restarted, champion)
        assert all(e in honest[0] for e in exps)
        assert champ in (honest[1], ChampionRecord(commit=champion).model_dump())
        assert all(p in honest[2] for p in refused)
    finally:
        for ref, tip in tips.items():
            research_repo.git.update_ref(f"refs/notes/{ref}", tip)


def test_a_missing_or_broken_signing_key_is_a_clear_error(research_repo, tmp_path):
    history(research_repo)
    broken = tmp_path / "key"
    broken.write_text("not a key")
    r = subprocess.run([*ARBOT, "log", "--repo", research_repo.working_tree_dir], capture_output=True, text=True,
                       env={**os.environ, "ARBOT_SIGNING_KEY": str(broken)})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"arbot's signing key {broken} cannot be read" in " ".join(r.stdout.split()), r.stdout
    fresh = tmp_path / "new" / "key"
    forge = LocalForge(research_repo, key_path=fresh)
    forge.save(ChampionRecord(commit=forge.champion()))  # a writer creates its key on first use, readable by it alone
    assert fresh.exists() and fresh.stat().st_mode & 0o777 == 0o600
    assert LocalForge(research_repo, key_path=Path(fresh)).signer().public == forge.signer().public


def test_the_index_follows_its_own_writes_and_sees_another_writers(research_repo):
    """Each forge keeps its index of the notes between reads; a note another writer adds (another process, a
    fetch) is read as soon as the ref moves, whether or not this forge wrote since."""
    first, champion, (win, open_) = history(research_repo)
    second = LocalForge(research_repo)
    assert [r.id for r in second.active()] == ["exp-1", "exp-2"]  # a win not merged yet, and an open one
    closed = open_.model_copy(update={"decision": Decision(verdict="loss", rule="margin", reason="worse")})
    second.save(closed)
    assert [r.id for r in second.active()] == ["exp-1"] and second.experiment("exp-2").decision.verdict == "loss"
    assert [r.id for r in first.active()] == ["exp-1"]  # written by the other: read again
    merged = win.model_copy(update={"merged_as": champion})
    first.save(merged)  # on top of the other writer's note: its index is read again, not patched
    assert first.active() == [] and first.experiment("exp-2").decision.verdict == "loss"
    assert second.active() == [] and second.experiment("exp-1").merged_as == champion


def test_doctor_names_skipped_notes_and_a_key_nobody_else_can_verify(research_repo):
    from bot.config import load_config
    from bot.doctor import check_records

    forge, champion, _ = history(research_repo)
    config = load_config(Path(research_repo.working_tree_dir) / "arbot.yml")
    checked = check_records(research_repo, config)
    assert (checked.status, checked.detail) == ("ok", f"4 notes verify; signing key {forge.signer().public.id} "
                                                      f"({forge.signer().path})")
    write(research_repo, champion, {"kind": "champion", "commit": champion, "runs": []})
    checked = check_records(research_repo, config)
    assert checked.status == "warn" and checked.detail.startswith(
        f"1 notes are skipped, the first: the note on {champion[:12]} under refs/notes/arbot is skipped: it is not signed")
    assert "`arbot audit --verify` names each" in checked.fix
    github = config.model_copy(update={"github": config.github.model_copy(update={"repo": "octo-org/research"})})
    forge.save(ChampionRecord(commit=champion))
    checked = check_records(research_repo, github)
    assert checked.status == "warn" and f"is not in {KEYS_FILE} on champion, so nobody else can verify" in checked.detail

"""The local forge on real git repositories: branches, notes, merges with trailers, no working-tree changes."""

from pathlib import Path

import git
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core import lifecycle as lc
from bot.forges.local import ForgeError, LocalForge, merge_lines
from bot.core.records import DEFAULT_METRIC, ChampionRecord, Decision, Proposal, RunResult


def proposal(text: str) -> Proposal:
    return Proposal(proposer="test", hypothesis="Try a thing", rationale="because", files={"target/train.py": text})


@pytest.fixture
def forge(research_repo):
    f = LocalForge(research_repo)
    f.ensure_champion()
    return f


def test_champion_is_created_from_head_once(research_repo):
    forge = LocalForge(research_repo)
    head = research_repo.head.commit.hexsha
    assert forge.ensure_champion() == head
    research_repo.index.commit("later work on main")
    assert forge.ensure_champion() == head  # an existing champion is never moved by start-up


def test_refuses_to_run_with_champion_checked_out(research_repo):
    forge = LocalForge(research_repo)
    forge.ensure_champion()
    research_repo.git.switch("champion")
    with pytest.raises(ForgeError, match="check out another branch"):
        forge.ensure_champion()


def test_open_experiment_makes_commit_note_and_branch_without_touching_worktree(forge, research_repo):
    before = research_repo.git.status("--porcelain")
    text = (research_repo.working_tree_dir + "/target/train.py")
    new = open(text).read() + "\n# changed\n"
    rec = forge.open_experiment(proposal(new), forge.champion(), started_at="t")
    assert rec.id == "exp-1" and rec.branch == "arbot/exp-1"
    commit = research_repo.commit("arbot/exp-1")
    assert commit.hexsha == rec.commit and commit.parents[0].hexsha == forge.champion()
    assert (commit.tree / "target/train.py").data_stream.read().decode() == new
    assert commit.stats.files.keys() == {"target/train.py"}
    assert "Experiment: exp-1" in commit.message and "Proposer: test" in commit.message
    assert research_repo.git.status("--porcelain") == before
    assert [r.id for r in forge.experiments()] == ["exp-1"]
    assert forge.next_number() == 2


def test_promote_merges_with_trailers_and_moves_champion(forge, research_repo):
    old = forge.champion()
    rec = forge.open_experiment(proposal("print('x')\n"), old, started_at="t")
    rec.runs = [RunResult(status="ok", commit=rec.commit, metrics={"val_bpb": 3.2}, evaluator_fingerprint="abc")]
    d = Decision(verdict="win", rule="margin", reason="r", champion_mean=3.3, candidate_mean=3.2, effect=0.1,
                 champion_runs=1, candidate_runs=1)
    merge = forge.promote(rec, lc.trailers(rec, d, DEFAULT_METRIC))
    assert forge.champion() == merge
    c = research_repo.commit(merge)
    assert [p.hexsha for p in c.parents] == [old, rec.commit]
    trailers = research_repo.git.log("-1", "--format=%(trailers)", merge)
    for line in ("Experiment: exp-1", "Metric: val_bpb=3.2000", "Baseline: val_bpb=3.3000", "Delta: -0.1000",
                 "Proposer: test", "Evaluator: abc"):
        assert line in trailers
    assert forge.champion_log()[0][1]["Experiment"] == "exp-1"
    assert forge.merged(rec)


def test_promote_refuses_a_stale_measurement(forge, research_repo):
    a = forge.open_experiment(proposal("a = 1\n"), forge.champion(), started_at="t")
    b = forge.open_experiment(proposal("b = 1\n"), forge.champion(), started_at="t")
    d = Decision(verdict="win", rule="margin", reason="r")
    forge.promote(a, lc.trailers(a, d, DEFAULT_METRIC))
    with pytest.raises(ForgeError, match="was measured against"):
        forge.promote(b, lc.trailers(b, d, DEFAULT_METRIC))


def test_notes_round_trip_both_record_kinds(forge):
    champ = ChampionRecord(commit=forge.champion(), runs=[RunResult(status="ok", commit=forge.champion(), metrics={"val_bpb": 3.0})])
    forge.save(champ)
    assert forge.champion_record(forge.champion()) == champ
    rec = forge.open_experiment(proposal("x = 2\n"), forge.champion(), started_at="t")
    rec.runs.append(RunResult(status="crash", commit=rec.commit, reason="boom", log_tail="Traceback"))
    forge.save(rec)
    assert forge.experiments()[0].runs[0].log_tail == "Traceback"
    # Notes are real git notes under refs/notes/arbot.
    assert "boom" in forge.repo.git.notes("--ref=arbot", "show", rec.commit)


def test_a_proposal_that_changes_nothing_makes_no_branch(forge, research_repo):
    same = (research_repo.commit(forge.champion()).tree / "target/train.py").data_stream.read().decode()
    with pytest.raises(ForgeError, match="changes nothing"):
        forge.open_experiment(proposal(same), forge.champion(), started_at="t")
    assert forge.experiments() == [] and not [h for h in research_repo.heads if h.name.startswith("arbot/")]


def test_a_stale_experiment_is_measured_again_on_the_new_champion(forge, research_repo):
    """Champion moved before a decision: the old experiment is closed and its change re-applied, not lost."""
    from bot.config import TargetConfig
    from bot.loop import Loop
    from bot.core.policy import PolicyConfig, make_policy

    base = forge.champion()
    script = (research_repo.commit(base).tree / "target/train.py").data_stream.read().decode()
    pending = forge.open_experiment(proposal(script.replace("DEPTH = 4", "DEPTH = 5", 1)), base, started_at="t")
    other = forge.open_experiment(proposal(script.replace("N_HEAD = 4", "N_HEAD = 2", 1)), base, started_at="t")
    d = Decision(verdict="win", rule="margin", reason="r")
    other.decision = d
    other.merged_as = forge.promote(other, lc.trailers(other, d, DEFAULT_METRIC))
    forge.save(other)

    loop = Loop(forge, runner=None, proposer=None, policy=make_policy(PolicyConfig()),
                target=TargetConfig(allowed_paths=["target/*"]))
    fresh = loop.stepper.advance(pending, train=False)  # the replay needs no run; it stops at the fresh one's first run
    assert fresh.id != pending.id and fresh.decision is None and fresh.runs == []
    old = next(r for r in forge.experiments() if r.id == pending.id)
    assert old.decision.verdict == "rejected" and old.decision.rule == "stale" and fresh.id in old.decision.reason
    assert fresh.parent == forge.champion()
    text = fresh.proposal.files["target/train.py"]
    assert "DEPTH = 5" in text and "N_HEAD = 2" in text  # its own change on top of the new champion's


def test_a_change_next_to_the_winners_line_is_measured_again_not_lost(forge, research_repo):
    """git's three-way merge calls changes to two touching lines a conflict; two knobs on adjacent lines are two
    separate changes, so the stale one is replayed with both."""
    base = forge.champion()
    script = (research_repo.commit(base).tree / "target/train.py").data_stream.read().decode()
    lines = script.splitlines()
    at = lambda prefix: next(i for i, line in enumerate(lines) if line.startswith(prefix))  # noqa: E731
    assert at("N_HEAD = 4") == at("N_EMBD = 128") + 1  # adjacent lines
    pending = forge.open_experiment(proposal(script.replace("N_HEAD = 4", "N_HEAD = 2", 1)), base, started_at="t")
    winner = forge.open_experiment(proposal(script.replace("N_EMBD = 128", "N_EMBD = 64", 1)), base, started_at="t")
    winner.merged_as = forge.promote(winner, lc.trailers(winner, Decision(verdict="win", rule="margin", reason="r"),
                                                          DEFAULT_METRIC))
    with pytest.raises(git.GitCommandError, match="CONFLICT"):  # what git's three-way merge says
        research_repo.git.merge_tree("--write-tree", forge.champion(), pending.commit)
    text = forge.replay_files(pending, forge.champion())["target/train.py"]
    assert "N_HEAD = 2" in text and "N_EMBD = 64" in text and text.count("\n") == script.count("\n")
    same_line = forge.open_experiment(proposal(script.replace("N_EMBD = 128", "N_EMBD = 256", 1)), base, started_at="t")
    assert forge.replay_files(same_line, forge.champion()) is None  # the winner changed that very line


@pytest.mark.parametrize("base, ours, theirs, merged", [
    ("a\nb\nc\n", "a\nB\nc\n", "a\nb\nC\n", "a\nB\nC\n"),  # touching lines: both
    ("a\nb\nc\n", "A\nb\nc\n", "a\nb\nC\n", "A\nb\nC\n"),  # apart: both
    ("a\nb\nc\n", "a\nB\nc\n", "a\nX\nc\n", None),  # one line, two values
    ("a\nb\n", "a\nb\nc\n", "a\nb\nd\n", None),  # two insertions at one place: which goes first is unknown
    ("a\nb\n", "a\nb\nc\n", "a\nb\nc\n", "a\nb\nc\n"),  # the same change on both sides
    ("a\nb\nc\nd\n", "a\nd\n", "a\nb\nX\nc\nd\n", None),  # an insertion inside lines the other deletes
    ("a\nb\nc\n", "a\nc\n", "x\na\nb\nc\n", "x\na\nc\n"),  # a deletion and an insertion elsewhere
    ("a\nb\n", "a\nB\n", "a\nb\nc\n", "a\nB\nc\n"),  # a change and an insertion right after it
    (None, "new\n", None, "new\n"),  # a new file
    (None, "new\n", "other\n", None),  # added on both sides, differently
    ("a\n", "A\n", None, None),  # deleted on the champion, changed here
    ("a\n", "A\n", "a\n", "A\n"),  # the champion did not touch it
    ("x\nx\nx\n", "x\nx\n", "x\nY\nx\nx\n", "x\nY\nx\n"),  # repeated lines: git's alignment keeps both changes
    ("a\nb", "a\nB", "x\na\nb", "x\na\nB"),  # no final newline: kept
    ("a\nb\n", "a\nb", "x\na\nb\n", "x\na\nb"),  # the final newline removed on one side: removed
    ("a\n=======\nc\n", "a\n=======\nC\n", "A\n=======\nc\n", "A\n=======\nC\n"),  # a line like git's marker
    ("a\r\nb\r\nc\r\n", "a\r\nB\r\nc\r\n", "a\r\nb\r\nC\r\n", "a\r\nB\r\nC\r\n"),  # CRLF lines, touching: both
])
def test_merge_lines(base, ours, theirs, merged):
    assert merge_lines(base, ours, theirs) == merged


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 30), data=st.data())
def test_changes_to_different_lines_always_merge_whatever_they_say(n, data):
    """Any two sets of changed lines, disjoint (touching included), merge into both, whatever the new lines hold
    (git's conflict markers, carriage returns, nothing), with LF or CRLF line ends."""
    eol = data.draw(st.sampled_from(["\n", "\r\n"]))
    base = [f"line {i}{eol}" for i in range(n)]
    picked = data.draw(st.lists(st.sampled_from(range(n)), min_size=2, max_size=n, unique=True))
    cut = data.draw(st.integers(1, len(picked) - 1))
    text = st.one_of(st.sampled_from(["<<<<<<<", "=======", "|||||||", ">>>>>>> x", "<" * 80, "\r", ""]),
                     st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",))))
    new = {i: data.draw(text.filter(lambda t: not t.startswith("line"))) + eol for i in picked}
    side = lambda lines: "".join(new.get(i, line) if i in lines else line for i, line in enumerate(base))  # noqa: E731
    ours, theirs = side(picked[:cut]), side(picked[cut:])
    assert merge_lines("".join(base), ours, theirs) == side(picked)


def test_an_unreadable_note_is_skipped_reported_and_kept_when_written_over(research_repo):
    from bot.forges.local import UNREADABLE_REF
    from bot.core.records import ChampionRecord, RunResult

    forge = LocalForge(research_repo)
    sha = forge.ensure_champion()
    research_repo.git.notes("--ref=arbot", "add", "-f", "-m", '{"kind": "champion", "commit": 1', sha)
    assert forge.champion_record(sha) == ChampionRecord(commit=sha) and forge.experiments() == []
    [line] = forge.unreadable_notes()
    assert f"the note on {sha[:12]} under refs/notes/arbot is skipped: it is not JSON" in line
    assert f"git notes --ref=arbot show {sha[:12]}" in line
    forge.save(ChampionRecord(commit=sha, runs=[RunResult(status="ok", commit=sha)]))  # the champion measured again
    assert research_repo.git.notes(f"--ref={UNREADABLE_REF}", "show", sha) == '{"kind": "champion", "commit": 1'
    assert len(forge.champion_record(sha).runs) == 1 and forge.unreadable_notes() == []


def test_refs_are_read_as_git_stores_them_loose_or_packed(forge, research_repo):
    """The forge reads branches and notes refs itself: from their loose files, else packed-refs, and again after
    git moves, packs or deletes them."""
    champion = forge.champion()
    rec = forge.open_experiment(proposal("print('x')\n"), champion, started_at="t")
    notes = research_repo.git.rev_parse("refs/notes/arbot")
    research_repo.git.pack_refs("--all")
    assert not (Path(research_repo.common_dir) / "refs/heads/champion").exists()
    assert forge.champion() == champion and forge.has_ref(f"refs/heads/{rec.branch}")
    assert forge._ref_sha("refs/notes/arbot") == notes and not forge.has_ref("refs/heads/arbot/exp-99")
    research_repo.git.update_ref("refs/heads/champion", rec.commit)  # a loose file again, over the packed entry
    assert forge.champion() == rec.commit
    research_repo.git.update_ref("-d", f"refs/heads/{rec.branch}")
    research_repo.git.pack_refs("--all")
    assert not forge.has_ref(f"refs/heads/{rec.branch}") and forge.champion() == rec.commit
    assert forge.experiment(rec.id) is not None  # the notes, read from the packed ref

import ast
from pathlib import Path

from bot.config import KnobRange, SearchConfig
from bot.knobs import find_knobs
import pytest

from bot.proposers.base import ProposalContext, SearchExhausted
from bot.proposers.search import SearchProposer
from bot.core.records import DEFAULT_METRIC, Metric, Decision, ExperimentRecord, RunResult

SCRIPT = (Path(__file__).resolve().parent.parent / "target" / "train.py").read_text()


def ctx(history=()):
    return ProposalContext(champion="c" * 40, script_path="target/train.py", files={"target/train.py": SCRIPT},
                           knobs=find_knobs(SCRIPT), history=list(history))


def changed_knobs(before: str, after: str) -> dict:
    a = {k.name: k.value for k in find_knobs(before)}
    b = {k.name: k.value for k in find_knobs(after)}
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def test_proposal_changes_exactly_one_knob_and_compiles():
    p = SearchProposer(SearchConfig()).propose(ctx())
    new = p.files["target/train.py"]
    ast.parse(new)
    changes = changed_knobs(SCRIPT, new)
    assert len(changes) == 1
    (name, (old, value)), = changes.items()
    assert p.knobs[0].name == name and p.knobs[0].old == old and p.knobs[0].new == value
    assert name in p.hypothesis and p.proposer == "search"


def test_same_history_gives_the_same_proposal():
    a = SearchProposer(SearchConfig(seed=3)).propose(ctx())
    b = SearchProposer(SearchConfig(seed=3)).propose(ctx())
    assert a == b


def test_excluded_knobs_and_configured_ranges_are_respected():
    cfg = SearchConfig(exclude=[k.name for k in find_knobs(SCRIPT) if k.name != "LEARNING_RATE"],
                       knobs={"LEARNING_RATE": KnobRange(low=0.05, high=0.06)})
    for seed in range(5):
        cfg.seed = seed
        p = SearchProposer(cfg).propose(ctx())
        assert p.knobs[0].name == "LEARNING_RATE" and 0.05 <= p.knobs[0].new <= 0.06


def test_history_from_git_notes_feeds_the_sampler():
    proposer = SearchProposer(SearchConfig())
    history = []
    for i in range(6):
        p = proposer.propose(ctx(history))
        verdict = "crash" if i == 2 else "loss"
        runs = [RunResult(status="ok" if verdict == "loss" else "crash", commit="x", metrics={"val_bpb": 3.0 + i / 10})]
        history.append(ExperimentRecord(id=f"exp-{i+1}", number=i + 1, branch="b", commit="x", parent="c", proposal=p,
                                        runs=runs, decision=Decision(verdict=verdict, rule="r", reason="")))
    study = proposer._study(history, [], *_space(proposer), DEFAULT_METRIC)
    assert len(study.trials) == 6
    assert sum(t.state.name == "FAIL" for t in study.trials) == 1
    assert study.direction.name == "MINIMIZE"
    assert proposer._study([], [], *_space(proposer), Metric(name="acc", direction="maximize", precision=4)).direction.name \
        == "MAXIMIZE"


def _space(proposer):
    from optuna.distributions import CategoricalDistribution
    from bot.proposers.search import distribution
    knobs = find_knobs(SCRIPT)
    return CategoricalDistribution([k.name for k in knobs]), {k.name: distribution(k, None) for k in knobs}


def test_the_random_sampler_is_random_search_and_says_so():
    proposer = SearchProposer(SearchConfig(sampler="random"))
    study = proposer._study([], [], *_space(proposer), DEFAULT_METRIC)
    assert type(study.sampler).__name__ == "RandomSampler"
    p = proposer.propose(ctx())
    assert "random search" in p.rationale and len(changed_knobs(SCRIPT, p.files["target/train.py"])) == 1
    assert "TPE" in SearchProposer(SearchConfig()).propose(ctx()).rationale


def loss(p, i: int, parent: str = "c" * 40, value: float | None = None) -> ExperimentRecord:
    runs = [RunResult(status="ok", commit="x", metrics={"val_bpb": 3.0 + i / 1000 if value is None else value})]
    return ExperimentRecord(id=f"exp-{i + 1}", number=i + 1, branch="b", commit="x", parent=parent, proposal=p,
                            runs=runs, decision=Decision(verdict="loss", rule="r", reason=""))


SMALL = "DEPTH = 4\nLEARNING_RATE = 0.001\nWARMUP_FRAC = 0.1\n"


def small_ctx(history=(), champion="c" * 40):
    return ProposalContext(champion=champion, script_path="t.py", files={"t.py": SMALL}, knobs=find_knobs(SMALL),
                           history=list(history))


def test_the_search_keeps_proposing_new_changes_after_sampling_runs_dry():
    """Three knobs, every experiment on one champion: sampling (no value within 5% of the range of any tried
    one, the old rule) runs dry after about 40; refining and combining keep every proposal a change not tried on
    this champion, until the space is exhausted."""
    proposer = SearchProposer(SearchConfig(seed=1))
    history, seen = [], set()
    for i in range(200):
        try:
            p = proposer.propose(small_ctx(history))
        except SearchExhausted:
            break
        change = frozenset((c.name, c.new) for c in p.knobs)
        assert change not in seen, f"proposal {i + 1} repeats {sorted(change)}"
        seen.add(change)
        history.append(loss(p, i))
    stages = [r.proposal.params["stage"] for r in history]
    first_refine = next(i for i, s in enumerate(stages) if s.startswith("refine"))
    assert 20 < first_refine < 60 < len(history) < 200
    assert {f"refine-{n}" for n in range(1, 5)} <= set(stages) and "combine" in stages
    combined = next(r.proposal for r in history if r.proposal.params["stage"] == "combine")
    assert len(combined.knobs) == 2 and len(changed_knobs(SMALL, combined.files["t.py"])) == 2


def test_tried_is_judged_against_the_current_champion():
    """A value tried on an older champion is a new experiment on this one: a champion of one two-valued knob
    whose only other value was tried on its parent still gets it proposed."""
    cfg = SearchConfig(knobs={"DEPTH": KnobRange(choices=[4, 5])}, exclude=["LEARNING_RATE", "WARMUP_FRAC"])
    old = SearchProposer(cfg).propose(small_ctx())
    assert old.params["DEPTH"] == 5
    again = SearchProposer(cfg).propose(small_ctx([loss(old, 0, parent="o" * 40)]))
    assert again.params["DEPTH"] == 5


def test_an_exhausted_space_says_so():
    cfg = SearchConfig(knobs={"DEPTH": KnobRange(choices=[4, 5]), "WARMUP_FRAC": KnobRange(choices=[0.1, 0.2])},
                       exclude=["LEARNING_RATE"])
    proposer, history = SearchProposer(cfg), []
    for i in range(3):  # DEPTH 5 and WARMUP_FRAC 0.2 alone, then both together
        history.append(loss(proposer.propose(small_ctx(history)), i))
    assert sorted(sorted((c.name, c.new) for c in r.proposal.knobs) for r in history) == \
        [[("DEPTH", 5)], [("DEPTH", 5), ("WARMUP_FRAC", 0.2)], [("WARMUP_FRAC", 0.2)]]
    with pytest.raises(SearchExhausted, match="exhausted.*Widen search.knobs"):
        proposer.propose(small_ctx(history))


def test_a_knob_without_a_range_is_searched_around_its_value_whatever_its_name():
    """The built-in target's ranges live in its arbot.yml, never applied by name: a user's BATCH_SIZE of 512 is
    searched around 512, a learning rate on a log scale around it, a fraction in [0, 1]."""
    from bot.knobs import Knob
    from bot.proposers.search import distribution

    batch = distribution(Knob("BATCH_SIZE", 512, 1, 0, 3), None)
    assert (batch.low, batch.high, batch.log) == (128, 2048, True)
    lr = distribution(Knob("LEARNING_RATE", 3e-4, 1, 0, 3), None)
    assert lr.log and lr.low == pytest.approx(3e-5) and lr.high == pytest.approx(3e-3)
    dropout = distribution(Knob("DROPOUT", 0.1, 1, 0, 3), None)
    assert (dropout.low, dropout.high, dropout.log) == (0.0, 1.0, False)

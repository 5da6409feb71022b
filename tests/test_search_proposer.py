import ast
from pathlib import Path

from bot.config import KnobRange, SearchConfig
from bot.knobs import find_knobs
from bot.proposers.base import ProposalContext
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

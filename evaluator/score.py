"""Score an exported byte-level language model: bits per byte on the fixed splits.

The model is a torch.export program (never candidate Python code) mapping int64 tokens [B, T]
to float logits [B, T, 256], B and T fixed at export. Every byte of a split after the first is
predicted exactly once: non-overlapping windows of T+1 bytes (stride T), inputs w[:T], targets
w[1:], the last window and batch padded and the padding ignored.

    bpb = sum of cross-entropy in nats / (ln 2 * number of predicted bytes)

accumulated in float64 with our own log-softmax. Before scoring, the model must pass sanity
probes: well-formed spec and output, finite weights and logits, determinism, causality (logits at
positions <= t ignore tokens after t) and batch-row independence; and each bpb must be plausible
(MIN_BPB..MAX_BPB).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from .data import Prepared

VOCAB = 256
MAX_BPB = 8.5  # uniform over 256 bytes is 8.0; clearly worse means a broken model
# The best text compressors reach about 1 bpb on English; far below that, the model has seen the split.
MIN_BPB = 0.4
ATOL = RTOL = 1e-4


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
        program = torch.export.load(str(model_path))
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
    """Logits for one batch as float64, checked against the output contract."""
    try:
        out = module(tokens)
    except Exception as e:
        raise Invalid(f"model failed on a batch: {type(e).__name__}: {e}") from e
    expected = (*tokens.shape, VOCAB)
    if not isinstance(out, torch.Tensor):
        raise Invalid(f"model must return a logits tensor of shape {list(expected)}, got {type(out).__name__}")
    if tuple(out.shape) != expected or not out.dtype.is_floating_point:
        raise Invalid(f"output must be floating logits of shape {list(expected)}, got {out.dtype} {list(out.shape)}")
    out = out.double()
    if not torch.isfinite(out).all():
        raise Invalid("model produced NaN or infinite logits")
    return out


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
    return torch.allclose(a, b, atol=ATOL, rtol=RTOL)


def probe(module, x: torch.Tensor) -> None:
    """Determinism, batch-row independence and causality checks on one real batch."""
    B, T = x.shape
    base = run(module, x)
    if not same(run(module, x), base):
        raise Invalid("model is not deterministic: the same batch gave different logits")
    gen = torch.Generator().manual_seed(0)

    def perturb(mask):  # different random bytes where mask is True
        shift = torch.randint(1, VOCAB, (B, T), generator=gen).to(x.device)
        return torch.where(mask, (x + shift) % VOCAB, x)

    # Rows: for each bit of the row index, change the rows with that bit set (then unset) and
    # check the others; any row reading any other row is caught in 2*log2(B) passes.
    rows = torch.arange(B, device=x.device)
    for bit in range(max(1, (B - 1).bit_length())):
        for value in (0, 1):
            changed = ((rows >> bit) & 1) == value
            out = run(module, perturb(changed[:, None].expand(B, T)))
            if not same(out[~changed], base[~changed]):
                raise Invalid("model mixes batch rows: logits of one row changed when other rows changed")
    # Causality: rows being independent, row r changes the tokens after its own cutoff t, so
    # every cutoff 0..T-2 is tried in (T-1)/B passes.
    positions = torch.arange(T, device=x.device)
    for first in range(0, T - 1, B):
        cutoff = (first + rows).clamp(max=T - 2)
        out = run(module, perturb(positions[None, :] > cutoff[:, None]))
        for r, t in enumerate(cutoff.tolist()):
            if not same(out[r, :t + 1], base[r, :t + 1]):
                raise Invalid(f"model looks ahead: logits at position {t} changed when later tokens changed")


def bpb(module, data: np.ndarray, B: int, T: int, device: torch.device) -> tuple[float, int]:
    total_nats, count = 0.0, 0
    for x, y, m in windows(data, B, T):
        logits = run(module, x.to(device)).cpu()
        nll = torch.logsumexp(logits, dim=-1) - logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
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
            for name in split_names:
                data = np.fromfile(splits.path(name), dtype=np.uint8)
                if len(data) < 2:
                    raise ValueError(f"split {name} has fewer than 2 bytes")
                if result["tokens_evaluated"] == 0:
                    x, _, _ = next(windows(data, B, T))
                    probe(module, x.to(dev))
                value, count = bpb(module, data, B, T, dev)
                if not (MIN_BPB <= value <= MAX_BPB):
                    raise Invalid(f"implausible {name}_bpb {value:.4f} (must be in [{MIN_BPB}, {MAX_BPB}]; "
                                  "far below 1 means the model has seen this split)")
                result["metrics"][f"{name}_bpb"] = value
                result["tokens_evaluated"] += count
    except Invalid as e:
        result.update(status="invalid", metrics={}, reason=str(e))
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result

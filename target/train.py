"""
Byte-level GPT trained for a fixed wall-clock budget. This file is what the research edits.

Usage:
    python train.py --data TRAIN_BIN --out OUT_DIR --budget SECONDS --seed N
                    [--device auto|cpu|cuda] [--set NAME=VALUE ...]

Writes OUT_DIR/model.pt2 (torch.export program: int64 tokens [EVAL_BATCH, SEQ_LEN] ->
float logits [EVAL_BATCH, SEQ_LEN, 256]) and OUT_DIR/summary.json.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

PHASES = {}  # seconds of each step of this script, for the summary (informational: the runner times runs itself)
_lap = time.perf_counter()


def mark(phase):
    """Record the seconds since the previous mark as `phase`."""
    global _lap
    now = time.perf_counter()
    PHASES[phase] = round(now - _lap, 3)
    _lap = now


import numpy as np  # after the clock starts: the import is a phase of its own
import torch
import torch.nn as nn
import torch.nn.functional as F

mark("import")

# ---------------------------------------------------------------------------
# Knobs (override any of them with --set NAME=VALUE)

DEPTH = 4               # number of transformer blocks
N_EMBD = 128            # residual stream width
N_HEAD = 4              # attention heads (must divide N_EMBD)
SEQ_LEN = 128           # context length in bytes (also the exported T)
BATCH_SIZE = 16         # sequences per optimizer step
LEARNING_RATE = 5e-4    # peak AdamW learning rate (conservative: the 10 s demo budget wants more)
WARMUP_FRAC = 0.05      # fraction of the time budget spent warming the LR up from 0
WARMDOWN_FRAC = 0.3     # fraction of the time budget at the end with LR decaying linearly to 0
WEIGHT_DECAY = 0.1      # AdamW weight decay on matrices (not on norms)
BETA1 = 0.9             # AdamW beta1
BETA2 = 0.95            # AdamW beta2
GRAD_CLIP = 1.0         # max global gradient norm (0 disables clipping)
EVAL_BATCH = 8          # batch size of the exported model (the evaluator reads it from the export)

# ---------------------------------------------------------------------------
# Model


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(N_EMBD)
        self.qkv = nn.Linear(N_EMBD, 3 * N_EMBD, bias=False)
        self.proj = nn.Linear(N_EMBD, N_EMBD, bias=False)
        self.ln2 = nn.LayerNorm(N_EMBD)
        self.fc = nn.Linear(N_EMBD, 4 * N_EMBD, bias=False)
        self.fc_out = nn.Linear(4 * N_EMBD, N_EMBD, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(256, N_EMBD)  # one token per byte value
        self.pos_emb = nn.Embedding(SEQ_LEN, N_EMBD)
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.ln_f = nn.LayerNorm(N_EMBD)
        self.head = nn.Linear(N_EMBD, 256, bias=False)  # logits over the next byte
        for name, p in self.named_parameters():
            if p.dim() == 2:  # residual-branch outputs start smaller, GPT-2 style
                std = 0.02 / math.sqrt(2 * DEPTH) if name.endswith(("proj.weight", "fc_out.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb.weight[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# ---------------------------------------------------------------------------
# Setup


def parse_args():
    parser = argparse.ArgumentParser(description="Train a byte-level GPT for a fixed time budget.")
    parser.add_argument("--data", required=True, help="training split, raw bytes")
    parser.add_argument("--out", required=True, help="output directory for model.pt2 and summary.json")
    parser.add_argument("--budget", required=True, type=float, help="training time in seconds")
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a knob")
    args = parser.parse_args()
    knobs = {k: v for k, v in globals().items() if k.isupper() and type(v) in (int, float)}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in knobs:
            parser.error(f"unknown knob {name!r} in --set {item!r}; known knobs: {', '.join(knobs)}")
        try:
            globals()[name] = type(knobs[name])(value)
        except ValueError:
            parser.error(f"--set {item!r}: {name} takes {type(knobs[name]).__name__} values")
    if args.budget <= 0:
        parser.error("--budget must be positive")
    if N_EMBD % N_HEAD != 0:
        parser.error(f"N_HEAD={N_HEAD} must divide N_EMBD={N_EMBD}")
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data}: no such file")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    return args


args = parse_args()
device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(args.seed)  # the seed draws the initialisation
# The batches come in one order in every run, whatever the seed: the order of the data was most of the seed-to-seed
# noise (docs/policy.md, "The noise floor"), and two runs should not differ by which text each happened to see.
gen = torch.Generator().manual_seed(0)
autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
if device.type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True

data = torch.from_numpy(np.fromfile(args.data, dtype=np.uint8))
if len(data) <= SEQ_LEN + 1:
    sys.exit(f"error: {args.data} has {len(data)} bytes, need more than SEQ_LEN+1 = {SEQ_LEN + 1}")
offsets = torch.arange(SEQ_LEN + 1)
mark("data")


def get_batch():
    starts = torch.randint(len(data) - SEQ_LEN, (BATCH_SIZE, 1), generator=gen)
    window = data[starts + offsets].long().to(device, non_blocking=True)
    return window[:, :-1], window[:, 1:]


model = GPT().to(device)
n_params = sum(p.numel() for p in model.parameters())
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                               {"params": no_decay, "weight_decay": 0.0}],
                              lr=LEARNING_RATE, betas=(BETA1, BETA2))
mark("setup")


def lr_scale(progress):
    """Warmup, constant, then linear warmdown to 0, as a function of elapsed-time progress."""
    if progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    if progress > 1.0 - WARMDOWN_FRAC:
        return max(0.0, (1.0 - progress) / WARMDOWN_FRAC)
    return 1.0


# ---------------------------------------------------------------------------
# Training loop: stops when training time reaches the budget

print(f"device {device}, {n_params:,} parameters, budget {args.budget:g}s", flush=True)
step, train_time, smooth_loss, last_print = 0, 0.0, 0.0, 0.0
t0 = time.perf_counter()
while train_time < args.budget:
    for group in optimizer.param_groups:
        group["lr"] = LEARNING_RATE * lr_scale(train_time / args.budget)
    x, y = get_batch()
    with autocast:
        logits = model(x)
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if GRAD_CLIP > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    loss_value = loss.item()  # also waits for the GPU, so the timing below is honest
    if not math.isfinite(loss_value):
        sys.exit(f"error: loss is {loss_value} at step {step}; training diverged")
    step += 1
    smooth_loss = 0.9 * smooth_loss + 0.1 * loss_value
    train_time = time.perf_counter() - t0
    if train_time - last_print >= 1.0 or train_time >= args.budget:
        last_print = train_time
        report = {"elapsed": round(train_time, 2), "budget": args.budget, "step": step,
                  "loss": round(smooth_loss / (1 - 0.9 ** step), 4)}
        print("@progress " + json.dumps(report), flush=True)
mark("train")

# ---------------------------------------------------------------------------
# Export for the evaluator and write the summary

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
model = model.to("cpu").float().eval()
example = torch.zeros((EVAL_BATCH, SEQ_LEN), dtype=torch.long)
with torch.no_grad():
    program = torch.export.export(model, (example,))
mark("export")
torch.export.save(program, out / "model.pt2")
mark("save")
summary = {
    "steps": step,
    "tokens": step * BATCH_SIZE * SEQ_LEN,
    "train_seconds": round(train_time, 3),
    "tokens_per_second": round(step * BATCH_SIZE * SEQ_LEN / train_time, 1),
    "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None,
    "device": device.type,
    "params": n_params,
    "seed": args.seed,
    "final_loss": round(smooth_loss / (1 - 0.9 ** step), 4),
    "phases": PHASES,  # import, data, setup (model, optimizer; CUDA start-up on a GPU), train, export, save
}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary), flush=True)
os._exit(0)  # skip tearing torch down: an ordinary exit costs about 0.6 s more per run, for nothing

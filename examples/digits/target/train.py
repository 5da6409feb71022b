"""
Handwritten-digit classifier (8x8 images, 10 classes), a small MLP in plain numpy, trained for a fixed
wall-clock budget. This file is what the research edits.

Usage:
    python train.py --data TRAIN_BIN --out OUT_DIR --budget SECONDS --seed N
                    [--device auto|cpu] [--set NAME=VALUE ...]

Reads the training split: uint8 rows of 65 bytes (64 pixels in 0..16, then the label 0..9).
Writes OUT_DIR/model.npz, the weights the evaluator scores (it computes the forward pass itself, so only
plain float arrays count): w0, b0, ..., w{L-1}, b{L-1} with logits = relu(...relu(x @ w0 + b0)...) @ w{L-1}
+ b{L-1} and x = pixels / 16. Also writes OUT_DIR/summary.json.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------
# Knobs (override any of them with --set NAME=VALUE)

DEPTH = 1               # hidden layers
HIDDEN = 64             # width of each hidden layer
BATCH_SIZE = 32         # samples per optimizer step
LEARNING_RATE = 3e-5    # peak Adam learning rate (conservative: the demo budget wants more)
WEIGHT_DECAY = 1e-4     # decoupled weight decay on the weight matrices (not on biases)
BETA1 = 0.9             # Adam beta1
BETA2 = 0.999           # Adam beta2
WARMDOWN_FRAC = 0.3     # fraction of the time budget at the end with LR decaying linearly to 0
INIT_SCALE = 1.0        # multiplier of the He-normal initialisation

PIXELS, CLASSES, MAX_PIXEL = 64, 10, 16  # the data's format (the evaluator's contract)

# ---------------------------------------------------------------------------
# Setup


def parse_args():
    parser = argparse.ArgumentParser(description="Train a digits MLP for a fixed time budget.")
    parser.add_argument("--data", required=True, help="training split: uint8 rows of 64 pixels and a label")
    parser.add_argument("--out", required=True, help="output directory for model.npz and summary.json")
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
    if args.device == "cuda":
        parser.error("--device cuda: this numpy script trains on the CPU only; set target.device to cpu or auto")
    if DEPTH < 0 or HIDDEN < 1 or BATCH_SIZE < 1:
        parser.error(f"DEPTH={DEPTH} must be >= 0, HIDDEN={HIDDEN} and BATCH_SIZE={BATCH_SIZE} >= 1")
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data}: no such file")
    return args


args = parse_args()
rng = np.random.default_rng(args.seed)

rows = np.fromfile(args.data, dtype=np.uint8)
if len(rows) == 0 or len(rows) % (PIXELS + 1):
    sys.exit(f"error: {args.data} is {len(rows)} bytes, not rows of {PIXELS + 1} (64 pixels and a label)")
rows = rows.reshape(-1, PIXELS + 1)
x_train = rows[:, :PIXELS].astype(np.float32) / MAX_PIXEL
y_train = rows[:, PIXELS].astype(np.int64)


def get_batch():
    idx = rng.integers(0, len(x_train), BATCH_SIZE)
    return x_train[idx], y_train[idx]


# ---------------------------------------------------------------------------
# Model: an MLP, [64] -> DEPTH x [HIDDEN] -> [10], ReLU between layers

sizes = [PIXELS] + [HIDDEN] * DEPTH + [CLASSES]
params = []  # w0, b0, w1, b1, ...
for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
    params.append((rng.standard_normal((fan_in, fan_out)) * INIT_SCALE * math.sqrt(2.0 / fan_in)).astype(np.float32))
    params.append(np.zeros(fan_out, dtype=np.float32))
n_params = sum(p.size for p in params)


def loss_and_grads(x, y):
    """Mean cross-entropy of the batch and its gradient for every parameter (backprop by hand)."""
    acts = [x]
    for i in range(0, len(params), 2):
        h = acts[-1] @ params[i] + params[i + 1]
        acts.append(np.maximum(h, 0.0) if i + 2 < len(params) else h)
    logits = acts[-1]
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    loss = -np.log(probs[np.arange(len(y)), y] + 1e-12).mean()
    grad = probs
    grad[np.arange(len(y)), y] -= 1.0
    grad /= len(y)
    grads = [None] * len(params)
    for i in range(len(params) - 2, -1, -2):
        grads[i], grads[i + 1] = acts[i // 2].T @ grad, grad.sum(axis=0)
        if i > 0:
            grad = (grad @ params[i].T) * (acts[i // 2] > 0)
    return float(loss), grads


m = [np.zeros_like(p) for p in params]  # Adam moments
v = [np.zeros_like(p) for p in params]


def adam_step(grads, lr, t):
    for i, (p, g) in enumerate(zip(params, grads)):
        m[i] = BETA1 * m[i] + (1 - BETA1) * g
        v[i] = BETA2 * v[i] + (1 - BETA2) * g * g
        m_hat, v_hat = m[i] / (1 - BETA1 ** t), v[i] / (1 - BETA2 ** t)
        if p.ndim == 2:
            p *= 1 - lr * WEIGHT_DECAY
        p -= (lr * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(np.float32)


def lr_scale(progress):
    """Constant, then a linear warmdown to 0, as a function of elapsed-time progress."""
    if progress > 1.0 - WARMDOWN_FRAC:
        return max(0.0, (1.0 - progress) / WARMDOWN_FRAC)
    return 1.0


# ---------------------------------------------------------------------------
# Training loop: stops when training time reaches the budget

print(f"device cpu, {n_params:,} parameters, {len(x_train)} training samples, budget {args.budget:g}s", flush=True)
step, train_time, smooth_loss, last_print = 0, 0.0, 0.0, 0.0
t0 = time.perf_counter()
while train_time < args.budget:
    x, y = get_batch()
    loss, grads = loss_and_grads(x, y)
    if not math.isfinite(loss):
        sys.exit(f"error: loss is {loss} at step {step}; training diverged")
    step += 1
    adam_step(grads, LEARNING_RATE * lr_scale(train_time / args.budget), step)
    smooth_loss = 0.99 * smooth_loss + 0.01 * loss
    train_time = time.perf_counter() - t0
    if train_time - last_print >= 0.5 or train_time >= args.budget:
        last_print = train_time
        report = {"elapsed": round(train_time, 2), "budget": args.budget, "step": step,
                  "loss": round(smooth_loss / (1 - 0.99 ** step), 4)}
        print("@progress " + json.dumps(report), flush=True)

# ---------------------------------------------------------------------------
# Save the weights for the evaluator and write the summary

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
np.savez(out / "model.npz", **{f"{'wb'[i % 2]}{i // 2}": p for i, p in enumerate(params)})
summary = {
    "steps": step,
    "samples": step * BATCH_SIZE,
    "train_seconds": round(train_time, 3),
    "samples_per_second": round(step * BATCH_SIZE / train_time, 1),
    "device": "cpu",
    "params": n_params,
    "seed": args.seed,
    "final_loss": round(smooth_loss / (1 - 0.99 ** step), 4),
}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary), flush=True)

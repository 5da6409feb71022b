"""The fixed, trusted evaluator of arbot: prepares the byte-level data splits and scores
exported models by bits per byte. Imports only the standard library, numpy and torch.

    python -m evaluator prepare --cache DIR
    python -m evaluator score --model PATH --cache DIR [--splits val[,holdout]] [--device auto|cpu|cuda]
    python -m evaluator fingerprint --cache DIR
    python -m evaluator serve --cache DIR
    python -m evaluator protocol

The protocol (its messages, exit codes and versions) is specified in docs/evaluator.md.
"""

PROTOCOL = 1  # the version of arbot's evaluator protocol this evaluator speaks
METRIC, DIRECTION = "bpb", "minimize"  # it reports val_bpb (and holdout_bpb): bits per byte, lower is better

"""The fixed, trusted evaluator of the digits example: prepares the digits splits and scores a classifier's
weights by accuracy (higher is better). Imports only the standard library and numpy.

    python -m evaluator prepare --cache DIR
    python -m evaluator score --model PATH --cache DIR [--splits val[,holdout]] [--device auto|cpu|cuda]
    python -m evaluator fingerprint --cache DIR
    python -m evaluator serve --cache DIR
    python -m evaluator protocol

It speaks arbot's evaluator protocol, version 1 (docs/evaluator.md in arbot's repository).
"""

PROTOCOL = 1  # the version of arbot's evaluator protocol this evaluator speaks
METRIC, DIRECTION = "accuracy", "maximize"  # it reports val_accuracy (and holdout_accuracy): higher is better

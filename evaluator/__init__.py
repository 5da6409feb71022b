"""The fixed, trusted evaluator of arbot: prepares the byte-level data splits and scores
exported models by bits per byte. Imports only the standard library, numpy and torch.

    python -m evaluator prepare --cache DIR
    python -m evaluator score --model PATH --cache DIR [--splits val[,holdout]] [--device auto|cpu|cuda]
    python -m evaluator fingerprint --cache DIR
"""

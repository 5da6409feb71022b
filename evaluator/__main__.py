"""Command line of the evaluator. Prints one JSON line on stdout.

Exit codes: 0 ok, 3 the model is invalid, 2 usage or data errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .data import SPLITS, DataError, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p_prepare = commands.add_parser("prepare", help="download, verify and split the data")
    p_score = commands.add_parser("score", help="score an exported model (model.pt2)")
    p_finger = commands.add_parser("fingerprint", help="print the evaluator fingerprint")
    for p in (p_prepare, p_score, p_finger):
        p.add_argument("--cache", required=True, help="cache directory for the prepared splits")
    p_score.add_argument("--model", required=True, help="path of the torch.export program")
    p_score.add_argument("--splits", default="val", help="comma-separated subset of val,holdout")
    p_score.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)

    names = []
    if args.command == "score":
        names = [n.strip() for n in args.splits.split(",") if n.strip()]
        if not names or any(n not in SPLITS[1:] for n in names) or len(set(names)) != len(names):
            parser.error(f"--splits must be a comma-separated subset of val,holdout, got {args.splits!r}")
        if not Path(args.model).is_file():
            parser.error(f"--model {args.model}: no such file")
    try:
        prepared = prepare(args.cache)
        if args.command == "prepare":
            out = prepared.as_json()
        elif args.command == "fingerprint":
            out = {"fingerprint": prepared.fingerprint, "split_id": prepared.split_id}
        else:
            from .score import score  # torch is imported only when scoring

            out = score(args.model, prepared, names, device=args.device)
    except (DataError, ValueError, OSError) as e:
        print(f"evaluator error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 3 if out.get("status") == "invalid" else 0


if __name__ == "__main__":
    sys.exit(main())

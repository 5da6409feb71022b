"""Command line of the digits evaluator: arbot's evaluator protocol, version 1. Prints one JSON line on stdout
(`serve`: one per request line on stdin).

Exit codes: 0 ok, 3 the model is invalid, 2 usage or data errors.

The splits: $ARBOT_SPLIT_ID names splits prepared already (read, never built); else they are prepared keyed
by $ARBOT_SPLIT_KEY, or by the public rule when it is unset (`split_key: none`, with a warning).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import DIRECTION, METRIC, PROTOCOL
from .data import NO_KEY, SPLITS, DataError, from_env

DEVICES = ("auto", "cpu", "cuda")  # accepted for the protocol; scoring is a few matrix products on the CPU


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p_prepare = commands.add_parser("prepare", help="verify the pinned data and split it")
    p_score = commands.add_parser("score", help="score a model's weights (an .npz archive)")
    p_finger = commands.add_parser("fingerprint", help="print the evaluator fingerprint")
    p_serve = commands.add_parser("serve", help="score one model per JSON request line on stdin (a warm worker)")
    commands.add_parser("protocol", help="print the protocol version this evaluator speaks, its metric and direction")
    for p in (p_prepare, p_score, p_finger, p_serve):
        p.add_argument("--cache", required=True, help="cache directory for the prepared splits")
    p_score.add_argument("--model", required=True, help="path of the model's .npz archive")
    p_score.add_argument("--splits", default="val", help="comma-separated subset of val,holdout")
    p_score.add_argument("--device", default="cpu", choices=DEVICES)
    args = parser.parse_args(argv)

    if args.command == "protocol":
        print(json.dumps({"protocol": PROTOCOL, "metric": METRIC, "direction": DIRECTION}), flush=True)
        return 0
    if args.command == "serve":
        return serve(args.cache)
    names = []
    if args.command == "score":
        names = [n.strip() for n in args.splits.split(",") if n.strip()]
        if not names or any(n not in SPLITS[1:] for n in names) or len(set(names)) != len(names):
            parser.error(f"--splits must be a comma-separated subset of val,holdout, got {args.splits!r}")
        if not Path(args.model).is_file():
            parser.error(f"--model {args.model}: no such file")
    try:
        prepared = from_env(args.cache)
        if args.command != "score" and prepared.split_key == NO_KEY:
            print("evaluator: warning: split_key: none: no $ARBOT_SPLIT_KEY, so val and holdout follow the public "
                  "split rule and a candidate can know them", file=sys.stderr)
        if args.command == "prepare":
            out = prepared.as_json()
        elif args.command == "fingerprint":
            out = {"fingerprint": prepared.fingerprint, "split_id": prepared.split_id, "split_key": prepared.split_key}
        else:
            from .score import score

            out = score(args.model, prepared, names)
    except (DataError, ValueError, OSError) as e:
        print(f"evaluator error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 3 if out.get("status") == "invalid" else 0


def serve(cache: str) -> int:
    """Requests {"model": PATH, "splits": ["val", ...], "device": "cpu"}, one JSON line each; answers one JSON
    line each, as `score` prints them."""
    from .score import score

    try:
        prepared = from_env(cache)
    except (DataError, OSError) as e:
        print(f"evaluator error: {e}", file=sys.stderr)
        return 2
    for line in sys.stdin:
        try:
            request = json.loads(line)
            names = list(request.get("splits") or ["val"])
            if any(n not in SPLITS[1:] for n in names) or not Path(request["model"]).is_file() \
                    or request.get("device", "cpu") not in DEVICES:
                raise ValueError(f"bad request: splits must be a subset of val,holdout, model a file and device one "
                                 f"of {', '.join(DEVICES)}: {line.strip()}")
            out = score(request["model"], prepared, names)
        except (KeyError, TypeError, ValueError, OSError, DataError) as e:
            out = {"status": "error", "reason": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

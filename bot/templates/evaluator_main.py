"""The fixed evaluator of this repository, as `arbot init` wrote it: fill in prepare() and score().

arbot runs the champion's copy of this directory (never a candidate's) as
`python -m evaluator prepare|fingerprint|score|serve --cache DIR` and reads one JSON line from stdout.
Exit codes: 0 ok, 3 the model is invalid, 2 usage or data errors. Score the artifact the training wrote
(out/model.pt2) without importing or running any code of the candidate.
"""

from __future__ import annotations

import argparse
import json
import sys

METRIC, DIRECTION = "{metric}", "{direction}"  # evaluator.metric and evaluator.direction in arbot.yml


class FillMeIn(Exception):
    pass


def prepare(cache: str) -> dict:
    """Build the split files train, val and holdout in `cache`/<split_id>/; when $ARBOT_SPLIT_ID names splits
    built already (scoring, where the cache is read-only), only find them. Return {"split_id", "train", "val",
    "holdout", "fingerprint", "split_key"}: their paths (only train reaches the training script, as --data) and a
    hash of this code and of the splits."""
    raise FillMeIn("prepare()")


def score(model: str, prepared: dict, splits: list[str], device: str) -> dict:
    """Score the artifact at `model` on each named split (val, or val and holdout); return {"status": "ok",
    "metrics": {f"{split}_{METRIC}": value, ...}, "reason": "", "fingerprint": prepared["fingerprint"]}, or
    status "invalid" and the reason for a model that must not count."""
    raise FillMeIn("score()")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "fingerprint", "score", "serve"):
        commands.add_parser(name).add_argument("--cache", required=True)
    commands.choices["score"].add_argument("--model", required=True)
    commands.choices["score"].add_argument("--splits", default="val")
    commands.choices["score"].add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        prepared = prepare(args.cache)
        if args.command == "serve":  # a warm worker: one request {"model", "splits", "device"} per line
            for line in sys.stdin:
                request = json.loads(line)
                out = score(request["model"], prepared, request.get("splits", ["val"]), request.get("device", "cpu"))
                print(json.dumps(out), flush=True)
            return 0
        if args.command == "score":
            out = score(args.model, prepared, args.splits.split(","), args.device)
        elif args.command == "fingerprint":
            out = {key: prepared[key] for key in ("fingerprint", "split_id", "split_key")}
        else:
            out = prepared
    except FillMeIn as e:
        print(f"evaluator error: {e} is not written yet: evaluator/__main__.py is the skeleton `arbot init` wrote; "
              "fill me in", file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 3 if out.get("status") == "invalid" else 0


if __name__ == "__main__":
    sys.exit(main())

"""The fixed evaluator of this repository, as `arbot init` wrote it: fill in prepare() and score().

arbot runs the champion's copy of this directory (never a candidate's) as
`python -m evaluator protocol|prepare|fingerprint|score|serve` and reads one JSON line from stdout: arbot's
evaluator protocol, version 1 (docs/evaluator.md in arbot). Exit codes: 0 ok, 3 the model is invalid, 2 usage or
data errors. Score the artifact the training wrote (out/<target.artifact>, default model.pt2) as data, without
importing or running any code of the candidate: no pickle (numpy.load(allow_pickle=False), json, safetensors,
torch.load(weights_only=True) are data; plain torch.load and joblib are not).
"""

from __future__ import annotations

import argparse
import json
import sys

PROTOCOL = 1  # the protocol version this file speaks: `python -m evaluator protocol` tells the runner
METRIC, DIRECTION = "{metric}", "{direction}"  # evaluator.metric and evaluator.direction in arbot.yml
SCORED = ("val", "holdout")  # the splits score may be asked for
SKELETON = "evaluator/__main__.py is the skeleton `arbot init` wrote; fill me in"


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


def scored_splits(names: list[str]) -> list[str]:
    if not names or any(name not in SCORED for name in names) or len(set(names)) != len(names):
        raise ValueError(f"splits must be a subset of {','.join(SCORED)}, got {names!r}")
    return names


def serve(prepared: dict) -> int:
    """A warm worker: one request {"model", "splits", "device"} per line on stdin, one answer line each."""
    for line in sys.stdin:
        try:
            request = json.loads(line)
            out = score(request["model"], prepared, scored_splits(request.get("splits", ["val"])),
                        request.get("device", "cpu"))
        except FillMeIn as e:
            out = {"status": "error", "reason": f"{e} is not written yet: {SKELETON}"}
        except Exception as e:  # the evaluator failed, not the model: the runner stops with this reason
            out = {"status": "error", "reason": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("protocol")
    for name in ("prepare", "fingerprint", "score", "serve"):
        commands.add_parser(name).add_argument("--cache", required=True)
    commands.choices["score"].add_argument("--model", required=True)
    commands.choices["score"].add_argument("--splits", default="val")
    commands.choices["score"].add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.command == "protocol":
        print(json.dumps({"protocol": PROTOCOL, "metric": METRIC, "direction": DIRECTION}), flush=True)
        return 0
    try:
        prepared = prepare(args.cache)
        if args.command == "serve":
            return serve(prepared)
        if args.command == "score":
            out = score(args.model, prepared, scored_splits(args.splits.split(",")), args.device)
        elif args.command == "fingerprint":
            out = {key: prepared[key] for key in ("fingerprint", "split_id", "split_key")}
        else:
            out = prepared
    except FillMeIn as e:
        print(f"evaluator error: {e} is not written yet: {SKELETON}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"evaluator error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 3 if out.get("status") == "invalid" else 0


if __name__ == "__main__":
    sys.exit(main())

"""The evaluator protocol (docs/evaluator.md): the version this runner speaks, the handshake that checks an
evaluator speaks it too, and the JSON schemas of its messages (runner/schemas/*.schema.json).

The handshake runs `python -m evaluator protocol` in the evaluator's parent directory, outside any sandbox
(like `prepare`, it is the champion's trusted evaluator, never candidate code), and reads one JSON line:
{"protocol": 1, "metric": "bpb", "direction": "minimize", ...}.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

PROTOCOL_VERSION = 1
HANDSHAKE_SECONDS = 60.0  # the protocol command does no work: a minute is a hung evaluator
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
DOCS = "docs/evaluator.md"
PREPARED_KEYS = ("split_id", "train", "val", "holdout", "fingerprint", "split_key")  # what prepare answers


class ProtocolError(RuntimeError):
    """The evaluator does not speak this runner's protocol: a broken setup, never the candidate's result."""


def handshake(evaluator_dir: Path, python: str, env: dict[str, str]) -> dict:
    """Ask the evaluator package at `evaluator_dir` (the directory holding its __main__.py, run as
    `python -m evaluator`) which protocol it speaks; its answer when that is PROTOCOL_VERSION, else ProtocolError."""
    package = Path(evaluator_dir)
    if not (package / "__main__.py").is_file():
        raise ProtocolError(f"no evaluator at {package}: expected a Python package with an __main__.py, run as "
                            f"`python -m evaluator` (see {DOCS})")
    argv = [python, "-m", package.name, "protocol"]
    try:
        proc = subprocess.run(argv, cwd=package.parent, env=env, capture_output=True, text=True,
                              timeout=HANDSHAKE_SECONDS)
    except subprocess.TimeoutExpired:
        raise ProtocolError(f"the evaluator at {package} did not answer the protocol command within "
                            f"{HANDSHAKE_SECONDS:g} s (`python -m evaluator protocol`, see {DOCS})") from None
    answer = last_json_line(proc.stdout)
    if proc.returncode != 0 or not isinstance(answer, dict) or type(answer.get("protocol")) is not int:
        said = proc.stderr.strip().splitlines()[-1:] or proc.stdout.strip().splitlines()[-1:] or ["no output"]
        raise ProtocolError(f"the evaluator at {package} does not answer the protocol command "
                            f"(`python -m evaluator protocol` exited {proc.returncode}: {said[0][:300]}): it is not "
                            f"an arbot evaluator of protocol {PROTOCOL_VERSION}, see {DOCS}")
    version = answer["protocol"]
    if version > PROTOCOL_VERSION:
        raise ProtocolError(f"the evaluator at {package} speaks protocol {version}, this runner speaks "
                            f"{PROTOCOL_VERSION}: upgrade arbot, or pin the evaluator to protocol {PROTOCOL_VERSION} "
                            f"(see {DOCS}#versions)")
    if version < PROTOCOL_VERSION:
        raise ProtocolError(f"the evaluator at {package} speaks protocol {version}, this runner speaks "
                            f"{PROTOCOL_VERSION}: update the evaluator to protocol {PROTOCOL_VERSION}, or pin arbot "
                            f"to a release that speaks {version} (see {DOCS}#versions)")
    return answer


def check_metric(answer: dict, metric: str, direction: str) -> None:
    """ProtocolError when the handshake names a metric or direction other than the configuration's."""
    said = {"metric": answer.get("metric", metric), "direction": answer.get("direction", direction)}
    if said != {"metric": metric, "direction": direction}:
        raise ProtocolError(f"the evaluator reports {said['metric']} ({said['direction']}), but arbot.yml says "
                            f"evaluator.metric: {metric}, evaluator.direction: {direction}: make them agree")


def check_prepared(answer: object) -> dict:
    """prepare's answer when it names the splits and the fingerprint (runner/schemas/prepare-answer), else
    ProtocolError naming what is missing."""
    if not isinstance(answer, dict):
        raise ProtocolError(f"prepare printed no JSON object on its last line starting with '{{' (see {DOCS}#prepare)")
    missing = [key for key in PREPARED_KEYS if not isinstance(answer.get(key), str) or not answer[key]]
    if missing:
        raise ProtocolError(f"prepare answered without {', '.join(missing)} (it answered {', '.join(sorted(answer))}; "
                            f"see {DOCS}#prepare)")
    return answer


def check_score(answer: dict, splits: tuple[str, ...], metric: str) -> None:
    """ProtocolError when an `ok` score answer lacks <split>_<metric> for a split it was asked for, or a value
    is not a finite number."""
    metrics = answer.get("metrics")
    if not isinstance(metrics, dict):
        raise ProtocolError(f"the evaluator answered status ok without a metrics object (see {DOCS}#score)")
    missing = [f"{split}_{metric}" for split in splits if f"{split}_{metric}" not in metrics]
    if missing:
        raise ProtocolError(f"the evaluator answered without {', '.join(missing)} (it reported "
                            f"{', '.join(sorted(metrics)) or 'no metrics'}): evaluator.metric in arbot.yml must name "
                            f"the metric it reports as <split>_<metric> (see {DOCS}#score)")
    bad = [k for k, v in metrics.items() if type(v) not in (int, float) or v != v or v in (float("inf"), float("-inf"))]
    if bad:
        raise ProtocolError(f"the evaluator reported metrics that are not finite numbers: {', '.join(bad)} "
                            f"(see {DOCS}#score)")


def schema(name: str) -> dict:
    """The JSON schema of one protocol message, e.g. schema("score-answer")."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def last_json_line(stdout: str) -> object:
    """The last line of stdout that parses as JSON (an evaluator may print other lines before it), else None."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None

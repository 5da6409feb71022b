#!/usr/bin/env python3
"""Extract the parts of GitHub's published API contract that arbot uses, for the fake GitHub's tests.

Writes, under tests/fake_github/ (commit them; rerun this script to update):
- openapi-subset.json: the REST operations in OPERATIONS from @octokit/openapi's api.github.com.json,
  with every component they reference (transitively).
- webhook-schemas-subset.json: the webhook payload schemas in WEBHOOKS from @octokit/webhooks-schemas,
  with every definition they reference.
- webhook-examples.json: one example payload per entry of WEBHOOKS from @octokit/webhooks-examples.

The packages are fetched with `npm pack` into a temporary folder (or read from --from DIR, which holds
the unpacked packages as DIR/openapi, DIR/webhooks-schemas, DIR/webhooks-examples).
Usage: python scripts/extract_openapi.py [--from DIR] [--out tests/fake_github]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {
    "openapi": "@octokit/openapi@23.0.2",
    "webhooks-schemas": "@octokit/webhooks-schemas@7.6.1",
    "webhooks-examples": "@octokit/webhooks-examples@7.6.1",
}

# (method, path) of each REST operation the GitHub forge (bot/github/) calls, through PyGithub.
OPERATIONS = [
    ("get", "/repos/{owner}/{repo}"),
    ("patch", "/repos/{owner}/{repo}"),
    ("get", "/repos/{owner}/{repo}/branches/{branch}"),
    ("get", "/repos/{owner}/{repo}/git/ref/{ref}"),
    ("post", "/repos/{owner}/{repo}/git/refs"),
    ("get", "/repos/{owner}/{repo}/pulls"),
    ("post", "/repos/{owner}/{repo}/pulls"),
    ("get", "/repos/{owner}/{repo}/pulls/{pull_number}"),
    ("patch", "/repos/{owner}/{repo}/pulls/{pull_number}"),
    ("put", "/repos/{owner}/{repo}/pulls/{pull_number}/merge"),
    ("get", "/repos/{owner}/{repo}/issues/{issue_number}"),
    ("get", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
    ("post", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
    ("patch", "/repos/{owner}/{repo}/issues/comments/{comment_id}"),
    ("post", "/repos/{owner}/{repo}/issues/{issue_number}/labels"),
    ("get", "/repos/{owner}/{repo}/labels"),
    ("post", "/repos/{owner}/{repo}/labels"),
    ("get", "/repos/{owner}/{repo}/labels/{name}"),
    ("post", "/repos/{owner}/{repo}/check-runs"),
    ("get", "/repos/{owner}/{repo}/commits/{ref}/check-runs"),
    ("post", "/repos/{owner}/{repo}/statuses/{sha}"),
    ("get", "/repos/{owner}/{repo}/commits/{ref}/status"),
    ("get", "/repos/{owner}/{repo}/branches/{branch}/protection"),
    ("put", "/repos/{owner}/{repo}/branches/{branch}/protection"),
    ("get", "/repos/{owner}/{repo}/collaborators/{username}/permission"),
    ("post", "/repos/{owner}/{repo}/actions/workflows/{workflow_id}/dispatches"),
    ("get", "/repos/{owner}/{repo}/actions/workflows/{workflow_id}/runs"),
    ("get", "/repos/{owner}/{repo}/actions/runs/{run_id}"),
    ("get", "/repos/{owner}/{repo}/actions/runs/{run_id}/artifacts"),
    ("get", "/repos/{owner}/{repo}/actions/artifacts/{artifact_id}/{archive_format}"),
    ("get", "/repos/{owner}/{repo}/installation"),
    ("post", "/app/installations/{installation_id}/access_tokens"),
    ("get", "/app"),
    ("get", "/user"),
    ("get", "/repos/{owner}/{repo}/rulesets"),
    ("post", "/repos/{owner}/{repo}/rulesets"),
    ("get", "/repos/{owner}/{repo}/rulesets/{ruleset_id}"),
]

# Webhook payloads the bot receives: (schema definition, example event name, example action).
WEBHOOKS = [
    ("ping$event", "ping", None),
    ("check_run$completed", "check_run", "completed"),
    ("pull_request$opened", "pull_request", "opened"),
    ("pull_request$synchronize", "pull_request", "synchronize"),
    ("pull_request$closed", "pull_request", "closed"),
    ("pull_request$labeled", "pull_request", "labeled"),
    ("issue_comment$created", "issue_comment", "created"),
    ("push$event", "push", None),
    ("status$event", "status", None),
    ("workflow_run$completed", "workflow_run", "completed"),
]


def fetch(tmp: Path) -> Path:
    """npm pack each package into tmp and unpack it as tmp/<key>/package."""
    for key, spec in PACKAGES.items():
        out = subprocess.run(["npm", "pack", spec, "--silent", "--pack-destination", str(tmp)],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        with tarfile.open(tmp / out) as tar:
            tar.extractall(tmp / key, filter="data")
    return tmp


def refs(node, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref)
        for v in node.values():
            refs(v, found)
    elif isinstance(node, list):
        for v in node:
            refs(v, found)


def pointer(doc: dict, ref: str):
    node = doc
    for part in ref.lstrip("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def closure(doc: dict, roots) -> set[str]:
    """Every local $ref reachable from roots."""
    seen: set[str] = set()
    todo: set[str] = set()
    refs(roots, todo)
    while todo:
        ref = todo.pop()
        if ref in seen or not ref.startswith("#/"):
            continue
        seen.add(ref)
        refs(pointer(doc, ref), todo)
    return seen


def put(out: dict, ref: str, value) -> None:
    parts = ref.lstrip("#/").split("/")
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def extract_openapi(spec: dict) -> dict:
    paths: dict = {}
    for method, path in OPERATIONS:
        item = spec["paths"][path]
        paths.setdefault(path, {})[method] = item[method]
        if "parameters" in item:
            paths[path]["parameters"] = item["parameters"]
    out = {"openapi": spec["openapi"], "info": spec["info"], "paths": paths}
    for ref in sorted(closure(spec, paths)):
        put(out, ref, pointer(spec, ref))
    return out


def extract_webhook_schemas(schema: dict) -> dict:
    defs = schema["definitions"]
    roots = {"definitions": {name: defs[name] for name, _, _ in WEBHOOKS}}
    out = {"$schema": schema["$schema"], "definitions": dict(roots["definitions"])}
    for ref in sorted(closure(schema, roots)):
        put(out, ref, pointer(schema, ref))
    return out


def extract_examples(examples: list) -> dict:
    by_name = {e["name"]: e["examples"] for e in examples}
    out = {}
    for definition, name, action in WEBHOOKS:
        match = [x for x in by_name[name] if x.get("action") == action]
        out[definition] = match[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", type=Path, help="folder with the unpacked packages (default: npm pack)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "fake_github")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = args.src or fetch(Path(tmp))
        spec = json.loads((src / "openapi/package/generated/api.github.com.json").read_text())
        schemas = json.loads((src / "webhooks-schemas/package/schema.json").read_text())
        examples = json.loads((src / "webhooks-examples/package/api.github.com/index.json").read_text())
    outputs = {
        "openapi-subset.json": extract_openapi(spec),
        "webhook-schemas-subset.json": extract_webhook_schemas(schemas),
        "webhook-examples.json": extract_examples(examples),
    }
    for name, data in outputs.items():
        path = args.out / name
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"{path}: {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()

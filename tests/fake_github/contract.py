"""GitHub's published contract, as extracted by scripts/extract_openapi.py, and validators for it."""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from pathlib import Path

import jsonschema

HERE = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    return json.loads((HERE / name).read_text())


def openapi() -> dict:
    return load("openapi-subset.json")


def webhook_example(definition: str) -> dict:
    """A fresh copy of the community example payload for e.g. `check_run$completed`."""
    return copy.deepcopy(load("webhook-examples.json")[definition])


def _nullable_to_jsonschema(node):
    """OpenAPI 3.0's `nullable: true` as JSON Schema (type list with null)."""
    if isinstance(node, dict):
        out = {k: _nullable_to_jsonschema(v) for k, v in node.items()}
        if out.pop("nullable", False):
            if "type" in out:
                out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
            elif any(k in out for k in ("allOf", "oneOf", "anyOf", "$ref")):
                out = {"anyOf": [out, {"type": "null"}]}
        return out
    if isinstance(node, list):
        return [_nullable_to_jsonschema(v) for v in node]
    return node


@lru_cache(maxsize=None)
def _components() -> dict:
    return _nullable_to_jsonschema(openapi()["components"])


def validate_schema(schema: dict, instance, where: str) -> None:
    """Validate against an OpenAPI schema object whose $refs point into the subset's components."""
    root = {**_nullable_to_jsonschema(schema), "components": _components()}
    errors = sorted(jsonschema.Draft7Validator(root).iter_errors(instance), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        raise ContractError(f"{where}: {e.message} at {'/'.join(map(str, e.path)) or '(root)'}"
                            + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))


class ContractError(AssertionError):
    pass


def _resolve(node: dict) -> dict:
    while "$ref" in node:
        node = _pointer(openapi(), node["$ref"])
    return node


def _pointer(doc: dict, ref: str):
    for part in ref.lstrip("#/").split("/"):
        doc = doc[part.replace("~1", "/").replace("~0", "~")]
    return doc


@lru_cache(maxsize=None)
def _templates() -> list[tuple[re.Pattern, str]]:
    out = []
    for path in openapi()["paths"]:
        # {ref} in git/ref/{ref} and commits/{ref} may hold slashes (heads/champion).
        pattern = re.sub(r"\{(ref|name)\}", r"(?P<\1>.+)", path)
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        out.append((re.compile("^" + pattern + "$"), path))
    return out


def operation(method: str, path: str) -> tuple[str, dict]:
    """The OpenAPI path template and operation for a concrete request path; ContractError if not in the subset."""
    method = method.lower()
    matches = [(t, openapi()["paths"][t]) for rx, t in _templates() if rx.match(path)]
    for template, item in sorted(matches, key=lambda m: m[0].count("{")):  # literal segments win over templates
        if method in item:
            return template, item[method]
    raise ContractError(f"{method.upper()} {path} is not an operation of the extracted OpenAPI subset")


def _exactly_one_of_contexts_or_checks(schema: dict) -> dict:
    """required_status_checks: GitHub requires `strict` and exactly one of `contexts` (deprecated) and `checks`.
    The description requires `contexts` always, yet GitHub accepts `checks` alone (PyGithub/PyGithub#2157,
    google/go-github#2976) and refuses both together with 422 "Invalid request. No subschema in "anyOf" matched.
    More than one subschema in "oneOf" matched. ..." (ossf/allstar#155, sigmavirus24/github3.py#1112)."""
    schema = copy.deepcopy(schema)
    checks = schema["properties"]["required_status_checks"]
    checks["required"] = ["strict"]
    checks["oneOf"] = [{"type": "object", "required": ["contexts"], "not": {"required": ["checks"]}},
                       {"type": "object", "required": ["checks"], "not": {"required": ["contexts"]}},
                       {"type": "null"}]
    return schema


# Request schemas where GitHub's behaviour and its published description disagree: GitHub's wins, with evidence.
REQUEST_CORRECTIONS = {
    ("put", "/repos/{owner}/{repo}/branches/{branch}/protection"): _exactly_one_of_contexts_or_checks,
}


def validate_request(method: str, path: str, body) -> str:
    template, op = operation(method, path)
    rb = op.get("requestBody")
    if rb is not None:
        schema = _resolve(rb)["content"].get("application/json", {}).get("schema")
        if body is None and _resolve(rb).get("required"):
            raise ContractError(f"{method.upper()} {template}: the request body is required")
        correct = REQUEST_CORRECTIONS.get((method.lower(), template))
        if schema is not None and correct is not None:
            schema = correct(schema)
        if schema is not None and body is not None:
            validate_schema(schema, body, f"request {method.upper()} {template}")
    return template


# Error statuses GitHub answers although the operation's description leaves them out, each with its evidence.
# They must carry a basic-error body ({"message", "documentation_url"}). Keep this list short and sourced.
UNDOCUMENTED_ERRORS: dict[tuple[str, str], set[int]] = {
    # create-workflow-dispatch documents only 200/204, yet GitHub answers 404 "Not Found" for an unknown workflow
    # and 422 for "No ref found for: X", "Workflow does not have 'workflow_dispatch' trigger" and
    # 'Unexpected inputs provided: ["x"]' (reported verbatim in e.g. convictional/trigger-workflow-and-wait#4 and
    # #44, benc-uk/workflow-dispatch#46, octokit/octokit.js#2286).
    ("post", "/repos/{owner}/{repo}/actions/workflows/{workflow_id}/dispatches"): {404, 422},
    # The Actions reads document only 200 (downloads: 302, 410), yet an unknown run, workflow or artifact id answers
    # 404 "Not Found" like every other resource (e.g. cli/cli#10686 "HTTP 404: Not Found (.../actions/workflows/N)",
    # dawidd6/action-download-artifact#181 "Error: Not Found" for a run id).
    ("get", "/repos/{owner}/{repo}/actions/runs/{run_id}"): {404},
    ("get", "/repos/{owner}/{repo}/actions/workflows/{workflow_id}/runs"): {404},
    ("get", "/repos/{owner}/{repo}/actions/runs/{run_id}/artifacts"): {404},
    ("get", "/repos/{owner}/{repo}/actions/artifacts/{artifact_id}/{archive_format}"): {404},
}


def validate_response(method: str, path: str, status: int, body) -> None:
    template, op = operation(method, path)
    if status == 401:  # "Bad credentials" can come from every operation; the description documents it globally
        validate_schema({"$ref": "#/components/schemas/basic-error"}, body, f"response 401 of {method.upper()} {template}")
        return
    if str(status) not in op["responses"] and status in UNDOCUMENTED_ERRORS.get((method.lower(), template), ()):
        validate_schema({"$ref": "#/components/schemas/basic-error"}, body, f"response {status} of {method.upper()} {template}")
        return
    responses = op["responses"]
    response = responses.get(str(status)) or responses.get("default")
    if response is None:
        raise ContractError(f"{method.upper()} {template}: status {status} is not documented ({', '.join(responses)})")
    response = _resolve(response)
    schema = (response.get("content") or {}).get("application/json", {}).get("schema")
    if schema is not None:
        validate_schema(schema, body, f"response {status} of {method.upper()} {template}")


@lru_cache(maxsize=None)
def _webhook_validator(definition: str):
    schemas = load("webhook-schemas-subset.json")
    return jsonschema.Draft7Validator({"$ref": f"#/definitions/{definition}", "definitions": schemas["definitions"]})


def validate_webhook(definition: str, payload: dict) -> None:
    errors = list(_webhook_validator(definition).iter_errors(payload))
    if errors:
        raise ContractError(f"webhook {definition}: {errors[0].message} (+{len(errors) - 1} more)")

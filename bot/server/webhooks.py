"""Webhook requests without I/O: verify `X-Hub-Signature-256`, parse the headers and the JSON body into an Event.

Nothing here reads a socket or a file, so every rule is testable with plain bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SIGNATURE_HEADER = "x-hub-signature-256"
EVENT_HEADER = "x-github-event"
DELIVERY_HEADER = "x-github-delivery"


class WebhookError(ValueError):
    """A request that is not a valid GitHub webhook; `status` is the HTTP answer to give."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def sign(secret: str | bytes, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for `body`: sha256=<hex HMAC-SHA256 with the secret>."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(secret: str | bytes, body: bytes, header: str | None) -> None:
    """Raise WebhookError(401) unless `header` is the HMAC-SHA256 of the raw `body` (constant-time compare)."""
    if not secret:
        raise WebhookError("no webhook secret is configured: refusing every delivery", status=401)
    if not header:
        raise WebhookError("unsigned delivery: no X-Hub-Signature-256 header", status=401)
    if not hmac.compare_digest(sign(secret, body).encode(), header.strip().encode()):
        raise WebhookError("wrong signature: X-Hub-Signature-256 does not match the body", status=401)


@dataclass(frozen=True)
class Event:
    """One verified webhook delivery."""

    name: str  # X-GitHub-Event: pull_request, check_run, issue_comment, ...
    delivery_id: str  # X-GitHub-Delivery: unique per delivery, the same on a redelivery
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def action(self) -> str | None:
        return self.payload.get("action")

    @property
    def repo(self) -> str | None:
        return (self.payload.get("repository") or {}).get("full_name")

    @property
    def kind(self) -> str:
        """`event.action`, e.g. `check_run.completed`, or just the event name when it has no action."""
        return f"{self.name}.{self.action}" if self.action else self.name

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "delivery_id": self.delivery_id, "payload": self.payload})

    @classmethod
    def from_json(cls, text: str) -> "Event":
        d = json.loads(text)
        return cls(name=d["name"], delivery_id=d["delivery_id"], payload=d["payload"])


def parse(headers: Mapping[str, str], body: bytes, secret: str | bytes) -> Event:
    """Verify and parse one delivery. Headers are matched case-insensitively."""
    h = {k.lower(): v for k, v in headers.items()}
    verify_signature(secret, body, h.get(SIGNATURE_HEADER))
    name = h.get(EVENT_HEADER)
    delivery = h.get(DELIVERY_HEADER)
    if not name:
        raise WebhookError("no X-GitHub-Event header")
    if not delivery:
        raise WebhookError("no X-GitHub-Delivery header")
    content_type = h.get("content-type", "application/json").split(";")[0].strip()
    try:
        if content_type == "application/x-www-form-urlencoded":
            from urllib.parse import parse_qs

            payload = json.loads(parse_qs(body.decode())["payload"][0])
        else:
            payload = json.loads(body or b"{}")
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise WebhookError(f"the body is not JSON: {e}") from e
    if not isinstance(payload, dict):
        raise WebhookError("the body is not a JSON object")
    return Event(name=name, delivery_id=delivery, payload=payload)


def delivery_headers(secret: str | bytes, event: str, delivery_id: str, body: bytes) -> dict[str, str]:
    """The headers GitHub sends with a delivery (used by the fake GitHub and the tests)."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/arbot-test",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id,
        "X-GitHub-Hook-ID": "1",
        "X-Hub-Signature-256": sign(secret, body),
    }

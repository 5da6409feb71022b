"""Signed records: every note arbot writes carries an Ed25519 signature made with a key held outside the repository.

A signature covers the note's JSON (canonical form: sorted keys, no spaces), the notes ref and the commit the note
annotates, so a signed note cannot be edited, nor copied onto another commit or under another ref. Readers trust
the bot's own key (when this machine holds it) and the public keys committed in KEYS_FILE on the champion branch,
which branch protection and code owners cover (several keys: one per bot, and old ones kept while rotating).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bot.config import ConfigError

KEY_ENV = "ARBOT_SIGNING_KEY"  # the private key's file (default: default_key_path())
KEYS_FILE = ".github/arbot-signing-keys"  # the public keys readers trust, one OpenSSH line each
FIELD = "arbot_signature"  # the note's member holding "ed25519:<key id>:<base64 signature>"
DOMAIN = b"arbot-note/v1\0"  # what a signature is for: never valid as any other Ed25519 message
UNSIGNED = "it is not signed"  # why a note is not trusted, when it carries no signature at all


class SigningError(ConfigError):
    """The bot's signing key cannot be used; the message says which file and what to do."""


def default_key_path() -> Path:
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "arbot" / "signing-key"


@dataclass(frozen=True)
class PublicKey:
    key: Ed25519PublicKey

    @property
    def raw(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def line(self) -> str:
        """Its line for KEYS_FILE."""
        ssh = self.key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        return f"{ssh} arbot:{self.id}"


def canonical(ref: str, commit: str, value: dict) -> bytes:
    """The bytes a note's signature covers: the domain, ref, commit and the JSON without the signature."""
    body = {k: v for k, v in value.items() if k != FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return DOMAIN + f"{ref}\0{commit}\0".encode() + text.encode()


class Signer:
    def __init__(self, private: Ed25519PrivateKey, path: Path):
        self.private, self.path = private, path
        self.public = PublicKey(private.public_key())

    def sign(self, ref: str, commit: str, value: dict) -> dict:
        """`value` with its signature as the last member."""
        signature = base64.b64encode(self.private.sign(canonical(ref, commit, value))).decode()
        return {**{k: v for k, v in value.items() if k != FIELD}, FIELD: f"ed25519:{self.public.id}:{signature}"}

    @classmethod
    def load(cls, path: Path) -> Signer:
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as e:
            raise SigningError(f"arbot's signing key {path} cannot be read ({e}); point {KEY_ENV} at the key "
                               f"file arbot created, or move this one away to create a new key (then add its "
                               f"public key to {KEYS_FILE}: `arbot sign`)") from e
        if not isinstance(private, Ed25519PrivateKey):
            raise SigningError(f"{path} is not an Ed25519 private key; point {KEY_ENV} at arbot's signing key")
        return cls(private, path)

    @classmethod
    def create(cls, path: Path) -> Signer:
        """A new key at `path` (mode 0600), made atomically: two processes creating it at once share one key."""
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return cls.load(path)
        finally:
            tmp.unlink()
        return cls(private, path)


def signer(path: Path | None = None, create: bool = False) -> Signer | None:
    """The bot's key at `path` (default_key_path()); created when missing with `create`, else None."""
    path = path or default_key_path()
    if path.exists():
        return Signer.load(path)
    return Signer.create(path) if create else None


def parse_keys(text: str) -> tuple[list[PublicKey], list[str]]:
    """The Ed25519 keys of a KEYS_FILE text, and what is wrong with each other non-comment line."""
    keys, problems = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            key = serialization.load_ssh_public_key(" ".join(line.split()[:2]).encode())
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            problems.append(f"{KEYS_FILE} line {n} is not an OpenSSH public key ({e})")
            continue
        if isinstance(key, Ed25519PublicKey):
            keys.append(PublicKey(key))
        else:
            problems.append(f"{KEYS_FILE} line {n} is not an Ed25519 key (ssh-ed25519 ...)")
    return keys, problems


class Verifier:
    def __init__(self, keys: list[PublicKey]):
        self.keys = {k.id: k for k in keys}

    def check(self, ref: str, commit: str, value: object) -> str | None:
        """Why the note `value` (its JSON) on `commit` under refs/notes/<ref> is not signed by a trusted key, or
        None when it is."""
        if not isinstance(value, dict) or FIELD not in value:
            return UNSIGNED
        scheme, _, rest = str(value[FIELD]).partition(":")
        key_id, _, signature = rest.partition(":")
        if scheme != "ed25519" or not signature:
            return f"its signature is not one arbot makes ({FIELD} {str(value[FIELD])[:40]!r})"
        if key_id not in self.keys:
            return f"it is signed by key {key_id[:16]!r}, which is neither this bot's nor in {KEYS_FILE}"
        try:
            self.keys[key_id].key.verify(base64.b64decode(signature, validate=True), canonical(ref, commit, value))
        except (InvalidSignature, ValueError):
            return (f"its signature by key {key_id} does not verify: the note was changed after it was signed, "
                    "or copied from another commit")
        return None

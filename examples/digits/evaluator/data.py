"""The digits data: 1797 8x8 handwritten digits, split deterministically into train/val/holdout.

Source: `data/digits.csv.gz` next to this file, copied from the scikit-learn 1.5.2 wheel
(sklearn/datasets/data/digits.csv.gz; the test set of UCI's "Optical Recognition of Handwritten Digits", CC BY
4.0) and checked against its sha256 before every use, so no network is ever needed. Each CSV row is 64 pixel
values in 0..16, then the label 0..9.

A split file holds uint8 rows of ROW_BYTES bytes: the 64 pixels, then the label. The samples are taken in file
order in groups of PERIOD; which one of a group is val and which holdout is keyed by the operator's secret,
$ARBOT_SPLIT_KEY: HMAC-SHA256(key, "group <g>") picks them, so a candidate cannot know which samples are held
out. With no key, the public rule holds (sample i is val when i % PERIOD == VAL_PHASE, holdout when
i % PERIOD == HOLDOUT_PHASE) and the output says `split_key: none`. The key is never stored: the manifest and
the fingerprint hold only its id, an HMAC of a fixed label.

Prepared splits live in CACHE/<split_id>/ with a manifest of their hashes. A process without the key (the
sandboxed scoring worker) is pointed at splits prepared already with $ARBOT_SPLIT_ID; it reads them, never
builds. Preparation is idempotent and safe against concurrent preparers (built in a temp dir, then renamed).
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).resolve().parent / "data" / "digits.csv.gz"
SOURCE_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
SOURCE_ORIGIN = "scikit-learn==1.5.2 wheel, sklearn/datasets/data/digits.csv.gz"
SAMPLES = 1797
PIXELS = 64  # 8x8, each in 0..MAX_PIXEL
MAX_PIXEL = 16
CLASSES = 10
ROW_BYTES = PIXELS + 1  # a split file's row: the pixels, then the label

PERIOD = 5
VAL_PHASE = 0
HOLDOUT_PHASE = 2
SPLIT_RULE = (f"digits v1: digits.csv.gz rows in file order as uint8 rows (64 pixels, label); "
              f"i%{PERIOD}=={VAL_PHASE} val, i%{PERIOD}=={HOLDOUT_PHASE} holdout, else train")
KEYED_SPLIT_RULE = (f"digits v2: as v1, but in each group g of samples {PERIOD}g..{PERIOD}g+{PERIOD - 1}, "
                    f"HMAC-SHA256(key, 'group <g>') picks the val sample (first 8 bytes mod {PERIOD}) and the holdout "
                    f"sample (val + 1 + next 8 bytes mod {PERIOD - 1}, mod {PERIOD})")
SPLITS = ("train", "val", "holdout")
SPLIT_KEY_ENV = "ARBOT_SPLIT_KEY"  # the operator's secret; only the process that prepares the splits needs it
SPLIT_ID_ENV = "ARBOT_SPLIT_ID"  # splits already prepared under CACHE/<id>: read them, never build
NO_KEY = "none"


class DataError(Exception):
    """The data could not be verified or prepared."""


@dataclass(frozen=True)
class Prepared:
    split_id: str
    dir: Path
    manifest: dict
    fingerprint: str
    split_key: str  # the key's id, or "none": the public split rule

    def path(self, name: str) -> Path:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
        return self.dir / f"{name}.bin"

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(pixels [n, 64] uint8, labels [n] uint8) of one split."""
        rows = np.fromfile(self.path(name), dtype=np.uint8).reshape(-1, ROW_BYTES)
        return rows[:, :PIXELS], rows[:, PIXELS]

    def as_json(self) -> dict:
        return {"split_id": self.split_id, **{name: str(self.path(name)) for name in SPLITS},
                "fingerprint": self.fingerprint, "split_key": self.split_key}


def env_key() -> bytes | None:
    """The split key from $ARBOT_SPLIT_KEY, or None (the public rule)."""
    return os.environ.get(SPLIT_KEY_ENV, "").strip().encode() or None


def key_id(key: bytes | None) -> str:
    """What may be shown of a key: an HMAC of a fixed label (names the key, reveals nothing of it), or "none"."""
    return NO_KEY if key is None else "hmac-" + hmac.new(key, b"arbot split key id", "sha256").hexdigest()[:16]


def split_id(key: bytes | None = None) -> str:
    rule = SPLIT_RULE if key is None else f"{KEYED_SPLIT_RULE}\n{key_id(key)}"
    return hashlib.sha256(f"{rule}\n{SOURCE_SHA256}".encode()).hexdigest()[:12]


def fingerprint(manifest: dict) -> str:
    """sha256 over this package's .py sources (sorted by name), the split hashes and the key id; 16 hex chars."""
    h = hashlib.sha256()
    for src in sorted(Path(__file__).resolve().parent.glob("*.py"), key=lambda p: p.name):
        h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    for name in SPLITS:
        h.update(f"{name}={manifest['splits'][name]['sha256']}\n".encode())
    h.update(f"split_key={manifest.get('split_key', NO_KEY)}\n".encode())
    return h.hexdigest()[:16]


def read_source(path: Path = SOURCE) -> np.ndarray:
    """The verified source as uint8 rows [SAMPLES, ROW_BYTES]."""
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read the digits data {path}: {e.strerror}; restore it from {SOURCE_ORIGIN}") from e
    digest = hashlib.sha256(blob).hexdigest()
    if digest != SOURCE_SHA256:
        raise DataError(f"checksum mismatch for {path}: expected sha256 {SOURCE_SHA256}, got {digest}; "
                        f"restore it from {SOURCE_ORIGIN}")
    values = np.loadtxt(gzip.decompress(blob).decode("ascii").splitlines(), delimiter=",")
    if values.shape != (SAMPLES, ROW_BYTES) or values.min() < 0 or values[:, :PIXELS].max() > MAX_PIXEL \
            or values[:, PIXELS].max() >= CLASSES or not np.array_equal(values, np.round(values)):
        raise DataError(f"{path} is not {SAMPLES} rows of {PIXELS} pixels in 0..{MAX_PIXEL} and a label in "
                        f"0..{CLASSES - 1}: got shape {values.shape}")
    return values.astype(np.uint8)


def held_out_phases(key: bytes | None, group: int) -> tuple[int, int]:
    """The positions of the val and the holdout sample in a group of PERIOD samples."""
    if key is None:
        return VAL_PHASE, HOLDOUT_PHASE
    digest = hmac.new(key, f"group {group}".encode(), "sha256").digest()
    val = int.from_bytes(digest[:8], "big") % PERIOD
    return val, (val + 1 + int.from_bytes(digest[8:16], "big") % (PERIOD - 1)) % PERIOD


def split_rows(rows: np.ndarray, key: bytes | None = None) -> dict[str, np.ndarray]:
    names = []
    for i in range(len(rows)):
        val, holdout = held_out_phases(key, i // PERIOD)
        names.append("val" if i % PERIOD == val else "holdout" if i % PERIOD == holdout else "train")
    which = np.array(names)
    return {name: rows[which == name] for name in SPLITS}


def build(dest: Path, key: bytes | None = None) -> None:
    parts = split_rows(read_source(), key)
    for name, rows in parts.items():
        (dest / f"{name}.bin").write_bytes(rows.tobytes())
    manifest = {
        "split_id": split_id(key),
        "split_rule": SPLIT_RULE if key is None else KEYED_SPLIT_RULE,
        **({} if key is None else {"split_key": key_id(key)}),
        "source": {"origin": SOURCE_ORIGIN, "sha256": SOURCE_SHA256},
        "splits": {name: {"sha256": hashlib.sha256(rows.tobytes()).hexdigest(), "size": rows.nbytes}
                   for name, rows in parts.items()},
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def load_verified(final: Path) -> dict | None:
    """The manifest of a complete cache dir whose files match it, else None."""
    try:
        manifest = json.loads((final / "manifest.json").read_text())
        for name in SPLITS:
            entry, blob = manifest["splits"][name], (final / f"{name}.bin").read_bytes()
            if len(blob) != entry["size"] or hashlib.sha256(blob).hexdigest() != entry["sha256"]:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def prepare(cache_dir: str | os.PathLike, key: bytes | None = None) -> Prepared:
    """Make sure CACHE/<split_id>/ holds verified splits (keyed by `key`, if given); build them if not."""
    read_source()  # the pinned source is verified on every prepare, even when the splits are cached
    cache = Path(cache_dir).expanduser().resolve()
    final = cache / split_id(key)
    manifest = load_verified(final)
    if manifest is None:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{split_id(key)}.tmp-", dir=cache))
        try:
            (tmp / "split").mkdir()
            build(tmp / "split", key)
            if final.exists() and load_verified(final) is None:
                os.rename(final, tmp / "broken")  # a partial or corrupted cache: replace it
            try:
                os.rename(tmp / "split", final)
            except OSError:
                pass  # another process finished first; its result is checked below
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        manifest = load_verified(final)
        if manifest is None:
            raise DataError(f"prepared data in {final} does not match its manifest")
    return _prepared(final, manifest)


def open_prepared(cache_dir: str | os.PathLike, ident: str) -> Prepared:
    """Splits prepared already in CACHE/<ident>/ (by a process that had the key), verified; never built here."""
    if not re.fullmatch(r"[0-9a-f]{12}", ident):
        raise DataError(f"${SPLIT_ID_ENV} must be a split id (12 hex digits), got {ident!r}")
    final = Path(cache_dir).expanduser().resolve() / ident
    manifest = load_verified(final)
    if manifest is None or manifest.get("split_id") != ident:
        raise DataError(f"no prepared splits {ident} in {final.parent} (the runner prepares them before scoring)")
    return _prepared(final, manifest)


def from_env(cache_dir: str | os.PathLike) -> Prepared:
    """The splits this process is given: $ARBOT_SPLIT_ID names prepared ones, else prepare with $ARBOT_SPLIT_KEY."""
    ident = os.environ.get(SPLIT_ID_ENV)
    return open_prepared(cache_dir, ident) if ident else prepare(cache_dir, env_key())


def _prepared(final: Path, manifest: dict) -> Prepared:
    return Prepared(split_id=final.name, dir=final, manifest=manifest, fingerprint=fingerprint(manifest),
                    split_key=manifest.get("split_key", NO_KEY))

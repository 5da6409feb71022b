"""Diff inspection: what a candidate's edit touches that an honest ML change rarely needs.

The champion's and the candidate's versions of each changed file are parsed (AST, never run). Every statement
that uses something sensitive (timing, seeding, the evaluator, file or network I/O, subprocesses or threads,
the environment, dynamic code, monkeypatching, embedded data) gives a signature: its category and its source
(for compound statements only the header: `while <test>`, not the body). A flag is raised for each signature
the candidate has more often than the champion: so new or changed sensitive lines flag, untouched ones and
plain knob changes do not. Flags are labels for a human; the sandbox and the evaluator are what enforce.

A change whose new literals (strings and bytes by length, numbers by size) add up to more than
LITERAL_PAYLOAD_BYTES is flagged `literal-payload`: data smuggled in pieces, each under EMBEDDED_BYTES.

Names are resolved, not matched: import aliases, plain rebindings (`o = os`), `getattr(x, "name")`,
`__import__("mod")` and `importlib.import_module("mod")` with string names, star imports and `setattr` on a
module all reach the category of what they name; a sensitive name spelled as a string is flagged too.

`data_overlap` checks the changed files (their string literals, and the hex or base64 literals joined in source
order, decoded from base64/hex/zlib/..., also under a single-byte XOR) for copies of the validation or holdout
split.

`inspect_bounded` runs both for one change in a child process held in time, memory and recursion depth: the
runner always gets the flags or the limit the inspection met (InspectionError), never a crash of its own.
"""

from __future__ import annotations

import ast
import base64
import binascii
import bz2
import gzip
import json
import lzma
import re
import resource
import signal
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

# module prefix -> category; the longest matching prefix wins
MODULES = {
    "time": "timing", "datetime": "timing", "timeit": "timing", "sched": "timing",
    "torch.cuda.Event": "timing",
    "random.seed": "seeding", "numpy.random.seed": "seeding", "torch.manual_seed": "seeding",
    "torch.cuda.manual_seed": "seeding", "torch.cuda.manual_seed_all": "seeding", "torch.seed": "seeding",
    "torch.random": "seeding", "torch.use_deterministic_algorithms": "seeding",
    "evaluator": "evaluator", "runner": "evaluator", "bot": "evaluator",
    "os.environ": "env", "os.getenv": "env", "os.putenv": "env", "os.unsetenv": "env", "os.environb": "env",
    "subprocess": "subprocess", "multiprocessing": "subprocess", "concurrent": "subprocess",
    "threading": "subprocess", "_thread": "subprocess", "pty": "subprocess", "signal": "subprocess",
    "asyncio": "subprocess", "torch.multiprocessing": "subprocess",
    "os.system": "subprocess", "os.popen": "subprocess", "os.fork": "subprocess", "os.forkpty": "subprocess",
    "os.kill": "subprocess", "os.killpg": "subprocess", "os.setsid": "subprocess", "os.daemon": "subprocess",
    "os.exec": "subprocess", "os.spawn": "subprocess", "os.posix_spawn": "subprocess", "os._exit": "subprocess",
    "socket": "network", "ssl": "network", "http": "network", "urllib": "network", "requests": "network",
    "httpx": "network", "aiohttp": "network", "ftplib": "network", "smtplib": "network", "telnetlib": "network",
    "xmlrpc": "network", "websocket": "network", "paramiko": "network", "torch.distributed": "network",
    "torch.hub": "network", "huggingface_hub": "network", "datasets": "network",
    "shutil": "file-io", "glob": "file-io", "tempfile": "file-io", "pathlib": "file-io", "io": "file-io",
    "os.open": "file-io", "os.remove": "file-io", "os.unlink": "file-io", "os.rename": "file-io",
    "os.replace": "file-io", "os.listdir": "file-io", "os.scandir": "file-io", "os.walk": "file-io",
    "os.symlink": "file-io", "os.link": "file-io", "os.chmod": "file-io", "os.utime": "file-io",
    "os.makedirs": "file-io", "os.mkdir": "file-io", "os.path": "file-io", "os.stat": "file-io",
    "os.truncate": "file-io", "os.write": "file-io", "os.read": "file-io", "os.chdir": "file-io",
    "numpy.fromfile": "file-io", "numpy.load": "file-io", "numpy.save": "file-io", "numpy.memmap": "file-io",
    "numpy.loadtxt": "file-io", "numpy.savetxt": "file-io", "numpy.savez": "file-io", "numpy.genfromtxt": "file-io",
    "torch.load": "file-io", "torch.save": "file-io", "torch.export.save": "file-io", "torch.export.load": "file-io",
    "torch.from_file": "file-io", "pickle": "dynamic-code", "marshal": "dynamic-code", "shelve": "file-io",
    "importlib": "dynamic-code", "runpy": "dynamic-code", "ctypes": "dynamic-code", "cffi": "dynamic-code",
    "sys.modules": "dynamic-code", "sys.settrace": "dynamic-code", "sys.setprofile": "dynamic-code",
    "sys.addaudithook": "dynamic-code", "builtins": "dynamic-code", "gc": "dynamic-code", "inspect": "dynamic-code",
    "sys.path": "dynamic-code", "sys.meta_path": "dynamic-code", "atexit": "dynamic-code",
    "base64": "embedded-data", "binascii": "embedded-data", "zlib": "embedded-data", "lzma": "embedded-data",
    "bz2": "embedded-data", "gzip": "embedded-data", "codecs": "embedded-data", "zipfile": "file-io",
    "tarfile": "file-io",
}
BUILTINS = {
    "open": "file-io", "exec": "dynamic-code", "eval": "dynamic-code", "compile": "dynamic-code",
    "__import__": "dynamic-code", "getattr": "dynamic-code", "setattr": "dynamic-code", "delattr": "dynamic-code",
    "globals": "dynamic-code", "vars": "dynamic-code", "locals": "dynamic-code", "breakpoint": "dynamic-code",
    "input": "file-io",
}
# method names that read or write files whatever object they are called on
FILE_METHODS = {"read_bytes", "read_text", "write_bytes", "write_text", "tofile", "unlink", "rmdir",
                "symlink_to", "hardlink_to", "rename", "replace", "touch", "chmod", "iterdir", "rglob"}
TIMING_NAMES = {"budget", "deadline"}  # `args.budget`: the time budget itself
STRING_CATEGORIES = ("network", "subprocess", "env", "dynamic-code")  # a string naming one of these is flagged
# string literals that point at what the candidate must not see
SUSPICIOUS_STRINGS = re.compile(
    r"val\.bin|\bholdout\b|evaluator[/.]|\barbot\b|\.cache\b|/proc/|/etc/|/root\b|/home/|\.ssh|\bsecret|\btoken\b|"
    r"api[_-]?key|passw|/dev/(?!null)", re.IGNORECASE)
EMBEDDED_BYTES = 2000  # a literal longer than this is data, not code
LITERAL_PAYLOAD_BYTES = 4096  # new literal bytes one change may add (all files together) before it is flagged


IMPORTERS = ("__import__", "importlib.import_module", "importlib.__import__")  # called with a module name


def _resolve(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """The dotted name of an expression like `np.random.seed`, with import aliases and plain rebindings resolved;
    `getattr(x, "name")` is x.name and `__import__("mod")` / `importlib.import_module("mod")` is mod, whatever
    names they are reached by."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Call):  # torch.Generator().manual_seed -> torch.Generator.manual_seed
        func = _resolve(node.func, aliases)
        literal = [a.value for a in node.args[:2] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if func in IMPORTERS and node.args and literal and literal[0] == getattr(node.args[0], "value", None):
            head = literal[0]
        elif func == "getattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str):
            base = _resolve(node.args[0], aliases)
            head = base and f"{base}.{node.args[1].value}"
        else:
            head = func
        return head and ".".join([head, *reversed(parts)])
    if not isinstance(node, ast.Name):
        return None
    head = aliases.get(node.id, node.id)
    return ".".join([head, *reversed(parts)])


def _category(name: str) -> str | None:
    best = None
    for prefix, cat in MODULES.items():
        if name == prefix or name.startswith(prefix + ".") or (prefix.startswith("os.") and name.startswith(prefix)):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, cat)
    if best:
        return best[1]
    last = name.rsplit(".", 1)[-1]
    if last in ("manual_seed", "seed", "set_rng_state", "get_rng_state"):
        return "seeding"
    if last in TIMING_NAMES:
        return "timing"
    return None


# strings that name something sensitive: reached through a string (getattr, __import__, vars()[...]), the name is
# the only trace in the source
NAMED = {**{prefix: cat for prefix, cat in MODULES.items() if cat in STRING_CATEGORIES and len(prefix) > 4},
         "system": "subprocess", "popen": "subprocess", "Popen": "subprocess", "fork": "subprocess",
         "execv": "subprocess", "execve": "subprocess", "spawnv": "subprocess", "check_output": "subprocess",
         "environ": "env", "getenv": "env", "putenv": "env", "create_connection": "network"}


def _imports(tree: ast.AST) -> dict[str, str]:
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _bindings(tree: ast.AST, aliases: dict[str, str]) -> dict[str, str]:
    """The import aliases plus plain rebindings of a resolvable name (`o = os`, `s = getattr(os, "system")`,
    `m = __import__("socket")`), followed through chains; a call's result (`t0 = time.perf_counter()`) is a
    value, not a name, and is not followed."""
    names = dict(aliases)
    modules = {value.split(".")[0] for value in aliases.values()} | {"__import__", "getattr"}
    assigns = [(t.id, node.value) for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
               and node.value is not None
               for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]
    assigns += [(node.target.id, node.value) for node in ast.walk(tree) if isinstance(node, ast.NamedExpr)]
    for _ in range(4):  # chains of rebindings: a = os; b = a; ...
        changed = False
        for name, value in assigns:
            if isinstance(value, ast.Call) and _resolve(value.func, names) not in (*IMPORTERS, "getattr"):
                continue
            if not isinstance(value, (ast.Name, ast.Attribute, ast.Call)):
                continue
            resolved = _resolve(value, names)
            if resolved and resolved != name and names.get(name) != resolved and (
                    resolved.split(".")[0] in modules or _category(resolved)):
                names[name], changed = resolved, True
        if not changed:
            break
    return names


def _starred(tree: ast.AST) -> list[str]:
    """Modules imported with `from m import *` (their names come unqualified)."""
    return [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
            and any(a.name == "*" for a in n.names)]


def _own_parts(stmt: ast.stmt) -> tuple[str, list[ast.AST]]:
    """The header of a statement (what is its own, without nested statements) as text and nodes."""
    if isinstance(stmt, (ast.If, ast.While)):
        return f"{type(stmt).__name__.lower()} {ast.unparse(stmt.test)}", [stmt.test]
    if isinstance(stmt, (ast.For, ast.AsyncFor)):
        return f"for {ast.unparse(stmt.target)} in {ast.unparse(stmt.iter)}", [stmt.target, stmt.iter]
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return "with " + ", ".join(ast.unparse(i) for i in stmt.items), list(stmt.items)
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        nodes = list(stmt.decorator_list) + (list(stmt.bases) if isinstance(stmt, ast.ClassDef) else [stmt.args])
        return f"def {stmt.name}(...)", nodes
    if isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
        return "try", [h.type for h in stmt.handlers if h.type is not None]
    return ast.unparse(stmt), [stmt]


def _statements(tree: ast.AST) -> Iterable[ast.stmt]:
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt):
            yield node


def _nodes(parts: list[ast.AST]) -> Iterable[ast.AST]:
    for part in parts:
        yield from ast.walk(part)


def signatures(source: str) -> Counter:
    """(category, statement) pairs of everything sensitive in `source`; unparsable source gives one 'syntax' pair."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return Counter({("syntax", f"does not parse: {e.msg} (line {e.lineno})"): 1})
    imported = _imports(tree)
    aliases = _bindings(tree, imported)
    starred = _starred(tree)
    found: Counter = Counter()
    for stmt in _statements(tree):
        text, parts = _own_parts(stmt)
        text = " ".join(text.split())
        if len(text) > 160:
            text = text[:157] + "..."
        cats: set[str] = set()
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names = [a.name if isinstance(stmt, ast.Import) else f"{stmt.module}.{a.name}" for a in stmt.names]
            cats |= {c for c in map(_category, names) if c}
            if any(a.name == "*" for a in stmt.names):
                cats.add("dynamic-code")  # every name of the module, unqualified (each use is resolved below)
        if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = stmt.targets if isinstance(stmt, (ast.Assign, ast.Delete)) else [stmt.target]
            for t in targets:
                base = t.value if isinstance(t, (ast.Attribute, ast.Subscript)) else None
                base_name = _resolve(base, aliases) if base is not None else None
                if isinstance(t, ast.Attribute) and base_name and base_name.split(".")[0] in set(imported.values()) | {"sys", "os", "builtins"}:
                    cats.add("monkeypatch")  # rebinding an attribute of a module: time.perf_counter = ...
                    cats.add(_category(f"{base_name}.{t.attr}") or "monkeypatch")
        for node in _nodes(parts):
            if isinstance(node, ast.Call):
                name = _resolve(node.func, aliases)
                if name in IMPORTERS or name == "getattr":  # what it reaches, by the name given as a string
                    cats.add(_category(_resolve(node, aliases) or "") or "dynamic-code")
                if name == "setattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                    base = _resolve(node.args[0], aliases)
                    if base and base.split(".")[0] in set(imported.values()) | {"sys", "os", "builtins"}:
                        cats |= {"monkeypatch", _category(f"{base}.{node.args[1].value}") or "monkeypatch"}
            if isinstance(node, (ast.Attribute, ast.Name)):
                name = _resolve(node, aliases)
                if name:
                    cat = _category(name) if (isinstance(node, ast.Attribute) or node.id in aliases) else None
                    if cat:
                        cats.add(cat)
                if isinstance(node, ast.Name) and node.id not in aliases and node.id not in BUILTINS:
                    cats |= {c for c in (_category(f"{m}.{node.id}") for m in starred) if c}
                if isinstance(node, ast.Name) and node.id in BUILTINS and node.id not in aliases:
                    cats.add(BUILTINS[node.id])
                if isinstance(node, ast.Name) and node.id in ("__builtins__", "__loader__", "__spec__"):
                    cats.add("dynamic-code")
                if isinstance(node, ast.Attribute) and node.attr in FILE_METHODS:
                    cats.add("file-io")
                if isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr not in ("__init__", "__name__"):
                    cats.add("dynamic-code")
            elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
                value = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
                if isinstance(node.value, str) and NAMED.get(value):  # a sensitive name spelled as a string
                    cats.add(NAMED[value])
                if len(value) > EMBEDDED_BYTES:
                    cats.add("embedded-data")
                    text = f"{len(value)}-byte literal: {text[:60]}..."
                elif SUSPICIOUS_STRINGS.search(value):
                    cats.add("suspicious-string")
        for cat in cats:
            found[(cat, text)] += 1
    return found


def literals(source: str | None) -> Counter:
    """The literal values of `source` (strings, bytes, numbers), counted; an unparsable source has none."""
    try:
        tree = ast.parse(source or "")
    except SyntaxError:
        return Counter()
    return Counter((type(n.value), n.value) for n in ast.walk(tree)
                   if isinstance(n, ast.Constant) and isinstance(n.value, (str, bytes, int, float, complex)))


def _payload(value) -> int:
    """How many bytes of data a literal can carry."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogateescape"))
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, int):
        return max(1, (abs(value).bit_length() + 7) // 8)
    return 8


def inspect_change(before: dict[str, str | None], after: dict[str, str | None]) -> list[str]:
    """Flags for a change: `before`/`after` map each changed path to its text (None: absent in that version).

    Each flag reads "category: path: statement"; sorted, at most a few per category."""
    flags: list[str] = []
    payload: dict[str, int] = {}
    for path in sorted(after):
        new, old = after[path], before.get(path)
        if new is None:
            continue
        if not path.endswith(".py"):
            flags.append(f"data-file: {path}: a non-Python file is added or changed ({len(new)} bytes)")
            continue
        added_literals = literals(new) - literals(old)
        payload[path] = sum(_payload(value) * n for (_, value), n in added_literals.items())
        added = signatures(new) - signatures(old or "")
        per_cat: Counter = Counter()
        for (cat, text), _ in sorted(added.items()):
            per_cat[cat] += 1
            if per_cat[cat] <= 3:
                flags.append(f"{cat}: {path}: {text}")
        for cat, n in per_cat.items():
            if n > 3:
                flags.append(f"{cat}: {path}: ... and {n - 3} more")
    if sum(payload.values()) > LITERAL_PAYLOAD_BYTES:
        flags.append(f"literal-payload: {', '.join(p for p, n in payload.items() if n)}: {sum(payload.values())} "
                     f"bytes of new literals in this change (limit {LITERAL_PAYLOAD_BYTES})")
    return flags


# --- copies of the held-out data -------------------------------------------------------------------------

SHINGLE = 64


class Shingles:
    """All SHINGLE-byte substrings of a split, for finding copies of it (a few MB for a 70 KB split)."""

    def __init__(self, data: bytes):
        self.set = {data[i:i + SHINGLE] for i in range(0, max(0, len(data) - SHINGLE + 1))}
        self.common = Counter(data).most_common(1)[0][0] if data else 0  # for guessing a single-byte XOR key

    def matches(self, blob: bytes, stride: int = 16) -> tuple[int, int]:
        """(matching windows, windows) over blob at the stride."""
        windows = range(0, max(0, len(blob) - SHINGLE + 1), stride)
        return sum(blob[i:i + SHINGLE] in self.set for i in windows), len(windows)


def _decodings(blob: bytes) -> Iterable[bytes]:
    yield blob
    compact = re.sub(rb"\s+", b"", blob)
    decoded = []
    for dec in (base64.b64decode, base64.b85decode, base64.a85decode, base64.b32decode, binascii.unhexlify):
        try:
            decoded.append(dec(compact))
        except (ValueError, binascii.Error, TypeError):
            pass
    for d in [blob, *decoded]:
        yield d
        for unpack in (zlib.decompress, gzip.decompress, lzma.decompress, bz2.decompress):
            try:
                yield unpack(d)
            except Exception:  # noqa: BLE001 - any failure means "not this encoding"
                pass


def _xored(blob: bytes, splits: dict[str, Shingles]) -> Iterable[bytes]:
    """blob, then blob under the single-byte XOR keys that would turn its commonest bytes into a split's."""
    yield blob
    keys = {b ^ sh.common for b, _ in Counter(blob).most_common(3) for sh in splits.values()} - {0}
    for key in sorted(keys):
        yield blob.translate(bytes(i ^ key for i in range(256)))


ENCODED = (re.compile(rb"[0-9A-Fa-f\s]+"), re.compile(rb"[A-Za-z0-9+/=\s]+"))  # hex, base64
JOINED_MIN = 16  # literals at least this long, all in one encoding's alphabet, are also decoded joined


def _blobs(text: str) -> Iterable[bytes]:
    yield text.encode("utf-8", "surrogateescape")
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return
    values = [(node.lineno, node.col_offset,
               node.value if isinstance(node.value, bytes) else node.value.encode("utf-8", "surrogateescape"))
              for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes))]
    values.sort(key=lambda v: v[:2])
    yield from (v for _, _, v in values if len(v) >= SHINGLE)
    for alphabet in ENCODED:  # a payload cut into pieces: decoded as one
        yield b"".join(v for _, _, v in values if len(v) >= JOINED_MIN and alphabet.fullmatch(v))


def data_overlap(files: dict[str, str | bytes], splits: dict[str, Shingles], min_fraction: float = 0.2,
                 min_windows: int = 8) -> list[str]:
    """Flags for changed files that contain (a copy of) a held-out split, plain or encoded."""
    flags = []
    for path, content in sorted(files.items()):
        blobs = [content] if isinstance(content, bytes) else list(_blobs(content))
        hit = None
        candidates = (x for blob in blobs for decoded in _decodings(blob) for x in _xored(decoded, splits))
        for candidate in candidates:
            for name, sh in splits.items():
                n, total = sh.matches(candidate)
                if n >= min_windows and n >= min_fraction * total:
                    hit = (name, n, total)
                    break
            if hit:
                break
        if hit:
            flags.append(f"{hit[0]}-data: {path}: holds a copy of the {hit[0]} split "
                         f"({hit[1]} of {hit[2]} {SHINGLE}-byte windows match)")
    return flags


# --- bounded: the inspection of one change runs in a child process ---------------------------------------

INSPECT_SECONDS = 60.0  # wall and CPU seconds the inspection of one change may take
INSPECT_MEMORY_BYTES = 2 << 30  # address space of the inspecting process


class InspectionError(RuntimeError):
    """The inspection of a change could not finish within its limits (depth, time or memory)."""


def inspect_all(before: dict[str, str | None], after: dict[str, str | None], files: dict[str, str | bytes],
                splits: dict[str, str]) -> list[str]:
    """Every flag of a change (inspect_change, then data_overlap against the split files named in `splits`)."""
    held = {name: Shingles(Path(path).read_bytes()) for name, path in splits.items()}
    return inspect_change(before, after) + data_overlap(files, held)


def inspect_bounded(before: dict[str, str | None], after: dict[str, str | None], files: dict[str, str | bytes],
                    splits: dict[str, str], seconds: float = INSPECT_SECONDS,
                    memory: int = INSPECT_MEMORY_BYTES) -> list[str]:
    """inspect_all in a child process held to `seconds` (wall and CPU) and `memory` bytes, with Python's own
    recursion limit: whatever the candidate's code does to the parser or the walk (nesting, size), this returns
    the flags or raises InspectionError saying which limit it met."""
    request = json.dumps({"before": before, "after": after, "splits": splits,
                          "files": {p: (c if isinstance(c, str) else {"b64": base64.b64encode(c).decode()})
                                    for p, c in files.items()}})

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(seconds) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONHASHSEED": "0",
           "LANG": "C.UTF-8"}
    try:
        proc = subprocess.run([sys.executable, "-m", "runner.inspect"], input=request.encode("utf-8", "surrogatepass"),
                              capture_output=True, timeout=seconds, env=env, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        raise InspectionError(f"it took longer than {seconds:g} s") from None
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        answer = None
    if proc.returncode == 0 and isinstance(answer, dict) and isinstance(answer.get("flags"), list):
        return [str(f) for f in answer["flags"]]
    said = answer.get("error") if isinstance(answer, dict) else None
    if said:
        raise InspectionError(said)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() else -proc.returncode
        raise InspectionError(f"the inspecting process was killed by {name} (CPU {seconds:g} s, memory "
                              f"{memory >> 20} MiB)")
    last = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
    raise InspectionError(f"the inspecting process exited {proc.returncode}: {last[0][:200]}")


def _serve_one() -> None:
    """`python -m runner.inspect`: one request (JSON on stdin) -> {"flags": [...]} or {"error": why} on stdout."""
    request = json.loads(sys.stdin.buffer.read().decode("utf-8", "surrogatepass"))
    files = {p: (base64.b64decode(c["b64"]) if isinstance(c, dict) else c) for p, c in request["files"].items()}
    try:
        flags = inspect_all(request["before"], request["after"], files, request["splits"])
    except RecursionError:
        answer = {"error": f"the code nests deeper than Python's recursion limit ({sys.getrecursionlimit()})"}
    except MemoryError:
        answer = {"error": "it needs more memory than the inspection may use"}
    else:
        answer = {"flags": flags}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    _serve_one()

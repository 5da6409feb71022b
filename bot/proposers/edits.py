"""The LLM's answer format: a hypothesis and SEARCH/REPLACE edits (the aider/OpenEvolve convention).

Plain text, always accepted:

    Hypothesis: one line saying what the change tests
    Rationale: optional, one or more lines
    target/train.py
    <<<<<<< SEARCH
    the old lines, exactly as in the file
    =======
    the new lines
    >>>>>>> REPLACE

or, with structured output, JSON: {"hypothesis": ..., "rationale": ..., "edits": [{"path", "search", "replace"}]}.
Every error message here is sent back to the model verbatim, so it says exactly what is wrong and how to fix it.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase


class EditError(ValueError):
    """An answer that cannot be used; `stage` names the cascade step that refused it."""

    stage = "parse"


class ParseError(EditError):
    stage = "parse"


class ApplyError(EditError):
    stage = "apply"


class PathError(EditError):
    stage = "paths"


class CompileError(EditError):
    stage = "compile"


@dataclass
class Edit:
    path: str
    search: str
    replace: str


@dataclass
class Answer:
    hypothesis: str
    rationale: str = ""
    edits: list[Edit] = field(default_factory=list)


SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$")
DIVIDER = re.compile(r"^\s*={5,9}\s*$")
REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$")
HYPOTHESIS = re.compile(r"^[\s*#_>-]*hypothesis[\s*_]*:[\s*_]*(.*)$", re.IGNORECASE)
RATIONALE = re.compile(r"^[\s*#_>-]*rationale[\s*_]*:[\s*_]*", re.IGNORECASE)
FENCE = re.compile(r"^\s*```")
JSON_FENCE = re.compile(r"^```(?:json)?[ \t]*\n(.*)\n```$", re.DOTALL)
THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
MAX_HYPOTHESIS = 200

FORMAT = """\
Answer in exactly this format (plain text):

Hypothesis: <one line: the change and the effect on the metric you expect>
Rationale: <a few sentences: why it should help within the fixed time budget>
<path of the file to edit, on its own line>
<<<<<<< SEARCH
<lines copied exactly from the current file, including indentation>
=======
<the new lines>
>>>>>>> REPLACE

Use one SEARCH/REPLACE block per change (several blocks may follow each other, each preceded by its path).
Each SEARCH must match exactly one place in the file: copy enough surrounding lines to make it unique.
Edit only the files listed as editable. Make one focused change per answer."""


def parse_answer(text: str) -> Answer:
    """Read a plain-text or JSON answer; raise ParseError saying what is missing."""
    text = THINK.sub("", text or "").strip()
    if not text:
        raise ParseError("the answer is empty; " + _expect())
    fenced = JSON_FENCE.match(text)
    body = fenced.group(1).strip() if fenced else text
    if body.startswith("{"):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return _from_json(data)
    return _from_text(text)


def _expect() -> str:
    return "start with a line 'Hypothesis: ...' followed by SEARCH/REPLACE blocks, each preceded by its file path"


def _from_json(data: dict) -> Answer:
    hypothesis = str(data.get("hypothesis") or "").strip()
    if not hypothesis:
        raise ParseError("the JSON answer has no 'hypothesis'")
    edits = []
    for i, e in enumerate(data.get("edits") or [], 1):
        if not isinstance(e, dict) or not isinstance(e.get("path"), str) or not isinstance(e.get("replace"), str):
            raise ParseError(f"edit {i} of the JSON answer needs string fields path, search and replace")
        edits.append(Edit(e["path"].strip(), str(e.get("search") or ""), e["replace"]))  # exact strings
    if not edits:
        raise ParseError("the JSON answer has no edits")
    return Answer(_one_line(hypothesis), str(data.get("rationale") or "").strip(), edits)


def _one_line(s: str) -> str:
    s = " ".join(s.split())
    return s if len(s) <= MAX_HYPOTHESIS else s[: MAX_HYPOTHESIS - 3] + "..."


def _from_text(text: str) -> Answer:
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if HYPOTHESIS.match(ln)), None)
    if start is None:
        raise ParseError("the answer has no 'Hypothesis: ...' line; " + _expect())
    hypothesis = HYPOTHESIS.match(lines[start]).group(1).strip().strip("*_ ")
    if not hypothesis:
        raise ParseError("the 'Hypothesis:' line is empty; say in one line what the change tests")
    edits: list[Edit] = []
    rationale: list[str] = []
    pending: list[str] = []  # lines since the last block: the rationale, then the next block's path
    i = start + 1
    while i < len(lines):
        line = lines[i]
        if not SEARCH.match(line):
            if DIVIDER.match(line) or REPLACE.match(line):
                raise ParseError(f"line {i + 1}: '{line.strip()}' without an opening '<<<<<<< SEARCH'")
            pending.append(line)
            i += 1
            continue
        n = len(edits) + 1
        candidates = [ln for ln in pending if ln.strip() and not FENCE.match(ln)]
        if not candidates:
            raise ParseError(f"SEARCH block {n} has no file path on the line before '<<<<<<< SEARCH'")
        path = _path(candidates[-1], n)
        if not edits:
            rationale = [ln for ln in pending[: _last_index(pending, candidates[-1])] if not FENCE.match(ln)]
        search, i = _collect(lines, i + 1, DIVIDER, n, "=======")
        replace, i = _collect(lines, i, REPLACE, n, ">>>>>>> REPLACE")
        edits.append(Edit(path, _join(search), _join(replace)))
        pending = []
    if not edits:
        raise ParseError("the answer has no SEARCH/REPLACE blocks; " + _expect())
    text_rationale = "\n".join(rationale).strip()
    text_rationale = RATIONALE.sub("", text_rationale, count=1).strip()
    return Answer(_one_line(hypothesis), text_rationale, edits)


def _last_index(items: list[str], item: str) -> int:
    return len(items) - 1 - items[::-1].index(item)


def _path(line: str, n: int) -> str:
    p = line.strip()
    p = re.sub(r"^(#+\s*|[-*]\s+|(file|path)\s*:\s*)", "", p, flags=re.IGNORECASE).strip()
    p = p.strip("`*_'\" ").rstrip(":").strip("`*_'\" ")
    if not p or any(c.isspace() for c in p):
        raise ParseError(
            f"SEARCH block {n}: expected the file path on its own line before '<<<<<<< SEARCH', got {line.strip()!r}"
        )
    return p


def _collect(lines: list[str], i: int, end: re.Pattern, n: int, marker: str) -> tuple[list[str], int]:
    out = []
    while i < len(lines):
        if end.match(lines[i]):
            return out, i + 1
        if SEARCH.match(lines[i]) or (end is DIVIDER and REPLACE.match(lines[i])):
            break
        out.append(lines[i])
        i += 1
    raise ParseError(f"SEARCH block {n} is not closed: expected a line '{marker}'")


def _join(lines: list[str]) -> str:
    return "".join(ln + "\n" for ln in lines)


# --- checks and application ---------------------------------------------------------------------
def check_paths(edits: list[Edit], allowed: list[str]) -> None:
    for e in edits:
        while e.path.startswith("./"):
            e.path = e.path[2:]
        if e.path.startswith("/") or ".." in e.path.split("/") or posixpath.normpath(e.path) != e.path:
            raise PathError(f"{e.path!r} is not a plain relative path inside the repository; allowed: {', '.join(allowed)}")
        if not any(fnmatchcase(e.path, pattern) for pattern in allowed):
            raise PathError(f"{e.path} may not be edited; only these paths may: {', '.join(allowed)}")


def apply_edits(files: dict[str, str], edits: list[Edit]) -> dict[str, str]:
    """The new text of every file the edits touch, applied in order; each SEARCH must match exactly once."""
    out: dict[str, str] = {}
    for n, e in enumerate(edits, 1):
        current = out.get(e.path, files.get(e.path))
        if current is None:
            if e.search.strip():
                raise ApplyError(f"SEARCH block {n}: {e.path} does not exist; edit one of: {', '.join(files)}")
            out[e.path] = e.replace  # an empty SEARCH creates a new file
            continue
        if not e.search.strip():
            raise ApplyError(f"SEARCH block {n} for {e.path} is empty; copy the lines to replace from the file")
        count = current.count(e.search)
        if count == 0 and not current.endswith("\n") and current.endswith(e.search[:-1]):
            current, count = current + "\n", 1
        if count == 0:
            raise ApplyError(f"SEARCH block {n} for {e.path} does not match the file exactly{_closest(current, e.search)}. "
                             "Copy the lines exactly as they are in the file, including indentation and blank lines.")
        if count > 1:
            at = _line_numbers(current, e.search)
            raise ApplyError(f"SEARCH block {n} for {e.path} matches {count} places (lines {', '.join(map(str, at))}); "
                             "include more surrounding lines so that it matches exactly one place")
        out[e.path] = current.replace(e.search, e.replace, 1)
    return out


def _line_numbers(text: str, needle: str) -> list[int]:
    at, start = [], 0
    while (k := text.find(needle, start)) >= 0:
        at.append(text.count("\n", 0, k) + 1)
        start = k + 1
    return at


def _closest(text: str, search: str) -> str:
    """Where the SEARCH's first line is (ignoring whitespace), so the model sees what it got wrong."""
    first = next((ln.strip() for ln in search.splitlines() if ln.strip()), "")
    if not first:
        return ""
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip() == first:
            return f" (its first line resembles line {i}: {line!r}, but the block as a whole differs)"
    return f" (no line of the file reads {first!r})"


def check_compiles(files: dict[str, str]) -> None:
    for path, text in files.items():
        if not path.endswith(".py"):
            continue
        try:
            compile(text, path, "exec", dont_inherit=True)
        except SyntaxError as e:
            where = f"{path}:{e.lineno}" if e.lineno else path
            code = f"\n    {e.text.rstrip()}" if e.text else ""
            raise CompileError(f"{where}: {type(e).__name__}: {e.msg}{code}") from e
        except ValueError as e:  # e.g. null bytes
            raise CompileError(f"{path}: {e}") from e

"""Knobs: the plain top-level numeric constants of the training script, found and edited in place with `ast`."""

from __future__ import annotations

import ast
from dataclasses import dataclass


@dataclass(frozen=True)
class Knob:
    name: str
    value: int | float
    line: int  # 1-based
    col: int
    end_col: int


def find_knobs(source: str) -> list[Knob]:
    """Top-level `NAME = <int or float literal>` assignments with UPPER_CASE names, in file order."""
    knobs = []
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name, value = node.targets[0].id, node.value
        if not name.isupper() or not isinstance(value, ast.Constant) or node.lineno != value.end_lineno:
            continue
        if isinstance(value.value, (int, float)) and not isinstance(value.value, bool):
            knobs.append(Knob(name, value.value, value.lineno, value.col_offset, value.end_col_offset))
    return knobs


def format_value(value: int | float) -> str:
    return str(value) if isinstance(value, int) else format(value, ".3g")


def set_knobs(source: str, changes: dict[str, int | float]) -> str:
    """Return source with each named knob's literal replaced; comments and layout stay as they were."""
    knobs = {k.name: k for k in find_knobs(source)}
    unknown = sorted(set(changes) - set(knobs))
    if unknown:
        raise KeyError(f"no such knob(s): {', '.join(unknown)}; knobs are {', '.join(knobs)}")
    lines = source.splitlines(keepends=True)
    for name, value in changes.items():
        k = knobs[name]
        line = lines[k.line - 1]
        # ast offsets are in UTF-8 bytes; knob lines are ASCII up to the literal, so they equal str offsets.
        lines[k.line - 1] = line[: k.col] + format_value(value) + line[k.end_col :]
    return "".join(lines)

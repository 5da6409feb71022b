"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and each one catches a reverse import."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "runner", "evaluator")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the packages under root (PYTHONPATH puts them before the editable install)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", "--no-logo"],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True,
    )


def test_import_contracts_hold():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path, added", [
    ("runner/guard.py", "bot.cli"),  # runner below bot
    ("evaluator/data.py", "runner.guard"),  # evaluator self-contained
    ("runner/guard.py", "evaluator.data"),  # runner never imports the evaluator
    ("bot/core/records.py", "bot.core.policy"),  # records is the bottom layer of bot
])
def test_contracts_catch_a_reverse_import(tmp_path, path, added):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    lines = (tmp_path / path).read_text().splitlines() + [f"import {added}"]
    (tmp_path / path).write_text("\n".join(lines) + "\n")

    proc = lint_imports(tmp_path)
    importer = path.removesuffix(".py").replace("/", ".")
    # the line number proves the copy was checked, not the installed package
    assert f"{importer} -> {added} (l.{len(lines)})" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode != 0

"""The size guideline, enforced: modules of one concern stay readable only while they stay small.

No module of the package over 600 lines, no function over 80 lines. A failure names every offender;
split by concern (see the README's layout) rather than raising the limits.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kloros_orchestrator

PACKAGE = Path(kloros_orchestrator.__file__).parent
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_package_has_sources() -> None:
    assert len(_sources()) > 40


def test_no_module_over_600_lines() -> None:
    big = [
        f"{p.relative_to(PACKAGE.parent)}: {n} lines"
        for p in _sources()
        if (n := p.read_text().count("\n")) > MAX_FILE_LINES
    ]
    assert not big, "modules over the size guideline:\n" + "\n".join(big)


def test_no_function_over_80_lines() -> None:
    long: list[str] = []
    for p in _sources():
        for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}() {length} lines")
    assert not long, "functions over the size guideline:\n" + "\n".join(long)

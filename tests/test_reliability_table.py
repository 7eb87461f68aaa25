"""docs/reliability.md's fault table lists exactly the fault cases the reliability tests run.

    python tests/test_reliability_table.py      # prints the table for docs/reliability.md

A case is registered by `row(id, fault, result)` in a test module, as a pytest id at import or
as a call inside the test function (found here by reading the module's syntax tree).
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
MODULES = ("test_reliability_config", "test_reliability_rundir", "test_reliability_process")
DOC = HERE.parent / "docs" / "reliability.md"


def collect() -> dict[str, tuple[str, str]]:
    """id -> (fault, result) for every registered case."""
    sys.path.insert(0, str(HERE))
    from _reliability import ROWS

    for name in MODULES:
        importlib.import_module(name)
    found = dict(ROWS)
    for name in MODULES:
        tree = ast.parse((HERE / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "row"
                and len(node.args) == 3
                and all(isinstance(a, ast.Constant) for a in node.args)
            ):
                case_id, fault, result = (a.value for a in node.args)
                found.setdefault(case_id, (fault, result))
    return found


def markdown_table(rows: dict[str, tuple[str, str]]) -> str:
    lines = ["| id | fault or bad input | result |", "|---|---|---|"]
    lines += [f"| `{k}` | {f.replace('|', '/')} | {r.replace('|', '/')} |" for k, (f, r) in
              rows.items()]  # fmt: skip
    return "\n".join(lines)


def test_the_document_lists_every_case_and_only_cases():
    rows = collect()
    assert len(rows) >= 100
    documented = re.findall(r"^\| `([^`]+)` \|", DOC.read_text(), flags=re.M)
    assert len(documented) == len(set(documented))
    assert sorted(documented) == sorted(rows)
    assert f"{len(rows)} kinds" in DOC.read_text()


if __name__ == "__main__":
    table = collect()
    print(f"{len(table)} kinds\n")
    print(markdown_table(table))

"""The docs tables are the code's: presets and parts in docs/methods.md equal the registry, and
docs/anchors.md has a row for every preset, part and advantage estimator."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from entropy_dynamics import advantages, methods

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| `")
    ]


def test_presets_table_equals_the_specs():
    rows = {
        r[0].strip("`"): r[1].strip("`")
        for r in _rows((DOCS / "methods.md").read_text())
        if len(r) == 3 and r[1].startswith("`")  # | preset | `spec` | paper |
    }
    for name in methods.names("preset"):
        assert rows.get(name) == methods.build(name).spec, name


def test_parts_table_equals_the_defaults():
    rows = {
        r[0].strip("`"): (r[1], r[2].strip("`"))
        for r in _rows((DOCS / "methods.md").read_text())
        if len(r) == 4 and r[1] in methods.registry.KINDS
    }
    parts = [n for n in methods.names() if methods.registry.is_part(n)]
    assert sorted(rows) == parts
    for name in parts:
        cls = methods.get_part(name)
        fields = [f for f in dataclasses.fields(cls) if f.init]
        want = ", ".join(f"{f.name}={f.default!r}" for f in fields) or "none"
        assert rows[name] == (cls.kind, want), name


def test_anchors_table_lists_every_method_and_estimator():
    text = (DOCS / "anchors.md").read_text()
    named = set(re.findall(r"`(\w+)", text))
    for name in [*methods.names(), *advantages.names()]:
        assert name in named or f"{name}_advantages" in named, name

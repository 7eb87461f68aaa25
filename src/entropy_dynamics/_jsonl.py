"""Reading JSONL files (one JSON object per line): the one reader of the project."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: str | Path, *, strict: bool = False, notes: list[str] | None = None) -> list:
    """The JSON objects of ``path``, one per line, in order; blank lines are ignored.

    A missing file gives ``[]``. A line that is not a JSON object (a torn tail, a list) is
    skipped, or with ``strict`` raises ValueError naming ``path:line``; ``notes``, when given,
    receives one line saying how many were skipped.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records, skipped = [], 0
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if strict:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
            skipped += 1
            continue
        if not isinstance(record, dict):
            if strict:
                raise ValueError(
                    f"{path}:{line_no}: each line must be a JSON object, "
                    f"got {type(record).__name__}"
                )
            skipped += 1
            continue
        records.append(record)
    if skipped and notes is not None:
        notes.append(f"{path.name}: skipped {skipped} line(s) that are not JSON objects")
    return records

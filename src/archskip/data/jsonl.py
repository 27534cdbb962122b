"""The one reader of JSON record files: JSON Lines, or a JSON array (also under a .json name)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError
from .files import read_text


def json_records(path: str | Path, text: str | None = None, encoding: str = "utf-8") -> Iterator[tuple[str, dict]]:
    """(where, record) for every object in `path` (or in `text`, already read from it); `where` ("<path>, line N"
    or "<path>, item N") is what error messages about that record start with. Blank lines are skipped; anything
    but objects is a DataError."""
    path = Path(path)
    if text is None:
        text = read_text(path, encoding)
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        numbered = ((f"{path}, item {i}", row) for i, row in enumerate(rows))
    else:
        numbered = ((f"{path}, line {n}", _parse_line(line, path, n))
                    for n, line in enumerate(text.splitlines(), start=1) if line.strip())
    for where, row in numbered:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def _parse_line(line: str, path: Path, n: int):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {n}: not valid JSON ({e.msg})") from None

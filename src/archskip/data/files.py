"""Decoding a data file: the one place that knows about encodings and byte-order marks."""

from __future__ import annotations

import codecs
from pathlib import Path

from ..errors import DataError


def read_text(path: str | Path, encoding: str = "utf-8", setting: str = "--data.encoding") -> str:
    """The whole text of a data file. UTF-8 with or without a byte-order mark is read; bytes that are not valid
    in `encoding` are refused naming the offset and `setting`, the option that reads another encoding."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    data = path.read_bytes()
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        return data.decode(codec)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: byte 0x{data[e.start]:02x} at offset {e.start} (line {line}) is not valid {encoding} text; if the "
            f"file is in another encoding, name it with {setting} (e.g. latin-1 or cp1252)") from None

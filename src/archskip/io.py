"""Atomic file writes: a crash mid-write leaves the previous good file, never half a file."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import OutputError


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` then rename the temporary file over `path` (same directory, so atomic)."""
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())  # mkstemp makes the file 0600; a plain open() would honour the umask
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if e.errno == errno.ENOSPC:
            raise OutputError(f"no space left on the device while writing {str(path)!r}; the previous file is kept") from e
        raise
    except BaseException:
        _remove(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def ensure_dir(path: str | Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output directory {str(path)!r}: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"output directory {str(path)!r} is not writable")
    return path


def check_writable(path: str | Path) -> Path:
    """Fail fast, creating nothing: `path` is a directory archskip could create and write (its nearest existing
    ancestor is a writable directory)."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot create output directory {str(path)!r}: {str(probe)!r} is not a directory")
    if not os.access(probe, os.W_OK):
        raise OutputError(f"output directory {str(path)!r} is not writable ({str(probe)!r} is read-only)")
    return path


def _umask_mode() -> int:
    """The mode `open(path, "w")` gives a new file under the current umask (0644 under the usual 022)."""
    mask = os.umask(0o022)  # (reading the umask means setting it; it is put back at once)
    os.umask(mask)
    return 0o666 & ~mask


def _remove(p: str) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass

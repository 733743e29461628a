"""Files that appear whole or not at all, with the mode any file the user writes gets."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable


def write_temporary(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """A new file beside `path` (a dot file ending .tmp, for the caller to move to `path`) holding
    what `write` writes to it; its folder is made if missing. Removed again if `write` fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp, which makes the file 0600: created with 0666, the kernel applies the umask (and
    # a folder's default ACL) itself, without reading os.umask, which only a racy set-and-restore can.
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write `path` with `write`: beside it first, then renamed, so it is never seen half written."""
    temporary = write_temporary(path, write)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path

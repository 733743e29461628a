"""The files of a state folder as the store handles them: removed without raising (a cleanup must
never fail the job it cleans up after), sized, listed, and told apart from what a crash leaves."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("panosync.server")


def remove_file(path: Path) -> int | None:
    """Remove `path`; the bytes it freed, or None when it was not there or could not be removed."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("could not remove %s: %s", path, error)
        return None
    return size


def file_size(path: Path) -> int:
    """The size of `path`; 0 when it is not there (a missing output frees nothing)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def files_in(folder: Path) -> list[os.DirEntry]:
    """The plain files of `folder` (not links, not folders); [] when it is not there."""
    try:
        with os.scandir(folder) as entries:
            return [entry for entry in entries if entry.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def is_leftover(name: str) -> bool:
    """A file an atomic write or a health probe left behind when the server stopped in the middle."""
    return name.startswith(".") and (name.endswith(".tmp") or name.startswith(".probe-"))

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


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None] | bytes | str) -> Path:
    """Write `path` with `write` (a function of the open file, or the bytes or text to write):
    beside it first, then renamed, so it is never seen half written."""
    path = Path(path)
    if isinstance(write, (bytes, str)):
        data = write.encode() if isinstance(write, str) else write
        write = lambda file: file.write(data)  # noqa: E731
    temporary = write_temporary(path, write)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def check_writable(path: str | Path, option: str) -> None:
    """A ValueError with one sentence when a file cannot be written at `path` (named by `option`,
    e.g. --out): it is a folder or another file that is not a regular one (a device such as
    /dev/null, a pipe, a socket, which the new file would replace), or its folder cannot be made or
    written (check_folder)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder: give a file name, e.g. {path / 'panorama.png'}.")
    if path.exists() and not path.is_file():
        raise ValueError(f"{option} {path} is a device, pipe or socket, not a file: give a file name, e.g. "
                         f"panorama.png.")
    if path.is_symlink() and not path.exists():  # the new file would replace the link, not write where it points
        raise ValueError(f"{option} {path} is a link to {os.readlink(path)}, which does not exist: give the file "
                         f"name itself.")
    check_folder(path.parent, f"The folder of {option}")


def check_folder(path: str | Path, option: str) -> Path:
    """The folder `path`, or a ValueError with one sentence when it is a file or could not be made
    or written (`option` names it for the user). A missing folder is not made, only its nearest
    existing parent probed: a refused run leaves nothing behind."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file: give a folder (it is made when missing).")
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        raise ValueError(f"{option} {path} cannot be made: {existing} is a file.")
    try:
        probe = write_temporary(existing / "probe", lambda file: None)
        probe.unlink()
    except OSError as error:
        raise ValueError(f"{option} {path} cannot be made or written ({error.strerror or error}): give a folder this "
                         f"user may write to.") from None
    return path

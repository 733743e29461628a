"""An output folder is written by one batch at a time: the batch holds a lock file in it, naming
its process and host, created atomically (O_EXCL), removed when the batch ends, and taken over
when its owner is a process of this host that is gone (killed, the machine restarted)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

LOCK = ".panosync-batch.lock"
# A lock file that says no owner (a batch killed between creating it and writing it) is stale once
# this old; younger, its owner may be writing it now.
UNSAID_OWNER_SECONDS = 10.0


class FolderLock:
    """`with FolderLock(folder, option):` holds `folder` for this process, or raises a ValueError
    with one sentence naming the batch that holds it (`option` names the folder's option, --out)."""

    def __init__(self, folder: Path, option: str = "--out"):
        self.path, self.option = Path(folder) / LOCK, option
        self.mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # each round removes one stale lock, or takes the lock, or refuses
            try:
                handle = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                seen = _look(self.path)
                if seen is not None and not _stale(*seen):
                    raise ValueError(self._held(seen[0])) from None
                if seen is not None:
                    _remove_if_unchanged(self.path, seen)
                continue
            except OSError as error:
                raise ValueError(f"{self.option} {self.path.parent} cannot be locked for this batch "
                                 f"({error.strerror or error}): give a folder this user may write to.") from None
            with os.fdopen(handle, "w") as file:
                file.write(self.mine)
            return self
        raise ValueError(self._held(None))

    def __exit__(self, *exception) -> None:
        seen = _look(self.path)
        if seen is not None and seen[0] == self.mine:  # not another batch's, which took over a lock held too long
            self.path.unlink(missing_ok=True)

    def _held(self, text: str | None) -> str:
        owner = _owner(text) or {}
        pid, host = owner.get("pid", "unknown"), owner.get("host", "an unknown host")
        gone = f" (if no batch is writing there, remove {self.path})"
        return (f"{self.option} {self.path.parent} is being written by another panosync batch (pid {pid} on "
                f"{str(host)[:80]}); wait for it or choose another {self.option}{gone}.")


def _look(path: Path) -> tuple[str, os.stat_result] | None:
    """The lock file's text and status, None when it is gone."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read(4096), os.fstat(file.fileno())
    except FileNotFoundError:
        return None


def _owner(text: str | None) -> dict | None:
    try:
        owner = json.loads(text) if text else None
    except ValueError:
        return None
    if isinstance(owner, dict) and isinstance(owner.get("pid"), int) and isinstance(owner.get("host"), str):
        return owner
    return None


def _stale(text: str, status: os.stat_result) -> bool:
    """Whether the lock's owner is gone: a process of this host that is no more, or no owner said
    for longer than a batch takes to write one."""
    owner = _owner(text)
    if owner is None:
        return time.time() - status.st_mtime > UNSAID_OWNER_SECONDS
    if owner["host"] != socket.gethostname() or owner["pid"] <= 0:
        return False  # another machine's process: only its host can tell
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _remove_if_unchanged(path: Path, seen: tuple[str, os.stat_result]) -> None:
    """Remove the stale lock `seen`, unless another batch took it over since (two batches that find
    the same stale lock: the second must not remove the first's new one). The check and the removal
    happen under an flock of the folder, which every taker holds for them."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the window between look and remove is small
        fcntl = None
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        if fcntl is not None:
            fcntl.flock(folder, fcntl.LOCK_EX)
        now = _look(path)
        if now is not None and now[0] == seen[0] and (now[1].st_ino, now[1].st_mtime_ns) == (seen[1].st_ino,
                                                                                         seen[1].st_mtime_ns):
            path.unlink(missing_ok=True)
    finally:
        os.close(folder)

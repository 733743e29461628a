"""Whether a state folder can take a job's output: it can be written (a real write, into each of its
folders) and has at least the reserve of free space the server keeps. /health reports it, every POST
asks it (a degraded folder answers 507), and the worker holds queued jobs while it is degraded."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

from .retention import DEFAULT_MIN_FREE_BYTES, format_size

HEALTH_CACHE_SECONDS = 1.0  # /health and every POST ask; probing the folder once a second is plenty
FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def full_sentence(state_dir: Path) -> str:
    return (f"The state folder {state_dir} is full: free space there, or start the server with a --state-dir "
            f"on a larger disk.")


class FolderHealth:
    """The health of a state folder `state_dir` and its `outputs`, `conditions` and `images` folders:
    degraded while one cannot be written or the disk has under `min_free_bytes` free. Safe to call
    from any thread."""

    def __init__(self, state_dir: Path, outputs: Path, conditions: Path,
                 min_free_bytes: int = DEFAULT_MIN_FREE_BYTES, images: Path | None = None):
        self.state_dir = state_dir
        self.outputs = outputs
        self.conditions = conditions
        self.images = images
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()
        self._health: dict | None = None
        self._checked = -HEALTH_CACHE_SECONDS

    def check(self) -> dict:
        """{"status": "ok" or "degraded", "reason": None or a sentence, "free_bytes": int or None},
        looked at again at most once a second, as every POST and /health asks."""
        with self._lock:
            if self._health is None or time.monotonic() - self._checked >= HEALTH_CACHE_SECONDS:
                self._health = self._check_now()
                self._checked = time.monotonic()
            return dict(self._health)

    def forget(self) -> None:
        """Look again at the next check (space was freed: the folder may have its reserve back)."""
        with self._lock:
            self._health = None

    def _check_now(self) -> dict:
        try:
            free = shutil.disk_usage(self.state_dir).free
        except OSError as error:
            return _degraded(f"The state folder {self.state_dir} cannot be read ({error.strerror or error}): "
                             f"create it or start the server with another --state-dir.", None)
        made_later = (self.conditions, self.images)  # each made with the first image it keeps
        for folder in (self.state_dir, self.outputs, *(folder for folder in made_later if folder is not None)):
            if folder in made_later and not folder.exists():
                continue
            error = _write_probe(folder)
            if error is not None and error.errno in FULL_ERRNOS:
                return _degraded(full_sentence(self.state_dir), free)
            if error is not None:
                return _degraded(f"The state folder {folder} cannot be written ({error.strerror or error}): make "
                                 f"it writable, or start the server with another --state-dir.", free)
        if free < self.min_free_bytes:
            return _degraded(f"The state folder {self.state_dir} has {format_size(free)} free, under the "
                             f"{format_size(self.min_free_bytes)} this server keeps in reserve: free space there, or "
                             f"start the server with a --state-dir on a larger disk.", free)
        return {"status": "ok", "reason": None, "free_bytes": free}


def _write_probe(folder: Path) -> OSError | None:
    """The error writing a few bytes into `folder` raises, or None when it can be written. A real
    write, not os.access: a full disk, a read-only mount or a quota refuse only writes (and root
    passes every permission check)."""
    probe = folder / f".probe-{uuid.uuid4().hex}"
    try:
        handle = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(handle, b"panosync")
        finally:
            os.close(handle)
    except OSError as error:
        return error
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    return None


def _degraded(reason: str, free_bytes: int | None) -> dict:
    return {"status": "degraded", "reason": reason, "free_bytes": free_bytes}

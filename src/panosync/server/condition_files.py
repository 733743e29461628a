"""The images a state folder keeps for its jobs (ControlSync's conditions; the plain pipelines'
image inputs, in a folder of their own), each kept only while something needs it: a queued,
running or succeeded job that refers to one (the job store says which), or a request that has saved
one and not yet queued its job (a pin, counted per request).

Files are named by their content (uploads.py), so that one image sent by many requests is one file,
and the pins are what stop a job's cleanup from removing a file another request is about to use."""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import PIL.Image

from ..conditions import rgb_image
from .state_files import remove_file
from .uploads import condition_path, write_temporary


class ConditionFiles:
    """The condition images (or image inputs) in `folder`. `referenced(excluding)` gives the file
    names that queued, running and succeeded jobs (but the job `excluding`) refer to; it is asked
    under this object's lock, so it may take the store's lock but must never be called with it
    held. `stored_form` turns an image into the one kept (default: RGB, as conditions are read).
    Every method is safe to call from any thread."""

    def __init__(self, folder: Path, referenced: Callable[[str | None], set[str]],
                 stored_form: Callable[[PIL.Image.Image], PIL.Image.Image] = rgb_image):
        self.folder = folder
        self._referenced = referenced
        self._stored_form = stored_form
        # Held from "does a job need this condition?" to its removal, and while a request saves
        # one: taken before the store's lock, never while holding it.
        self._lock = threading.Lock()
        self._pinned: Counter[str] = Counter()  # conditions saved for requests not yet queued, by name

    def save(self, image: PIL.Image.Image) -> Path:
        """`image` kept in the folder (as uploads.save_condition keeps it: a PNG named by its
        pixels), and pinned there until a job that refers to it is added (`unpin`) or `discard` lets
        it go: a job cancelled between a request saving the same image and queueing its job then
        cannot remove the file.

        The PNG is encoded into a temporary file without the lock (it takes a while for a large
        image, and other requests and the worker need the lock); the lock is held only to move it
        into place and pin it, so that no cleanup removes the file between the two."""
        rgb = self._stored_form(image)
        path = condition_path(rgb, self.folder)
        temporary = None
        try:
            while True:
                if temporary is None and not path.is_file():
                    temporary = write_temporary(rgb, path)
                with self._lock:
                    if temporary is not None:
                        os.replace(temporary, path)  # the same pixels, so the same bytes, if already there
                        temporary = None
                    if path.is_file():  # else a cleanup removed it after we looked: write it after all
                        self._pinned[path.name] += 1
                        return path
        finally:
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)

    def discard(self, paths: Iterable[str | Path]) -> list[Path]:
        """Unpin `paths` (the conditions of a request that was refused) and remove those that no
        queued, running or succeeded job refers to; returns the files removed."""
        paths = list(paths)
        self.unpin(paths)
        return list(self.remove_unreferenced(paths))

    def unpin(self, paths: Iterable[str | Path]) -> None:
        """Let go of one request's pin on each of `paths` (its job now refers to them, or it was refused)."""
        with self._lock:
            for name in {Path(path).name for path in paths}:
                if self._pinned[name] > 1:
                    self._pinned[name] -= 1
                else:
                    self._pinned.pop(name, None)

    def pinned(self) -> set[str]:
        """The file names that requests hold."""
        with self._lock:
            return set(self._pinned)

    def remove_unreferenced(self, paths: Iterable[str | Path], excluding: str | None = None) -> dict[Path, int]:
        """Remove the files of `paths` that no queued, running or succeeded job (but `excluding`)
        refers to and no request holds; {file: bytes freed}. Files are matched by name (their
        content's hash) and only ever removed from this folder."""
        names = {Path(path).name for path in paths}
        names = {name for name in names if name.endswith(".png") and not name.startswith(".")}
        if not names:
            return {}
        removed = {}
        with self._lock:
            needed = self._referenced(excluding) | set(self._pinned)
            for name in sorted(names - needed):
                freed = remove_file(self.folder / name)
                if freed is not None:
                    removed[self.folder / name] = freed
        return removed

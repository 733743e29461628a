"""Panorama PNGs that carry everything needed to make them again, written atomically."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import PIL.Image
import PIL.PngImagePlugin

from . import __version__

KEY = "panosync"


def save_png(image: PIL.Image.Image, path: str | Path, parameters: dict) -> Path:
    """Write `image` to `path` with `parameters` as JSON in the PNG's text chunk "panosync".

    The file appears whole or not at all: it is written beside its destination and renamed. Its
    mode follows the process's umask, like any file the user writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text(KEY, json.dumps({**parameters, "panosync_version": __version__}, sort_keys=True))
    info.add_text("Software", f"panosync {__version__}")
    # Not mkstemp, which makes the file 0600: created with 0666, the kernel applies the umask (and
    # a folder's default ACL) itself, without reading os.umask, which only a racy set-and-restore can.
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            image.save(file, format="PNG", pnginfo=info)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_parameters(path: str | Path) -> dict:
    """The parameters a panosync PNG was made with; a ValueError if it carries none."""
    try:
        with PIL.Image.open(path) as image:
            text = image.text.get(KEY) if hasattr(image, "text") else None
    except (OSError, PIL.UnidentifiedImageError) as error:
        raise ValueError(f"Cannot read {path} as a PNG: {error}.") from None
    if text is None:
        raise ValueError(f"{path} carries no panosync parameters: it was not written by panosync generate.")
    parameters = json.loads(text)
    parameters.pop("panosync_version", None)
    return parameters

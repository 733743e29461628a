"""Panorama PNGs that carry everything needed to make them again, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import PIL.PngImagePlugin

from . import __version__
from .files import write_atomically
from .settings import json_kind

KEY = "panosync"


def save_png(image: PIL.Image.Image, path: str | Path, parameters: dict) -> Path:
    """Write `image` to `path` with `parameters` as JSON in the PNG's text chunk "panosync".

    The file appears whole or not at all: it is written beside its destination and renamed. Its
    mode follows the process's umask, like any file the user writes.
    """
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text(KEY, json.dumps({**parameters, "panosync_version": __version__}, sort_keys=True))
    info.add_text("Software", f"panosync {__version__}")
    return write_atomically(Path(path), lambda file: image.save(file, format="PNG", pnginfo=info))


def read_parameters(path: str | Path) -> dict:
    """The parameters a panosync PNG was made with; a ValueError if it carries none."""
    try:
        with PIL.Image.open(path) as image:
            text = image.text.get(KEY) if hasattr(image, "text") else None
    except (OSError, PIL.UnidentifiedImageError) as error:
        raise ValueError(f"Cannot read {path} as a PNG: {error}.") from None
    if text is None:
        raise ValueError(f"{path} carries no panosync parameters: it was not written by panosync generate.")
    try:
        parameters = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: arrays nested beyond Python's stack
        raise ValueError(f"{path} carries panosync parameters that are not JSON: it was changed after panosync "
                         f"wrote it.") from None
    if not isinstance(parameters, dict):
        raise ValueError(f"{path} carries panosync parameters that are a JSON {json_kind(parameters)}, not an "
                         f"object: it was changed after panosync wrote it.")
    parameters.pop("panosync_version", None)
    return parameters

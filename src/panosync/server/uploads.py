"""Condition images sent to a server (ControlSync): read from base64 or a data URL, and kept as PNG
files named by their content, so that a queued job survives a restart, the same edge map sent for
many seeds is stored once, and a panorama's metadata can name its condition as the `control`
command's does (`panosync control --from-png` then finds it on this machine)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import Path

import PIL.Image

from .. import files
from ..conditions import read_condition_image, rgb_image
from .schema import FieldError

# data:[<media type>][;<parameter>=<value>]*;base64,<data>
DATA_URL = re.compile(r"data:(?:[\w.+-]+/[\w.+-]+)?(?:;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)


def decode_condition(text: str, name: str, max_pixels: int) -> PIL.Image.Image:
    """The image a request's condition field holds: base64 of an image file, bare or as a data URL.
    A FieldError naming `name` when it is neither, or not an image, or larger than `max_pixels`."""
    match = DATA_URL.match(text)
    if match is None and text.startswith("data:"):
        raise FieldError("condition", f"{name} is a data URL but not a base64 one: send data:image/png;base64,… .")
    payload = "".join(text[match.end():].split() if match else text.split())  # line breaks are allowed in base64
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError("condition", f"{name} is neither base64 nor a data URL: send the image file's bytes in "
                                      f"base64, or data:image/png;base64,… .") from None
    try:
        return read_condition_image(data, f"sent as {name}", max_pixels)
    except ValueError as error:
        raise FieldError("condition", str(error)) from None


def save_condition(image: PIL.Image.Image, folder: str | Path) -> Path:
    """`image` as an RGB PNG in `folder`, named by its pixels' SHA-256; written atomically, once.

    RGB is what the pipeline reads any condition as (panosync.conditions.rgb_image), and PNG keeps
    every pixel, so the file makes the same panorama as the image sent."""
    rgb = rgb_image(image)
    path = condition_path(rgb, folder)
    if path.is_file():
        return path
    return files.write_atomically(path, lambda file: rgb.save(file, format="PNG"))


def condition_path(rgb: PIL.Image.Image, folder: str | Path) -> Path:
    """Where save_condition keeps the RGB image `rgb`: `folder`/ the first 32 hex digits of the
    SHA-256 of its size and pixels .png, absolute (the metadata names it for use elsewhere)."""
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()
    return Path(folder).expanduser().resolve() / f"{digest[:32]}.png"


def write_temporary(rgb: PIL.Image.Image, path: Path) -> Path:
    """`rgb` encoded as PNG into a new temporary file beside `path` (a dot file ending .tmp, which a
    server's start sweeps away if it is left), to be moved to `path`; its folder is made if missing."""
    return files.write_temporary(path, lambda file: rgb.save(file, format="PNG"))

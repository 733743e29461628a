"""Panorama PNGs that carry everything needed to make them again, a digest of their pixels (what a
resumed batch checks before it keeps one) and, when loop-closed, Photo Sphere XMP; written atomically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import PIL.Image
import PIL.PngImagePlugin

from . import __version__
from .files import write_atomically
from .photosphere import XMP_KEYWORD, gpano_fields, xmp_packet
from .settings import json_kind

KEY = "panosync"
DIGEST = "pixels_sha256"  # a key of the metadata, beside the parameters: not one of them


def pixels_digest(image: PIL.Image.Image) -> str:
    """SHA-256 of the image's size and decoded RGB bytes: the same for the same pixels whatever the
    PNG's compression or chunks, different for any pixel changed, cropped or scaled."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.convert("RGB").tobytes())
    return digest.hexdigest()


def save_png(image: PIL.Image.Image, path: str | Path, parameters: dict) -> Path:
    """Write `image` to `path` with `parameters` as JSON in the PNG's text chunk "panosync", with
    the digest of its pixels (pixels_digest); a loop-closed panorama (`parameters`' loop_closure)
    also carries Photo Sphere XMP (photosphere.py), so that viewers show it as a 360° image.

    The file appears whole or not at all: it is written beside its destination and renamed. Its
    mode follows the process's umask, like any file the user writes.
    """
    info = PIL.PngImagePlugin.PngInfo()
    stored = {**parameters, "panosync_version": __version__, DIGEST: pixels_digest(image)}
    info.add_text(KEY, json.dumps(stored, sort_keys=True))
    info.add_text("Software", f"panosync {__version__}")
    fields = gpano_fields(image.width, image.height) if parameters.get("loop_closure") else None
    if fields is not None:  # uncompressed, before the pixels: where viewers look for it
        info.add_itxt(XMP_KEYWORD, xmp_packet(fields), zip=False)
    return write_atomically(Path(path), lambda file: image.save(file, format="PNG", pnginfo=info))


def read_parameters(path: str | Path) -> dict:
    """The parameters a panosync PNG was made with; a ValueError if it carries none."""
    parameters = read_metadata(path)
    parameters.pop(DIGEST, None)
    return parameters


def read_metadata(path: str | Path) -> dict:
    """A panosync PNG's metadata: its parameters, and the digest of its pixels under DIGEST when it
    was written by a panosync that stores one; a ValueError if it carries none."""
    try:
        with PIL.Image.open(path) as image:
            # info: the chunks before the pixels, where save_png writes; text would decode every pixel
            # to look after them too (and fail on a PNG cut short, whose metadata is whole)
            text = image.info.get(KEY)
            if text is None and hasattr(image, "text"):
                text = image.text.get(KEY)
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

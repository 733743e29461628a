"""An image input's files on the command and in batch (image_input.py does the rest): read whole
and checked before any model loads, hashed, recorded in the PNG's metadata by path and SHA-256,
and found again unchanged by --from-png."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import PIL.Image

# what each image input is called in sentences, and the option that names it
WHAT = {"image": ("image", "--image"), "mask_image": ("mask", "--mask")}


@dataclass(frozen=True)
class ImageFile:
    """An image input's file, checked: `path` as the user named it, `sha256` of its bytes."""

    name: str  # "image" or "mask_image"
    path: str
    sha256: str

    def metadata(self) -> dict:
        return {"path": self.path, "sha256": self.sha256}

    def load(self) -> PIL.Image.Image:
        """The image, once its file is found with the SHA-256 it was checked with."""
        image, sha256 = read_image_file(self.path, self.name)
        if sha256 != self.sha256:
            raise ValueError(f"The {WHAT[self.name][0]} {self.path} changed after it was checked (its SHA-256 "
                             f"differs): give it again.")
        return image


def read_image_file(path: str, name: str) -> tuple[PIL.Image.Image, str]:
    """The image at `path` read whole (conditions.py's checks: a regular file within the size and
    pixel limits, one still picture, no transparency for an image) and its SHA-256."""
    from .conditions import load_condition_image, rgb_image
    from .settings import MAX_PIXELS

    what = WHAT[name][0]
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{WHAT[name][1]} must name an image file, got {path!r}.")
    image = load_condition_image(path, MAX_PIXELS, what)
    data = Path(path).expanduser().read_bytes()
    if name == "image":
        image = rgb_image(image, what)
    return image, hashlib.sha256(data).hexdigest()


def image_file(path: str, name: str) -> ImageFile:
    """The checked file, by its absolute path (a PNG's record then reads it from any folder)."""
    _, sha256 = read_image_file(path, name)
    return ImageFile(name, os.path.abspath(os.path.expanduser(path)), sha256)


def image_file_of_png(stored, name: str) -> ImageFile:
    """The image input a PNG's metadata records ({"path", "sha256"}), found again unchanged."""
    what, option = WHAT[name]
    if not isinstance(stored, dict) or not isinstance(stored.get("path"), str) \
            or not isinstance(stored.get("sha256"), str):
        raise ValueError(f"The PNG's record of its {what} is not an object with path and sha256: it was changed after "
                         f"panosync wrote it.")
    try:
        found = image_file(stored["path"], name)
    except ValueError as error:
        raise ValueError(f"The {what} the PNG was made from cannot be read again: {str(error).rstrip('.')}; give "
                         f"{option} to name the one to use.") from None
    if found.sha256 != stored["sha256"]:
        raise ValueError(f"The {what} {stored['path']} has changed since the PNG was made (its SHA-256 differs): the "
                         f"picture would differ; restore that file, or give {option} to name the one to use.")
    return found


def image_files_of_request(given: dict, stored: dict) -> dict:
    """The image and mask files of a request: the options given, else the PNG's records (--from-png)."""
    files = {}
    for name in WHAT:
        if given.get(name) is not None:
            files[name] = image_file(given[name], name)
        elif stored.get(name) is not None:
            files[name] = image_file_of_png(stored[name], name)
    if "mask_image" in files and "image" not in files:
        raise ValueError("--mask says which of an image's pixels are repainted: give --image too.")
    return files

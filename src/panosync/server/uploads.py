"""Images sent to a server: ControlSync's condition images, the image inputs of the plain
pipelines (`image`, `mask_image`: img2img, inpainting, extending), and the masks of region prompts
(`regions`). Read from base64 or a data URL, checked with one sentence naming the field (a region's
mask: the region), and kept as PNG files named by their content, so that a queued job survives a
restart, the same picture sent for many seeds is stored once, and a panorama's metadata can name
its inputs as the commands' does (`panosync control --from` and `panosync generate --from`
then find them on this machine)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import Path

import PIL.Image

from .. import files
from ..conditions import read_condition_image, rgb_image
from ..errors import SettingError, shown
from ..image_input import mask_pixels
from ..regions import checked_list, region_mask_pixels
from .schema import IMAGE_UPLOADS, FieldError

# data:[<media type>][;<parameter>=<value>]*;base64,<data>
DATA_URL = re.compile(r"data:(?:[\w.+-]+/[\w.+-]+)?(?:;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)


def decode_condition(text: str, name: str, max_pixels: int) -> PIL.Image.Image:
    """The image a request's condition field holds: base64 of an image file, bare or as a data URL.
    A FieldError naming `name` when it is neither, or not an image, or larger than `max_pixels`."""
    return _decode(text, name, "condition", max_pixels, "condition image")


def decode_image_input(text: str, field: str, max_pixels: int) -> PIL.Image.Image:
    """The image a request's `image` or `mask_image` field holds (base64 or a data URL), checked as
    `checked_image_input` checks it: RGB for an image, one channel (L) for a mask. A FieldError
    naming the field when it is not an image, is larger than `max_pixels`, or is not one the
    pipeline can take (an image with transparency; a mask with colours, or all black)."""
    image = _decode(text, field, field, max_pixels, IMAGE_UPLOADS[field])
    return checked_image_input(image, field, f"sent as {field}")


def checked_image_input(image: PIL.Image.Image, field: str, source: str) -> PIL.Image.Image:
    """An image input (`field`: image or mask_image) as it is kept and given to the pipeline: an
    image as RGB, a mask as one 8-bit channel (the same pixels: a grey RGB mask's channels are
    equal). A FieldError naming the field for one the pipeline would refuse; `source` says where it
    came from ("sent as image", "uploaded")."""
    if field == "image":
        try:
            return rgb_image(image, f"image {source}")
        except ValueError as error:
            raise FieldError("image", str(error)) from None
    try:
        mask_pixels(image)  # one channel, no transparency, not all black
    except ValueError as error:
        raise FieldError("mask_image", str(error)) from None
    return image.convert("L") if image.mode in ("1", "L") else image.convert("RGB").convert("L")


def decode_regions(regions: list, max_pixels: int) -> list:
    """A request's `regions` with each mask (base64 or a data URL) read as an image, checked and
    turned into the one 8-bit channel it is kept as (`decode_region_mask`). Anything else in them is
    left as sent, for regions.plan_regions to check with its sentences. The list itself (its length,
    each region a dict of known keys) is checked first, before any mask is decoded."""
    try:
        checked_list(regions)
    except SettingError as error:
        raise FieldError("regions", str(error)) from None
    return [{**region, "mask": decode_region_mask(region["mask"], number, max_pixels)}
            if isinstance(region, dict) and region.get("mask") is not None else region
            for number, region in enumerate(regions, 1)]


def decode_region_mask(text, number: int, max_pixels: int) -> PIL.Image.Image:
    """Region `number`'s mask (from 1, as regions.py counts them) as one 8-bit channel (L): a
    FieldError of `regions` that names the region when it is not base64 text of an image, is larger
    than `max_pixels`, has transparency or colours, or is all black. Its size is checked against the
    canvas later, with the other regions (regions.plan_regions)."""
    name = f"Region {number}'s mask"
    if not isinstance(text, str):
        raise FieldError("regions", f"{name} must be an image as base64 text or a data URL, got {shown(text)}.")
    data = _bytes_of(text, name, "regions")
    try:  # these sentences name the region: "The mask of region 2 is animated …"
        mask = read_condition_image(data, f"of region {number}", max_pixels, "mask")
    except ValueError as error:
        raise FieldError("regions", str(error)) from None
    try:  # before it becomes one channel, which would hide a transparency or colours
        region_mask_pixels(mask, number)
    except SettingError as error:
        raise FieldError("regions", str(error)) from None
    # kept as a mask input is (the same pixels: a grey RGB mask's channels are equal)
    return mask.convert("L") if mask.mode in ("1", "L") else mask.convert("RGB").convert("L")


def _decode(text: str, name: str, field: str, max_pixels: int, what: str) -> PIL.Image.Image:
    data = _bytes_of(text, name, field)
    try:
        return read_condition_image(data, f"sent as {name}", max_pixels, what)
    except ValueError as error:
        raise FieldError(field, str(error)) from None


def _bytes_of(text: str, name: str, field: str) -> bytes:
    """The bytes of an image sent as base64 or a data URL; a FieldError of `field` saying what to
    send otherwise (`name` is how the sentence names it)."""
    match = DATA_URL.match(text)
    if match is None and text.startswith("data:"):
        raise FieldError(field, f"{name} is a data URL but not a base64 one: send data:image/png;base64,… .")
    payload = "".join(text[match.end():].split() if match else text.split())  # line breaks are allowed in base64
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(field, f"{name} is neither base64 nor a data URL: send the image file's bytes in "
                                f"base64, or data:image/png;base64,… .") from None


def save_condition(image: PIL.Image.Image, folder: str | Path) -> Path:
    """`image` as an RGB PNG in `folder`, named by its pixels' SHA-256; written atomically, once.

    RGB is what the pipeline reads any condition as (panosync.conditions.rgb_image), and PNG keeps
    every pixel, so the file makes the same panorama as the image sent."""
    rgb = rgb_image(image)
    path = condition_path(rgb, folder)
    if path.is_file():
        return path
    return files.write_atomically(path, lambda file: rgb.save(file, format="PNG"))


def save_image_input(image: PIL.Image.Image, folder: str | Path) -> tuple[Path, str]:
    """An image input (RGB, or a mask's L, as `checked_image_input` gives it) as a PNG in `folder`,
    named by its pixels, written atomically, once; and the SHA-256 of the file, which the PNG's
    metadata records with its path (as `panosync generate` records its --image)."""
    path = condition_path(image, folder)
    if not path.is_file():
        files.write_atomically(path, lambda file: image.save(file, format="PNG"))
    return path, file_sha256(path)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def condition_path(rgb: PIL.Image.Image, folder: str | Path) -> Path:
    """Where save_condition keeps the RGB image `rgb` (save_image_input an image or a mask):
    `folder`/ the first 32 hex digits of the SHA-256 of its size and pixels (and mode, but RGB's)
    .png, absolute (the metadata names it for use elsewhere)."""
    mode = "" if rgb.mode == "RGB" else f"{rgb.mode}:"
    digest = hashlib.sha256(f"{mode}{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()
    return Path(folder).expanduser().resolve() / f"{digest[:32]}.png"


def write_temporary(rgb: PIL.Image.Image, path: Path) -> Path:
    """`rgb` (or a mask's L image) encoded as PNG into a new temporary file beside `path` (a dot file
    ending .tmp, which a server's start sweeps away if it is left), to be moved to `path`; its
    folder is made if missing."""
    return files.write_temporary(path, lambda file: rgb.save(file, format="PNG"))

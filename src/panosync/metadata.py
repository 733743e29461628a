"""Panorama files (PNG, JPEG, WebP) that carry everything needed to make them again, a digest of
their pixels (what a resumed batch checks before it keeps one) and, when loop-closed, Photo Sphere
XMP; written atomically.

A PNG keeps the parameters as JSON in a text chunk; a JPEG or WebP in its XMP packet, as the text of
a `panosync:parameters` element beside the GPano properties (their only metadata place that every
tool keeps and that holds more than a line). The format follows the file's extension (FORMATS)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import warnings
import xml.sax.saxutils
from pathlib import Path

import PIL.Image
import PIL.PngImagePlugin

from . import __version__
from .files import write_atomically
from .photosphere import XMP_KEYWORD, gpano_fields, xmp_packet, xmp_root
from .settings import cut, json_kind, wrapped_axes

KEY = "panosync"
DIGEST = "pixels_sha256"  # a key of the metadata, beside the parameters: not one of them
# The formats a panorama is written in, by the file's extension (lower case).
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
LOSSY = ("JPEG", "WEBP")
DEFAULT_QUALITY = 95  # JPEG and WebP: 1-100; 95 keeps fine texture (a panorama is looked at closely)
# JPEG holds XMP in one APP1 segment: 65,535 bytes less its length and the 29-byte namespace header
MAX_JPEG_XMP_BYTES = 65_504
MAX_XMP_BYTES = 1 << 20  # a packet read back larger than this is not one panosync wrote
MAX_WEBP_SIDE = 16383  # libwebp's largest width or height
PANOSYNC_XMP = "urn:panosync:metadata:1.0#"  # the namespace of panosync:parameters


def pixels_digest(image: PIL.Image.Image) -> str:
    """SHA-256 of the image's size and decoded RGB bytes: the same for the same pixels whatever the
    PNG's compression or chunks, different for any pixel changed, cropped or scaled."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.convert("RGB").tobytes())
    return digest.hexdigest()


def image_format(path: str | Path, option: str = "--out") -> str:
    """The format a panorama at `path` is written in (FORMATS, by its extension); a ValueError
    that names the extensions for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(FORMATS)
        raise ValueError(f"{option} {cut(str(path))}: panosync writes {known} files (their metadata holds the "
                         f"parameters), not {cut(suffix) or 'a file without an extension'}: name it "
                         f"{cut(Path(path).with_suffix('.png').name)} or another of those.")
    return FORMATS[suffix]


def check_quality(quality: int | None, path: str | Path, option: str = "--quality") -> None:
    """A quality applies to JPEG and WebP only, from 1 to 100: a ValueError that says what to change."""
    if quality is None:
        return
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"{option} must be a whole number from 1 to 100, got {cut(repr(quality))}.")
    if image_format(path) not in LOSSY:
        raise ValueError(f"{option} applies to JPEG and WebP files, and {cut(str(path))} is a PNG (lossless): "
                         f"leave {option} out, or write a .jpg or .webp.")


def check_fits(parameters: dict, path: str | Path) -> None:
    """Whether a panorama made with `parameters` fits the format `path` names: a WebP's sides are at
    most MAX_WEBP_SIDE, a JPEG's XMP segment holds 64 KB (with room kept for what is added after the
    panorama is made). A ValueError that says what to change, so that it is known before any model
    work. `parameters` as a request holds them (files as panosync's file records, or their
    metadata() when loaded)."""
    kind = image_format(path)
    if kind == "WEBP":  # the sides given so far (a hub model's canvas is known once it loads)
        check_webp_size(parameters.get("width"), parameters.get("height"))
    if kind != "JPEG":
        return
    room = MAX_JPEG_XMP_BYTES - 1024  # the device, precision, size, threads and digest, added on writing
    size = len(xmp_description(parameters).encode("utf-8")) + len(xmp_packet(gpano_fields(2, 1)).encode("utf-8"))
    if size > room:
        raise ValueError(f"The parameters take {size:,} bytes, more than a JPEG's metadata holds ({room:,}): "
                         f"write a .png or .webp, or shorten the prompts.")


def check_webp_size(width: int | None, height: int | None) -> None:
    """A WebP's sides are at most MAX_WEBP_SIDE: a ValueError that says what to write instead (a side
    not known yet, None, passes)."""
    if max((side for side in (width, height) if isinstance(side, int)), default=0) > MAX_WEBP_SIDE:
        raise ValueError(f"A WebP is at most {MAX_WEBP_SIDE:,} pixels a side and this panorama is {width} × "
                         f"{height}: write a .png or .jpg.")


def xmp_description(parameters: dict) -> str:
    """The rdf:Description holding `parameters` as the JSON text of panosync:parameters (a file a
    request holds as its metadata(), as the file will record it)."""
    text = xml.sax.saxutils.escape(json.dumps(parameters, sort_keys=True, ensure_ascii=False, default=_recorded))
    return (f'<rdf:Description rdf:about="" xmlns:panosync="{PANOSYNC_XMP}">'
            f"<panosync:parameters>{text}</panosync:parameters></rdf:Description>")


def save_panorama(image: PIL.Image.Image, path: str | Path, parameters: dict, quality: int | None = None) -> Path:
    """Write `image` to `path` in the format of its extension (image_format) with `parameters` and
    the digest of its pixels (as decoded from the file, for JPEG and WebP), and Photo Sphere XMP
    when loop-closed: save_png for a PNG; for JPEG and WebP at `quality` (DEFAULT_QUALITY), all in
    one XMP packet. Written whole or not at all."""
    kind = image_format(path)
    if kind == "PNG":
        return save_png(image, path, parameters)
    check_quality(quality, path, "quality")
    data = lossy_file(image, kind, parameters, quality)
    return write_atomically(Path(path), data)


def _recorded(value):
    """How json.dumps writes a value a request holds that is not JSON: a file by its record."""
    if hasattr(value, "metadata"):
        return value.metadata()
    raise TypeError(f"{type(value).__name__} is not recorded in a panorama's metadata")


def lossy_file(image: PIL.Image.Image, kind: str, parameters: dict, quality: int | None = None) -> bytes:
    """The bytes of a JPEG or WebP (`kind`: "JPEG", "WEBP") of `image` at `quality` (DEFAULT_QUALITY),
    its XMP holding `parameters`, the digest of its pixels as decoded, and GPano when loop-closed; a
    ValueError when the XMP would not fit a JPEG."""
    options = {"quality": DEFAULT_QUALITY if quality is None else quality}
    if kind == "JPEG":
        options["subsampling"] = 0  # full-resolution colour: 4:2:0 smears a panorama's thin horizon lines
    if kind == "WEBP":
        check_webp_size(image.width, image.height)
    rgb = image.convert("RGB")
    pixels = io.BytesIO()  # the lossy pixels as a reader will decode them: encoding is deterministic
    rgb.save(pixels, format=kind, **options)
    with PIL.Image.open(pixels) as decoded:
        digest = pixels_digest(decoded)
    stored = {**parameters, "panosync_version": __version__, DIGEST: digest}
    fields = sphere_fields(image, parameters)
    packet = xmp_packet(fields, (xmp_description(stored),)).encode("utf-8")
    if kind == "JPEG" and len(packet) > MAX_JPEG_XMP_BYTES:
        raise ValueError(f"The parameters take {len(packet):,} bytes, more than a JPEG's metadata holds "
                         f"({MAX_JPEG_XMP_BYTES:,}): write a .png or .webp.")
    written = io.BytesIO()
    rgb.save(written, format=kind, xmp=packet, **options)
    return written.getvalue()


def sphere_fields(image: PIL.Image.Image, parameters: dict) -> dict | None:
    """The GPano fields of a panorama made with `parameters` (photosphere.gpano_fields): a band of
    the sphere when its left and right edges meet (loop_closure, tile x) and only those; none for a
    texture that tiles vertically, which is no sphere."""
    columns, rows = wrapped_axes(parameters.get("loop_closure"), parameters.get("tile"))
    return gpano_fields(image.width, image.height) if columns and not rows else None


def save_png(image: PIL.Image.Image, path: str | Path, parameters: dict) -> Path:
    """Write `image` to `path` with `parameters` as JSON in the PNG's text chunk "panosync", with
    the digest of its pixels (pixels_digest); a loop-closed panorama (`parameters`' loop_closure)
    also carries Photo Sphere XMP (photosphere.py), so that viewers show it as a 360° image.

    The file appears whole or not at all: it is written beside its destination and renamed. Its
    mode follows the process's umask, like any file the user writes.
    """
    stored = {**parameters, "panosync_version": __version__, DIGEST: pixels_digest(image)}
    return write_png(image, path, sphere_fields(image, parameters), json.dumps(stored, sort_keys=True))


def write_png(image: PIL.Image.Image, path: str | Path, gpano: dict | None, parameters_json: str | None = None) -> Path:
    """Write `image` to `path` as a PNG naming panosync as its software, with the GPano fields
    `gpano` as Photo Sphere XMP (uncompressed, before the pixels: where viewers look for it) and
    `parameters_json` as the text chunk "panosync", each where given; whole or not at all."""
    info = PIL.PngImagePlugin.PngInfo()
    if parameters_json is not None:
        info.add_text(KEY, parameters_json)
    info.add_text("Software", f"panosync {__version__}")
    if gpano is not None:
        info.add_itxt(XMP_KEYWORD, xmp_packet(gpano), zip=False)
    return write_atomically(Path(path), lambda file: image.save(file, format="PNG", pnginfo=info))


def read_parameters(path: str | Path) -> dict:
    """The parameters a panosync PNG, JPEG or WebP was made with; a ValueError if it carries none."""
    parameters = read_metadata(path)
    parameters.pop(DIGEST, None)
    return parameters


def read_metadata(path: str | Path) -> dict:
    """A panosync file's metadata (PNG, JPEG or WebP): its parameters, and the digest of its pixels
    under DIGEST when it was written by a panosync that stores one; a ValueError if it carries none,
    or is no regular file (a pipe would hang the reading), or is larger than any panorama."""
    if isinstance(path, (str, Path)):
        try:
            mode = os.stat(path).st_mode
        except OSError as error:
            raise ValueError(f"Cannot read {path}: {error.strerror or error}.") from None
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path} is a folder, device, pipe or socket, not a panorama file.")
    try:
        # PIL warns of an image over ~89 million pixels, more than panosync makes (settings.MAX_PIXELS)
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(path, formats=tuple(set(FORMATS.values())))
        with image:
            if image.format == "PNG":
                # info: the chunks before the pixels, where save_png writes; text would decode every
                # pixel to look after them too (and fail on a PNG cut short, whose metadata is whole)
                text = image.info.get(KEY)
                if text is None and hasattr(image, "text"):
                    text = image.text.get(KEY)
            else:
                text = xmp_parameters(image.info.get("xmp"))
    except (PIL.Image.DecompressionBombWarning, PIL.Image.DecompressionBombError):
        raise ValueError(f"{path} has more pixels than any panorama panosync makes: it was not written by "
                         f"panosync.") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} carries panosync parameters that are not UTF-8 text: it was changed after "
                         f"panosync wrote it.") from None
    except (OSError, PIL.UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"Cannot read {path} as a PNG, JPEG or WebP: {error}.") from None
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


def xmp_parameters(packet: bytes | str | None) -> str | None:
    """The text of panosync:parameters in an XMP packet; None where there is none."""
    if isinstance(packet, bytes):
        if len(packet) > MAX_XMP_BYTES:
            return None
        packet = packet.decode("utf-8")  # strictly: a changed byte is a changed file, not a changed prompt
    root = xmp_root(packet) if isinstance(packet, str) and len(packet) <= MAX_XMP_BYTES else None
    if root is None:
        return None
    element = root.find(f".//{{{PANOSYNC_XMP}}}parameters")
    return None if element is None else (element.text or "")

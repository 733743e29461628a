"""ControlNet conditions: load them, make them from a source image (Canny edges), and fit them to
the canvas, with a sentence that says what to change when they do not fit.

A condition, as ControlNets take it, is an RGB image with values in [0, 1] of the whole panorama's
size in pixels: a (1, 3, height, width) float tensor here. The pipeline crops each view's part.
"""

from __future__ import annotations

import io
import stat
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F

PREPROCESSORS = ("none", "canny")
# The thresholds of the Canny example for lllyasviel/sd-controlnet-canny.
CANNY_LOW, CANNY_HIGH = 100, 200
# Modes that read as RGB without a choice to make; transparency would need a background colour.
READABLE_MODES = ("RGB", "L", "1", "P")


# the largest image file read: a 16384 × 16384 RGB PNG that does not compress at all is 768 MiB; photos
# and edge maps of the canvases panosync makes are a small fraction of this
MAX_IMAGE_BYTES = 1 << 30


def load_condition_image(path: str | Path, max_pixels: int | None = None,
                         what: str = "condition image") -> PIL.Image.Image:
    """The image at `path`, read whole (so a broken file fails here, not mid-generation). An image
    of more than `max_pixels` is refused from its header, before it is decoded. `what` names it in
    the sentences (an IP-Adapter's image prompt is checked the same way)."""
    path = Path(path).expanduser()
    try:
        status = path.stat()
    except (OSError, ValueError):  # missing, a loop of links, a name the system refuses
        raise ValueError(f"No such {what}: {path}.") from None
    if not stat.S_ISREG(status.st_mode):
        kind = "a folder" if stat.S_ISDIR(status.st_mode) else "a FIFO" if stat.S_ISFIFO(status.st_mode) else \
            "a device" if stat.S_ISCHR(status.st_mode) or stat.S_ISBLK(status.st_mode) else "not a regular file"
        raise ValueError(f"The {what} {path} is {kind}, not an image file.")
    if status.st_size > MAX_IMAGE_BYTES:
        raise ValueError(f"The {what} {path} is {status.st_size:,} bytes, more than the {MAX_IMAGE_BYTES:,} an image "
                         f"file panosync reads may be: shrink it.")
    return read_condition_image(path.read_bytes(), str(path), max_pixels, what)


def read_condition_image(data: bytes, name: str, max_pixels: int | None = None,
                         what: str = "condition image") -> PIL.Image.Image:
    """The image whose file's bytes are `data` (PNG, JPEG, WebP …), read whole and turned upright as its
    EXIF orientation says; `name` says where it came from. An image of more than `max_pixels` is refused
    from its header, before it is decoded; an animated one (several frames) is refused."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            pixels = image.width * image.height
            if max_pixels is not None and pixels > max_pixels:
                raise ValueError(f"The {what} {name} is {image.width}x{image.height} = {pixels:,} pixels, more "
                                 f"than the {max_pixels:,} allowed: shrink it to the panorama's size.")
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                raise ValueError(f"The {what} {name} is animated ({frames} frames): give one still image.")
            image.load()
            # a camera's JPEG stores the pixels as the sensor read them and says how to turn them (EXIF
            # orientation); the image the user sees, and means, is the turned one
            turned = PIL.ImageOps.exif_transpose(image)
            return turned if turned is not None and turned is not image else image.copy()
    except PIL.UnidentifiedImageError:
        raise ValueError(f"Cannot read {what} {name}: it is not an image file (give a PNG, JPEG or WebP "
                         f"file's bytes).") from None
    except PIL.Image.DecompressionBombError:
        raise ValueError(f"Cannot read {what} {name}: its header claims more pixels than any image panosync "
                         f"reads (a decompression bomb, or a damaged file): give a smaller image.") from None
    except OSError as error:
        raise ValueError(f"Cannot read {what} {name}: {str(error).rstrip('.')}.") from None


def check_canny_thresholds(low: int, high: int) -> None:
    for name, value in (("canny_low", low), ("canny_high", high)):
        if not isinstance(value, int) or not 0 <= value <= 255 * 4:
            raise ValueError(f"{name} must be a whole number from 0 to 1020, got {value}.")
    if low > high:
        raise ValueError(f"canny_low ({low}) must not exceed canny_high ({high}).")


def canny_edges(image: PIL.Image.Image, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> PIL.Image.Image:
    """OpenCV's Canny edges of `image` as a white-on-black RGB image, the input the Canny
    ControlNets were trained on. Gradients below `low` are never edges, above `high` always are,
    and between the two only where they continue a strong edge."""
    import cv2  # opencv-python-headless; only preprocessing needs it

    check_canny_thresholds(low, high)
    pixels = np.asarray(rgb_image(image))
    edges = cv2.Canny(pixels, low, high)
    return PIL.Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


def rgb_image(image: PIL.Image.Image, what: str = "condition image") -> PIL.Image.Image:
    """`image` as RGB, or a ValueError when its mode has no single reading as one."""
    has_transparency = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_transparency:
        raise ValueError(
            f"The {what} has transparency (mode {image.mode}): flatten it onto a background and save it "
            f"as RGB or grayscale."
        )
    if image.mode not in READABLE_MODES:
        raise ValueError(f"The {what} has mode {image.mode}: give an 8-bit RGB or grayscale image.")
    return image if image.mode == "RGB" else image.convert("RGB")


def condition_size(condition) -> tuple[int, int]:
    """(width, height) of a condition in pixels."""
    if isinstance(condition, PIL.Image.Image):
        return condition.size
    tensor = condition_tensor(condition)
    return tensor.shape[-1], tensor.shape[-2]


def _not_a_condition(condition) -> ValueError:
    hint = " (load a file with panosync.conditions.load_condition_image)" if isinstance(condition, (str, Path)) else ""
    return ValueError(f"A condition must be a PIL image, a numpy array or a torch tensor, got "
                      f"{type(condition).__name__}{hint}.")


def condition_tensor(condition) -> torch.Tensor:
    """A condition as a (1, 3, height, width) float32 tensor in [0, 1].

    PIL images in RGB or grayscale; numpy arrays (height, width[, 3]) of uint8, or floats in [0, 1];
    torch tensors (3, height, width) or (1, 3, height, width) in [0, 1], as diffusers takes them.
    """
    if isinstance(condition, PIL.Image.Image):
        condition = np.asarray(rgb_image(condition))
    if isinstance(condition, np.ndarray):
        array = condition
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"A condition array must have shape (height, width) or (height, width, 3), got {condition.shape}.")
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
    elif isinstance(condition, torch.Tensor):
        tensor = condition.detach().float().cpu()
    else:
        raise _not_a_condition(condition)
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[:2] != (1, 3):
        raise ValueError(f"A condition tensor must have shape (3, height, width) or (1, 3, height, width), "
                         f"got {tuple(condition.shape)}.")
    if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
        raise ValueError("A condition's values must lie in [0, 1] (or be uint8 pixels); rescale it.")
    return tensor


def fit_to_canvas(condition, width: int, height: int, resize: bool = False) -> torch.Tensor:
    """The condition as a (1, 3, height, width) tensor: as it is when it has the canvas's size,
    resized (bilinear, antialiased) when `resize`, else a ValueError that says what to do."""
    tensor = condition_tensor(condition)
    size = (tensor.shape[-1], tensor.shape[-2])
    if size == (width, height):
        return tensor
    if not resize:
        raise ValueError(
            f"The condition is {size[0]}x{size[1]} pixels but the canvas is {width}x{height}: give a condition of "
            f"the canvas's size, or let panosync resize it (resize_condition=True; on the command line "
            f"--resize-condition)."
        )
    return F.interpolate(tensor, size=(height, width), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def prepare_condition(source: PIL.Image.Image, width: int, height: int, resize: bool = False,
                      preprocess: str = "none", canny_low: int = CANNY_LOW, canny_high: int = CANNY_HIGH) -> torch.Tensor:
    """The condition for a canvas of `width` x `height` pixels from `source`: the condition
    itself (`preprocess="none"`) or an image to take the Canny edges of. A source is resized
    before its edges are taken, so that the edges stay one pixel thin on the canvas."""
    if preprocess not in PREPROCESSORS:
        raise ValueError(f"preprocess must be one of {', '.join(PREPROCESSORS)}, got {preprocess!r}.")
    if preprocess == "canny":
        check_canny_thresholds(canny_low, canny_high)
        source = rgb_image(source)
        if source.size != (width, height):
            if not resize:
                fit_to_canvas(source, width, height, resize=False)  # raises the size sentence
            source = source.resize((width, height), PIL.Image.Resampling.BILINEAR)
        source = canny_edges(source, canny_low, canny_high)
    return fit_to_canvas(source, width, height, resize)

"""Every generation parameter, once: its name, type, range, help and the paper's default; the
order in which a value's sources take precedence; and the checks a request must pass, which need
only the model's geometry (geometry.py; read from its configs before any weights load, models.py).

Every front end is made from this table: the command's options (command_options.py, also
evaluate's), the HTTP API's request schema (server/schema.py), the web page's inputs and presets
(server/ui.py, presets.py), and the pipeline checks its own call with `check` too, so that a
value is refused with the same sentence wherever it comes from. A new parameter is one more
`Parameter` here.

Precedence, highest first: the values given (options, fields), the PNG of --from, the model's
recommended.json, its family's and variant's defaults (families.defaults_of), the paper's
(`paper_defaults`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import SettingError, shown
from .families import defaults_of
from .geometry import MAX_STEPS, Geometry, canvas_defaults

# The model a front end loads when none is named: SyncDiffusion's paper used Stable Diffusion 2 base.
DEFAULT_MODEL = "stabilityai/stable-diffusion-2-base"
# The ControlSync paper's models: Stable Diffusion 1.5 (now published under this id; the original
# runwayml/stable-diffusion-v1-5 was withdrawn) and the Canny ControlNet trained for it.
DEFAULT_CONTROL_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_CONTROLNET = "lllyasviel/sd-controlnet-canny"

UINT32_MAX = 2**32 - 1
MAX_PROMPT_CHARACTERS = 2000  # CLIP reads 77 tokens; anything far longer is a mistake, not a prompt
PROMPTS = ("prompt", "negative_prompt")  # the text the tokenizers read
# The largest canvas anything makes: ComfyUI's largest side, and 16384 × 4096 pixels in all (a
# latent of 4 MB in float32 at factor 8). A bound, so that a typo cannot ask for gigabytes.
MAX_SIDE = 16384
MAX_PIXELS = 16384 * 4096
# The fast modes, each a named approximation of the sync step (fast.py says exactly what each does).
FAST_MODES = {
    "reuse_noise": "denoise with the gradient pass's noise prediction (made before the sync move): "
                   "no second UNet pass",
    "no_unet_backward": "treat the noise prediction as constant in the sync gradient: no backward through the UNet",
    "lpips_alex": "LPIPS on AlexNet's features instead of VGG's in the sync loss: a small part of its work",
    "dpm_solver": "DPM-Solver++ (2nd order, multistep) instead of DDIM, for fewer steps; each view keeps its own "
                  "solver history",
}
NO_FAST_MODE = "none"  # names no mode: the paper's sync step even where the model recommends a mode
PREPROCESSORS = ("none", "canny")
CANNY_MAX = 255 * 4  # the largest gradient OpenCV's Sobel can give an 8-bit image
# LPIPS-VGG pools four times before its last stage: smaller images have no features left there.
SMALLEST_LPIPS_SIDE = 16
# LPIPS-AlexNet's first convolution strides by 4 and two poolings follow: 31 pixels is its least.
SMALLEST_ALEX_SIDE = 31


@dataclass(frozen=True)
class Parameter:
    """One generation parameter.

    kind      str, int, float, bool, or list (of `item`s)
    default   the paper's (None: decided later, see `unset`)
    unset     what None means, where it is allowed ("a random one"); None: a value is required
    minimum, maximum   the range, inclusive; `above` makes the minimum exclusive (for text: its
              length, the minimum counting no blanks)
    choices   the values allowed (for a list: of each item)
    flags     the command's extra option strings (beside --name-with-dashes)
    served    whether the HTTP API and the page take it (not: a path on the server's disk, or a
              setting of the server itself)
    control   ControlSync's only
    from_image  an image input's (img2img, inpainting, extending, upscaling): the plain pipelines'
    """

    name: str
    kind: type
    default: Any
    help: str
    unset: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False
    choices: tuple = ()
    item: type = str
    flags: tuple[str, ...] = ()
    served: bool = True
    control: bool = False
    from_image: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def range_words(self) -> str:
        """The range in words: "from 0 to 30", "1 or more", "more than 0 and at most 1"."""
        low, high = _number(self.minimum), _number(self.maximum)
        if self.above:
            return f"more than {low}" + (f" and at most {high}" if high is not None else "")
        if low is not None and high is not None:
            return f"from {low} to {high}"
        if low is not None:
            return f"{low} or more"
        return f"at most {high}" if high is not None else "any value"


def _number(value) -> str | None:
    if value is None:
        return None
    return f"{value:g}" if isinstance(value, float) else str(value)


TILE_AXES = ("x", "y", "xy")


def wrapped_axes(loop_closure, tile) -> tuple[bool, bool]:
    """(columns, rows): whether the canvas's left and right edges meet (loop_closure, or tile x or
    xy) and whether its top and bottom do (tile y or xy)."""
    tile = tile if isinstance(tile, str) else ""
    return bool(loop_closure) or "x" in tile, "y" in tile


P = Parameter
PARAMETERS: tuple[Parameter, ...] = (
    P("prompt", str, None, "what the panorama shows", minimum=1, maximum=MAX_PROMPT_CHARACTERS),
    P("negative_prompt", str, "", "what the panorama should not show", maximum=MAX_PROMPT_CHARACTERS),
    P("width", int, None, "pixels, a multiple of the VAE factor, at least one window", unset="four windows",
      minimum=1, maximum=MAX_SIDE),
    P("height", int, None, "pixels, a multiple of the VAE factor, at least one window", unset="one window",
      minimum=1, maximum=MAX_SIDE),
    P("guidance_scale", float, 7.5, "classifier-free guidance scale", minimum=0, maximum=30),
    P("sync_weight", float, 20.0, "gradient-descent weight w of the sync step; 0 gives MultiDiffusion", minimum=0),
    P("sync_decay_rate", float, 0.95, "the weight at step i is w · rate^i", minimum=0, maximum=1, above=True),
    P("sync_freq", int, 1, "sync every n-th step", minimum=1, maximum=MAX_STEPS),
    P("sync_threshold", int, None, "sync only in the first n steps", unset="every step, as the paper", minimum=0,
      maximum=MAX_STEPS),
    P("num_inference_steps", int, 50, "denoising (DDIM) steps", minimum=1, maximum=MAX_STEPS, flags=("--steps",)),
    P("window", int, None, "side of a view in pixels: SD3 and FLUX take others than their default",
      unset="the model's (UNets: their native size; FLUX: 1024; SD3: its config's)", minimum=1, maximum=MAX_SIDE),
    P("stride", int, None, "view stride in latent pixels, 1 to the window", unset="a quarter window", minimum=1),
    P("seed", int, None, "seed of the initial noise", unset="a random one, reported with the result", minimum=0,
      maximum=UINT32_MAX),
    P("loop_closure", bool, False, "a 360° panorama whose left and right edges meet (tile x)"),
    P("tile", str, None, "the edges that meet: x (left and right, as loop_closure), y (top and bottom), xy (both: "
      "a texture that tiles)", unset="loop_closure's", choices=TILE_AXES),
    P("anchor", int, None, "index of the view the others are pulled towards", unset="the centre view", minimum=0),
    P("view_batch_size", int, None, "views per network call: the same result but for rounding",
      unset="chosen for the device", minimum=1, served=False),  # a server's: its own --view-batch-size
    P("fast_modes", list, [], "fast modes, each an approximation of the sync step; none: the paper's sync step",
      choices=tuple(FAST_MODES)),
    P("sync_image_scale", float, 1.0, "compare images downscaled by this factor in the sync loss (fast mode; "
      "1: faithful)", minimum=0, maximum=1, above=True),
    P("sync_decoder", str, None, "diffusers AutoencoderTiny folder (e.g. TAESD) that decodes the sync loss's images "
      "(fast mode)", unset="the model's VAE", served=False),  # a folder on the server's disk: not the client's to name
    P("tiled_decode", bool, None, "decode in overlapping tiles, bounding memory", unset="when larger than 6 windows"),
    P("regions", list, None, "prompts of their own for parts of the canvas: each a box (x0, y0, x1, y1 in pixels) or "
      "a mask of the canvas's size (white inside), a prompt, and optionally a negative prompt and a weight; the "
      "prompt covers the rest", unset="none: the prompt everywhere", item=object),  # files on the command
    P("region_base", float, 0.15, "the prompt's share of the prediction inside the regions (Regional Prompter's base "
      "prompt), which carries its light and time of day into them; 0: each region's prompt alone", minimum=0,
      maximum=1),
    # ControlSync
    P("condition", list, None, "the image the panorama follows, of its size; one per ControlNet",
      unset="none: required", item=object, control=True),  # files on the command, images on a server
    P("controlnet", list, None, "diffusers ControlNet folder or hub id, one per condition", unset=DEFAULT_CONTROLNET,
      control=True, served=False),  # a server's: loaded once, with --controlnet
    P("controlnet_conditioning_scale", list, [1.0], "weight of each ControlNet's residuals, one for all or one per "
      "ControlNet; 0 turns one off", minimum=0, item=float, flags=("--conditioning-scale",), control=True),
    P("preprocess", str, "none", "none (the condition is ready) or canny (take the image's Canny edges)",
      choices=PREPROCESSORS, control=True),
    P("canny_low", int, 100, "Canny: gradients below this are never edges", minimum=0, maximum=CANNY_MAX,
      control=True),
    P("canny_high", int, 200, "Canny: gradients above this are always edges", minimum=0, maximum=CANNY_MAX,
      control=True),
    P("resize_condition", bool, False, "resize a condition whose size is not width × height (default: refuse it)",
      control=True),
    # An image to start from (image_input.py)
    P("image", object, None, "an image to repaint (img2img), inpaint (with mask_image), extend (smaller than the "
      "canvas) or upscale: the canvas is its size unless width or height is given", unset="none: from text alone",
      from_image=True),  # a file on the command, base64 on a server
    P("mask_image", object, None, "of the image's size: white where the image is repainted, black where it is "
      "kept", unset="none: img2img repaints the whole image", flags=("--mask",), from_image=True),
    P("strength", float, None, "how far the image is noised before it is denoised (1: repainted whole)",
      unset="0.8; 1 with a mask or on a larger canvas", minimum=0, maximum=1, above=True, from_image=True),
    P("image_at", list, None, "X,Y: the image's top-left corner on a larger canvas, in pixels", unset="centred",
      minimum=0, item=int, from_image=True),
    P("resize_image", bool, False, "resize the image to fit the canvas, keeping its aspect ratio (default: refuse "
      "an image larger than the canvas)", from_image=True),
)
del P

BY_NAME = {parameter.name: parameter for parameter in PARAMETERS}
# The parameters of SyncDiffusionPipeline.__call__ that this table describes, in the table's order.
PIPELINE_NAMES = tuple(p.name for p in PARAMETERS if not p.control and not p.from_image)
CONTROL_NAMES = tuple(p.name for p in PARAMETERS if p.control)
# An image input's parameters: the plain pipelines take them, ControlSync's do not
IMAGE_NAMES = tuple(p.name for p in PARAMETERS if p.from_image)
# Fields where an explicit null means something other than "the model's default": every step, a
# random seed, the centre view, tiled when large, the strength of the case, centred (the API and a
# batch line both read them so).
NULL_MEANS_SOMETHING = ("sync_threshold", "seed", "anchor", "tiled_decode", "strength", "image_at")
# Old names a PNG's metadata may carry, and the parameter each now is.
RENAMED = {"conditioning_scale": "controlnet_conditioning_scale"}
# Where ControlSync's paper departs from SyncDiffusion's: sync in the first 10 of 50 steps.
CONTROL_PAPER = {"sync_threshold": 10}


def paper_defaults(control: bool = False) -> dict:
    """Every parameter's default: the SyncDiffusion paper's, or with `control` the ControlSync paper's."""
    names = PIPELINE_NAMES + (CONTROL_NAMES if control else IMAGE_NAMES)
    return {name: _copy(BY_NAME[name].default) for name in names} | (CONTROL_PAPER if control else {})


def _copy(value):
    return list(value) if isinstance(value, list) else value


def recommended_of(source) -> dict:
    """The settings a model recommends: its family's (families.FAMILY_DEFAULTS: FLUX's distilled
    guidance 3.5, SD3's 7, SDXL's 5, diffusers' own) and its variant's (families.VARIANT_DEFAULTS:
    FLUX.1 schnell's 4 steps) under a diffusers folder's recommended.json, as parameters. A key that
    is no parameter is a SettingError: the file is wrong."""
    from .bundled import recommended_settings

    family = defaults_of(getattr(source, "family", None), getattr(source, "variant", None))
    if getattr(source, "kind", None) != "folder":
        return family
    recommended = recommended_settings(source.ref)
    unknown = sorted(set(recommended) - set(BY_NAME))
    if unknown:
        raise SettingError(None, f"{Path(source.ref) / 'recommended.json'} sets {listed(unknown)}, which no "
                                 f"parameter is: fix the file.")
    return {**family, **recommended}


def model_defaults(source, control: bool = False) -> dict:
    """The defaults of every parameter for the model `source` names: its recommended settings,
    else the paper's."""
    return {**paper_defaults(control), **recommended_of(source)}


def resolve(given: dict, stored: dict | None = None, recommended: dict | None = None, control: bool = False) -> dict:
    """Every parameter of a panorama, each from the first source that has it: `given` (None there
    means not given), `stored` (the PNG of --from), `recommended` (the model's), the paper's."""
    values = {**paper_defaults(control), **(recommended or {})}
    values.update({name: value for name, value in (stored or {}).items() if name in values})
    values.update({name: value for name, value in given.items() if name in values and value is not None})
    if values.get("fast_modes") is not None:
        values["fast_modes"] = fast_modes(values["fast_modes"])
    return values


def json_kind(value) -> str:
    """What a decoded JSON value is, in JSON's words (array, not list; null, not NoneType)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    kinds = ((dict, "object"), (list, "array"), (str, "string"), ((int, float), "number"))
    return next((word for kind, word in kinds if isinstance(value, kind)), type(value).__name__)


def stored_parameters(metadata) -> dict:
    """The parameters of a PNG's metadata (panosync's JSON), renamed to today's names; a
    SettingError when it is not a JSON object (tampered with, or another program's)."""
    if not isinstance(metadata, dict):
        raise SettingError(None, f"The file's panosync metadata is a JSON {json_kind(metadata)}, not an object of "
                                 f"parameters: it was changed after panosync wrote it.")
    stored = {RENAMED.get(name, name): value for name, value in metadata.items()}
    for name, value in stored.items():  # as strict as recommended.json: a PNG's types are the ones panosync wrote
        parameter = BY_NAME.get(name)
        if parameter is not None and value is not None:
            try:
                _check_one(parameter, value)
            except SettingError as error:
                raise SettingError(name, f"The file's metadata: {str(error).rstrip('.')}; it was changed after "
                                         f"panosync wrote it.") from None
    return stored


def fast_modes(modes: Iterable[str] | str | None) -> list[str]:
    """The named fast modes, sorted; "none" names none (faithful). A SettingError for others."""
    if modes is None:
        return []
    if isinstance(modes, str):
        modes = modes.replace(",", " ").split()
    if not isinstance(modes, (list, tuple, set, frozenset)) or not all(isinstance(m, str) for m in modes):
        raise SettingError("fast_modes", f"fast_modes must be a list of names ({', '.join(FAST_MODES)}), got "
                                         f"{shown(modes)}.")
    chosen = set(modes) - {NO_FAST_MODE}
    unknown = sorted(chosen - set(FAST_MODES))
    if unknown:
        raise SettingError("fast_modes", f"fast_modes: unknown fast mode {listed(unknown, repr)}: use any of "
                                         f"{', '.join(FAST_MODES)}, or none.")
    return sorted(chosen)


# --------------------------------------------------------------------------------------- checks

CUT_CHARACTERS = 80  # of a name or text a sentence repeats: a megabyte-long field name is not echoed whole
LISTED = 5  # names a sentence lists; the rest are counted


def cut(text) -> str:
    """`text` (a name, a path, a value a user typed) as a sentence shows it: at most CUT_CHARACTERS
    characters, then "…" and the length."""
    text = str(text)
    return text if len(text) <= CUT_CHARACTERS else f"{text[:CUT_CHARACTERS]}… ({len(text):,} characters)"


def listed(names, show=None) -> str:
    """Names as a sentence lists them: the first LISTED, each cut short, and how many more."""
    names = list(names)
    shown_names = [cut(show(name) if show else name) for name in names[:LISTED]]
    more = f" and {len(names) - LISTED:,} more" if len(names) > LISTED else ""
    return ", ".join(shown_names) + more


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


KIND_WORDS = {int: "a whole number", float: "a number", str: "text", bool: "true or false", list: "a list"}


def _check_one(parameter: Parameter, value, item_of: str | None = None) -> None:
    name = item_of or parameter.name
    kind = parameter.item if item_of else parameter.kind
    if kind is list:
        if not isinstance(value, (list, tuple)):
            raise SettingError(parameter.name, f"{name} must be a list, got {shown(value)}.")
        for item in value:
            _check_one(parameter, item, item_of=f"{name}: every value")
        return
    if kind is object:  # anything the front end reads itself (condition images)
        return
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    fits = {int: isinstance(value, int) and not isinstance(value, bool), float: is_number,
            str: isinstance(value, str), bool: isinstance(value, bool)}[kind]
    if not fits:
        raise SettingError(parameter.name, f"{name} must be {KIND_WORDS[kind]}, got {shown(value)}.")
    if kind is float and not math.isfinite(value):
        raise SettingError(parameter.name, f"{name} must be a finite number, got {shown(value)}.")
    if parameter.choices and value not in parameter.choices:
        raise SettingError(parameter.name, f"{name} must be one of {', '.join(parameter.choices)}, got {shown(value)}.")
    if kind is str:
        # text a tokenizer reads (a path, sync_decoder, may hold any bytes the file system allows)
        if parameter.name in PROMPTS and lone_surrogate(value) is not None:
            raise SettingError(parameter.name, f"{name} must be UTF-8 text, and it holds a lone surrogate (a byte "
                                               f"that is no UTF-8, or half of a UTF-16 pair): type it again as "
                                               f"plain text.")
        if parameter.minimum is not None and len(value.strip()) < parameter.minimum:
            example = ": say what the panorama shows, e.g. \"snowy mountains\"" if parameter.name == "prompt" else ""
            raise SettingError(parameter.name, f"{name} must not be empty{example}.")
        if parameter.maximum is not None and len(value) > parameter.maximum:
            raise SettingError(parameter.name, f"{name} must be at most {parameter.maximum} characters, got "
                                               f"{len(value)}.")
        return
    if kind is bool:
        return
    low, high = parameter.minimum, parameter.maximum
    if (low is not None and (value <= low if parameter.above else value < low)) or (high is not None and value > high):
        raise SettingError(parameter.name, f"{name} must be {parameter.range_words()}, got {shown(value)}.")


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in `text` (a JSON escape like \\ud800 with no partner, or
    a byte the shell passed that is no UTF-8), None when there is none. Such a string is not text: it
    cannot be encoded, stored, shown or tokenized."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def refusal(name: str, value, item: bool = False) -> str | None:
    """The sentence `check` refuses `value` of the parameter `name` with (with `item`, one item of a
    list parameter); None when it takes the value or there is no such parameter."""
    parameter = BY_NAME.get(name)
    if parameter is None:
        return None
    try:
        if value is None and not item:
            check({name: None})
        elif item and parameter.kind is list:
            _check_one(parameter, value, item_of=f"{name}: every value")
        else:
            _check_one(parameter, value)
    except SettingError as error:
        return str(error)
    return None


def image_with_rows_wrapped(tile: str) -> SettingError:
    """The refusal of an image input on a canvas whose top and bottom edges meet."""
    return SettingError("tile", f"tile {tile} makes the top and bottom edges meet, which an image input does not "
                                f"continue: leave tile out, or give tile x (left and right only) with an image.")


def check(values: dict, geometry: Geometry | None = None) -> None:
    """Raise a SettingError that names the parameter and says what to change, for any of `values`
    out of its type or range; with the model's `geometry`, also for what depends on the model
    (multiples of the VAE factor, at least one window, the stride, the steps its scheduler allows,
    the anchor's index). Touches no model: front ends call it before loading any weights."""
    for name, value in values.items():
        parameter = BY_NAME.get(name)
        if parameter is None:
            continue
        if value is None:
            if parameter.unset is None:
                raise SettingError(name, f"{name} must be given ({KIND_WORDS[parameter.kind]}).")
            continue
        _check_one(parameter, value)
    if values.get("fast_modes") is not None:
        fast_modes(values["fast_modes"])
    decoder = values.get("sync_decoder")
    if decoder is not None and not _is_file(Path(decoder).expanduser() / "config.json"):
        raise SettingError("sync_decoder", f"sync_decoder {cut(decoder)} is not a diffusers AutoencoderTiny folder (it "
                                           f"has no config.json): give the folder of a saved TAESD.")
    if "canny_low" in values and "canny_high" in values and values["canny_low"] > values["canny_high"]:
        raise SettingError("canny_low", f"canny_low ({shown(values['canny_low'])}) must not exceed canny_high "
                                        f"({shown(values['canny_high'])}).")
    if values.get("image") is not None and wrapped_axes(values.get("loop_closure"), values.get("tile"))[1]:
        raise image_with_rows_wrapped(values["tile"])
    if "image" in values and values["image"] is None:  # an image input's settings without the image
        for name in ("strength", "image_at", "resize_image"):
            if values.get(name) not in (None, False):
                raise SettingError(name, f"{name} is an image input's setting: give image (--image) too, or leave "
                                         f"{name} out.")
    image_at = values.get("image_at")
    if image_at is not None and len(image_at) != 2:
        raise SettingError("image_at", f"image_at must be two whole numbers X,Y (the image's top-left corner in "
                                       f"pixels), got {shown(image_at)}.")
    width, height = values.get("width"), values.get("height")
    if width is not None and height is not None and width * height > MAX_PIXELS:
        raise SettingError("width" if width >= height else "height",
                           f"width × height must be at most {MAX_PIXELS:,} pixels, got {width} × {height}.")
    if geometry is not None:
        _check_geometry(values, geometry)


def _check_geometry(values: dict, geometry: Geometry) -> None:
    from .views import views_for_canvas

    geometry = geometry.with_window(values.get("window"))
    for mode, reason in geometry.refused_fast_modes:
        if mode in (values.get("fast_modes") or ()):
            raise SettingError("fast_modes", reason)
    window, factor = geometry.window, geometry.vae_factor
    width, height = values.get("width"), values.get("height")
    for side in ("width", "height"):
        size = values.get(side)
        if size is None:
            continue
        if size % factor:
            raise SettingError(side, f"{side} must be a multiple of {factor} pixels (the VAE factor), got {size}.")
        if size < geometry.window_pixels:
            raise SettingError(side, f"{side} must be at least one window, {geometry.window_pixels} pixels, got "
                                     f"{size}.")
    stride = values.get("stride")
    if stride is not None and stride > window:
        raise SettingError("stride", f"stride must be between 1 and the window size ({window} latent pixels), got "
                                     f"{stride}.")
    steps = values.get("num_inference_steps")
    if steps is not None and steps > geometry.max_steps:
        raise SettingError("num_inference_steps", f"num_inference_steps must be at most {geometry.max_steps} with "
                                                  f"this model's scheduler, got {steps}.")
    if geometry.window_multiple and geometry.window_pixels < SMALLEST_LPIPS_SIDE:
        # no sync_image_scale (at most 1) helps a window below LPIPS's smallest: name the window's own bound
        step = geometry.window_multiple * factor
        lowest = -(-SMALLEST_LPIPS_SIDE // step) * step
        raise SettingError("window", f"window must be at least {lowest} pixels (LPIPS-VGG compares views of "
                                     f"{SMALLEST_LPIPS_SIDE} pixels or more), got {geometry.window_pixels}.")
    scale = values.get("sync_image_scale")
    if scale is not None and round(geometry.window_pixels * scale) < SMALLEST_LPIPS_SIDE:
        smallest = SMALLEST_LPIPS_SIDE / geometry.window_pixels
        raise SettingError("sync_image_scale", f"sync_image_scale {scale:g} shrinks the {geometry.window_pixels}-pixel "
                                               f"views below {SMALLEST_LPIPS_SIDE} pixels, too small for LPIPS-VGG: "
                                               f"use {smallest:g} or more.")
    if "lpips_alex" in (values.get("fast_modes") or ()):
        compared = round(geometry.window_pixels * (scale or 1.0))
        if compared < SMALLEST_ALEX_SIDE:
            raise SettingError("fast_modes", f"lpips_alex compares images of {SMALLEST_ALEX_SIDE} pixels or more, "
                                             f"and this call's sync loss compares {compared}: leave lpips_alex out"
                                             + (" or raise sync_image_scale." if (scale or 1.0) < 1 else "."))
    anchor = values.get("anchor")
    if anchor is not None and None not in (width, height, stride):
        count = len(views_for_canvas(height // factor, width // factor, window, stride,
                                     *wrapped_axes(values.get("loop_closure"), values.get("tile"))))
        if anchor >= count:
            raise SettingError("anchor", f"anchor must be a view index from 0 to {count - 1} (this canvas has {count} "
                                         f"views), got {anchor}.")


def fill_canvas(values: dict, geometry: Geometry) -> dict:
    """`values` with the canvas a model of this geometry makes where they leave it unset: one
    window high, four wide, views a quarter window apart (512 × 2048 at stride 16 for Stable
    Diffusion 2 base, the paper's). ControlSync's canvas is the condition's, set before this."""
    geometry = geometry.with_window(values.get("window"))
    canvas = dict(window=geometry.window_pixels, **canvas_defaults(geometry.window, geometry.vae_factor))
    if values.get("width") is None and canvas["width"] > MAX_SIDE:  # the window's fault, not the width's
        step = max(geometry.window_multiple, 1) * geometry.vae_factor
        largest = MAX_SIDE // 4 // step * step
        raise SettingError("window", f"window {geometry.window_pixels} is too large for the canvas limit: its default "
                                     f"canvas, four windows wide, would be {canvas['width']} pixels wide, over "
                                     f"{MAX_SIDE}; choose a window of at most {largest} pixels, or give width.")
    return {**values, **{name: value for name, value in canvas.items() if values.get(name) is None}}


def draw_seed() -> int:
    """A random seed for a request that names none; reported with the result, so it can be reused."""
    return random.randrange(UINT32_MAX + 1)


def sync_schedule(values: dict):
    """The SyncSchedule of checked `values`."""
    from .sync import SyncSchedule

    return SyncSchedule(values["sync_weight"], values["sync_decay_rate"], values["sync_freq"], values["sync_threshold"])

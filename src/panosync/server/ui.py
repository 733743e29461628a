"""The web page (`panosync ui`): every served parameter of settings.py, presets, a seed
randomiser, progress while generating, the PNG to download, and for loop-closed panoramas a 360° view.

Requests go through the same checks as the HTTP API's (schema and `PanoramaModel.prepare`), so a
bad setting is a sentence on the page, before any model work. The inputs are made from the
parameters' table (`parameter_input`); this module only lays them out.

With ControlNets (`panosync ui --controlnet …`) the page also takes a condition image per ControlNet,
the preprocessing (Canny thresholds), the conditioning scale and whether to resize the condition,
and shows the condition the ControlNets see: live while the settings change, and the one used.
Without, it takes an image to start from (img2img; extending it onto a larger canvas; upscaling it
with resize_image), an optional mask (inpainting), the strength and the image's corner; the canvas
follows an uploaded image's size. The images are kept beside the panoramas (images/), and the PNG's
metadata names them as the command's does.

Region prompts are a small table of boxes (x0, y0, x1, y1, a prompt, a weight; empty rows are
skipped), drawn over the canvas's outline as they are typed; the request's `regions`, checked as
the API checks them. The page takes no region masks (the API and the command do).
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import PIL.ImageColor
import PIL.ImageDraw
import PIL.ImageFont
import torch
from pydantic import ValidationError

from .. import settings
from ..conditions import load_condition_image, prepare_condition
from ..image_input import IMG2IMG_STRENGTH, INPAINT_STRENGTH
from ..loras import MAX_SCALE, MIN_SCALE
from ..metadata import save_png
from ..precision import NonFiniteError
from . import viewer
from ..presets import PRESET_NAMES, presets
from .generation import PanoramaModel
from .limits import Limits
from .schema import CONTROL_FIELDS, FIELDS, IMAGE_FIELDS, IMAGE_UPLOADS, FieldError, PredictionRequest, describe_error
from .uploads import checked_image_input, save_condition, save_image_input

# Where each input goes on the page (the rest of FIELDS: at the top, in settings' order).
SYNC_INPUTS = ("sync_weight", "sync_decay_rate", "sync_freq", "sync_threshold")
DIFFUSION_INPUTS = ("guidance_scale", "num_inference_steps", "window", "stride")
SPEED_INPUTS = ("fast_modes", "sync_image_scale", "tiled_decode", "anchor")
# The spans of the sliders of parameters whose range has no end (or an end no one would slide to).
SLIDER_SPANS = {"sync_weight": (0, 100, 0.5), "sync_freq": (1, 50, 1), "num_inference_steps": (1, 200, 1),
                "guidance_scale": (0, 30, 0.5), "sync_decay_rate": (0.01, 1, 0.01),
                "sync_image_scale": (0.05, 1, 0.05), "controlnet_conditioning_scale": (0, 2, 0.05),
                "canny_low": (0, settings.CANNY_MAX, 1), "canny_high": (0, settings.CANNY_MAX, 1),
                "strength": (0.01, 1, 0.01), "region_base": (0, 1, 0.05)}
PRESET_INFO = ("Each sets the sync and diffusion settings and the approximations of the sync step: fast syncs the "
               "first quarter of the steps with two approximations (about twice MultiDiffusion's time); faithful "
               "is the paper's sync step in every step; paper the paper's settings.")
TILED = {"auto": None, "on": True, "off": False}  # tiled_decode's three states, as the page shows them
NO_TILE = "none"  # tile's choice on the page for no edges meeting but loop_closure's
# The region table: its columns, and the rows it starts with (more may be added; the checks count them).
REGION_COLUMNS = ("x0", "y0", "x1", "y1", "prompt", "weight")
REGION_ROWS = 4
PREVIEW_SIZE = (768, 256)  # the region preview fits the canvas in this box
# The boxes' colours in the preview, in turn (matplotlib's tab10).
REGION_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf")


def condition_picture(conditions: list[torch.Tensor]) -> PIL.Image.Image:
    """The conditions the ControlNets see, one above the other, as an image."""
    pixels = torch.cat(conditions, dim=-2)[0].permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
    return PIL.Image.fromarray(np.ascontiguousarray(pixels))


def preview_condition(path: str | None, preprocess: str, canny_low, canny_high) -> PIL.Image.Image | None:
    """What the ControlNet will see of the uploaded image, at the image's own size: the image, or its
    Canny edges. None without an image; a warning, not an error, for settings still being changed."""
    if not path:
        return None
    try:
        image = load_condition_image(path)
        return condition_picture([prepare_condition(image, image.width, image.height, False, preprocess,
                                                    int(canny_low), int(canny_high))])
    except ValueError as error:
        gr.Warning(str(error))
        return None


def presets_for(model: PanoramaModel) -> dict[str, dict]:
    return presets(model.defaults, model.geometry, model.control)


def parameter_input(name: str, value, model: PanoramaModel, limits: Limits, **options):
    """The page's input for the parameter `name`, set to `value`: made from its type and range."""
    parameter = settings.BY_NAME[name]
    common = {"label": name, "elem_id": name, "info": parameter.help, **options}
    if parameter.kind is list and parameter.choices:
        return gr.CheckboxGroup(list(parameter.choices), value=list(value or []), **common)
    if name == "tiled_decode":
        return gr.Radio(list(TILED), value=next(k for k, v in TILED.items() if v == value), **common)
    if name == "tile":
        return gr.Radio([NO_TILE, *parameter.choices], value=value or NO_TILE, **common)
    if name == "regions":
        return region_table(value, elem_id=name, **{key: value for key, value in options.items() if key != "info"})
    if parameter.choices:
        return gr.Radio(list(parameter.choices), value=value, **common)
    if parameter.kind is bool:
        return gr.Checkbox(value=bool(value), **{**common, "label": f"{name}: {parameter.help}", "info": None})
    if parameter.kind is str:
        return gr.Textbox(value=value or "", max_length=parameter.maximum, **common)
    if name in ("width", "height"):  # from the smallest window a request may choose
        return gr.Slider(smallest_window(model), largest_side(model, limits), value=value, step=model.vae_factor,
                         **common)
    if name == "stride":  # up to the largest window a request may choose
        return gr.Slider(1, largest_window(model, limits), value=value, step=1, **common)
    if name == "window":  # a UNet's is its native size; SD3's and FLUX's may be chosen, in steps of their packing
        step = model.geometry.window_multiple * model.vae_factor
        if not step:
            return gr.Number(value=value, precision=0, interactive=False, **common)
        return gr.Number(value=value, step=step, **common)  # as typed, for the checks' sentences (below)
    if name == "controlnet_conditioning_scale":
        value = value[0]
    if name == "strength" and value is None:  # a slider has a value: img2img's default (a mask sets 1, below)
        value = IMG2IMG_STRENGTH
    if name == "image_at":  # as the command takes it: X,Y
        return gr.Textbox(value="" if value is None else ",".join(map(str, value)), placeholder="X,Y",
                          **{**common, "info": f"{parameter.help}; empty: {parameter.unset}"})
    if name in SLIDER_SPANS and value is not None:
        low, high, step = SLIDER_SPANS[name]
        return gr.Slider(low, high, value=value, step=step, **common)
    if parameter.unset is not None and common["info"] == parameter.help:
        common["info"] = f"{parameter.help}; empty: {parameter.unset}"
    # No precision (Gradio would round 7.5 to a seed of 8) and no bounds (Gradio would refuse in its
    # own words): the request's checks refuse such values with the command's sentences.
    return gr.Number(**{"value": value, **common})


def page_values(names: tuple[str, ...], values) -> dict:
    """The page's input values as a request's fields: empty numbers are unset, tiled_decode's words
    are its states, a lone conditioning scale stands for all ControlNets."""
    fields = dict(zip(names, values))
    if "tiled_decode" in fields:
        fields["tiled_decode"] = TILED[fields["tiled_decode"]]
    if fields.get("tile") == NO_TILE:
        fields["tile"] = None
    if "controlnet_conditioning_scale" in fields:
        fields["controlnet_conditioning_scale"] = [fields["controlnet_conditioning_scale"]]
    if "image_at" in fields:
        fields["image_at"] = corner(fields["image_at"])
    if "regions" in fields:
        fields["regions"] = table_regions(fields["regions"])
    for name, value in fields.items():
        if settings.BY_NAME[name].kind is int and isinstance(value, float) and value.is_integer():
            fields[name] = int(value)  # a slider's whole number comes as a float
    fields["negative_prompt"] = fields.get("negative_prompt") or ""
    return fields


def corner(text):
    """image_at as typed, "X,Y", as a request's list: whole numbers where they are, else the words
    typed, for the request's checks to refuse with their sentence; None when empty (centred)."""
    if not isinstance(text, str):
        return text
    if not text.strip():
        return None
    parts = [part.strip() for part in text.split(",")]
    return [int(part) if part.lstrip("-").isdigit() else part for part in parts]


def region_table(regions, **options) -> gr.Dataframe:
    """The table of region boxes, one row each (x0, y0, x1, y1, prompt, weight), filled with
    `regions`' boxes and then empty rows, REGION_ROWS at least."""
    rows = [[*region["box"], region["prompt"], region.get("weight", 1.0)] for region in regions or []
            if "box" in region]
    rows += [[None, None, None, None, "", None] for _ in range(REGION_ROWS - len(rows))]
    return gr.Dataframe(rows, headers=list(REGION_COLUMNS), datatype=["number"] * 4 + ["str", "number"],
                        type="array", column_count=len(REGION_COLUMNS),
                        label="regions: a prompt of its own in a box of the canvas, x0, y0, x1, y1 in pixels (x1 "
                              "and y1 excluded), and a weight (empty: 1); the prompt covers the rest", **options)


def table_cell(cell):
    """A cell of the region table as a request takes it: None when empty, whole numbers as int,
    numbers typed as text as numbers, anything else as typed (for the checks to refuse)."""
    if isinstance(cell, str):
        cell = cell.strip()
        try:
            cell = float(cell) if cell else None
        except ValueError:
            return cell
    if isinstance(cell, float):
        if math.isnan(cell):
            return None
        return int(cell) if cell.is_integer() else cell
    return cell


def table_regions(table) -> list[dict] | None:
    """The region table's rows as a request's `regions`: {"box", "prompt"} and the weight when one
    is typed. A row without a box and a prompt is skipped (a weight alone says nothing); None when
    every row is. A prompt is kept as typed; the rest of a row as table_cell reads it. `table` is
    its rows, as the page's event gives them, or the table's own value ({"headers", "data"})."""
    if isinstance(table, dict):
        table = table.get("data")
    regions = []
    for row in table or []:
        row = list(row) + [None] * (len(REGION_COLUMNS) - len(row))
        *box, prompt, weight = row[:len(REGION_COLUMNS)]
        box, weight = [table_cell(side) for side in box], table_cell(weight)
        prompt = "" if prompt is None or (isinstance(prompt, float) and math.isnan(prompt)) else prompt
        if all(side is None for side in box) and not str(prompt).strip():
            continue
        regions.append({"box": box, "prompt": prompt, **({} if weight is None else {"weight": weight})})
    return regions or None


def regions_preview(width, height, table) -> PIL.Image.Image | None:
    """The canvas's outline, fitted in PREVIEW_SIZE, with the table's boxes drawn over it and
    numbered as the checks count the regions; a row that is no box of four whole numbers yet is
    counted but not drawn. None while the canvas has no size."""
    try:
        width, height = int(width), int(height)
    except (TypeError, ValueError):
        return None
    if width < 1 or height < 1:
        return None
    scale = min(PREVIEW_SIZE[0] / width, PREVIEW_SIZE[1] / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    picture = PIL.Image.new("RGBA", size, "#e8e8e8")
    boxes = []
    for number, region in enumerate(table_regions(table) or [], 1):
        box = region["box"]
        if len(box) == 4 and all(isinstance(side, int) for side in box) and box[2] > box[0] and box[3] > box[1]:
            colour = REGION_COLOURS[(number - 1) % len(REGION_COLOURS)]
            corners = [round(box[0] * scale), round(box[1] * scale), round(box[2] * scale) - 1,
                       round(box[3] * scale) - 1]
            tint = PIL.Image.new("RGBA", size, (0, 0, 0, 0))  # one at a time: where boxes overlap, both show
            PIL.ImageDraw.Draw(tint).rectangle(corners, fill=PIL.ImageColor.getrgb(colour) + (80,))
            picture.alpha_composite(tint)
            boxes.append((number, colour, corners))
    lines = PIL.ImageDraw.Draw(picture)
    font = PIL.ImageFont.load_default(size=14)
    for number, colour, corners in boxes:  # the outlines and numbers over every tint
        lines.rectangle(corners, outline=colour, width=2)
        lines.text((corners[0] + 5, corners[1] + 3), str(number), fill=colour, font=font)
    lines.rectangle([0, 0, size[0] - 1, size[1] - 1], outline="#444444", width=1)  # the canvas's edge
    return picture.convert("RGB")


def strength_for_mask(mask_path, strength_now):
    """The strength slider when a mask is uploaded or removed: the default of the case (1 with a mask,
    else 0.8), unless it was moved from the other case's default."""
    if mask_path and strength_now == IMG2IMG_STRENGTH:
        return INPAINT_STRENGTH
    if not mask_path and strength_now == INPAINT_STRENGTH:
        return IMG2IMG_STRENGTH
    return strength_now


def read_image_input(path: str, field: str, limits: Limits):
    """An uploaded image input, read and checked as the API checks one sent (uploads.checked_image_input)."""
    what = IMAGE_UPLOADS[field]
    try:
        image = load_condition_image(path, limits.max_pixels, what)
    except ValueError as error:
        raise FieldError(field, str(error)) from None
    return checked_image_input(image, field, "uploaded")


def smallest_window(model: PanoramaModel) -> int:
    """The smallest window (image pixels) a request may choose: the model's own, where it is fixed."""
    step = model.geometry.window_multiple * model.vae_factor
    return step or model.window * model.vae_factor


def largest_window(model: PanoramaModel, limits: Limits) -> int:
    """The largest window (latent pixels) a request may choose: the model's bound, or the largest
    square canvas the limits allow, in steps of the window's multiple; the model's own, where fixed."""
    multiple = model.geometry.window_multiple
    if not multiple:
        return model.window
    square = min(limits.max_side, math.isqrt(limits.max_pixels)) // model.vae_factor
    largest = square if model.geometry.max_window is None else min(square, model.geometry.max_window)
    return max(multiple, largest // multiple * multiple)


def largest_side(model: PanoramaModel, limits: Limits) -> int:
    """The longest side the limits allow with the other side one window, in VAE-factor steps."""
    window = model.window * model.vae_factor
    longest = min(limits.max_side, limits.max_pixels // window)
    return max(window, longest // model.vae_factor * model.vae_factor)


def build_ui(model: PanoramaModel, limits: Limits, out_dir: str | Path) -> gr.Blocks:
    out_dir = Path(out_dir).expanduser()
    presets = presets_for(model)
    defaults = model.defaults
    window = model.window * model.vae_factor
    longest = largest_side(model, limits)
    # ControlSync's canvas defaults to the condition's size: until one is uploaded, the usual canvas
    canvas = settings.fill_canvas(defaults, model.geometry)
    if model.control:  # ControlSync takes no image input
        names = tuple(name for name in FIELDS if name not in IMAGE_FIELDS)
        names += tuple(name for name in CONTROL_FIELDS if name != "condition")
    else:  # the image and mask are uploads, beside the inputs
        names = tuple(name for name in FIELDS if name not in IMAGE_UPLOADS)
    image_count = 0 if model.control else len(IMAGE_UPLOADS)
    inputs: dict[str, gr.components.Component] = {}

    def add(name, **options):
        inputs[name] = parameter_input(name, canvas.get(name, defaults.get(name)), model, limits, **options)
        return inputs[name]

    def generate(*values, progress=gr.Progress()):
        fields = page_values(names, values[:len(names)])
        randomize = values[len(names)]
        condition_count = len(model.controlnets) if model.control else 0
        condition_paths = values[len(names) + 1:len(names) + 1 + condition_count]
        uploads = dict(zip(IMAGE_UPLOADS, values[len(names) + 1 + condition_count:
                                                 len(names) + 1 + condition_count + image_count]))
        if model.loras:  # one slider per LoRA the server loaded, in their order
            scales = values[len(names) + 1 + condition_count + image_count:]
            fields["lora_scales"] = {lora.adapter_name: float(scale) for lora, scale in zip(model.loras, scales)}
        if not any(uploads.values()):  # no image input: its settings say nothing, and are not recorded
            fields = {name: value for name, value in fields.items() if name not in IMAGE_FIELDS}
        if randomize or fields["seed"] is None:
            fields["seed"] = settings.draw_seed()
        try:
            given = PredictionRequest(**fields).given()
            if model.control:
                if not all(condition_paths):
                    raise FieldError("condition", "Upload a condition for every ControlNet: the image the panorama "
                                                  "follows (an edge map of the canvas's size, or a photo with preprocess "
                                                  "\"canny\").")
                given["condition"] = [load_condition_image(path, limits.max_pixels) for path in condition_paths]
            for name, path in uploads.items():
                if path:
                    given[name] = read_image_input(path, name, limits)
            parameters = model.prepare(given, limits)
        except ValidationError as error:
            raise gr.Error("; ".join(describe_error(e) for e in error.errors())) from None
        except ValueError as error:  # a FieldError, or from reading an image
            raise gr.Error(str(error)) from None
        if model.control:  # kept beside the panoramas: their metadata names the files, as the command's does
            parameters["condition"] = [str(save_condition(image, out_dir / "conditions"))
                                       for image in parameters["condition"]]
        for name in IMAGE_UPLOADS:  # likewise, by path and SHA-256
            if parameters.get(name) is not None:
                path, sha256 = save_image_input(parameters[name], out_dir / "images")
                parameters[name] = {"path": str(path), "sha256": sha256}
        total = parameters["num_inference_steps"]
        progress((0, total), desc="starting", unit="steps")

        def after_step(step, sync_weight):
            syncing = f", syncing (w = {sync_weight:.3g})" if sync_weight else ""
            progress((step, total), desc=f"step {step} of {total}{syncing}", unit="steps")

        started = time.perf_counter()
        try:
            image = model.generate(parameters, after_step)
        except NonFiniteError as error:
            raise gr.Error(str(error)) from None
        seconds = time.perf_counter() - started
        path = out_dir / f"panosync-{parameters['seed']}-{uuid.uuid4().hex[:8]}.png"
        save_png(image, path, model.metadata(parameters, image))
        faithful = "" if parameters["fast_modes"] else ", faithful"
        columns, rows = settings.wrapped_axes(parameters["loop_closure"], parameters.get("tile"))
        loop = columns and not rows  # a band of the sphere; a texture that tiles is none
        wrap = ", 360°" if loop else ", tiles on both axes" if columns else ", tiles top to bottom" if rows else ""
        summary = (f"{image.width} × {image.height}, seed {parameters['seed']}, {total} steps{faithful}, "
                   f"{seconds:.1f} s" + wrap
                   + (", following the condition" if model.control else "")
                   + (", from the image" if parameters.get("image") is not None else "") + f" — saved as `{path}`")
        outputs = (str(path), gr.update(value=str(path), visible=True), summary, parameters["seed"],
                   gr.update(value=viewer.viewer_source(image) if loop else "", visible=loop))
        if model.control:
            outputs += (condition_picture(model.conditions(parameters)),)
        return outputs

    def fit_canvas(path, width_now, height_now):
        """The canvas follows an uploaded condition's (or image's) size, when the sliders can show it."""
        try:
            size = load_condition_image(path, limits.max_pixels).size if path else None
        except ValueError:
            size = None
        if size is None:
            return width_now, height_now
        fits = [smallest_window(model) <= side <= longest for side in size]
        return (size[0] if fits[0] else width_now), (size[1] if fits[1] else height_now)

    def canvas_of_window(pixels, width_now, height_now, stride_now):
        """A chosen window's own canvas (four windows wide, one high) and stride, as a request with
        that window and no canvas gets; ControlSync's canvas stays the condition's."""
        try:
            canvas = settings.fill_canvas({"window": int(pixels)}, model.geometry)
        except (TypeError, ValueError) as error:  # no window yet, or one the model refuses: the sentence
            if isinstance(error, settings.SettingError):
                gr.Warning(str(error))
            return width_now, height_now, stride_now
        if model.control:
            return width_now, height_now, canvas["stride"]
        return canvas["width"], canvas["height"], canvas["stride"]

    def apply_preset(name):
        return [presets[name][field] for field in PRESET_NAMES]

    with gr.Blocks(title="panosync", analytics_enabled=False) as page:
        controlnets = "; ControlNet: " + ", ".join(f"`{name}`" for name in model.controlnets) if model.control else ""
        gr.Markdown(f"## panosync — SyncDiffusion panoramas\nModel: `{model.name}` (window {window} pixels)"
                    f"{controlnets}.")
        with gr.Row():
            with gr.Column(scale=2):
                add("prompt", placeholder="a photo of a mountain range at twilight", info=None)
                add("negative_prompt")
                conditions = []
                if model.control:
                    # first: the condition decides the canvas
                    with gr.Accordion("ControlSync: the condition the panorama follows", open=True,
                                      elem_id="control-settings"):
                        several = len(model.controlnets) > 1
                        conditions = [gr.Image(label="condition" + (f" for {name}" if several else ""),
                                               type="filepath", image_mode=None, sources=["upload"], height=160,
                                               elem_id=f"condition-{index}" if several else "condition")
                                      for index, name in enumerate(model.controlnets)]
                        add("preprocess")
                        with gr.Row():
                            add("canny_low")
                            add("canny_high")
                        add("controlnet_conditioning_scale")
                        add("resize_condition")
                image_uploads = []
                if not model.control:
                    with gr.Accordion("an image to start from: img2img, inpainting (with a mask), extending, upscaling",
                                      open=False, elem_id="image-settings"):
                        with gr.Row():
                            image_uploads = [
                                gr.Image(label="image: the canvas takes its size", type="filepath", image_mode=None,
                                         sources=["upload"], height=160, elem_id="image"),
                                gr.Image(label="mask_image (optional): white is repainted, black kept",
                                         type="filepath", image_mode=None, sources=["upload"], height=160,
                                         elem_id="mask_image")]
                        add("strength")
                        add("image_at")
                        add("resize_image")
                with gr.Row():
                    add("width")
                    add("height", info=f"at most {limits.max_pixels:,} pixels in all")
                with gr.Row():
                    add("loop_closure")
                    add("tile")
                with gr.Accordion("regions: prompts of their own for parts of the canvas", open=False,
                                  elem_id="region-settings"):
                    add("regions")
                    add("region_base")
                    region_view = gr.Image(regions_preview(canvas["width"], canvas["height"], None), type="pil",
                                           format="png", interactive=False, height=140, elem_id="regions_preview",
                                           label="where the regions lie on the canvas")
                lora_sliders = []
                if model.loras:
                    with gr.Accordion("LoRAs: the weight of each", open=True, elem_id="lora-settings"):
                        lora_sliders = [gr.Slider(MIN_SCALE, MAX_SCALE, value=lora.scale, step=0.05,
                                                  label=lora.adapter_name, info=lora.source,
                                                  elem_id=f"lora-{lora.adapter_name}") for lora in model.loras]
                preset = gr.Radio(list(presets), value="recommended" if "recommended" in presets else "paper",
                                  label="preset", elem_id="preset",
                                  info=PRESET_INFO + (" The model's own settings come first." if "recommended"
                                                      in presets else ""))
                with gr.Accordion("synchronization", open=False, elem_id="sync-settings"):
                    for name in SYNC_INPUTS:
                        add(name)
                with gr.Accordion("diffusion", open=False, elem_id="diffusion-settings"):
                    for name in DIFFUSION_INPUTS:
                        add(name)
                with gr.Accordion("speed: fast modes and decoding", open=False, elem_id="speed-settings"):
                    for name in SPEED_INPUTS:
                        add(name)
                with gr.Row():
                    add("seed", info=f"0 to {settings.UINT32_MAX}")
                    randomize = gr.Checkbox(value=True, label="new random seed each time", elem_id="randomize")
                    dice = gr.Button("new random seed", elem_id="dice")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                panorama = gr.Image(label="panorama", type="filepath", format="png", interactive=False, height=280,
                                    elem_id="panorama")
                download = gr.DownloadButton("Download PNG", visible=False, elem_id="download")
                summary = gr.Markdown(elem_id="summary")
                look_around = gr.HTML("", html_template=viewer.TEMPLATE, css_template=viewer.CSS,
                                      js_on_load=viewer.JS_ON_LOAD, head=viewer.HEAD,
                                      apply_default_css=False, visible=False, elem_id="viewer")
                control_view = None
                if model.control:
                    control_view = gr.Image(label="the condition the ControlNet sees", type="pil", format="png",
                                            interactive=False, height=160, elem_id="control_view")

        missing = set(names) - set(inputs)
        if missing:  # every served parameter has its input: a new one needs a place above
            raise RuntimeError(f"the page has no input for {', '.join(sorted(missing))}")
        preset.change(apply_preset, preset, [inputs[name] for name in PRESET_NAMES])
        dice.click(lambda: (settings.draw_seed(), False), None, [inputs["seed"], randomize])
        run_inputs = [inputs[name] for name in names] + [randomize, *conditions, *image_uploads, *lora_sliders]
        outputs = [panorama, download, summary, inputs["seed"], look_around,
                   *([control_view] if model.control else [])]
        run.click(generate, run_inputs, outputs)
        inputs["prompt"].submit(generate, run_inputs, outputs)
        region_sources = [inputs[name] for name in ("width", "height", "regions")]
        for source in region_sources:  # the preview follows the canvas and the boxes as they change; a
            # drawing of a few milliseconds, outside the queue, so that it never waits behind a panorama
            source.change(regions_preview, region_sources, region_view, queue=False, show_progress="hidden",
                          trigger_mode="always_last")
        if model.geometry.window_multiple:  # a window that may be chosen makes its own canvas
            canvas_inputs = [inputs[name] for name in ("width", "height", "stride")]
            inputs["window"].change(canvas_of_window, [inputs["window"], *canvas_inputs], canvas_inputs)
        if image_uploads:
            image_upload, mask_upload = image_uploads
            image_upload.change(fit_canvas, [image_upload, inputs["width"], inputs["height"]],
                                [inputs["width"], inputs["height"]])
            mask_upload.change(strength_for_mask, [mask_upload, inputs["strength"]], inputs["strength"])
        if model.control:
            conditions[0].change(fit_canvas, [conditions[0], inputs["width"], inputs["height"]],
                                 [inputs["width"], inputs["height"]])
            preview_inputs = [conditions[0], *(inputs[name] for name in ("preprocess", "canny_low", "canny_high"))]
            for source in preview_inputs:
                source.change(preview_condition, preview_inputs, control_view)
    # One model, one run at a time; the rest wait in a bounded queue.
    page.queue(default_concurrency_limit=1, max_size=limits.max_queue)
    return page


def theme() -> gr.themes.Theme:
    """The default look with the system's fonts: the stock theme would fetch fonts from the web."""
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def launch(page: gr.Blocks, out_dir: str | Path, host: str, port: int, block: bool = True):
    allowed = [str(out_dir), str(viewer.ASSETS)]  # the panoramas; the 360° view's vendored scripts
    return page.launch(server_name=host, server_port=port, theme=theme(), allowed_paths=allowed,
                       prevent_thread_lock=not block, show_error=True, share=False)

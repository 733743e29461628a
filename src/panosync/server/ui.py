"""The web page (`panosync ui`): every parameter of the public API, presets, a seed randomiser,
progress while generating, the PNG to download, and for loop-closed panoramas a 360° view.

Requests go through the same checks as the HTTP API's (schema and `PanoramaModel.prepare`), so a
bad setting is a sentence on the page, before any model work.

With ControlNets (`panosync ui --controlnet …`) the page also takes a condition image per ControlNet,
the preprocessing (Canny thresholds), the conditioning scale and whether to resize the condition,
and shows the condition the ControlNets see: live while the settings change, and the one used.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import torch
from pydantic import ValidationError

from ..conditions import load_condition_image, prepare_condition
from ..metadata import save_png
from ..pipeline import canvas_defaults
from ..precision import NonFiniteError
from . import viewer
from .generation import MISSING_CONDITION, PanoramaModel
from .schema import MAX_STEPS, UINT32_MAX, FieldError, Limits, PredictionRequest, describe_error
from .uploads import save_condition

# The paper's settings, and a quicker variant: fewer steps, and sync only in the first five, where
# the layout is decided (the public hosted API syncs in the first five too).
PAPER = dict(guidance_scale=7.5, sync_weight=20.0, sync_decay_rate=0.95, sync_freq=1, sync_threshold=None,
             num_inference_steps=50)
FAST = {**PAPER, "num_inference_steps": 20, "sync_threshold": 5}
PRESET_FIELDS = ("guidance_scale", "sync_weight", "sync_decay_rate", "sync_freq", "sync_threshold",
                 "num_inference_steps", "stride")

# The order of the generate function's inputs; then the randomize box, then with ControlNets
# CONTROL_INPUTS and one condition image per ControlNet.
INPUTS = ("prompt", "negative_prompt", "width", "height", "loop_closure", "guidance_scale", "sync_weight",
          "sync_decay_rate", "sync_freq", "sync_threshold", "num_inference_steps", "stride", "seed")
CONTROL_INPUTS = ("preprocess", "canny_low", "canny_high", "controlnet_conditioning_scale", "resize_condition")


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
    stride = max(1, model.window // 4)
    presets = {"paper": {**PAPER, "stride": stride}, "fast": {**FAST, "stride": stride}}
    recommended = {name: model.defaults[name] for name in PRESET_FIELDS}
    if recommended != presets["paper"]:  # the model ships its own settings
        presets = {"recommended": recommended, **presets}
    return presets


def largest_side(model: PanoramaModel, limits: Limits) -> int:
    """The longest side the limits allow with the other side one window, in VAE-factor steps."""
    window = model.window * model.vae_factor
    longest = min(limits.max_side, limits.max_pixels // window)
    return max(window, longest // model.vae_factor * model.vae_factor)


def build_ui(model: PanoramaModel, limits: Limits, out_dir: str | Path) -> gr.Blocks:
    out_dir = Path(out_dir).expanduser()
    presets = presets_for(model)
    defaults = model.defaults
    window, factor = model.window * model.vae_factor, model.vae_factor
    longest = largest_side(model, limits)
    # ControlSync's canvas defaults to the condition's size: until one is uploaded, the usual canvas
    canvas = {side: defaults[side] or size for side, size in canvas_defaults(model.window, factor).items()}

    def generate(*values, progress=gr.Progress()):
        fields = dict(zip(INPUTS, values))
        randomize = values[len(INPUTS)]
        if randomize or fields["seed"] is None:
            fields["seed"] = random.randint(0, UINT32_MAX)
        fields["negative_prompt"] = fields["negative_prompt"] or ""
        condition_paths = []
        if model.control:
            control_values = values[len(INPUTS) + 1:]
            fields.update(zip(CONTROL_INPUTS, control_values))
            fields["controlnet_conditioning_scale"] = [fields["controlnet_conditioning_scale"]]
            condition_paths = control_values[len(CONTROL_INPUTS):]
        try:
            given = PredictionRequest(**fields).given()
            if model.control:
                if not all(condition_paths):
                    raise FieldError("condition", "Upload a condition for every ControlNet. " + MISSING_CONDITION)
                given["condition"] = [load_condition_image(path) for path in condition_paths]
            parameters = model.prepare(given, limits)
        except ValidationError as error:
            raise gr.Error("; ".join(describe_error(e) for e in error.errors())) from None
        except (FieldError, ValueError) as error:  # FieldError is a ValueError; the latter from reading an image
            raise gr.Error(str(error)) from None
        if model.control:  # kept beside the panoramas: their metadata names the files, as the command's does
            parameters["condition"] = [str(save_condition(image, out_dir / "conditions"))
                                       for image in parameters["condition"]]
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
        summary = (f"{image.width} × {image.height}, seed {parameters['seed']}, {total} steps, {seconds:.1f} s"
                   + (", 360°" if parameters["loop_closure"] else "")
                   + (", following the condition" if model.control else "") + f" — saved as `{path}`")
        loop = bool(parameters["loop_closure"])
        outputs = (str(path), gr.update(value=str(path), visible=True), summary, parameters["seed"],
                   gr.update(value=viewer.viewer_source(image) if loop else "", visible=loop))
        if model.control:
            outputs += (condition_picture(model.conditions(parameters)),)
        return outputs

    def fit_canvas(path, width_now, height_now):
        """The canvas follows an uploaded condition's size, when the sliders can show it."""
        try:
            size = load_condition_image(path).size if path else None
        except ValueError:
            size = None
        if size is None:
            return width_now, height_now
        fits = [window <= side <= longest for side in size]
        return (size[0] if fits[0] else width_now), (size[1] if fits[1] else height_now)

    def apply_preset(name):
        return [presets[name][field] for field in PRESET_FIELDS]

    with gr.Blocks(title="panosync", analytics_enabled=False) as page:
        controlnets = "; ControlNet: " + ", ".join(f"`{name}`" for name in model.controlnets) if model.control else ""
        gr.Markdown(f"## panosync — SyncDiffusion panoramas\nModel: `{model.name}` (window {window} pixels)"
                    f"{controlnets}.")
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="prompt", placeholder="a photo of a mountain range at twilight",
                                    elem_id="prompt", max_length=2000)
                negative_prompt = gr.Textbox(label="negative_prompt", value=defaults["negative_prompt"] or "",
                                             elem_id="negative_prompt", max_length=2000)
                conditions, control_inputs = [], []
                if model.control:
                    # first: the condition decides the canvas
                    with gr.Accordion("ControlSync: the condition the panorama follows", open=True,
                                      elem_id="control-settings"):
                        names = model.controlnets
                        conditions = [gr.Image(label="condition" + (f" for {name}" if len(names) > 1 else ""),
                                               type="filepath", image_mode=None, sources=["upload"], height=160,
                                               elem_id="condition" if len(names) == 1 else f"condition-{index}")
                                      for index, name in enumerate(names)]
                        preprocess = gr.Radio(["none", "canny"], value=defaults["preprocess"], label="preprocess",
                                              info="none: the image is the condition (an edge map); canny: take "
                                                   "the image's Canny edges", elem_id="preprocess")
                        with gr.Row():
                            canny_low = gr.Slider(0, 1020, value=defaults["canny_low"], step=1, label="canny_low",
                                                  info="gradients below are never edges", elem_id="canny_low")
                            canny_high = gr.Slider(0, 1020, value=defaults["canny_high"], step=1, label="canny_high",
                                                   info="gradients above are always edges", elem_id="canny_high")
                        conditioning_scale = gr.Slider(
                            0, 2, value=defaults["controlnet_conditioning_scale"][0], step=0.05,
                            label="controlnet_conditioning_scale",
                            info="weight of the ControlNet" + ("s" if len(names) > 1 else "") + "; 0 turns it off",
                            elem_id="controlnet_conditioning_scale")
                        resize_condition = gr.Checkbox(value=bool(defaults["resize_condition"]),
                                                       label="resize_condition: fit a condition of another size to "
                                                             "width × height", elem_id="resize_condition")
                    control_inputs = [preprocess, canny_low, canny_high, conditioning_scale, resize_condition,
                                      *conditions]
                with gr.Row():
                    width = gr.Slider(window, longest, value=canvas["width"], step=factor, label="width",
                                      info=f"pixels, a multiple of {factor}", elem_id="width")
                    height = gr.Slider(window, longest, value=canvas["height"], step=factor, label="height",
                                       info=f"at most {limits.max_pixels:,} pixels in all", elem_id="height")
                loop_closure = gr.Checkbox(value=bool(defaults["loop_closure"]), elem_id="loop_closure",
                                           label="loop_closure: a 360° panorama whose edges meet")
                preset = gr.Radio(list(presets), value=next(iter(presets)), label="preset", elem_id="preset")
                with gr.Accordion("synchronization", open=False, elem_id="sync-settings"):
                    sync_weight = gr.Slider(0, 100, value=defaults["sync_weight"], step=0.5, label="sync_weight",
                                            info="w; 0 is plain MultiDiffusion", elem_id="sync_weight")
                    sync_decay_rate = gr.Slider(0.01, 1, value=defaults["sync_decay_rate"], step=0.01,
                                                label="sync_decay_rate", info="the weight at step i is w · rate^i",
                                                elem_id="sync_decay_rate")
                    sync_freq = gr.Slider(1, 50, value=defaults["sync_freq"], step=1, label="sync_freq",
                                          info="sync every n-th step", elem_id="sync_freq")
                    sync_threshold = gr.Number(value=defaults["sync_threshold"], precision=0, minimum=0,
                                               maximum=MAX_STEPS, label="sync_threshold",
                                               info="sync only in the first n steps; empty: every step",
                                               elem_id="sync_threshold")
                with gr.Accordion("diffusion", open=False, elem_id="diffusion-settings"):
                    guidance_scale = gr.Slider(0, 30, value=defaults["guidance_scale"], step=0.5,
                                               label="guidance_scale", elem_id="guidance_scale")
                    num_inference_steps = gr.Slider(1, 200, value=defaults["num_inference_steps"], step=1,
                                                    label="num_inference_steps", elem_id="num_inference_steps")
                    stride = gr.Slider(1, model.window, value=defaults["stride"], step=1, label="stride",
                                       info="latent pixels between views", elem_id="stride")
                with gr.Row():
                    seed = gr.Number(value=defaults["seed"], precision=0, minimum=0, maximum=UINT32_MAX,
                                     label="seed", elem_id="seed")
                    randomize = gr.Checkbox(value=True, label="new random seed each time", elem_id="randomize")
                    dice = gr.Button("new random seed", elem_id="dice")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                panorama = gr.Image(label="panorama", type="filepath", format="png", interactive=False, height=280,
                                    elem_id="panorama")
                download = gr.DownloadButton("Download PNG", visible=False, elem_id="download")
                summary = gr.Markdown(elem_id="summary")
                look_around = gr.HTML("", html_template=viewer.TEMPLATE, css_template=viewer.CSS,
                                      js_on_load=viewer.JS_ON_LOAD, visible=False, elem_id="viewer")
                control_view = None
                if model.control:
                    control_view = gr.Image(label="the condition the ControlNet sees", type="pil", format="png",
                                            interactive=False, height=160, elem_id="control_view")

        preset_outputs = [guidance_scale, sync_weight, sync_decay_rate, sync_freq, sync_threshold,
                          num_inference_steps, stride]
        preset.change(apply_preset, preset, preset_outputs)
        dice.click(lambda: (random.randint(0, UINT32_MAX), False), None, [seed, randomize])
        inputs = [prompt, negative_prompt, width, height, loop_closure, guidance_scale, sync_weight,
                  sync_decay_rate, sync_freq, sync_threshold, num_inference_steps, stride, seed, randomize,
                  *control_inputs]
        outputs = [panorama, download, summary, seed, look_around, *([control_view] if model.control else [])]
        run.click(generate, inputs, outputs)
        prompt.submit(generate, inputs, outputs)
        if model.control:
            conditions[0].change(fit_canvas, [conditions[0], width, height], [width, height])
            preview_inputs = [conditions[0], preprocess, canny_low, canny_high]
            for source in (conditions[0], preprocess, canny_low, canny_high):
                source.change(preview_condition, preview_inputs, control_view)
    # One model, one run at a time; the rest wait in a bounded queue.
    page.queue(default_concurrency_limit=1, max_size=limits.max_queue)
    return page


def theme() -> gr.themes.Theme:
    """The default look with the system's fonts: the stock theme would fetch fonts from the web."""
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def launch(page: gr.Blocks, out_dir: str | Path, host: str, port: int, block: bool = True):
    return page.launch(server_name=host, server_port=port, theme=theme(), allowed_paths=[str(out_dir)],
                       prevent_thread_lock=not block, show_error=True, share=False)

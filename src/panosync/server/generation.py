"""The model a server loads once, and the three things the API and the web page do with it: check a
request against the model's geometry and the server's limits, make one panorama, and describe it
in the PNG's metadata exactly as `panosync generate` does (so `--from` reproduces it).

With ControlNets (`--controlnet`) the model is a ControlSyncPipeline: every request then has a
condition, checked like the `control` command checks it, and the PNG's metadata is that command's.

With LoRAs (`--lora`, loaded once with the model) a request's `lora_scales` ({adapter_name: scale})
sets their weights for its panorama only; a name the server did not load is refused, and no request
ever names a file.

Without ControlNets a request may give an image input (`image`, `mask_image`, `strength`,
`image_at`, `resize_image`: img2img, inpainting, extending, upscaling), checked as `panosync
generate` checks it (image_input.place) before any model work; the canvas is the image's size
unless width or height is given. The caller keeps the images and names them in the parameters as
{"path", "sha256"}, which the PNG's metadata records as the command's does.

Every model takes region prompts (`regions`: boxes or masks, each with a prompt), checked against
the request's canvas as the pipeline checks them (regions.plan_regions) before any model work. A
region's mask is a PIL image when checked; the caller keeps it too and names it likewise
({"mask": {"path", "sha256"}, ...}), and the job reads it back from that file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import PIL.Image
import torch

from .. import settings
from ..conditions import load_condition_image, prepare_condition
from ..control import ControlSyncMixin, check_condition_canvas
from ..geometry import Geometry
from ..image_input import canvas_of_image, checked_release, image_pixels, mask_pixels, place
from ..input_images import ImageFile
from ..loras import LoraSpec, apply_lora_scales, check_lora_scales, load_loras, load_textual_inversions
from ..loras import weights_metadata
from ..models import load_control_pipeline, load_pipeline, pick_device, resolve_controlnet, resolve_model
from ..pipeline import SyncDiffusionPipeline
from ..precision import pick_precision
from ..regions import plan_regions
from ..registry import family_of_pipeline, variant_of_pipeline
from ..runner.maker import check_threads, computing_threads, default_threads
from ..settings import lone_surrogate
from .limits import Limits
from .schema import CONTROL_FIELDS, IMAGE_FIELDS, IMAGE_UPLOADS, FieldError, field_of

# on_step(steps_done, sync_weight_of_that_step)
StepCallback = Callable[[int, float], None]

MISSING_CONDITION = ("condition must be given: the image the panorama follows (an edge map of the canvas's size, or "
                     "a photo with preprocess \"canny\"), as base64 or a data URL.")
MASK_WITHOUT_IMAGE = "mask_image says which of an image's pixels are repainted: give image too."


def image_inputs(parameters: dict) -> dict:
    """The pipeline's image input arguments of a job's `parameters` ({} without an image): the image
    and mask as PIL images, read from the files the parameters name ({"path", "sha256"}, found with
    that SHA-256, else a ValueError that says so) or as they are when already images."""
    if parameters.get("image") is None:
        return {}
    inputs = {name: parameters.get(name) for name in IMAGE_FIELDS if name not in IMAGE_UPLOADS}
    for name in IMAGE_UPLOADS:
        value = parameters.get(name)
        if isinstance(value, dict):
            value = ImageFile(name, value["path"], value["sha256"]).load()
        inputs[name] = value
    return inputs


def region_inputs(regions: list | None) -> list | None:
    """A job's `regions` as the pipeline takes them: each mask a PIL image, read from the file its
    record names ({"path", "sha256"}, found with that SHA-256, else a ValueError that says so) or as
    it is when already an image; boxes as they are."""
    if not regions:
        return regions
    return [{**region, "mask": ImageFile("region_mask", region["mask"]["path"], region["mask"]["sha256"]).load()}
            if isinstance(region.get("mask"), dict) else region for region in regions]


def check_region_texts(regions: list | None) -> None:
    """A FieldError naming the region whose prompt or negative prompt holds a lone surrogate (JSON
    lets a client send half a UTF-16 pair), which no tokenizer or PNG can take; the rest of a
    region's checks are regions.plan_regions'."""
    for number, region in enumerate(regions or [], 1):
        for key in ("prompt", "negative_prompt"):
            text = region.get(key) if isinstance(region, dict) else None
            index = lone_surrogate(text) if isinstance(text, str) else None
            if index is not None:
                raise FieldError("regions", f"Region {number}'s {key.replace('_', ' ')} is not text: it holds a lone "
                                            f"surrogate (U+{ord(text[index]):04X} at character {index}): send valid "
                                            f"UTF-8.")


class PanoramaModel:
    """A loaded pipeline with its name, device, dtype and default parameters; for ControlSync, a
    ControlSyncPipeline and `controlnets`, the names its ControlNets were loaded by; `loras`, the
    LoRAs loaded on it (at their default scales), `textual_inversions` its embeddings."""

    loras: tuple[LoraSpec, ...] = ()
    textual_inversions: tuple = ()
    # torch's threads on a CPU (--threads; runner.maker.computing_threads): a parameter of the picture
    # there, so every panorama is made on as many and its PNG records the count; None: not this
    # process's to say (the Ray workers' models, whose pictures carry their own)
    threads: int | None = None

    def __init__(self, pipe: SyncDiffusionPipeline, name: str, defaults: dict, model_config: str | None = None,
                 view_batch_size: int | None = None, controlnets: list[str] | None = None):
        self.threads = default_threads()
        if isinstance(pipe, ControlSyncMixin) != (controlnets is not None):
            raise TypeError("Give controlnets, the names of the ControlNets, exactly when the pipeline has them.")
        if controlnets is not None and len(controlnets) != len(pipe.controlnets):
            raise TypeError(f"The pipeline has {len(pipe.controlnets)} ControlNets; {len(controlnets)} names given.")
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self._describe(pipe.geometry, name, defaults, model_config, view_batch_size, controlnets)

    def _describe(self, geometry: Geometry, name: str, defaults: dict, model_config: str | None,
                  view_batch_size: int | None, controlnets: list[str] | None) -> None:
        """What the checks and the metadata need: the model's geometry, names and defaults."""
        self.name = name
        self.model_config = model_config
        self.controlnets = controlnets
        self.geometry = geometry
        self.window, self.vae_factor, self.max_steps = geometry.window, geometry.vae_factor, geometry.max_steps
        # every parameter's default: the model's (settings.model_defaults), the canvas filled in but
        # for ControlSync's, which is the condition's unless a request says otherwise
        defaults = {**settings.paper_defaults(self.control), **defaults}
        if not self.control:
            defaults = settings.fill_canvas(defaults, self.geometry)
        else:
            defaults["stride"] = settings.fill_canvas(defaults, self.geometry)["stride"]
        # the image input's too (none), so that every PNG records them as `panosync generate`'s does
        names = settings.PIPELINE_NAMES + (CONTROL_FIELDS if self.control else IMAGE_FIELDS)
        self.defaults = {name: defaults[name] for name in names}
        if view_batch_size is not None:
            self.defaults["view_batch_size"] = view_batch_size

    @classmethod
    def load(cls, model: str, device: str = "auto", dtype: str = "auto", model_config: str | None = None,
             view_batch_size: int | None = None, controlnets: list[str] | None = None,
             vae: str | None = None, loras: tuple[LoraSpec, ...] = (),
             textual_inversions: tuple = (), threads: int | None = None) -> "PanoramaModel":
        """Load `model` (anything `panosync generate --model` takes, of any family panosync runs), and
        `controlnets` when given (anything `panosync control --controlnet` takes), once, for every
        request after; `vae` in place of the model's own (--vae); `loras` and `textual_inversions`
        (checked by loras.py) onto it; `threads` (--threads) to compute on, on a CPU (default: torch's
        count now)."""
        if threads is not None:
            check_threads(threads)
        source = resolve_model(model)
        controlnet_sources = [resolve_controlnet(controlnet) for controlnet in controlnets or []]
        device = pick_device(device)
        precision = pick_precision(dtype, device, source.family)
        if not controlnets:
            pipe = load_pipeline(source, device, precision, config=model_config, vae=vae)
        else:
            pipe = load_control_pipeline(source, controlnet_sources, device, precision, config=model_config, vae=vae)
        load_textual_inversions(pipe, textual_inversions)
        load_loras(pipe, loras)
        if source.family is None:  # a hub model whose configs could not be had: its family is known once loaded
            source = dataclasses.replace(source, family=family_of_pipeline(pipe), variant=variant_of_pipeline(pipe))
        if not controlnets:
            loaded = cls(pipe, model, settings.model_defaults(source), model_config, view_batch_size)
        else:
            loaded = cls(pipe, model, settings.model_defaults(source, control=True), model_config, view_batch_size,
                         list(controlnets))
        loaded.loras, loaded.textual_inversions = tuple(loras), tuple(textual_inversions)
        if threads is not None:
            loaded.threads = threads
        return loaded

    @property
    def lora_scales(self) -> dict:
        """Each loaded LoRA's default scale, by adapter name."""
        return {lora.adapter_name: lora.scale for lora in self.loras}

    @property
    def inpainting_model(self) -> bool:
        """Whether the model repaints only under a mask (a 9-channel inpainting UNet): every request needs an image."""
        return bool(getattr(self.pipe.backbone, "reads_inpainting_channels", False))

    @property
    def control(self) -> bool:
        """Whether this is a ControlSync model, whose requests need a condition."""
        return self.controlnets is not None

    @property
    def device(self) -> torch.device:
        return self.pipe.backbone.network.device

    @property
    def dtype(self) -> str:
        """The precision's name: float32, float16, bfloat16 or autocast."""
        return self.pipe.precision.name

    def prepare(self, given: dict, limits: Limits) -> dict:
        """Every parameter of the panorama `given` asks for, defaults and seed filled in; a
        FieldError naming the field and what it may be when the model or the server cannot make it.
        Costs no model work. A ControlSync request's `condition` is a list of images (PIL), one per
        ControlNet; a plain request's `image` and `mask_image` are images (PIL) likewise, checked on
        their canvas. They stay in the parameters, for the caller to keep and replace by their files
        (paths; for an image input {"path", "sha256"})."""
        sent = [name for name in CONTROL_FIELDS if name in given]
        if self.control:
            images = [name for name in IMAGE_FIELDS if name in given]
            if images:
                raise FieldError(images[0], f"{images[0]} is an image input's field, and this server makes ControlSync "
                                            f"panoramas, which take none: leave it out, or send it to a server "
                                            f"started without --controlnet.")
        if "lora_scales" in given:
            given = dict(given)
            try:
                scales = check_lora_scales(given.pop("lora_scales"), self.loras)
            except ValueError as error:
                raise FieldError("lora_scales", str(error)) from None
            given["lora_scales"] = {**self.lora_scales, **scales}
        if not self.control:
            if sent:
                raise FieldError(sent[0], f"{sent[0]} is a ControlSync field, and this server has no ControlNet: "
                                          f"leave it out, or start the server with --controlnet ID_OR_PATH.")
            if given.get("image") is not None or given.get("mask_image") is not None:
                return self._prepare_image(given, limits)
            if self.inpainting_model:
                raise FieldError("image", "This is an inpainting model (its UNet reads a mask and a masked image "
                                          "beside the latents): give image and mask_image.")
            return self._prepare_panorama(given, limits)
        return self._prepare_control(given, limits)

    def _prepare_image(self, given: dict, limits: Limits) -> dict:
        """A request with an image input (PIL images in `image` and `mask_image`): the canvas is the
        image's unless given, and the image is placed on it (image_input.place: its size, the
        mask's, the corner, the strength) as `panosync generate` checks it, before any model work."""
        image, mask = given.get("image"), given.get("mask_image")
        if image is None:
            raise FieldError("mask_image", MASK_WITHOUT_IMAGE)
        for name, check in (("image", image_pixels), ("mask_image", mask_pixels)):
            if given.get(name) is not None:
                try:
                    check(given[name])
                except ValueError as error:  # transparent, a mask with colours or all black …
                    raise FieldError(name, str(error)) from None
        width, height = canvas_of_image(image.size, given.get("width"), given.get("height"),
                                        given.get("resize_image", self.defaults["resize_image"]) is True)
        parameters = self._prepare_panorama({**given, "width": width, "height": height}, limits)
        placement = place(image, mask, parameters["width"], parameters["height"], parameters["strength"],
                          parameters["image_at"], parameters["resize_image"], self.vae_factor)
        first_step = self.first_step()
        if first_step is not None:  # the pipeline's own check, before the job is queued
            try:
                checked_release(placement, parameters["width"], parameters["height"], self.vae_factor,
                                parameters["num_inference_steps"], first_step, parameters["loop_closure"],
                                parameters["window"])
            except settings.SettingError as error:
                raise FieldError(error.field or "strength", str(error)) from None
        return parameters

    def first_step(self):
        """The model's first_step(steps, strength): the first of the steps an image's strength runs."""
        return self.pipe.backbone.first_step

    def _prepare_control(self, given: dict, limits: Limits) -> dict:
        """A ControlSync request: the conditions, one per ControlNet, decide the canvas unless it is
        given; the canvas is checked before any condition is preprocessed."""
        conditions, count = given.get("condition"), len(self.controlnets)
        if not conditions:
            raise FieldError("condition", MISSING_CONDITION)
        if len(conditions) != count:
            raise FieldError("condition", f"condition must hold one image per ControlNet ({count}), got "
                                          f"{len(conditions)}.")
        scales = given.get("controlnet_conditioning_scale", self.defaults["controlnet_conditioning_scale"])
        if len(scales) not in (1, count):
            raise FieldError("controlnet_conditioning_scale",
                             f"controlnet_conditioning_scale must be one number for all ControlNets or a list of one "
                             f"per ControlNet ({count}), got {len(scales)}.")
        try:
            width, height = check_condition_canvas([conditions[0].size], given.get("width"), given.get("height"),
                                                   self.vae_factor)
        except ValueError as error:
            raise FieldError("condition", str(error)) from None
        parameters = self._prepare_panorama({**given, "width": width, "height": height}, limits)
        try:
            self.conditions(parameters)
        except ValueError as error:
            raise FieldError(field_of(str(error)) or "condition", str(error)) from None
        return parameters

    def conditions(self, parameters: dict) -> list:
        """The conditions the ControlNets see, (1, 3, height, width) tensors in [0, 1]: each image
        (or file) of `parameters["condition"]`, preprocessed and fitted to the canvas as the `control`
        command does."""
        return [prepare_condition(load_condition_image(condition) if isinstance(condition, (str, Path)) else condition,
                                  parameters["width"], parameters["height"], parameters["resize_condition"],
                                  parameters["preprocess"], parameters["canny_low"], parameters["canny_high"])
                for condition in parameters["condition"]]

    def _prepare_panorama(self, given: dict, limits: Limits) -> dict:
        parameters = {**self.defaults, **given}
        if parameters.get("fast_modes") is not None:  # ["none"] is faithful: [], as the command takes it
            parameters["fast_modes"] = settings.fast_modes(parameters["fast_modes"])
        if given.get("window") not in (None, self.defaults.get("window")):
            # the default canvas is the default window's: a request's own window makes its own
            for name in ("width", "height", "stride"):
                if given.get(name) is None:
                    parameters[name] = None
        if parameters.get("seed") is None:
            parameters["seed"] = settings.draw_seed()
        if not self.control:
            parameters = settings.fill_canvas(parameters, self.geometry)
        for side in ("width", "height"):
            if isinstance(parameters[side], int) and parameters[side] > limits.max_side:
                raise FieldError(side, f"{side} must be at most {limits.max_side} pixels on this server, got "
                                       f"{parameters[side]}.")
        width, height = parameters["width"], parameters["height"]
        # this server's limit before settings' own, larger one: its sentence gives the limit that applies here
        if all(isinstance(side, int) for side in (width, height)) and width * height > limits.max_pixels:
            raise FieldError("width" if width >= height else "height",
                             f"width × height must be at most {limits.max_pixels:,} pixels on this server, got "
                             f"{width} × {height} = {width * height:,}: ask for a smaller panorama.")
        settings.check(parameters, self.geometry)  # a SettingError is a FieldError
        if parameters.get("regions"):  # on the canvas now decided, as the pipeline will check them
            check_region_texts(parameters["regions"])
            plan_regions(parameters["regions"], parameters["width"], parameters["height"], self.vae_factor,
                         self.geometry.with_window(parameters.get("window")).window,
                         *settings.wrapped_axes(parameters["loop_closure"], parameters.get("tile")))
        return parameters

    def generate(self, parameters: dict, on_step: StepCallback | None = None) -> PIL.Image.Image:
        """One panorama. `on_step` runs after every denoising step; an exception it raises stops the
        run there (how a job is cancelled)."""

        def after_step(pipe, step, timestep, values):
            if on_step is not None:  # counted on the whole schedule: an image input's strength skips its first steps
                on_step(values.get("first_step", 0) + step + 1, float(values["sync_weight"]))

        pipeline_parameters = {name: parameters[name] for name in settings.PIPELINE_NAMES}
        pipeline_parameters.update(image_inputs(parameters), regions=region_inputs(parameters.get("regions")))
        control = {}
        if self.control:
            scales = parameters["controlnet_conditioning_scale"]
            control = dict(image=self.conditions(parameters),
                           controlnet_conditioning_scale=scales[0] if len(scales) == 1 else scales)
        scales = parameters.get("lora_scales")
        if scales:
            apply_lora_scales(self.pipe, scales, self.lora_scales)
        try:
            with computing_threads(self.threads, self.device):
                return self.pipe(**pipeline_parameters, **control, callback_on_step_end=after_step).images[0]
        finally:
            if scales:  # the next request is made at the default scales unless it says otherwise
                apply_lora_scales(self.pipe, {}, self.lora_scales)

    def metadata(self, parameters: dict, image: PIL.Image.Image) -> dict:
        """What the PNG carries: the command's keys, so `panosync generate --from` (or `panosync
        control --from`, for ControlSync) makes it again."""
        model = {"model": self.name, **({"model_config": self.model_config} if self.model_config else {})}
        parameters_scales = parameters.get("lora_scales")
        if self.control:
            model.update(controlnet=self.controlnets, condition=[str(condition) for condition in parameters["condition"]])
        parameters = {name: value for name, value in parameters.items() if name != "lora_scales"}
        model.update(weights_metadata(self.loras, self.textual_inversions, parameters_scales))
        threads = {"threads": self.threads} if self.device.type == "cpu" and self.threads is not None else {}
        return {**parameters, **model, "width": image.width, "height": image.height, "device": self.device.type,
                "dtype": self.dtype, **threads}

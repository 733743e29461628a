"""The `panosync` command.

    panosync generate "a photo of a mountain range at twilight" --width 3072 --seed 7 --out range.png
    panosync generate --from range.png --out range.jpg   # the same panorama again, as a JPEG
    panosync generate "mossy cobblestones" --width 1024 --height 1024 --tile xy   # a texture that tiles
    panosync export sphere.png --cubemap faces/     # a full-sphere panorama's six cube faces (and --equirect)
    panosync generate "a beach" --ip-adapter ./ip-adapter-sd15:0.6 --ip-adapter-image photo.jpg
    panosync generate "snowy mountains" --image photo.png --width 2048 --loop-closure   # extend a photo
    panosync generate "a coast" --width 2048 --region "0,0,1024,512=a calm sea" --region-mask city.png=a city
    panosync upscale range.png --scale 2            # twice the size, the prompt from its metadata
    panosync control "a city skyline at dusk" --condition skyline.png --preprocess canny
    panosync serve --model pocket                   # HTTP API on 127.0.0.1:8000
    panosync ui --model pocket                      # web page on 127.0.0.1:7860
    panosync evaluate --model pocket --prompts prompts.txt --seeds 0-31 --width 512 --out runs/eval
    panosync batch jobs.jsonl --model pocket --out runs/batch   # one PNG a line; --ray local|auto|ray://…

The options of the panorama's parameters come from settings.py (command_options.py makes them), as
do their defaults, precedence and checks. Errors a user can cause print one sentence and exit with
status 2, before any model is loaded where the model's configs can be read (a folder, a bundled
model).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import settings
from .command_options import add_ip_adapter_options, add_model_options, add_options, given_options
from .metadata import DEFAULT_QUALITY
from .photosphere import gpano_fields, vertical_degrees
from .precision import NonFiniteError
from .presets import PRESETS, preset_changes
from .runner.maker import TaskFailed

if TYPE_CHECKING:
    from .models import ModelSource

CONTROL_HELPS = dict(
    width="pixels, a multiple of the VAE factor (default: the condition's width)",
    height="pixels, a multiple of the VAE factor (default: the condition's height)",
    sync_threshold="sync only in the first n steps (default: 10, as the ControlSync paper)",
    condition="the image the panorama follows, of its size (or a photo with --preprocess canny); once per "
              "--controlnet")


def add_panorama_arguments(command: argparse.ArgumentParser, default_model: str, control: bool = False) -> None:
    """The options of a panorama command: every parameter, the model, the output, the device."""
    command.epilog = ("An option left out takes the value of --from's file, else the model's recommended.json, "
                      "else the default shown (the paper's).")
    names = [name for name in settings.PIPELINE_NAMES]
    if control:
        names += [name for name in settings.CONTROL_NAMES if name != "controlnet"]  # --controlnet: a model option
    else:
        names += settings.IMAGE_NAMES
    add_options(command, names, CONTROL_HELPS if control else None)
    add_model_options(command, default_model, control)
    add_ip_adapter_options(command, None if not control else
                           "the image prompt the IP-Adapter conditions the panorama on (SD and SDXL ControlSync only)")
    add_output_options(command, "panosync-SEED.png")
    command.add_argument("--from", "--from-png", dest="from_file", default=None, metavar="FILE",
                         help="take every parameter from a PNG, JPEG or WebP panosync wrote; options given here "
                              "override")
    add_preset_option(command)
    command.add_argument("--quiet", action="store_true", help="no progress bar")


def add_preset_option(command: argparse.ArgumentParser) -> None:
    """--preset: presets.py's named sets of the sync settings."""
    command.add_argument("--preset", choices=PRESETS, default=None,
                         help="a named set of the sync settings over the model's and --from's (options given here "
                              "override): fast syncs the first quarter of the steps with reuse_noise and lpips_alex; "
                              "faithful is the paper's sync step exactly; paper the paper's settings; recommended "
                              "the model's own (docs/usage.md#presets)")


def add_output_options(command: argparse.ArgumentParser, default: str) -> None:
    """--out (its extension picks the format: metadata.FORMATS) and --quality."""
    command.add_argument("--out", default=None,
                         help=f"the file to write: .png, .jpg/.jpeg or .webp, each with the parameters in its metadata "
                              f"(default: {default})")
    command.add_argument("--quality", type=int, default=None,
                         help=f"JPEG or WebP quality, 1-100 (default {DEFAULT_QUALITY})")
    command.add_argument("--overwrite", action="store_true",
                         help="replace --out even when it is a file panosync did not write (else refused; a "
                              "panosync file is replaced)")


# upscale's defaults: twice the size, denoised lightly (pocket keeps its picture at 0.2: 29 dB after
# downscaling again, against 26 dB at 0.3, where its windows start to draw ridges in the sky; docs/images.md)
UPSCALE_SCALE, UPSCALE_STRENGTH = 2.0, 0.2
# what an upscale takes from a panosync PNG it is given, unless the options say otherwise
UPSCALE_FROM_PNG = ("prompt", "negative_prompt", "loop_closure", "guidance_scale")
# regions: boxes and masks of the upscaled canvas, which the user does not choose (--scale does)
NOT_UPSCALE_OPTIONS = ("prompt", "width", "height", "image", "mask_image", "image_at", "resize_image", "regions",
                       "region_base")


def add_upscale_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("input", metavar="IMAGE", help="the picture to upscale (PNG, JPEG, WebP)")
    command.add_argument("--scale", type=float, default=UPSCALE_SCALE,
                         help=f"how many times larger, more than 1 and at most 8 (default {UPSCALE_SCALE:g}); the "
                              f"size is rounded to the VAE factor")
    command.add_argument("--prompt", default=None, help="what the picture shows (default: a panosync PNG's own)")
    names = [name for name in settings.PIPELINE_NAMES + settings.IMAGE_NAMES if name not in NOT_UPSCALE_OPTIONS]
    add_options(command, names, dict(strength=f"how far the resized picture is noised before it is denoised "
                                              f"(default {UPSCALE_STRENGTH:g}: details, not a new picture)"))
    add_model_options(command, settings.DEFAULT_MODEL)
    add_ip_adapter_options(command)
    add_output_options(command, "IMAGE's name with -x2 and .png")
    add_preset_option(command)
    command.add_argument("--quiet", action="store_true", help="no progress bar")


def upscale(args: argparse.Namespace) -> int:
    """`panosync upscale`: `generate` with the picture as an image input resized to --scale times its
    size (resize_image), at a low strength; a panosync PNG's prompt, model and loop closure by default."""
    from pathlib import Path

    from .conditions import load_condition_image
    from .metadata import read_parameters
    from .models import resolve_model

    if not 1 < args.scale <= 8:
        raise ValueError(f"--scale must be more than 1 and at most 8, got {args.scale:g}.")
    size = load_condition_image(args.input, settings.MAX_PIXELS, "image").size
    try:
        stored = settings.stored_parameters(read_parameters(args.input))
    except ValueError:  # not a panosync PNG: the options say everything
        stored = {}
    for name in UPSCALE_FROM_PNG:
        if getattr(args, name, None) is None and stored.get(name) is not None:
            setattr(args, name, stored[name])
    if args.prompt is None:
        raise ValueError(f"Give --prompt: {args.input} is not a panosync panorama, whose metadata would say what it "
                         f"shows.")
    if args.model is None and isinstance(stored.get("model"), str):
        args.model = stored["model"]
    source = resolve_model(_text(args.model or settings.DEFAULT_MODEL, "model"))
    factor = source.vae_factor or 8
    args.width, args.height = (max(factor, round(side * args.scale / factor) * factor) for side in size)
    args.image, args.resize_image, args.mask_image, args.image_at = args.input, True, None, None
    if args.strength is None:
        args.strength = UPSCALE_STRENGTH
    if args.out is None:
        args.out = str(Path(args.input).with_name(f"{Path(args.input).stem}-x{args.scale:g}.png"))
    args.from_file = None
    return generate(args)


# argparse's words for an option's value of the wrong type, and this project's
TYPE_ERROR = re.compile(r"argument (?P<option>[^:]+): invalid (?P<kind>int|float) value: (?P<value>.*)")
CHOICE_ERROR = re.compile(r"argument (?P<option>[^:]+): invalid choice: (?P<value>.*) \(choose from (?P<choices>.*)\)")
KIND_OF_TYPE = {"int": "a whole number", "float": "a number"}
MUST_ERROR = re.compile(r"argument (?P<option>[^:]+): (?P<rest>must be .*)")


class OneSentenceParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one sentence (exit 2), not the usage block then the
    error: "--width must be a whole number, got '1e9'", as the settings' own checks say it. The
    subcommands' parsers are of this class too (add_subparsers makes them of the parent's)."""

    def error(self, message: str):
        wrong_type, wrong_choice = TYPE_ERROR.fullmatch(message), CHOICE_ERROR.fullmatch(message)
        if wrong_type:
            option = wrong_type["option"].split("/")[0]
            message = f"{option} must be {KIND_OF_TYPE[wrong_type['kind']]}, got {wrong_type['value']}"
        elif MUST_ERROR.fullmatch(message):  # an option type's own sentence (--image-at's)
            found = MUST_ERROR.fullmatch(message)
            message = f"{found['option'].split('/')[0]} {found['rest']}"
        elif wrong_choice:
            option = wrong_choice["option"].split("/")[0].replace("command", "the command")
            message = f"{option} must be one of {wrong_choice['choices']}, got {wrong_choice['value']}"
        self.exit(2, f"panosync: error: {message.rstrip('.')} (see {self.prog} --help).\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneSentenceParser(prog="panosync", description="Coherent panoramas with SyncDiffusion.")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="generate a panorama PNG",
                                   description="Generate a panorama; the PNG carries every parameter.")
    add_panorama_arguments(generate, settings.DEFAULT_MODEL)
    add_upscale_arguments(commands.add_parser(
        "upscale", help="upscale a picture: resized, then denoised in synced windows at a low strength",
        description="Upscale an image (a panosync panorama, or any picture with --prompt): resized by --scale, "
                    "encoded, noised to --strength and denoised in synced windows, decoded in tiles; the memory is "
                    "one window's whatever the size. A panosync PNG's own metadata gives the prompt, the model and "
                    "loop closure unless given."))
    control = commands.add_parser(
        "control", help="generate a panorama that follows a ControlNet condition (ControlSync)",
        description="Generate a panorama that follows a condition image of any size, e.g. an edge map, with "
                    "ControlNet and SyncDiffusion (ControlSync); the PNG carries every parameter.")
    add_panorama_arguments(control, settings.DEFAULT_CONTROL_MODEL, control=True)
    from .server.command import add_serve_arguments, add_ui_arguments

    add_serve_arguments(commands.add_parser(
        "serve", help="HTTP API: queued panorama jobs with the public SyncDiffusion API's fields",
        description="Serve the HTTP API (OpenAPI schema at /docs); jobs survive a restart."))
    add_ui_arguments(commands.add_parser(
        "ui", help="web page to make panoramas", description="Serve the Gradio web page."))
    from .eval.command import add_arguments as add_evaluate_arguments

    evaluate = commands.add_parser("evaluate", help="the paper's metrics for panorama methods",
                                   description="Generate panoramas with each method (resumable), measure the "
                                               "paper's metrics, write a table, JSON, CSV and charts.")
    add_evaluate_arguments(evaluate)
    from .batch.command import add_arguments as add_batch_arguments

    add_batch_arguments(commands.add_parser(
        "batch", help="many panoramas from a JSONL file of jobs, here or on a Ray cluster (--ray)",
        description="Make one panorama per line of a JSONL file (the HTTP API's fields, and an optional name), "
                    "with the model loaded once, here or on Ray workers (resumable)."))
    from .export_command import add_parser as add_export_parser

    add_export_parser(commands)
    return parser


def panorama_request(args: argparse.Namespace, control: bool = False) -> tuple[dict, ModelSource]:
    """Every parameter of the panorama (settings.resolve: the options given, the file of --from,
    the model's recommended settings, the paper's), with the model and the seed, checked as far as
    the model's configs allow (all of it for a folder or a bundled model). Loads no weights."""
    from .input_images import image_files_of_request, region_of_record
    from .ip_adapters import check_family_takes_image_prompt, ip_adapter_of_options
    from .loras import weights_of_options
    from .metadata import read_parameters
    from .models import resolve_model
    from .vocabulary import warn_unknown_words

    stored = settings.stored_parameters(read_parameters(args.from_file)) if args.from_file else {}
    given = given_options(args)
    if given.get("prompt") is None and stored.get("prompt") is None:
        raise ValueError("Give a prompt, or --from with a file that panosync wrote.")
    # the region options (all of them replace the PNG's regions), their mask files read, checked and
    # hashed now; else the PNG's, its mask files found again unchanged
    if given.get("regions") is not None:
        regions = regions_of_options(given.pop("regions"))
    else:
        regions = [region_of_record(record, number) for number, record in enumerate(stored.get("regions") or [], 1)]
    default_model = settings.DEFAULT_CONTROL_MODEL if control else settings.DEFAULT_MODEL
    model = _text(args.model or stored.get("model") or default_model, "model")
    model_config = args.model_config or stored.get("model_config")
    vae = getattr(args, "vae", None) or stored.get("vae")
    source = resolve_model(model)
    prompts = [given.get("prompt") or stored.get("prompt"), *(region.get("prompt") for region in regions
                                                               if isinstance(region, dict))]
    warn_unknown_words(source, prompts, model)  # pocket knows ~20 words
    recommended = settings.recommended_of(source)
    values = settings.resolve(given, stored, recommended, control)
    if args.preset:  # over the file's and the model's values, under the options given
        values.update({name: value for name, value in preset_of_command(args.preset, values, given, source,
                                                                       recommended, control).items()
                       if name not in given})
    values["regions"] = regions or None
    values["controlnet"] = getattr(args, "controlnet", None) or stored.get("controlnet")
    if control:
        values["controlnet"] = values["controlnet"] or [settings.DEFAULT_CONTROLNET]
    else:
        values = {name: value for name, value in values.items()
                  if name in settings.PIPELINE_NAMES + settings.IMAGE_NAMES}
        # the image and mask files read, checked and hashed now (the PNG's found again unchanged)
        values.update({"image": None, "mask_image": None, **image_files_of_request(given, stored)})
    settings.check(values)  # the ranges, before the canvas is filled in (ControlSync's comes from the condition)
    if values["seed"] is None:
        values["seed"] = settings.draw_seed()
    request = {**values, "model": model, **({"model_config": _text(model_config, "model_config")}
                                             if model_config else {}),
               **({"vae": _text(vae, "vae")} if vae else {})}
    # the LoRAs and embeddings checked and hashed now, before any model loads
    loras, inversions = weights_of_options(args.lora, args.lora_weight_name, args.textual_inversion, stored)
    request.update({key: value for key, value in (("loras", loras), ("textual_inversions", inversions)) if value})
    # the IP-Adapter, its image encoder and its image prompt likewise
    adapter, image_prompt = ip_adapter_of_options(args.ip_adapter, args.ip_adapter_weight_name,
                                                  args.ip_adapter_image_encoder, args.ip_adapter_image, stored)
    if adapter is not None:
        check_family_takes_image_prompt(source.family, control)
        request.update(ip_adapter=adapter, ip_adapter_image=image_prompt)
    return request, source


def preset_of_command(name: str, values: dict, given: dict, source: ModelSource, recommended: dict,
                      control: bool) -> dict:
    """What `--preset name` sets over the resolved `values` (presets.preset_changes): the fast
    preset's modes for the images its loss compares (the window at the scale given, else 1), the
    recommended preset's from the model's own settings (`recommended`, its recommended.json's)."""
    window_pixels = values.get("window") or (source.geometry.window_pixels if source.geometry else None)
    compared = None if window_pixels is None else round(window_pixels * given.get("sync_image_scale", 1.0))
    model_values = settings.resolve({}, {}, recommended, control)
    return preset_changes(name, values, control, compared, model_values)


def regions_of_options(options: list[tuple[str, str]]) -> list[dict]:
    """The regions of --region and --region-mask, in the command line's order (command_options.
    RegionOption): a box parsed, a mask's file read, checked and hashed (input_images.ImageFile)."""
    from .input_images import image_file
    from .regions import parse_region_option, region_of_mask_option

    regions = []
    for kind, text in options:
        if kind == "box":
            regions.append(parse_region_option(text))
        else:
            path, prompt, weight = region_of_mask_option(text)
            regions.append(dict(mask=image_file(path, "region_mask"), prompt=prompt, weight=weight))
    return regions


def _text(value, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {value!r} (from the file's metadata).")
    return value


def generate(args: argparse.Namespace) -> int:
    from .input_images import check_regions_on_canvas

    request, source = panorama_request(args)
    if request["image"] is not None:  # the canvas is the image's unless given
        from .image_input import canvas_of_image

        size = request["image"].load().size
        request["width"], request["height"] = canvas_of_image(size, request["width"], request["height"],
                                                              request["resize_image"])
        if source.vae_factor is not None:
            check_canvas_of_image(request, size, source.vae_factor)
    if source.geometry is not None:
        request.update(settings.fill_canvas(request, source.geometry))
        settings.check(request, source.geometry)
        check_image_placement(request, source.family, source.vae_factor)
        check_regions_on_canvas(request, source.vae_factor)
    out = output_path(args, request)
    return make_panorama(args, request, source, out)


def check_image_placement(request: dict, family: str | None, vae_factor: int) -> None:
    """An image input placed on the request's canvas (image_input.place: its size, the mask's, the
    corner, the strength) and whether the loop runs a step (checked_release, counted as the
    family's pipeline counts them), so that a mistake is one sentence before any model loads."""
    from .image_input import checked_release, place
    from .schedulers import first_step_of_family

    if request.get("image") is None:
        return
    mask = request["mask_image"].load() if request.get("mask_image") is not None else None
    placement = place(request["image"].load(), mask, request["width"], request["height"], request["strength"],
                      request["image_at"], request["resize_image"], vae_factor)
    checked_release(placement, request["width"], request["height"], vae_factor, request["num_inference_steps"],
                    first_step_of_family(family), request["loop_closure"], request["window"])


def check_canvas_of_image(request: dict, size: tuple[int, int], vae_factor: int) -> None:
    """A canvas taken from the image's size must be a multiple of the VAE factor: one sentence that
    says so (not "width must be a multiple", which the user did not give)."""
    for side, value, given in (("width", size[0], request["width"]), ("height", size[1], request["height"])):
        if given == value and value % vae_factor:
            raise ValueError(f"The image is {size[0]}x{size[1]} pixels, and the canvas takes its {side} unless "
                             f"--{side} is given: a {side} must be a multiple of {vae_factor} pixels (the VAE "
                             f"factor); give --{side} (a larger canvas extends the image), or --resize-image with "
                             f"--{side}.")


def output_path(args: argparse.Namespace, request: dict) -> str:
    """Where the panorama goes, in the format of its extension (PNG without one), checked before any
    model work with its quality and whether the parameters fit its metadata: a panorama made for a
    place that cannot take it would be lost."""
    from .files import check_writable
    from .metadata import check_fits, check_quality, image_format

    from .metadata import read_metadata

    out = args.out or f"panosync-{request['seed']}.png"
    name = Path(out).name
    if name.endswith(".") or (name.startswith(".") and not Path(out).suffix):
        raise ValueError(f"--out {settings.cut(out)} has no name before its extension, or none after its dot: "
                         f"name the file, e.g. panorama.png or panorama.jpg.")
    if not Path(out).suffix and not os.path.lexists(out):  # a new name without an extension: a PNG, named so
        out = f"{out}.png"
    check_writable(out, "--out")
    image_format(out)
    check_quality(args.quality, out)
    check_fits(request, out)
    if Path(out).is_file() and not getattr(args, "overwrite", False):
        try:
            read_metadata(out)
        except ValueError:  # not a panorama panosync wrote: the user's, not to be lost unasked
            raise ValueError(f"--out {settings.cut(out)} exists and was not written by panosync: give --overwrite "
                             f"to replace it, or another name.") from None
    return out


def control(args: argparse.Namespace) -> int:
    """`panosync control`: prepare the conditions (load, Canny, fit to the canvas) and check the
    ControlNets, all before any weights load, then make the panorama as `generate` does."""
    from .conditions import load_condition_image, prepare_condition
    from .control import check_condition_canvas
    from .input_images import check_regions_on_canvas
    from .models import check_controlnet_fits, load_control_pipeline, resolve_controlnet

    request, source = panorama_request(args, control=True)
    if not request["condition"]:
        raise ValueError("Give --condition: the image the panorama follows (an edge map, or a photo with "
                         "--preprocess canny).")
    controlnets = [resolve_controlnet(_text(controlnet, "controlnet")) for controlnet in request["controlnet"]]
    for index, controlnet in enumerate(controlnets):  # of the base model's kind, before any weights load
        check_controlnet_fits(controlnet, source.family, f"ControlNet {index}" if len(controlnets) > 1 else
                              "The ControlNet")
    if len(request["condition"]) != len(controlnets):
        raise ValueError(f"Give one --condition per --controlnet: got {len(request['condition'])} conditions for "
                         f"{len(controlnets)} ControlNets.")
    scales = request["controlnet_conditioning_scale"]
    if len(scales) not in (1, len(controlnets)):
        raise ValueError(f"Give --conditioning-scale once for all ControlNets or once for each ({len(controlnets)}), "
                         f"got {len(scales)}.")
    sources = [load_condition_image(path, settings.MAX_PIXELS) for path in request["condition"]]
    # The canvas is the first condition's size unless given; the others must fit it.
    width, height = check_condition_canvas([sources[0].size], request["width"], request["height"], source.vae_factor)
    request.update(width=width, height=height)
    if source.geometry is not None:
        request.update(settings.fill_canvas(request, source.geometry))
    settings.check(request, source.geometry)
    if source.geometry is not None:
        check_regions_on_canvas(request, source.vae_factor)
    conditions = [prepare_condition(image, width, height, request["resize_condition"], request["preprocess"],
                                    request["canny_low"], request["canny_high"]) for image in sources]
    out = output_path(args, request)
    inputs = dict(image=conditions, controlnet_conditioning_scale=scales[0] if len(scales) == 1 else scales,
                  resize_condition=request["resize_condition"])

    def load(device, precision):
        return load_control_pipeline(source, controlnets, device, precision, config=request.get("model_config"),
                                     vae=request.get("vae"))

    return make_panorama(args, request, source, out, load, inputs)


def make_panorama(args: argparse.Namespace, request: dict, source: ModelSource, out: str, load=None,
                  inputs: dict | None = None) -> int:
    """Load the pipeline (`load(device, precision)`; default: SyncDiffusion's) and the request's
    LoRAs, embeddings and IP-Adapter, make the panorama with the request's pipeline parameters, its
    image prompt and `inputs`, write the PNG with the request. On a CPU the panorama is made on
    --threads threads, else the --from file's count, else torch's now, and the PNG records it
    (the picture depends on it there: runner.maker.computing_threads)."""
    from .input_images import loaded_regions, regions_metadata
    from .ip_adapters import ip_adapter_metadata, load_ip_adapter
    from .loras import load_loras, load_textual_inversions, weights_metadata
    from .metadata import read_parameters, save_panorama
    from .models import load_pipeline, pick_device
    from .precision import pick_precision
    from .registry import family_defaults_after_loading
    from .runner.maker import check_threads, computing_threads, default_threads

    device = pick_device(args.device)
    precision = pick_precision(args.dtype, device, source.family)
    stored = settings.stored_parameters(read_parameters(args.from_file)) if args.from_file else {}
    if getattr(args, "threads", None) is not None:
        threads = check_threads(args.threads)
    elif stored.get("threads") is not None:  # a CPU PNG: made again on as many threads
        threads = check_threads(stored["threads"], "threads in the file's metadata")
    else:
        threads = default_threads()
    request.pop("threads", None)
    if device.type == "cpu" and computes_in_float16(precision) and not args.quiet:
        print("panosync: note: float16 on the CPU is about 10 times slower than float32 (no fast float16 "
              "convolution there); --dtype bfloat16 or float32 is faster on a CPU.", file=sys.stderr)

    started = time.perf_counter()
    if load is None:
        pipe = load_pipeline(source, device, precision, config=request.get("model_config"), vae=request.get("vae"))
    else:
        pipe = load(device, precision)
    loras, inversions = request.pop("loras", ()), request.pop("textual_inversions", ())
    load_textual_inversions(pipe, inversions)
    load_loras(pipe, loras)
    request.update(weights_metadata(loras, inversions))
    adapter, image_prompt = request.pop("ip_adapter", None), request.pop("ip_adapter_image", None)
    load_ip_adapter(pipe, adapter)
    request.update(ip_adapter_metadata(adapter, image_prompt))
    if image_prompt is not None:
        inputs = {**(inputs or {}), "ip_adapter_image": image_prompt.load()}
    pipe.set_progress_bar_config(disable=args.quiet, desc="denoising", unit="step")
    if getattr(args, "gradient_checkpointing", False):
        pipe.enable_sync_checkpointing()
    if source.geometry is None:  # a hub model or a checkpoint file: its shape is known only now
        request.update(settings.fill_canvas(request, pipe.geometry))
    if source.family is None:  # a hub model whose configs could not be had: its family's defaults, where nothing
        # else set them
        explicit = set(given_options(args)) | set(stored)
        request.update(family_defaults_after_loading(pipe, explicit))
    generation = {name: request[name] for name in settings.PIPELINE_NAMES}
    # the mask files read again, found unchanged; the PNG records each by its path and SHA-256
    generation["regions"] = loaded_regions(request["regions"])
    request["regions"] = regions_metadata(request["regions"])
    if request.get("image") is not None:
        if source.geometry is None:
            check_image_placement(request, pipe.family, pipe.vae_scale_factor)
        files = {name: request[name] for name in ("image", "mask_image") if request.get(name) is not None}
        generation.update({name: request[name] for name in settings.IMAGE_NAMES},
                          **{name: file.load() for name, file in files.items()})
        request.update({name: file.metadata() for name, file in files.items()})
    with computing_threads(threads, device):
        result = pipe(**generation, **(inputs or {}))
    image = result.images[0]
    request.update(width=image.width, height=image.height)
    written = saved_somewhere(image, out, {**request, "device": device.type, "dtype": precision.name,
                                           **({"threads": threads} if device.type == "cpu" else {})}, args.quality)
    seconds = time.perf_counter() - started
    print(f"wrote {written} ({image.width}x{image.height}, seed {request['seed']}, {seconds:.1f} s)")
    columns, rows = settings.wrapped_axes(request.get("loop_closure"), request.get("tile"))
    if columns and not rows:
        print(sphere_words(image.width, image.height))
    elif rows:
        print(f"a texture that tiles {'on both axes' if columns else 'top to bottom'}: no Photo Sphere metadata")
    return 0 if written == out else 1  # kept elsewhere: a failure all the same


def saved_somewhere(image, out: str, metadata: dict, quality: int | None) -> str:
    """Write the panorama to `out`; when that fails (a full disk, a folder gone read-only), to the
    temporary folder instead, saying so, so that a panorama made is not lost to a full disk; an
    OSError (exit 1) only when neither can be written."""
    import tempfile

    from .metadata import save_panorama

    try:
        save_panorama(image, out, metadata, quality)
        return out
    except OSError as failure:
        kept = Path(tempfile.mkdtemp(prefix="panosync-")) / Path(out).name
        try:
            save_panorama(image, kept, metadata, quality)
        except OSError:
            raise OSError(f"{out} could not be written ({failure.strerror or failure}), nor a copy in "
                          f"{kept.parent}: free some space and make it again (same seed: "
                          f"{metadata.get('seed')}).") from None
        print(f"panosync: error: {out} could not be written ({failure.strerror or failure}); the panorama is "
              f"kept at {kept}.", file=sys.stderr)
        return str(kept)


def sphere_words(width: int, height: int) -> str:
    """What a loop-closed panorama covers of the sphere, and whether its file says so (GPano)."""
    degrees = vertical_degrees(width, height)
    if gpano_fields(width, height) is None:
        return (f"a 360° panorama {degrees:.0f}° high: taller than the sphere's 180°, so it carries no Photo Sphere "
                f"metadata (make it at most {width // 2} high)")
    whole = " (the full sphere)" if 2 * height == width else f" (±{degrees / 2:g}° about the horizon)"
    return f"a 360° panorama {degrees:g}° high{whole}, with Photo Sphere metadata (GPano) for 360° viewers"


# The packages of each extra (pyproject.toml), by the name they are imported as.
EXTRAS = {"serve": ("pydantic", "pydantic_core", "fastapi", "starlette", "uvicorn"), "ui": ("pydantic", "gradio"),
          "evaluate": ("torchmetrics", "matplotlib"), "control": ("cv2",)}
EXTRA_OF_COMMAND = {"serve": "serve", "ui": "ui", "evaluate": "eval", "control": "control"}


def missing_extra(module: str | None, command: str) -> str | None:
    """The extra that brings `module`, when the command's extra does (else None: a real bug)."""
    top = (module or "").split(".")[0]
    for name in (command, "control"):  # a server's ControlNets preprocess with OpenCV too
        if top in EXTRAS.get(name, ()):
            return EXTRA_OF_COMMAND[name]
    return None


def computes_in_float16(precision) -> bool:
    """Whether `precision` computes in float16 (its weights, or autocast)."""
    import torch

    return torch.float16 in (precision.weights, precision.autocast)


@contextlib.contextmanager
def quiet_libraries(quiet: bool):
    """With --quiet, diffusers' and transformers' loading bars and notices ("Loading pipeline
    components", the advice to install accelerate) are silenced too, not only panosync's own; errors
    still show. Their settings are put back after, for a program that calls main more than once."""
    if not quiet:
        yield
        return
    import diffusers.utils.logging
    import huggingface_hub.utils
    import transformers.utils.logging

    libraries = (diffusers.utils.logging, transformers.utils.logging)
    before = [(library.get_verbosity(), library.is_progress_bar_enabled()) for library in libraries]
    hub_bars_off = huggingface_hub.utils.are_progress_bars_disabled()  # transformers' switch turns the hub's
    for library in libraries:
        library.set_verbosity_error()
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, (verbosity, bars) in zip(libraries, before):
            library.set_verbosity(verbosity)
            (library.enable_progress_bar if bars else library.disable_progress_bar)()
        (huggingface_hub.utils.disable_progress_bars if hub_bars_off else huggingface_hub.utils.enable_progress_bars)()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with quiet_libraries(getattr(args, "quiet", False)):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "generate":
            return generate(args)
        if args.command == "control":
            return control(args)
        if args.command == "upscale":
            return upscale(args)
        if args.command in ("serve", "ui"):
            from .server import command

            return getattr(command, args.command)(args)
        if args.command == "evaluate":
            from .eval.command import evaluate

            return evaluate(args)
        if args.command == "batch":
            from .batch.command import batch

            return batch(args)
        if args.command == "export":
            from .export_command import export

            return export(args)
    except ValueError as error:
        print(f"panosync: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        extra = missing_extra(error.name, args.command)
        if extra is None:
            raise
        print(f"panosync: error: panosync {args.command} needs {error.name}, which comes with the {extra} extra: "
              f"pip install 'panosync[{extra}]'.", file=sys.stderr)
        return 2
    except (NonFiniteError, TaskFailed) as error:  # not the input's fault (the arithmetic overflowed …)
        print(f"panosync: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the machine's, not the input's: a full disk, a folder gone read-only
        words = f"{error.filename}: {error.strerror}" if error.filename and error.strerror else error
        print(f"panosync: error: {words}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("panosync: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""The `panosync` command.

    panosync generate "a photo of a mountain range at twilight" --width 3072 --seed 7 --out range.png
    panosync generate --from-png range.png          # the same panorama again
    panosync control "a city skyline at dusk" --condition skyline.png --preprocess canny
    panosync serve --model pocket                   # HTTP API on 127.0.0.1:8000
    panosync ui --model pocket                      # web page on 127.0.0.1:7860
    panosync evaluate --model pocket --prompts prompts.txt --seeds 0-31 --width 512 --out runs/eval

Errors a user can cause print one sentence and exit with status 2, before any model is loaded
where the model's shape allows.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time

from .precision import DTYPE_HELP, NonFiniteError

# The pipeline's own parameters, with the command's help. Defaults are the pipeline's.
PIPELINE_PARAMETERS = {
    "negative_prompt": (str, "what the panorama should not show"),
    "width": (int, "pixels, a multiple of the VAE factor (8); default: four windows (2048 for SD 2 base)"),
    "height": (int, "pixels, a multiple of the VAE factor; default: one window (512 for SD 2 base)"),
    "guidance_scale": (float, "classifier-free guidance scale (7.5)"),
    "sync_weight": (float, "gradient-descent weight w of the sync step; 0 gives MultiDiffusion (20)"),
    "sync_decay_rate": (float, "the weight at step i is w * rate**i (0.95)"),
    "sync_freq": (int, "sync every n-th step (1)"),
    "sync_threshold": (int, "sync only in the first n steps; default: every step, as the paper"),
    "num_inference_steps": (int, "DDIM steps (50)"),
    "stride": (int, "view stride in latent pixels, 1 to the window; default: a quarter window (16 for SD 2 base)"),
    "seed": (int, "seed of the initial noise; default: a random one, printed and stored in the PNG"),
    "anchor": (int, "index of the anchor view; default: the centre view"),
    "view_batch_size": (int, "views per network call, same result but for rounding; default: chosen for the device"),
}


def add_generation_arguments(command: argparse.ArgumentParser, default_model: str, helps: dict | None = None) -> None:
    """The options every panorama command shares: the pipeline's parameters, model, output, device.
    `helps` replaces the help of some parameters (where a command's defaults differ)."""
    helps = {name: text for name, (kind, text) in PIPELINE_PARAMETERS.items()} | (helps or {})
    command.add_argument("prompt", nargs="?", help="what the panorama shows")
    for name, (kind, text) in PIPELINE_PARAMETERS.items():
        flags = ["--" + name.replace("_", "-")] + (["--steps"] if name == "num_inference_steps" else [])
        command.add_argument(*flags, dest=name, type=kind, default=None, help=helps[name])
    command.add_argument("--loop-closure", dest="loop_closure", action=argparse.BooleanOptionalAction, default=None,
                         help="make a 360° panorama whose left and right edges meet")
    command.add_argument("--model", default=None,
                         help=f"bundled name (tiny-random), diffusers folder, .safetensors file or hub id "
                              f"(default: {default_model})")
    command.add_argument("--model-config", dest="model_config", default=None, metavar="FOLDER_OR_ID",
                         help="for a .safetensors/.ckpt --model: diffusers folder or hub id whose configs describe "
                              "the checkpoint's architecture; needed offline")
    command.add_argument("--out", default=None, help="PNG to write (default: panosync-SEED.png)")
    command.add_argument("--from-png", default=None, metavar="FILE",
                         help="take every parameter from a PNG panosync wrote; options given here override")
    command.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 …")
    command.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    command.add_argument("--quiet", action="store_true", help="no progress bar")


def add_control_arguments(command: argparse.ArgumentParser) -> None:
    """The options of `panosync control` besides the shared ones."""
    command.add_argument("--condition", action="append", default=None, metavar="IMAGE",
                         help="the image the panorama follows, of its size (or a photo with --preprocess canny); "
                              "once per --controlnet")
    command.add_argument("--controlnet", action="append", default=None, metavar="FOLDER_OR_ID",
                         help=f"diffusers ControlNet folder or hub id, repeatable (default: {DEFAULT_CONTROLNET}; "
                              f"tiny-random: random weights, a smoke test)")
    command.add_argument("--conditioning-scale", dest="conditioning_scale", action="append", type=float, default=None,
                         help="weight of the ControlNet's residuals, once for all or once per --controlnet (1.0)")
    command.add_argument("--preprocess", default=None,
                         help="none (the condition is ready) or canny (take the Canny edges of the image) (none)")
    command.add_argument("--canny-low", dest="canny_low", type=int, default=None,
                         help="Canny: gradients below this are never edges (100)")
    command.add_argument("--canny-high", dest="canny_high", type=int, default=None,
                         help="Canny: gradients above this are always edges (200)")
    command.add_argument("--resize-condition", dest="resize_condition", action=argparse.BooleanOptionalAction,
                         default=None, help="resize a condition whose size is not --width x --height (default: refuse)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="panosync", description="Coherent panoramas with SyncDiffusion.")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="generate a panorama PNG",
                                   description="Generate a panorama; the PNG carries every parameter.")
    add_generation_arguments(generate, DEFAULT_MODEL)
    add_speed_arguments(generate)
    control = commands.add_parser(
        "control", help="generate a panorama that follows a ControlNet condition (ControlSync)",
        description="Generate a panorama that follows a condition image of any size, e.g. an edge map, with "
                    "ControlNet and SyncDiffusion (ControlSync); the PNG carries every parameter.")
    add_generation_arguments(control, DEFAULT_CONTROL_MODEL, helps=dict(
        width="pixels, a multiple of the VAE factor (8); default: the condition's width",
        height="pixels, a multiple of the VAE factor (8); default: the condition's height",
        sync_threshold="sync only in the first n steps (10, as the ControlSync paper)"))
    add_control_arguments(control)
    add_speed_arguments(control)
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
    return parser


DEFAULT_MODEL = "stabilityai/stable-diffusion-2-base"
# The ControlSync paper's models: Stable Diffusion 1.5 (now published under this id; the original
# runwayml/stable-diffusion-v1-5 was withdrawn) and the Canny ControlNet trained for it.
DEFAULT_CONTROL_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_CONTROLNET = "lllyasviel/sd-controlnet-canny"
# What `panosync control` adds to a request, with its defaults: recorded in the PNG, read back by --from-png.
CONTROL_DEFAULTS = dict(condition=None, controlnet=[DEFAULT_CONTROLNET], conditioning_scale=[1.0], preprocess="none",
                        canny_low=100, canny_high=200, resize_condition=False)


def parameter_defaults(source: "ModelSource", pipeline: type | None = None) -> dict:
    """The default of every pipeline parameter for the model `source` names: the settings recommended
    with the model, else the pipeline's (None for the canvas, which depends on the model's window),
    and the speed options the model recommends, if any.
    `pipeline`: the pipeline class whose defaults count (default: SyncDiffusionPipeline)."""
    import inspect

    from .bundled import recommended_settings
    from .pipeline import SyncDiffusionPipeline

    recommended = recommended_settings(source.ref) if source.kind == "folder" else {}
    defaults = inspect.signature((pipeline or SyncDiffusionPipeline).__call__).parameters
    # a model may also recommend speed options (pocket: its sync gradient, see its recommended.json)
    names = [*PIPELINE_PARAMETERS, "loop_closure", *(name for name in SPEED_DEFAULTS if name in recommended)]
    return {name: recommended.get(name, defaults[name].default) for name in names}


def generation_request(args: argparse.Namespace, default_model: str = DEFAULT_MODEL, pipeline: type | None = None,
                       extra_defaults: dict | None = None) -> tuple[dict, "ModelSource"]:
    """Every parameter of the panorama, in this order of precedence: the options given, the PNG of
    --from-png, the settings recommended with the model, the pipeline's defaults. `extra_defaults`:
    a command's own parameters (read from the options of the same names) and their defaults."""
    from .metadata import read_parameters
    from .models import resolve_model

    request = read_parameters(args.from_png) if args.from_png else {}
    names = [*PIPELINE_PARAMETERS, "loop_closure", "prompt", "model", "model_config", *(extra_defaults or {})]
    request.update({name: getattr(args, name) for name in names if getattr(args, name) is not None})
    if "prompt" not in request:
        raise ValueError("Give a prompt, or --from-png with a PNG that panosync wrote.")
    request.setdefault("model", default_model)
    source = resolve_model(request["model"])
    for name, value in [*parameter_defaults(source, pipeline).items(), *(extra_defaults or {}).items()]:
        request.setdefault(name, value)
    # model_config only when given: it describes a checkpoint file's architecture
    return {name: request[name] for name in names if name in request}, source


def generate(args: argparse.Namespace) -> int:
    request, source = generation_request(args, extra_defaults=SPEED_DEFAULTS)
    return make_panorama(args, request, source, inputs=speed_inputs(request, source))


def speed_inputs(request: dict, source: "ModelSource") -> dict:
    """The request's speed options, checked before any weights load, as pipeline inputs."""
    from pathlib import Path

    from .fast import check_image_scale, parse_fast_modes

    request["fast_modes"] = sorted(parse_fast_modes(request["fast_modes"]))
    if source.window is not None:
        check_image_scale(request["sync_image_scale"], source.window * source.vae_factor)
    if request["sync_decoder"] is not None:
        if not (Path(request["sync_decoder"]).expanduser() / "config.json").is_file():
            raise ValueError(f"--sync-decoder {request['sync_decoder']} is not a diffusers AutoencoderTiny folder (it "
                             f"has no config.json): give the folder of a saved TAESD.")
    return {name: request[name] for name in SPEED_DEFAULTS}


# The speed options of `panosync generate` and `panosync control` (fast modes and decoding), with the
# pipeline's defaults: recorded in the PNG and read back by --from-png like the others.
SPEED_DEFAULTS = dict(fast_modes=[], sync_image_scale=1.0, sync_decoder=None, tiled_decode=None)


def add_speed_arguments(command: argparse.ArgumentParser) -> None:
    """Fast modes (each approximates the sync step; off by default) and tiled decoding."""
    from .fast import FAST_MODES, NO_FAST_MODE

    group = command.add_argument_group("speed", "fast modes change the result; each says what it approximates")
    modes = {**FAST_MODES, NO_FAST_MODE: "none of them, even those the model recommends (faithful mode)"}
    group.add_argument("--fast", dest="fast_modes", action="append", choices=list(modes), default=None,
                       help="a fast mode, repeatable (default: those the model recommends, else none): "
                            + "; ".join(f"{name}: {text}" for name, text in modes.items()))
    group.add_argument("--sync-image-scale", dest="sync_image_scale", type=float, default=None,
                       help="compare images downscaled by this factor in the sync loss (fast mode; 1 = faithful)")
    group.add_argument("--sync-decoder", dest="sync_decoder", default=None, metavar="FOLDER",
                       help="diffusers AutoencoderTiny folder (e.g. TAESD) that decodes the sync loss's images "
                            "(fast mode); the panorama itself is decoded by the model's VAE")
    group.add_argument("--tiled-decode", dest="tiled_decode", action=argparse.BooleanOptionalAction, default=None,
                       help="decode in overlapping tiles, bounding memory (default: when larger than 6 windows)")


def control(args: argparse.Namespace) -> int:
    """`panosync control`: prepare the conditions (load, Canny, fit to the canvas) and check the
    ControlNets, all before any weights load, then make the panorama as `generate` does."""
    from .conditions import load_condition_image, prepare_condition
    from .control import ControlSyncPipeline, check_condition_canvas
    from .models import load_control_pipeline, resolve_controlnet

    request, source = generation_request(args, DEFAULT_CONTROL_MODEL, ControlSyncPipeline,
                                         {**CONTROL_DEFAULTS, **SPEED_DEFAULTS})
    if not request["condition"]:
        raise ValueError("Give --condition: the image the panorama follows (an edge map, or a photo with "
                         "--preprocess canny).")
    controlnets = [resolve_controlnet(controlnet) for controlnet in request["controlnet"]]
    if len(request["condition"]) != len(controlnets):
        raise ValueError(f"Give one --condition per --controlnet: got {len(request['condition'])} conditions for "
                         f"{len(controlnets)} ControlNets.")
    scales = request["conditioning_scale"]
    if len(scales) not in (1, len(controlnets)) or not all(math.isfinite(scale) and scale >= 0 for scale in scales):
        raise ValueError(f"Give --conditioning-scale once for all ControlNets or once for each ({len(controlnets)}), "
                         f"each a finite number, 0 or more: got {', '.join(map(str, scales))}.")
    sources = [load_condition_image(path) for path in request["condition"]]
    # The canvas is the first condition's size unless given; the others must fit it.
    width, height = check_condition_canvas([sources[0].size], request["width"], request["height"], source.vae_factor)
    conditions = [prepare_condition(image, width, height, request["resize_condition"], request["preprocess"],
                                    request["canny_low"], request["canny_high"]) for image in sources]
    request.update(width=width, height=height)
    inputs = dict(image=conditions, controlnet_conditioning_scale=scales[0] if len(scales) == 1 else scales,
                  **speed_inputs(request, source))

    def load(device, precision):
        return load_control_pipeline(source, controlnets, device, precision, config=request.get("model_config"))

    return make_panorama(args, request, source, load, inputs)


def make_panorama(args: argparse.Namespace, request: dict, source: "ModelSource", load=None,
                  inputs: dict | None = None) -> int:
    """Check what needs no weights, load the pipeline (`load(device, precision)`; default: SyncDiffusion's),
    make the panorama with the request's pipeline parameters and `inputs`, write the PNG with the request."""
    from .metadata import save_png
    from .models import load_pipeline, pick_device
    from .precision import pick_precision
    from .pipeline import canvas_defaults, check_panorama_inputs
    from .sync import SyncSchedule

    # Check everything that needs no weights before loading any.
    SyncSchedule(request["sync_weight"], request["sync_decay_rate"], request["sync_freq"], request["sync_threshold"])
    device = pick_device(args.device)
    precision = pick_precision(args.dtype, device)
    if device.type == "cpu" and computes_in_float16(precision) and not args.quiet:
        print("panosync: note: float16 on the CPU is about 10 times slower than float32 (no fast float16 "
              "convolution there); --dtype bfloat16 or float32 is faster on a CPU.", file=sys.stderr)

    def fill_canvas_defaults(window, factor):
        for name, value in canvas_defaults(window, factor).items():
            request[name] = value if request[name] is None else request[name]

    if source.window is not None:
        window, factor = source.window, source.vae_factor
        fill_canvas_defaults(window, factor)
        check_panorama_inputs(window, factor, request["prompt"], request["negative_prompt"], request["width"],
                              request["height"], request["stride"], request["num_inference_steps"],
                              request["guidance_scale"])
    if request["seed"] is None:
        request["seed"] = random.randrange(2**32)

    started = time.perf_counter()
    if load is None:
        pipe = load_pipeline(source, device, precision, config=request.get("model_config"))
    else:
        pipe = load(device, precision)
    pipe.set_progress_bar_config(disable=args.quiet, desc="denoising", unit="step")
    fill_canvas_defaults(pipe.window, pipe.vae_factor)
    pipeline_names = [*PIPELINE_PARAMETERS, "loop_closure", "prompt"]
    generation = {name: value for name, value in request.items() if name in pipeline_names}
    result = pipe(**generation, **(inputs or {}))
    image = result.images[0]
    request.update(width=image.width, height=image.height)
    out = args.out or f"panosync-{request['seed']}.png"
    save_png(image, out, {**request, "device": device.type, "dtype": precision.name})
    seconds = time.perf_counter() - started
    print(f"wrote {out} ({image.width}x{image.height}, seed {request['seed']}, {seconds:.1f} s)")
    return 0


def computes_in_float16(precision) -> bool:
    """Whether `precision` computes in float16 (its weights, or autocast)."""
    import torch

    return torch.float16 in (precision.weights, precision.autocast)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return generate(args)
        if args.command == "control":
            return control(args)
        if args.command in ("serve", "ui"):
            from .server import command

            return getattr(command, args.command)(args)
        if args.command == "evaluate":
            from .eval.command import evaluate

            return evaluate(args)
    except ValueError as error:
        print(f"panosync: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteError as error:  # not the input's fault: the arithmetic overflowed; nothing was written
        print(f"panosync: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("panosync: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""The `panosync` command.

    panosync generate "a photo of a mountain range at twilight" --width 3072 --seed 7 --out range.png
    panosync generate --from-png range.png          # the same panorama again
    panosync serve --model pocket                   # HTTP API on 127.0.0.1:8000
    panosync ui --model pocket                      # web page on 127.0.0.1:7860

Errors a user can cause print one sentence and exit with status 2, before any model is loaded
where the model's shape allows.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

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
    "view_batch_size": (int, "views per network call: faster on a GPU, same result (1)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="panosync", description="Coherent panoramas with SyncDiffusion.")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="generate a panorama PNG",
                                   description="Generate a panorama; the PNG carries every parameter.")
    generate.add_argument("prompt", nargs="?", help="what the panorama shows")
    for name, (kind, text) in PIPELINE_PARAMETERS.items():
        flags = ["--" + name.replace("_", "-")] + (["--steps"] if name == "num_inference_steps" else [])
        generate.add_argument(*flags, dest=name, type=kind, default=None, help=text)
    generate.add_argument("--loop-closure", dest="loop_closure", action=argparse.BooleanOptionalAction, default=None,
                          help="make a 360° panorama whose left and right edges meet")
    generate.add_argument("--model", default=None,
                          help="bundled name (tiny-random), diffusers folder, .safetensors file or hub id "
                               "(default: stabilityai/stable-diffusion-2-base)")
    generate.add_argument("--model-config", dest="model_config", default=None, metavar="FOLDER_OR_ID",
                          help="for a .safetensors/.ckpt --model: diffusers folder or hub id whose configs describe "
                               "the checkpoint's architecture; needed offline")
    generate.add_argument("--out", default=None, help="PNG to write (default: panosync-SEED.png)")
    generate.add_argument("--from-png", default=None, metavar="FILE",
                          help="take every parameter from a PNG panosync wrote; options given here override")
    generate.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 …")
    generate.add_argument("--dtype", default="auto", help="auto (float16 on CUDA, float32 elsewhere), float32, float16, bfloat16")
    generate.add_argument("--quiet", action="store_true", help="no progress bar")
    from .server.command import add_serve_arguments, add_ui_arguments

    add_serve_arguments(commands.add_parser(
        "serve", help="HTTP API: queued panorama jobs with the public SyncDiffusion API's fields",
        description="Serve the HTTP API (OpenAPI schema at /docs); jobs survive a restart."))
    add_ui_arguments(commands.add_parser(
        "ui", help="web page to make panoramas", description="Serve the Gradio web page."))
    return parser


DEFAULT_MODEL = "stabilityai/stable-diffusion-2-base"


def parameter_defaults(source: "ModelSource") -> dict:
    """The default of every pipeline parameter for the model `source` names: the settings recommended
    with the model, else the pipeline's (None for the canvas, which depends on the model's window)."""
    import inspect

    from .bundled import recommended_settings
    from .pipeline import SyncDiffusionPipeline

    recommended = recommended_settings(source.ref) if source.kind == "folder" else {}
    defaults = inspect.signature(SyncDiffusionPipeline.__call__).parameters
    return {name: recommended.get(name, defaults[name].default) for name in [*PIPELINE_PARAMETERS, "loop_closure"]}


def generation_request(args: argparse.Namespace) -> tuple[dict, "ModelSource"]:
    """Every parameter of the panorama, in this order of precedence: the options given, the PNG of
    --from-png, the settings recommended with the model, the pipeline's defaults."""
    from .metadata import read_parameters
    from .models import resolve_model

    request = read_parameters(args.from_png) if args.from_png else {}
    names = [*PIPELINE_PARAMETERS, "loop_closure", "prompt", "model", "model_config"]
    request.update({name: getattr(args, name) for name in names if getattr(args, name) is not None})
    if "prompt" not in request:
        raise ValueError("Give a prompt, or --from-png with a PNG that panosync wrote.")
    request.setdefault("model", DEFAULT_MODEL)
    source = resolve_model(request["model"])
    for name, value in parameter_defaults(source).items():
        request.setdefault(name, value)
    # model_config only when given: it describes a checkpoint file's architecture
    return {name: request[name] for name in names if name in request}, source


def generate(args: argparse.Namespace) -> int:
    from .metadata import save_png
    from .models import load_pipeline, pick_device, pick_dtype
    from .pipeline import canvas_defaults, check_panorama_inputs
    from .sync import SyncSchedule

    request, source = generation_request(args)
    # Check everything that needs no weights before loading any.
    SyncSchedule(request["sync_weight"], request["sync_decay_rate"], request["sync_freq"], request["sync_threshold"])
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)

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
    pipe = load_pipeline(source, device, dtype, config=request.get("model_config"))
    pipe.set_progress_bar_config(disable=args.quiet, desc="denoising", unit="step")
    fill_canvas_defaults(pipe.window, pipe.vae_factor)
    generation = {name: value for name, value in request.items() if name not in ("model", "model_config")}
    result = pipe(**generation)
    image = result.images[0]
    request.update(width=image.width, height=image.height)
    out = args.out or f"panosync-{request['seed']}.png"
    save_png(image, out, {**request, "device": device.type, "dtype": str(dtype).removeprefix("torch.")})
    seconds = time.perf_counter() - started
    print(f"wrote {out} ({image.width}x{image.height}, seed {request['seed']}, {seconds:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return generate(args)
        if args.command in ("serve", "ui"):
            from .server import command

            return getattr(command, args.command)(args)
    except ValueError as error:
        print(f"panosync: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("panosync: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
